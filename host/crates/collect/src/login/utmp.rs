//! `struct utmp` records (glibc, 64-bit Linux: 384 bytes) of wtmp and btmp.
//!
//! Layout: ut_type i16 @0, ut_pid i32 @4, ut_line[32] @8, ut_id[4] @40,
//! ut_user[32] @44, ut_host[256] @76, ut_exit @332, ut_session i32 @336,
//! ut_tv (2 x i32) @340, ut_addr_v6 (4 x i32) @348, reserved[20] @364.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of one record.
pub(crate) const RECORD: usize = 384;
/// `ut_type` of a login session.
pub(crate) const USER_PROCESS: i16 = 7;
/// `ut_type` used in btmp for failed logins by some writers (`LOGIN_PROCESS`).
pub(crate) const LOGIN_PROCESS: i16 = 6;

/// The fields of a record the collector uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Utmp {
    pub kind: i16,
    pub pid: u32,
    pub line: String,
    pub user: String,
    pub host: String,
    /// From `ut_addr_v6`, else from `ut_host` when it is an address.
    pub addr: Option<IpAddr>,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses one record.
pub(crate) fn parse(r: &[u8]) -> Option<Utmp> {
    if r.len() < RECORD {
        return None;
    }
    let kind = i16::from_ne_bytes([r[0], r[1]]);
    let pid = i32::from_ne_bytes(r[4..8].try_into().ok()?).max(0) as u32;
    let line = cstr(&r[8..40]);
    let user = cstr(&r[44..76]);
    let host = cstr(&r[76..332]);
    let a = &r[348..364];
    let addr = if a.iter().all(|b| *b == 0) {
        host.parse::<IpAddr>().ok()
    } else if a[4..].iter().all(|b| *b == 0) {
        Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
    } else {
        let b: [u8; 16] = a.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    };
    Some(Utmp { kind, pid, line, user, host, addr })
}

/// Builds a record (for tests, and documentation of the layout).
#[cfg(test)]
pub(crate) fn build(kind: i16, pid: i32, line: &str, user: &str, host: &str, addr: Option<IpAddr>) -> Vec<u8> {
    let mut r = vec![0u8; RECORD];
    r[0..2].copy_from_slice(&kind.to_ne_bytes());
    r[4..8].copy_from_slice(&pid.to_ne_bytes());
    r[8..8 + line.len()].copy_from_slice(line.as_bytes());
    r[44..44 + user.len()].copy_from_slice(user.as_bytes());
    r[76..76 + host.len()].copy_from_slice(host.as_bytes());
    match addr {
        Some(IpAddr::V4(v4)) => r[348..352].copy_from_slice(&v4.octets()),
        Some(IpAddr::V6(v6)) => r[348..364].copy_from_slice(&v6.octets()),
        None => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r = build(USER_PROCESS, 4321, "pts/0", "alice", "203.0.113.7", Some("203.0.113.7".parse().unwrap()));
        let u = parse(&r).unwrap();
        assert_eq!(u.kind, USER_PROCESS);
        assert_eq!((u.pid, u.line.as_str(), u.user.as_str()), (4321, "pts/0", "alice"));
        assert_eq!(u.addr, Some("203.0.113.7".parse().unwrap()));
        let r = build(USER_PROCESS, 1, "pts/1", "bob", "host.example", Some("2001:db8::7".parse().unwrap()));
        assert_eq!(parse(&r).unwrap().addr, Some("2001:db8::7".parse().unwrap()));
        // No address bytes: taken from the host when it is one.
        let r = build(LOGIN_PROCESS, 1, "ssh:notty", "root", "198.51.100.3", None);
        assert_eq!(parse(&r).unwrap().addr, Some("198.51.100.3".parse().unwrap()));
        let r = build(USER_PROCESS, 1, "tty1", "root", "", None);
        assert_eq!(parse(&r).unwrap().addr, None);
        assert!(parse(&r[..100]).is_none());
    }
}
