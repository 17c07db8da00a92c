//! TCP connection hooks (bpf/net.bpf.c): every connection as it happens,
//! sub-millisecond ones included, with its owner, both ends, bytes at close
//! and network namespace.
//!
//! `tp_btf/inet_sock_set_state` sees every TCP state change. The owner is
//! remembered per socket where it is known: on CLOSE→SYN_SENT (connect(2),
//! the only transition in the connecting task's context), and for accepted
//! connections either from `fexit/inet_csk_accept` (the accepting task) when
//! the kernel allows fexit, or else from the task that called listen(2) on
//! the port ([`PidFrom::Listener`]; SYN_RECV→ESTABLISHED runs in softirq).
//! CLOSE→LISTEN (listen(2), in the listening task) is reported too.
//! On kernel 6.18 here fexit is refused (EPERM), so the listener's owner it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::maps::Array;
use aya::programs::{BtfTracePoint, FExit};
use aya::{Btf, Ebpf};

use crate::{take, EbpfError};

/// The compiled TCP object, empty when build.rs could not build it.
static OBJECT: &[u8] = include_bytes!(env!("EDR_NET_OBJECT"));
/// Why there is no TCP object (empty when there is one).
const MISSING: &str = env!("EDR_NET_MISSING");

/// Size of one record (`struct net_event` in bpf/net.bpf.c).
pub const NET_RECORD_LEN: usize = 112;

/// Whether the TCP object was built into this binary (`Err` says why not).
pub fn net_built() -> Result<(), &'static str> {
    if OBJECT.is_empty() {
        Err(MISSING)
    } else {
        Ok(())
    }
}

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetKind {
    /// Outbound: SYN_SENT→ESTABLISHED (the local task connected).
    Connect,
    /// Inbound: the connection was accepted (or, without fexit, completed
    /// its handshake on a listening socket).
    Accept,
    /// →CLOSE, with the bytes of the connection's life.
    Close,
    /// listen(2): the socket started listening (local end only; the pid is
    /// the listening task, [`PidFrom::Listener`]).
    Listen,
}

/// Address family of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AF_INET.
    V4,
    /// AF_INET6 (IPv4 peers of a dual-stack socket show as `::ffff:a.b.c.d`).
    V6,
}

/// Where the record's pid, tgid, uid and comm come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidFrom {
    /// Not known: the socket was opened before the hooks were loaded (or the
    /// owner map dropped it under pressure); pid, tgid and uid are 0.
    Unknown,
    /// The task that called connect(2).
    Connect,
    /// The task that called listen(2) on the local port (accept without fexit).
    Listener,
    /// The task that accepted the connection (`fexit/inet_csk_accept`).
    Accept,
}

/// One TCP connection event from the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEvent {
    /// Connect, accept or close.
    pub kind: NetKind,
    /// Thread id of the owner (see [`NetEvent::pid_from`]).
    pub pid: u32,
    /// Thread-group id (user-space process id) of the owner.
    pub tgid: u32,
    /// Real uid of the owner.
    pub uid: u32,
    /// `comm` of the owner.
    pub comm: String,
    /// How the owner was learnt.
    pub pid_from: PidFrom,
    /// Address family.
    pub family: Family,
    /// Local address.
    pub saddr: IpAddr,
    /// Local port.
    pub sport: u16,
    /// Remote address.
    pub daddr: IpAddr,
    /// Remote port.
    pub dport: u16,
    /// Inode of the socket's network namespace (what `stat -L -c %i /proc/<pid>/ns/net` prints).
    pub netns: u64,
    /// Close only: sequence space sent and acknowledged by the peer
    /// (`tcp_sock.bytes_acked`): the payload, plus 1 for the SYN of an
    /// outbound connection and 1 for our FIN once acknowledged (a client
    /// that sent 4 bytes and closed normally shows 6, its server's side 5).
    pub bytes_sent: u64,
    /// Close only: sequence space received (`tcp_sock.bytes_received`): the
    /// payload, plus 1 for the peer's FIN when it came.
    pub bytes_received: u64,
    /// CLOCK_BOOTTIME nanoseconds at the hook.
    pub boot_ns: u64,
    /// The TCP state the socket left (kernel numbering: 2 = SYN_SENT, so a
    /// CLOSE from it is a connection attempt that failed, e.g. refused).
    pub old_state: u8,
}

/// `old_state` of a connection attempt that never got established.
pub const TCP_SYN_SENT: u8 = 2;

impl NetEvent {
    /// Whether this is the CLOSE of an outbound attempt that never got
    /// established (refused, timed out, reset during the handshake).
    pub fn failed_connect(&self) -> bool {
        self.kind == NetKind::Close && self.old_state == TCP_SYN_SENT
    }
}

