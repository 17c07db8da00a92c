//! Parsing sshd lines of the authentication log.
//!
//! Accepts the traditional syslog prefix (`Mar  3 12:00:01 host sshd[1234]: `)
//! and the RFC 3339 one (`2024-03-03T12:00:01.123456+00:00 host sshd[1234]: `),
//! program names `sshd`, `sshd-session` and `sshd-auth` (OpenSSH >= 9.8), and
//! rsyslog's `message repeated N times: [ ... ]` (N events).

use edr_event::LoginEvent;

/// The program, pid and message of a syslog line.
fn split_prefix(line: &str) -> Option<(&str, Option<u32>, &str)> {
    // The tag is the first token ending in ':' that is not part of the time
    // (a time token has digits around its colons and never ends in ':').
    let mut rest = line;
    loop {
        let start = rest.len() - rest.trim_start().len();
        rest = &rest[start..];
        let end = rest.find(' ').unwrap_or(rest.len());
        let tok = &rest[..end];
        if tok.is_empty() {
            return None;
        }
        if let Some(tag) = tok.strip_suffix(':') {
            let msg = rest[end..].trim_start();
            return match tag.split_once('[') {
                Some((prog, pid)) => Some((prog, pid.strip_suffix(']').and_then(|p| p.parse().ok()), msg)),
                None => Some((tag, None, msg)),
            };
        }
        rest = &rest[end..];
    }
}

/// The login events of one line (none for lines that are not logins).
pub(crate) fn parse_line(line: &str) -> Vec<LoginEvent> {
    let Some((prog, pid, msg)) = split_prefix(line.trim_end()) else {
        return Vec::new();
    };
    if !prog.starts_with("sshd") {
        return Vec::new();
    }
    let (times, msg) = match msg.strip_prefix("message repeated ") {
        Some(r) => {
            let Some((n, inner)) = r.split_once(" times: [") else {
                return Vec::new();
            };
            let Ok(n) = n.trim().parse::<usize>() else {
                return Vec::new();
            };
            (n.min(1000), inner.trim().trim_end_matches(']').trim())
        }
        None => (1, msg),
    };
    match parse_message(msg) {
        Some(mut ev) => {
            ev.service = "sshd".into();
            ev.pid = pid;
            vec![ev; times]
        }
        None => Vec::new(),
    }
}

/// `user from ip port n ...`: splits at the last ` from ` so user names with
/// spaces survive.
fn user_and_ip(s: &str) -> Option<(String, Option<String>)> {
    let i = s.rfind(" from ")?;
    let user = s[..i].to_string();
    let ip = s[i + " from ".len()..].split_whitespace().next().and_then(normalize_ip);
    Some((user, ip))
}

/// An address as ECS `source.ip` accepts it: IPv6 zone dropped; host names
/// (sshd with `UseDNS yes`) are not addresses and give `None`.
fn normalize_ip(s: &str) -> Option<String> {
    let s = s.split('%').next()?;
    s.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
}

