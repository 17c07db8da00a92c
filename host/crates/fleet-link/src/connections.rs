//! The `connections` listing: every TCP and UDP socket of the host's
//! network namespace (`/proc/net/{tcp,tcp6,udp,udp6}`) with its state,
//! both addresses, its owner's uid and, when a process holds it, the pid and
//! executable (from `/proc/*/fd`). At most [`MAX_SOCKETS`]; `truncated` says
//! when more were there.

use edr_procfs::net::{self, SockLine};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Sockets a listing returns at most.
pub const MAX_SOCKETS: usize = 10_000;

const TABLES: [(&str, &str); 4] = [("/proc/net/tcp", "tcp"), ("/proc/net/tcp6", "tcp"), ("/proc/net/udp", "udp"), ("/proc/net/udp6", "udp")];

/// The listing.
///
/// # Errors
/// When no socket table can be read at all.
pub fn list() -> Result<Value, String> {
    let mut sockets: Vec<(&str, SockLine)> = Vec::new();
    let mut read_any = false;
    for (path, proto) in TABLES {
        if let Ok(text) = std::fs::read_to_string(path) {
            read_any = true;
            sockets.extend(net::parse_table(&text).into_iter().map(|l| (proto, l)));
        }
    }
    if !read_any {
        return Err("cannot read /proc/net/tcp or /proc/net/udp".into());
    }
    let truncated = sockets.len() > MAX_SOCKETS;
    sockets.truncate(MAX_SOCKETS);
    let owners = net::socket_owners();
    let mut exes: HashMap<u32, String> = HashMap::new();
    let rows: Vec<Value> = sockets
        .iter()
        .map(|(proto, s)| {
            let pid = (s.inode != 0).then(|| owners.get(&s.inode).copied()).flatten();
            let exe = pid.map(|p| exes.entry(p).or_insert_with(|| edr_procfs::read_exe(p).unwrap_or_default()).clone());
            json!({
                "proto": proto,
                "state": state_name(proto, s.state),
                "local": format!("{}:{}", bracket(&s.local_ip), s.local_port),
                "remote": format!("{}:{}", bracket(&s.remote_ip), s.remote_port),
                "uid": s.uid,
                "inode": s.inode,
                "pid": pid,
                "exe": exe,
            })
        })
        .collect();
    Ok(json!({"connections": rows, "truncated": truncated}))
}

fn state_name(proto: &str, state: u8) -> &'static str {
    match (proto, state) {
        ("udp", net::state::CLOSE) => "UNCONN",
        ("udp", net::state::ESTABLISHED) => "CONNECTED",
        (_, s) => net::tcp_state_name(s),
    }
}

fn bracket(ip: &std::net::IpAddr) -> String {
    if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_a_listener_of_this_process_with_its_pid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let v = super::list().unwrap();
        let me = std::process::id();
        let found = v["connections"].as_array().unwrap().iter().find(|c| c["local"] == format!("127.0.0.1:{port}").as_str()).cloned();
        let c = found.unwrap_or_else(|| panic!("port {port} listed"));
        assert_eq!((c["proto"].as_str(), c["state"].as_str(), c["pid"].as_u64()), (Some("tcp"), Some("LISTEN"), Some(u64::from(me))), "{c}");
        assert!(c["exe"].as_str().is_some_and(|e| !e.is_empty()), "{c}");
    }
}
