//! The fleet's NATS endpoints as addresses: what isolation must keep open.
//!
//! A NATS URL (`nats://host:port`, `tls://host:port`, `host:port`, `host`;
//! the default port is 4222) is resolved to its socket addresses now. A
//! name is resolved with the system resolver, so the answer can change
//! later: the agent re-resolves before it isolates and refuses when an
//! address is not in its allowlist (see the agent's fleet executor).

use std::net::{SocketAddr, ToSocketAddrs};

/// NATS's default client port.
pub const DEFAULT_PORT: u16 = 4222;

/// `host:port` of a NATS URL (scheme, user info and path removed).
///
/// # Errors
/// A URL with no host or a bad port.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("NATS URL {url:?}: unclosed [ in the address"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("NATS URL {url:?} has no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("NATS URL {url:?}: port {p:?} is not a port"))?,
    };
    Ok((host, port))
}

/// Every socket address the URLs resolve to, deduplicated, in order.
///
/// # Errors
/// The first URL that does not parse or resolve (a partial list would let
/// isolation cut the host off from a server it was told to use).
pub fn resolve(urls: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for url in urls {
        let (host, port) = host_port(url)?;
        let addrs = (host.as_str(), port).to_socket_addrs().map_err(|e| format!("NATS URL {url:?}: cannot resolve {host}: {e}"))?;
        for a in addrs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        return Err("no NATS URL in this host's fleet identity".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_host_and_port() {
        assert_eq!(host_port("nats://10.0.0.5:4223").unwrap(), ("10.0.0.5".into(), 4223));
        assert_eq!(host_port("tls://user:pw@nats.example:7422/x").unwrap(), ("nats.example".into(), 7422));
        assert_eq!(host_port("nats.example").unwrap(), ("nats.example".into(), 4222));
        assert_eq!(host_port("nats://[fd00::5]:4222").unwrap(), ("fd00::5".into(), 4222));
        assert_eq!(host_port("[fd00::5]").unwrap(), ("fd00::5".into(), 4222));
        for bad in ["nats://", "nats://:4222", "nats://h:0", "nats://h:99999", "nats://h:x", "nats://[fd00::5:4222", ""] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_addresses_resolve_without_dns() {
        let r = resolve(&["nats://127.0.0.1:4222".into(), "127.0.0.1:4222".into(), "nats://[::1]:5".into()]).unwrap();
        assert_eq!(r, vec!["127.0.0.1:4222".parse().unwrap(), "[::1]:5".parse().unwrap()]);
        assert!(resolve(&[]).is_err());
        assert!(resolve(&["nats://no-such-host.invalid:4222".into()]).is_err());
    }
}