/// Why a TCP record could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetWireError {
    /// Shorter than [`NET_RECORD_LEN`].
    #[error("TCP record of {0} bytes, expected {NET_RECORD_LEN}")]
    Short(usize),
    /// Unknown `kind`.
    #[error("unknown TCP record kind {0}")]
    Kind(u32),
    /// Neither AF_INET (2) nor AF_INET6 (10).
    #[error("TCP record with address family {0}, expected 2 (AF_INET) or 10 (AF_INET6)")]
    Family(u16),
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}

fn addr(family: Family, b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(a)),
    }
}

/// Parses one ring-buffer record of the TCP hooks.
pub fn parse_net(b: &[u8]) -> Result<NetEvent, NetWireError> {
    use crate::wire::{cstr, u32_at, u64_at};
    if b.len() < NET_RECORD_LEN {
        return Err(NetWireError::Short(b.len()));
    }
    let kind = match u32_at(b, 0) {
        1 => NetKind::Connect,
        2 => NetKind::Accept,
        3 => NetKind::Close,
        4 => NetKind::Listen,
        k => return Err(NetWireError::Kind(k)),
    };
    let family = match u16_at(b, 48) {
        2 => Family::V4,
        10 => Family::V6,
        f => return Err(NetWireError::Family(f)),
    };
    let pid_from = match u16_at(b, 54) {
        1 => PidFrom::Connect,
        2 => PidFrom::Listener,
        3 => PidFrom::Accept,
        _ => PidFrom::Unknown,
    };
    Ok(NetEvent {
        kind,
        pid: u32_at(b, 4),
        tgid: u32_at(b, 8),
        uid: u32_at(b, 12),
        boot_ns: u64_at(b, 16),
        netns: u64_at(b, 24),
        bytes_sent: u64_at(b, 32),
        bytes_received: u64_at(b, 40),
        family,
        sport: u16_at(b, 50),
        dport: u16_at(b, 52),
        pid_from,
        saddr: addr(family, &b[56..72]),
        daddr: addr(family, &b[72..88]),
        comm: cstr(&b[88..104]),
        old_state: u32_at(b, 104).min(u8::MAX.into()) as u8,
    })
}

/// The loaded and attached TCP hooks. Dropping it detaches them.
pub struct NetHooks {
    ring: crate::ring::Ring<NetEvent, NetParser>,
    fexit: Result<(), String>,
    _ebpf: Ebpf,
}

impl NetHooks {
    /// Loads the TCP object and attaches `tp_btf/inet_sock_set_state`, and
    /// `fexit/inet_csk_accept` if the kernel takes it (see [`NetHooks::fexit_accept`]).
    pub fn load() -> Result<Self, EbpfError> {
        net_built().map_err(EbpfError::NotBuilt)?;
        let btf = Btf::from_sys_fs()?;
        let mut ebpf = Ebpf::load(OBJECT)?;
        {
            let failed = |source| EbpfError::Program { hook: "inet_sock_set_state", source };
            let prog = ebpf.program_mut("edr_tcp_state").ok_or(EbpfError::NotBuilt("TCP BPF object lacks edr_tcp_state"))?;
            let prog: &mut BtfTracePoint = prog.try_into().map_err(failed)?;
            crate::load_retrying(|| prog.load("inet_sock_set_state", &btf)).map_err(failed)?;
            prog.attach().map_err(failed)?;
        }
        let fexit = attach_fexit_accept(&mut ebpf, &btf);
        match &fexit {
            Ok(()) => {
                let mut cfg: Array<_, u64> = take(&mut ebpf, "NET_CONFIG", Array::try_from)?;
                cfg.set(0, 1, 0).map_err(|source| EbpfError::Map { name: "NET_CONFIG", source })?;
            }
            Err(why) => tracing::info!(%why, "fexit/inet_csk_accept unavailable: accepted connections carry the listener's pid"),
        }
        let ring = crate::ring::Ring::take(&mut ebpf, "NET_EVENTS", "NET_LOST", parse_net as NetParser, "TCP")?;
        drop(btf);
        crate::release_freed_memory();
        Ok(Self { ring, fexit, _ebpf: ebpf })
    }

    /// `Ok` when `fexit/inet_csk_accept` is attached (ACCEPT carries the
    /// accepting task); otherwise why not (ACCEPT carries the listener's owner).
    pub fn fexit_accept(&self) -> Result<(), &str> {
        self.fexit.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The attach points in use, for a mode string.
    pub fn describe(&self) -> &'static str {
        match self.fexit {
            Ok(()) => "inet_sock_set_state + fexit/inet_csk_accept",
            Err(_) => "inet_sock_set_state, accept pid from listener",
        }
    }

