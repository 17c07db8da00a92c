//! Parsing `/proc/net/{tcp,tcp6,udp,udp6}` and finding which process owns
//! a socket (the network collector's poller and the fleet's `connections`
//! listing read sockets the same way).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP states as `/proc/net/tcp` prints them (`st`).
pub mod state {
    #![allow(missing_docs)]

    pub const ESTABLISHED: u8 = 0x01;
    pub const SYN_SENT: u8 = 0x02;
    pub const SYN_RECV: u8 = 0x03;
    pub const TIME_WAIT: u8 = 0x06;
    /// For UDP: an unconnected (bound) socket.
    pub const CLOSE: u8 = 0x07;
    pub const LISTEN: u8 = 0x0A;
}

/// One socket line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockLine {
    /// Local address.
    pub local_ip: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address (unspecified for listening and unconnected sockets).
    pub remote_ip: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// State (`st`, see [`state`] and [`tcp_state_name`]).
    pub state: u8,
    /// Owner uid.
    pub uid: u32,
    /// 0 for sockets without a file (TIME_WAIT, not yet accepted).
    pub inode: u64,
}

/// Parses `ADDR:PORT` in the kernel's hex form: IPv4 is one native-endian
/// u32 of network-order bytes; IPv6 is four such u32s.
pub fn parse_addr(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes())),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(b);
            // Dual-stack sockets show IPv4 peers as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Parses one line (not the header).
pub fn parse_line(line: &str) -> Option<SockLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || !f[0].ends_with(':') {
        return None;
    }
    let (local_ip, local_port) = parse_addr(f[1])?;
    let (remote_ip, remote_port) = parse_addr(f[2])?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let uid = f[7].parse().ok()?;
    let inode = f[9].parse().ok()?;
    Some(SockLine { local_ip, local_port, remote_ip, remote_port, state, uid, inode })
}

/// `socket:[12345]` (an fd's link target) -> 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The socket inodes of every process: inode -> pid (the first process
/// found holding it), from `/proc/*/fd`. Processes that vanish or cannot
/// be read are skipped.
pub fn socket_owners() -> std::collections::HashMap<u64, u32> {
    let mut map = std::collections::HashMap::new();
    for pid in crate::list_pids().unwrap_or_default() {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in rd.flatten() {
            if let Some(inode) = std::fs::read_link(e.path()).ok().and_then(|t| socket_inode(&t.to_string_lossy())) {
                map.entry(inode).or_insert(pid);
            }
        }
    }
    map
}

/// A TCP state's name (`ESTABLISHED`, `LISTEN`, ...); for UDP, `07` is an unconnected socket.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Parses a whole file, skipping the header and bad lines.
pub fn parse_table(text: &str) -> Vec<SockLine> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21987 1 0000000000000000 100 0 0 10 0
   1: 0F02000A:C350 0202000A:115C 01 00000000:00000000 02:000A7D9B 00000000  1000        0 345678 2 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C40 0100007F:0CEA 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";
        let t = parse_table(text);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].local_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((t[0].local_port, t[0].state, t[0].inode), (3306, state::LISTEN, 21987));
        assert_eq!(t[1].local_ip.to_string(), "10.0.2.15");
        assert_eq!(t[1].local_port, 50000);
        assert_eq!((t[1].remote_ip.to_string(), t[1].remote_port), ("10.0.2.2".to_string(), 4444));
        assert_eq!((t[1].state, t[1].uid, t[1].inode), (state::ESTABLISHED, 1000, 345678));
        assert_eq!((t[2].state, t[2].inode), (state::TIME_WAIT, 0));
    }

    #[test]
    fn parses_tcp6_lines_including_v4_mapped() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:A1B2 00000000000000000000000001000000:0016 01 00000000:00000000 00:00000000 00000000     0        0 5678 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:0016 0000000000000000FFFF00000F02000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 91011 1 0000000000000000 20 4 30 10 -1
   3: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   33        0 1213 1 0000000000000000 100 0 0 10 0
";
        let t = parse_table(text);
        assert_eq!(t.len(), 4);
        assert_eq!((t[0].local_ip.to_string(), t[0].local_port), ("::".to_string(), 22));
        assert_eq!(t[1].local_ip.to_string(), "::1");
        assert_eq!(t[2].local_ip.to_string(), "127.0.0.1", "v4-mapped shown as IPv4");
        assert_eq!(t[2].remote_ip.to_string(), "10.0.2.15");
        assert_eq!(t[3].local_ip.to_string(), "2001:db8::1");
        assert_eq!((t[3].local_port, t[3].uid), (443, 33));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_line("").is_none());
        assert!(parse_line("sl local rem st").is_none());
        assert!(parse_addr("0100007F").is_none());
        assert!(parse_addr("01007F:0016").is_none());
        assert!(parse_addr("ZZ00007F:0016").is_none());
    }

    #[test]
    fn reads_this_hosts_tables() {
        for f in ["/proc/net/tcp", "/proc/net/udp"] {
            let text = std::fs::read_to_string(f).unwrap();
            let n_lines = text.lines().count().saturating_sub(1);
            assert_eq!(parse_table(&text).len(), n_lines, "{f}: every line parses");
        }
    }
}