fn parse_message(msg: &str) -> Option<LoginEvent> {
    if let Some(r) = msg.strip_prefix("Accepted ") {
        let (method, r) = r.split_once(" for ")?;
        let (user, ip) = user_and_ip(r)?;
        return Some(LoginEvent { user, source_ip: ip, method: method.into(), success: true, ..Default::default() });
    }
    if let Some(r) = msg.strip_prefix("Failed ") {
        let (method, r) = r.split_once(" for ")?;
        let r = r.strip_prefix("invalid user ").unwrap_or(r);
        let (user, ip) = user_and_ip(r)?;
        return Some(LoginEvent { user, source_ip: ip, method: method.into(), success: false, ..Default::default() });
    }
    if let Some(r) = msg.strip_prefix("Invalid user ") {
        // "Invalid user  from 1.2.3.4 port 5" has an empty user.
        let (user, ip) =
            if let Some(r2) = r.strip_prefix("from ") { (String::new(), r2.split_whitespace().next().and_then(normalize_ip)) } else { user_and_ip(r)? };
        return Some(LoginEvent { user, source_ip: ip, method: "invalid-user".into(), success: false, ..Default::default() });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> LoginEvent {
        let v = parse_line(line);
        assert_eq!(v.len(), 1, "{line}");
        v.into_iter().next().unwrap()
    }

    #[test]
    fn accepted_logins() {
        let e = one("Mar  3 12:00:01 web1 sshd[1234]: Accepted publickey for alice from 203.0.113.7 port 52344 ssh2: ED25519 SHA256:AbCdEf");
        assert_eq!(
            e,
            LoginEvent {
                user: "alice".into(),
                source_ip: Some("203.0.113.7".into()),
                service: "sshd".into(),
                method: "publickey".into(),
                success: true,
                pid: Some(1234)
            }
        );
        let e = one("2024-03-03T12:00:01.123456+00:00 web1 sshd-session[99]: Accepted keyboard-interactive/pam for bob from 2001:db8::42 port 60022 ssh2");
        assert_eq!((e.user.as_str(), e.source_ip.as_deref(), e.method.as_str()), ("bob", Some("2001:db8::42"), "keyboard-interactive/pam"));
        assert_eq!(e.pid, Some(99));
        assert!(e.success);
    }

    #[test]
    fn failed_and_invalid_users() {
        let e = one("Mar 13 04:05:06 web1 sshd[2001]: Failed password for root from 198.51.100.9 port 41000 ssh2");
        assert_eq!((e.user.as_str(), e.method.as_str(), e.success), ("root", "password", false));
        let e = one("Mar 13 04:05:07 web1 sshd[2002]: Failed password for invalid user admin from 198.51.100.9 port 41002 ssh2");
        assert_eq!((e.user.as_str(), e.source_ip.as_deref()), ("admin", Some("198.51.100.9")));
        let e = one("Mar 13 04:05:07 web1 sshd[2002]: Failed none for invalid user john smith from fe80::1%eth0 port 41002 ssh2");
        assert_eq!((e.user.as_str(), e.method.as_str(), e.source_ip.as_deref()), ("john smith", "none", Some("fe80::1")));
        let e = one("Mar 13 04:05:07 web1 sshd[2002]: Accepted password for carol from gw.example.net port 41002 ssh2");
        assert_eq!((e.user.as_str(), e.source_ip), ("carol", None), "a host name is not an ip");
        let e = one("Mar 13 04:05:05 web1 sshd[2002]: Invalid user admin from 198.51.100.9 port 41002");
        assert_eq!((e.user.as_str(), e.method.as_str(), e.success), ("admin", "invalid-user", false));
        let e = one("Mar 13 04:05:05 web1 sshd[2003]: Invalid user  from 198.51.100.10 port 41003");
        assert_eq!((e.user.as_str(), e.source_ip.as_deref()), ("", Some("198.51.100.10")));
    }

    #[test]
    fn repeated_messages_and_noise() {
        let v = parse_line("Mar 13 04:05:08 web1 sshd[2001]: message repeated 3 times: [ Failed password for root from 198.51.100.9 port 41000 ssh2]");
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|e| e.user == "root" && !e.success && e.pid == Some(2001)));
        for noise in [
            "Mar 13 04:05:09 web1 sshd[2001]: Connection closed by authenticating user root 198.51.100.9 port 41000 [preauth]",
            "Mar 13 04:05:09 web1 sshd[2001]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
            "Mar 13 04:05:09 web1 sudo[77]: Accepted password for mallory from 1.2.3.4 port 1 ssh2",
            "Mar 13 04:05:09 web1 CRON[1]: pam_unix(cron:session): session closed for user root",
            "",
            "garbage",
        ] {
            assert!(parse_line(noise).is_empty(), "{noise}");
        }
    }
}