    /// Hands every record now in the ring buffer to `f`, waiting up to
    /// `timeout` for the first. Returns how many were handed over.
    pub fn poll(&mut self, timeout: Duration, f: impl FnMut(NetEvent)) -> Result<usize, EbpfError> {
        self.ring.poll(timeout, f)
    }

    /// Records the ring buffer could not take, per CPU (index = CPU).
    pub fn lost_per_cpu(&self) -> Vec<u64> {
        self.ring.lost_per_cpu()
    }

    /// Records the ring buffer could not take, all CPUs.
    pub fn lost(&self) -> u64 {
        self.lost_per_cpu().iter().sum()
    }

    /// Records that could not be parsed (never expected; counted, not silent).
    pub fn unparsable(&self) -> u64 {
        self.ring.unparsable()
    }
}

/// The TCP records' parser.
type NetParser = fn(&[u8]) -> Result<NetEvent, NetWireError>;

/// Loads and attaches `fexit/inet_csk_accept`; `Err` says why it cannot be.
fn attach_fexit_accept(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let prog = ebpf.program_mut("edr_tcp_accept").ok_or("TCP BPF object lacks edr_tcp_accept")?;
    let prog: &mut FExit = prog.try_into().map_err(|e| format!("fexit/inet_csk_accept: {e}"))?;
    crate::load_retrying(|| prog.load("inet_csk_accept", btf)).map_err(|e| format!("fexit/inet_csk_accept load: {e}"))?;
    prog.attach().map_err(|e| format!("fexit/inet_csk_accept attach: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, family: u16) -> Vec<u8> {
        let mut b = vec![0u8; NET_RECORD_LEN];
        b[0..4].copy_from_slice(&kind.to_ne_bytes());
        b[4..8].copy_from_slice(&42u32.to_ne_bytes());
        b[48..50].copy_from_slice(&family.to_ne_bytes());
        b[50..52].copy_from_slice(&8080u16.to_ne_bytes());
        b[52..54].copy_from_slice(&443u16.to_ne_bytes());
        b[54..56].copy_from_slice(&1u16.to_ne_bytes());
        b
    }

    #[test]
    fn hostile_records_are_refused_not_panicking() {
        assert_eq!(parse_net(&[]), Err(NetWireError::Short(0)));
        assert_eq!(parse_net(&[1u8; NET_RECORD_LEN - 1]), Err(NetWireError::Short(NET_RECORD_LEN - 1)));
        assert_eq!(parse_net(&record(0, 2)), Err(NetWireError::Kind(0)));
        assert_eq!(parse_net(&record(5, 2)), Err(NetWireError::Kind(5)));
        assert_eq!(parse_net(&record(1, 1)), Err(NetWireError::Family(1)));
        assert_eq!(parse_net(&record(3, 0xffff)), Err(NetWireError::Family(0xffff)));
        // No NUL in comm, an unknown pid source, garbage everywhere else.
        let mut b = record(3, 10);
        b[56..].fill(0xff);
        b[54] = 0xee;
        let e = parse_net(&b).unwrap();
        assert_eq!(e.pid_from, PidFrom::Unknown);
        assert_eq!(e.old_state, u8::MAX, "an out-of-range state is clamped");
        assert_eq!(e.comm.chars().count(), 16);
        assert_eq!(e.saddr, IpAddr::V6(Ipv6Addr::from([0xff; 16])));
    }

    #[test]
    fn addresses_and_ports_decode_per_family() {
        let mut b = record(1, 2);
        b[56..60].copy_from_slice(&[127, 0, 0, 1]);
        b[72..76].copy_from_slice(&[10, 1, 2, 3]);
        b[88..92].copy_from_slice(b"curl");
        let e = parse_net(&b).unwrap();
        assert_eq!((e.kind, e.family, e.pid, e.pid_from), (NetKind::Connect, Family::V4, 42, PidFrom::Connect));
        assert_eq!((e.saddr, e.sport, e.daddr, e.dport), ("127.0.0.1".parse().unwrap(), 8080, "10.1.2.3".parse().unwrap(), 443));
        assert_eq!(e.comm, "curl");
        let mut b = record(2, 10);
        b[56..72].copy_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        b[72..88].copy_from_slice(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets());
        let e = parse_net(&b).unwrap();
        assert_eq!((e.kind, e.saddr, e.daddr), (NetKind::Accept, "::1".parse().unwrap(), "fe80::1".parse().unwrap()));
    }
}
