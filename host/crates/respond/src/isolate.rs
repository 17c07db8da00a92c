//! Network isolation with nftables.
//!
//! Isolation is one dedicated table, `inet edr_isolation`, with three base
//! chains (input, output, forward; priority filter - 10; policy drop) that
//! accept only:
//!
//! * loopback;
//! * the management endpoints, both directions: packets to `ip[/prefix]`
//!   (and, when the endpoint has a port, to that TCP/UDP port) and packets
//!   from it (from that port); plus `ct state established,related` to and
//!   from the endpoint's addresses, so connections that exist when
//!   isolation starts (an operator's SSH session from the console) survive;
//! * optionally DNS (TCP/UDP 53) to the configured resolvers, DHCP (v4 and
//!   v6) so the lease can be renewed, and IPv6 neighbour discovery (without
//!   it IPv6 management endpoints are unreachable). IPv4 ARP is not filtered
//!   by `inet` tables.
//!
//! In nftables a packet must be accepted by every base chain on its hook, so
//! the drop policy holds whatever other tables (firewalld, Docker) accept.
//!
//! The table is written by the `nft` binary (Debian package `nftables`) from
//! a generated script on stdin (`nft -f -`). The script starts with
//! `table inet edr_isolation` + `delete table inet edr_isolation`, so it
//! replaces any earlier isolation table in one atomic transaction: isolating
//! twice is harmless, and re-isolating with other endpoints swaps the rules
//! with no window. Release deletes exactly that table the same way. The
//! state is read back from the kernel (`nft -j list table`), not remembered.
//!
//! Why the `nft` binary and not a netlink crate: the nftables netlink
//! protocol is large and only libnftables (C, what `nft` uses) tracks it
//! closely; the Rust options either wrap that same C library (`nftnl`, which
//! needs libnftnl/libmnl headers to build) or are thinly maintained pure-Rust
//! encoders (`rustables`). `nft` is packaged by every distribution, runs the
//! whole script as one kernel transaction, and the script is readable in the
//! audit record.
//!
//! **The guard.** While isolated, a thread (`edr-iso-guard`) compares the
//! table in the kernel with what the agent applied (the `nft -j` listing
//! without handles) every [`GUARD_INTERVAL`], and at once when nftables
//! reports a ruleset change (a `NETLINK_NETFILTER` socket subscribed to
//! `NFNLGRP_NFTABLES`, thread `edr-iso-netlink`). When the table is gone or
//! differs (`nft delete table inet edr_isolation`, a rule added or removed,
//! a policy changed) it re-applies the isolation, logs a warning, counts it
//! in [`IsolationState::tamper_count`] / [`IsolationState::last_tamper`] and
//! calls the tamper hook ([`Isolator::on_tamper`]; the agent raises the alert
//! `edr.tamper.isolation-removed`). Release stops the guard first, under
//! the same lock, so nothing is re-applied after release.
//!
//! `ResponseConfig::isolation_netns` (a path such as `/run/netns/NAME`)
//! makes `nft` run in that network namespace (the child calls `setns` before
//! exec); without it the agent's own namespace (the host's) is isolated.

use crate::{Detail, RespondError};
use edr_event::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The nftables family and name of the isolation table.
pub const TABLE: &str = "inet edr_isolation";
const TABLE_NAME: &str = "edr_isolation";

/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(20);

/// A management endpoint: an address or network and an optional port.
///
/// Written `10.0.0.5`, `10.0.0.0/24`, `10.0.0.5:8443`, `10.0.0.0/24:8443`,
/// `fd00::5`, `fd00::/64`, `[fd00::5]:8443` or `[fd00::/64]:8443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address (host bits beyond `prefix` are cleared).
    pub addr: IpAddr,
    /// Prefix length: 32 (IPv4) or 128 (IPv6) for one host.
    pub prefix: u8,
    /// TCP/UDP port of the endpoint, or any port.
    pub port: Option<u16>,
}

impl Endpoint {
    /// A checked endpoint; host bits beyond the prefix are cleared.
    pub fn new(addr: IpAddr, prefix: u8, port: Option<u16>) -> Result<Endpoint, RespondError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(RespondError::Config(format!("prefix /{prefix} is too long for {addr}")));
        }
        if port == Some(0) {
            return Err(RespondError::Config(format!("port 0 is not a port ({addr})")));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Endpoint { addr, prefix, port })
    }

    /// One host, any port.
    pub fn host(addr: IpAddr) -> Endpoint {
        Endpoint { addr, prefix: if addr.is_ipv4() { 32 } else { 128 }, port: None }
    }

    /// One host and port.
    pub fn host_port(addr: IpAddr, port: u16) -> Endpoint {
        Endpoint { port: Some(port), ..Endpoint::host(addr) }
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    fn family(&self) -> &'static str {
        if self.addr.is_ipv4() {
            "ip"
        } else {
            "ip6"
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V4(_), Some(p)) => write!(f, "{}:{p}", self.cidr()),
            (IpAddr::V6(_), Some(p)) => write!(f, "[{}]:{p}", self.cidr()),
            (_, None) => f.write_str(&self.cidr()),
        }
    }
}

impl FromStr for Endpoint {
    type Err = RespondError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            RespondError::Config(format!("management endpoint `{s}`: {why}; expected ip, ip/prefix, ip:port or ip/prefix:port (IPv6 in brackets with a port)"))
        };
        let s = s.trim();
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected `:port` after `]`"))?),
            };
            (inside, port)
        } else if s.matches(':').count() == 1 {
            let (n, p) = s.split_once(':').ok_or_else(|| bad("bad port"))?;
            (n, Some(p))
        } else {
            (s, None)
        };
        let port = port.map(|p| p.parse::<u16>().map_err(|_| bad("bad port"))).transpose()?;
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad("bad prefix length"))?)),
            None => (net, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Endpoint::new(addr, prefix, port).map_err(|e| bad(&e.to_string()))
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether the host is isolated, as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationState {
    /// The isolation table exists.
    pub isolated: bool,
    /// The table has its three chains with a drop policy (false when
    /// someone edited it by hand, or when not isolated).
    pub intact: bool,
    /// When isolation started, ns since the epoch.
    pub since: Option<Timestamp>,
    /// The management endpoints the rules let through.
    pub management: Vec<Endpoint>,
    /// The DNS resolvers the rules let through.
    pub dns: Vec<IpAddr>,
    /// Why the state could not be read (nft missing, ...), if so.
    pub error: Option<String>,
    /// The agent watches the table and re-applies it when it is removed or altered.
    #[serde(default)]
    pub guarded: bool,
    /// Times the table was found removed or altered and re-applied (since the agent started).
    #[serde(default)]
    pub tamper_count: u64,
    /// When that last happened, ns since the epoch.
    #[serde(default)]
    pub last_tamper: Option<Timestamp>,
    /// What was found then (e.g. "the table inet edr_isolation was deleted").
    #[serde(default)]
    pub last_tamper_what: Option<String>,
}

/// Isolation found removed or altered behind the agent's back (see the guard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TamperEvent {
    /// When it was found, ns since the epoch.
    pub time: Timestamp,
    /// What was found.
    pub what: String,
    /// The isolation was re-applied and reads back as applied.
    pub reapplied: bool,
    /// Why re-applying failed, if it did.
    pub error: Option<String>,
    /// Tamper events so far, this one included.
    pub count: u64,
    /// The management endpoints of the re-applied isolation.
    pub management: Vec<Endpoint>,
}

/// Called on each [`TamperEvent`].
pub type TamperHook = Arc<dyn Fn(&TamperEvent) + Send + Sync>;

/// How often the guard checks the table when nftables reports no change.
pub const GUARD_INTERVAL: Duration = Duration::from_secs(2);

/// What to let through while isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IsolationSpec {
    pub management: Vec<Endpoint>,
    pub dns: Vec<IpAddr>,
    pub allow_dhcp: bool,
}

fn addr_family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The nft script that (re)creates the isolation table.
pub(crate) fn script(spec: &IsolationSpec, since: Timestamp) -> String {
    let mut input = vec![format!("iif \"lo\" accept comment \"edr:loopback since={since}\"")];
    let mut output = vec!["oif \"lo\" accept comment \"edr:loopback\"".to_string()];
    for ep in &spec.management {
        let (fam, net) = (ep.family(), ep.cidr());
        input.push(format!("{fam} saddr {net} ct state established,related accept comment \"edr:mgmt-established {ep}\""));
        output.push(format!("{fam} daddr {net} ct state established,related accept comment \"edr:mgmt-established {ep}\""));
        match ep.port {
            Some(p) => {
                output.push(format!("{fam} daddr {net} meta l4proto {{ tcp, udp }} th dport {p} accept comment \"edr:mgmt {ep}\""));
                input.push(format!("{fam} saddr {net} meta l4proto {{ tcp, udp }} th sport {p} accept comment \"edr:mgmt-in {ep}\""));
            }
            None => {
                output.push(format!("{fam} daddr {net} accept comment \"edr:mgmt {ep}\""));
                input.push(format!("{fam} saddr {net} accept comment \"edr:mgmt-in {ep}\""));
            }
        }
    }
    for r in &spec.dns {
        let fam = addr_family(r);
        output.push(format!("{fam} daddr {r} meta l4proto {{ tcp, udp }} th dport 53 accept comment \"edr:dns {r}\""));
        input.push(format!("{fam} saddr {r} meta l4proto {{ tcp, udp }} th sport 53 accept comment \"edr:dns-in {r}\""));
    }
    if spec.allow_dhcp {
        output.push("udp sport 68 udp dport 67 accept comment \"edr:dhcp\"".into());
        input.push("udp sport 67 udp dport 68 accept comment \"edr:dhcp\"".into());
        output.push("udp sport 546 udp dport 547 accept comment \"edr:dhcp6\"".into());
        input.push("udp sport 547 udp dport 546 accept comment \"edr:dhcp6\"".into());
    }
    let ndp = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept comment \"edr:ndp\"";
    input.push(ndp.into());
    output.push(ndp.into());

    let mut s = String::new();
    s.push_str(&format!("table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n"));
    for (name, rules) in [("input", &input), ("output", &output)] {
        s.push_str(&format!("\tchain {name} {{\n\t\ttype filter hook {name} priority filter - 10; policy drop;\n"));
        for r in rules.iter() {
            s.push_str(&format!("\t\t{r}\n"));
        }
        s.push_str("\t}\n");
    }
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy drop;\n\t}\n}\n");
    s
}

/// Reads the state out of `nft -j list table inet edr_isolation`.
pub(crate) fn parse_state(json: &str) -> Result<IsolationState, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("cannot parse nft JSON: {e}"))?;
    let items = v.get("nftables").and_then(|x| x.as_array()).ok_or("nft JSON has no `nftables` array")?;
    let mut st = IsolationState::default();
    let mut drop_chains = Vec::new();
    for item in items {
        if let Some(t) = item.get("table") {
            if t.get("name").and_then(|n| n.as_str()) == Some(TABLE_NAME) {
                st.isolated = true;
            }
        }
        if let Some(c) = item.get("chain") {
            if c.get("policy").and_then(|p| p.as_str()) == Some("drop") {
                if let Some(h) = c.get("hook").and_then(|h| h.as_str()) {
                    drop_chains.push(h.to_string());
                }
            }
        }
        let Some(r) = item.get("rule") else { continue };
        let Some(comment) = r.get("comment").and_then(|c| c.as_str()) else { continue };
        if let Some(rest) = comment.strip_prefix("edr:loopback since=") {
            st.since = rest.trim().parse().ok();
        } else if let Some(ep) = comment.strip_prefix("edr:mgmt ") {
            if let Ok(ep) = ep.parse::<Endpoint>() {
                if !st.management.contains(&ep) {
                    st.management.push(ep);
                }
            }
        } else if let Some(ip) = comment.strip_prefix("edr:dns ") {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                if !st.dns.contains(&ip) {
                    st.dns.push(ip);
                }
            }
        }
    }
    st.intact = st.isolated && ["input", "output", "forward"].iter().all(|h| drop_chains.iter().any(|c| c == h));
    Ok(st)
}

/// The `nft` binary.
fn nft_path() -> Result<PathBuf, RespondError> {
    for p in ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join("nft")).find(|p| p.is_file())).ok_or(RespondError::NftMissing)
}

/// Nameservers of `/etc/resolv.conf` that are not loopback (loopback is
/// allowed anyway).
pub(crate) fn system_resolvers() -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") else { return Vec::new() };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .filter(|a| !a.is_loopback())
        .collect()
}

/// What the agent applied, as the guard compares it.
#[derive(Clone)]
struct Applied {
    spec: IsolationSpec,
    since: Timestamp,
    /// The table's `nft -j` listing without handles, read back after applying.
    fingerprint: String,
}

/// State shared by the isolator and its guard threads.
#[derive(Default)]
struct Guard {
    /// What to keep in place; None when not isolated (the guard threads exit).
    applied: Mutex<Option<Applied>>,
    /// Set to wake the guard (a ruleset change or release).
    wake: Mutex<bool>,
    woken: Condvar,
    running: AtomicBool,
    stats: Mutex<(u64, Option<Timestamp>, Option<String>)>,
    hook: Mutex<Option<TamperHook>>,
}

impl Guard {
    fn notify(&self) {
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.woken.notify_all();
    }

    /// Waits for a wake-up or `t`.
    fn wait(&self, t: Duration) {
        let g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self.woken.wait_timeout_while(g, t, |w| !*w).unwrap_or_else(|p| p.into_inner());
        *g = false;
    }

    fn active(&self) -> bool {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// Runs `nft`, in the configured network namespace.
#[derive(Clone)]
pub(crate) struct Isolator {
    netns: Option<PathBuf>,
    lock: Arc<Mutex<()>>,
    guard: Arc<Guard>,
}

impl Isolator {
    /// An isolator for `netns` (`None`: the agent's own network namespace).
    pub(crate) fn new(netns: Option<PathBuf>) -> Isolator {
        Isolator { netns, lock: Arc::new(Mutex::new(())), guard: Arc::new(Guard::default()) }
    }

    /// Registers the function called when isolation is found removed or altered.
    pub(crate) fn on_tamper(&self, hook: TamperHook) {
        *self.guard.hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Runs nft with `args`, feeding `stdin`; returns stdout.
    fn nft(&self, what: &str, args: &[&str], stdin: Option<&str>) -> Result<String, RespondError> {
        let nft = nft_path()?;
        let mut cmd = Command::new(&nft);
        cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let ns_file = match &self.netns {
            Some(p) => Some(std::fs::File::open(p).map_err(|e| RespondError::io("cannot open the network namespace", p, e))?),
            None => None,
        };
        if let Some(f) = &ns_file {
            let fd = f.as_raw_fd();
            // SAFETY: setns is async-signal-safe; `fd` stays open in the child
            // until exec (O_CLOEXEC closes it only then).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| RespondError::Sys { what: format!("cannot run {}", nft.display()), source: e })?;
        drop(ns_file);
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(|e| RespondError::Sys { what: "cannot write the nft script".into(), source: e })?;
        }
        // Read both pipes on helper threads so a full pipe cannot stall nft.
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = out_pipe.as_mut() {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = err_pipe.as_mut() {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let until = Instant::now() + NFT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= until => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RespondError::Nft { what: what.into(), stderr: format!("timed out after {NFT_TIMEOUT:?}") });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(RespondError::Sys { what: "cannot wait for nft".into(), source: e }),
            }
        };
        let stdout = out_t.join().unwrap_or_default();
        let stderr = err_t.join().unwrap_or_default();
        if !status.success() {
            return Err(RespondError::Nft { what: what.into(), stderr: stderr.trim().to_string() });
        }
        Ok(stdout)
    }

    /// Whether the isolation table exists (`nft -j list tables`).
    fn table_exists(&self) -> Result<bool, RespondError> {
        let out = self.nft("list tables", &["-j", "list", "tables"], None)?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| RespondError::Nft { what: "list tables".into(), stderr: format!("unparsable JSON: {e}") })?;
        Ok(v.get("nftables").and_then(|x| x.as_array()).is_some_and(|items| {
            items
                .iter()
                .filter_map(|i| i.get("table"))
                .any(|t| t.get("family").and_then(|f| f.as_str()) == Some("inet") && t.get("name").and_then(|n| n.as_str()) == Some(TABLE_NAME))
        }))
    }

    /// Reads the isolation state back from the kernel.
    pub(crate) fn read_state(&self) -> Result<IsolationState, RespondError> {
        if !self.table_exists()? {
            return Ok(IsolationState::default());
        }
        let out = self.nft("list table", &["-j", "list", "table", "inet", TABLE_NAME], None)?;
        parse_state(&out).map_err(|e| RespondError::Nft { what: "list table".into(), stderr: e })
    }

    /// The state, with any error inside it, and the guard's counters.
    pub(crate) fn state(&self) -> IsolationState {
        let mut st = match self.read_state() {
            Ok(s) => s,
            Err(e) => IsolationState { error: Some(e.to_string()), ..IsolationState::default() },
        };
        st.guarded = self.guard.active() && self.guard.running.load(Ordering::Relaxed);
        let (n, last, what) = self.guard.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (st.tamper_count, st.last_tamper, st.last_tamper_what) = (n, last, what);
        st
    }

    /// The table as the guard compares it: the `nft -j` listing without
    /// handles and version info; None when the table does not exist.
    fn fingerprint(&self) -> Result<Option<String>, RespondError> {
        if !self.table_exists()? {
            return Ok(None);
        }
        let out = self.nft("list table", &["-j", "list", "table", "inet", TABLE_NAME], None)?;
        fingerprint_of(&out).map(Some).map_err(|e| RespondError::Nft { what: "list table".into(), stderr: e })
    }

    /// Keeps `spec` in place from now on (called with the lock held).
    fn guard_applied(&self, spec: &IsolationSpec, since: Timestamp) {
        let fingerprint = match self.fingerprint() {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => String::new(),
        };
        *self.guard.applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(Applied { spec: spec.clone(), since, fingerprint });
        if !self.guard.running.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            let started = std::thread::Builder::new().name("edr-iso-guard".into()).spawn(move || me.guard_loop());
            if let Err(e) = started {
                self.guard.running.store(false, Ordering::Release);
                tracing::error!(error = %e, "cannot start the isolation guard: removal of the isolation table will go unnoticed");
                return;
            }
            let me = self.clone();
            if let Err(e) = std::thread::Builder::new().name("edr-iso-netlink".into()).spawn(move || me.netlink_loop()) {
                tracing::warn!(error = %e, "cannot watch nftables changes; the isolation table is checked every {GUARD_INTERVAL:?} only");
            }
        }
    }

    /// Stops guarding (the table stays as it is).
    pub(crate) fn stop_guard(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        *self.guard.applied.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.guard.notify();
    }

    /// Keeps an isolation found at start in place (the agent restarted while
    /// the host was isolated), re-applying `spec` if it is removed.
    pub(crate) fn adopt(&self, spec: &IsolationSpec) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(st) = self.read_state() {
            if st.isolated && !spec.management.is_empty() {
                tracing::info!("the host is isolated (since before this start); guarding the isolation table");
                self.guard_applied(spec, st.since.unwrap_or_else(edr_event::time::now));
            }
        }
    }

    fn guard_loop(self) {
        loop {
            self.guard.wait(GUARD_INTERVAL);
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(applied) = self.guard.applied.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
                // Still under the lock: an isolate() after this starts a new guard.
                self.guard.running.store(false, Ordering::Release);
                break;
            };
            let what = match self.fingerprint() {
                Ok(Some(f)) if f == applied.fingerprint => continue,
                Ok(Some(_)) => format!("the table {TABLE} was altered (its chains or rules differ from what the agent applied)"),
                Ok(None) => format!("the table {TABLE} was deleted"),
                Err(e) => {
                    tracing::debug!(error = %e, "isolation guard: cannot read the table");
                    continue;
                }
            };
            self.reapply(&applied, what);
        }
        self.guard.notify();
    }

    /// Re-applies after tampering; counts, logs and calls the hook.
    fn reapply(&self, applied: &Applied, what: String) {
        let result = self.nft("re-isolate", &["-f", "-"], Some(&script(&applied.spec, applied.since)));
        let (reapplied, error) = match result.and_then(|_| self.fingerprint()) {
            Ok(Some(f)) => {
                if let Some(a) = self.guard.applied.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    a.fingerprint = f;
                }
                (true, None)
            }
            Ok(None) => (false, Some("the table does not read back after re-applying".to_string())),
            Err(e) => (false, Some(e.to_string())),
        };
        let time = edr_event::time::now();
        let count = {
            let mut st = self.guard.stats.lock().unwrap_or_else(|p| p.into_inner());
            *st = (st.0 + 1, Some(time), Some(what.clone()));
            st.0
        };
        match &error {
            None => tracing::warn!(count, "isolation tampered with: {what}; re-applied"),
            Some(e) => tracing::error!(count, "isolation tampered with: {what}; re-applying FAILED: {e}"),
        }
        let ev = TamperEvent { time, what, reapplied, error, count, management: applied.spec.management.clone() };
        let hook = self.guard.hook.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h(&ev);
        }
    }

    /// Wakes the guard on every nftables ruleset change in the namespace
    /// (`NETLINK_NETFILTER`, group `NFNLGRP_NFTABLES`); ends with the guard.
    fn netlink_loop(self) {
        let sock = match self.nftables_socket() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch nftables changes; the isolation table is checked every {GUARD_INTERVAL:?} only");
                return;
            }
        };
        let mut buf = [0u8; 8192];
        while self.guard.active() {
            // SAFETY: reads into our buffer; SO_RCVTIMEO bounds the wait.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let overrun = n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS);
            if n > 0 || overrun {
                self.guard.notify();
            }
        }
    }

    /// A netlink socket in the isolated namespace subscribed to nftables changes.
    fn nftables_socket(&self) -> Result<std::os::fd::OwnedFd, RespondError> {
        use std::os::fd::FromRawFd;
        if let Some(p) = &self.netns {
            let f = std::fs::File::open(p).map_err(|e| RespondError::io("cannot open the network namespace", p, e))?;
            // SAFETY: setns on this (dedicated) thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(RespondError::sys(format!("setns into {}", p.display())));
            }
        }
        // SAFETY: plain syscall; the result is a new fd or -1.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(RespondError::sys("socket(AF_NETLINK, NETLINK_NETFILTER)"));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; bind and setsockopt read live structs.
        unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            sa.nl_groups = 1 << (libc::NFNLGRP_NFTABLES - 1);
            if libc::bind(fd, (&sa as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32) != 0 {
                return Err(RespondError::sys("bind to the nftables netlink group"));
            }
            let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32);
        }
        Ok(sock)
    }

    /// What isolating would install (simulate mode).
    pub(crate) fn plan(&self, spec: &IsolationSpec) -> Result<Detail, RespondError> {
        check_spec(spec)?;
        Ok(Detail::from([
            ("table".into(), TABLE.to_string()),
            ("management".into(), join(&spec.management)),
            ("dns".into(), join(&spec.dns)),
            ("script".into(), script(spec, edr_event::time::now())),
        ]))
    }

    /// Installs (or replaces) the isolation table and checks it took.
    pub(crate) fn isolate(&self, spec: &IsolationSpec) -> Result<(IsolationState, Detail), RespondError> {
        check_spec(spec)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.read_state()?;
        let since = before.since.filter(|_| before.isolated).unwrap_or_else(edr_event::time::now);
        let text = script(spec, since);
        self.nft("isolate", &["-f", "-"], Some(&text))?;
        let after = self.read_state()?;
        if !after.intact {
            return Err(RespondError::Nft { what: "isolate".into(), stderr: "the table was installed but does not read back complete".into() });
        }
        self.guard_applied(spec, since);
        tracing::warn!(management = %join(&spec.management), "host isolated");
        let detail = Detail::from([
            ("table".into(), TABLE.to_string()),
            ("management".into(), join(&spec.management)),
            ("dns".into(), join(&spec.dns)),
            ("already_isolated".into(), before.isolated.to_string()),
            ("script".into(), text),
        ]);
        Ok((after, detail))
    }

    /// Removes the isolation table (and nothing else). Returns whether the host was isolated.
    pub(crate) fn release(&self) -> Result<bool, RespondError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // The guard stops first: nothing is re-applied after this.
        *self.guard.applied.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.guard.notify();
        let was = self.table_exists()?;
        self.nft("release", &["-f", "-"], Some(&format!("table {TABLE}\ndelete table {TABLE}\n")))?;
        if self.table_exists()? {
            return Err(RespondError::Nft { what: "release".into(), stderr: "the isolation table is still there after deleting it".into() });
        }
        tracing::warn!(was_isolated = was, "host isolation released");
        Ok(was)
    }
}

/// The note that the host is isolated (`isolation.json`), kept so that an
/// isolation survives a reboot (the kernel forgets its nftables tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationMarker {
    /// When the isolation started, ns since the epoch.
    pub since: Option<Timestamp>,
    /// The reason it was isolated for.
    pub reason: String,
    /// Who isolated it.
    pub by: String,
}

/// Writes the note (0600, atomically) after an isolation.
pub(crate) fn write_marker(path: Option<&std::path::Path>, since: Option<Timestamp>, reason: &str, by: &str) -> Result<(), RespondError> {
    let Some(path) = path else { return Err(RespondError::Config("no isolation_marker file configured".into())) };
    let marker = IsolationMarker { since, reason: reason.chars().take(1000).collect(), by: by.to_string() };
    let dir = crate::fsutil::parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "isolation.json".into());
    crate::fsutil::write_json_atomic(&dir, &name, &marker, 0o600)
}

/// Removes the note after a release (a missing note is fine).
pub(crate) fn remove_marker(path: Option<&std::path::Path>) {
    if let Some(p) = path {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!("cannot remove the isolation note {}: {e}; the host would be isolated again at the next start", p.display());
            }
        }
    }
}

/// Reads the note; `None` when there is none (a damaged one is logged and counts as there:
/// the host was isolated, and staying isolated is the safe side).
pub(crate) fn read_marker(path: Option<&std::path::Path>) -> Option<IsolationMarker> {
    let p = path?;
    let bytes = std::fs::read(p).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::error!("the isolation note {} is damaged ({e}); treating the host as isolated", p.display());
        IsolationMarker { since: None, reason: "unknown (the isolation note was damaged)".into(), by: "unknown".into() }
    }))
}

/// The `nft -j` listing without the parts that change on every load
/// (handles, version info): equal listings mean an unchanged table.
pub(crate) fn fingerprint_of(json: &str) -> Result<String, String> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("cannot parse nft JSON: {e}"))?;
    let items = v.get_mut("nftables").and_then(|x| x.as_array_mut()).ok_or("nft JSON has no `nftables` array")?;
    items.retain(|i| i.get("metainfo").is_none());
    strip(&mut v);
    Ok(v.to_string())
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Refuses to isolate without a management endpoint: the agent would lose
/// its console and nobody could release the host remotely.
fn check_spec(spec: &IsolationSpec) -> Result<(), RespondError> {
    if spec.management.is_empty() {
        return Err(RespondError::Config(
            "no management endpoints are configured; isolating would cut the agent off from its console, so it is refused".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        let cases = [
            ("10.0.0.5", "10.0.0.5/32"),
            ("10.0.0.77/24", "10.0.0.0/24"),
            ("10.0.0.5:8443", "10.0.0.5/32:8443"),
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("fd00::5", "fd00::5/128"),
            ("fd00::1/64", "fd00::/64"),
            ("[fd00::5]:8443", "[fd00::5/128]:8443"),
            ("[fd00::/64]:22", "[fd00::/64]:22"),
        ];
        for (input, shown) in cases {
            let ep: Endpoint = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(ep.to_string(), shown, "{input}");
            assert_eq!(shown.parse::<Endpoint>().unwrap(), ep, "round trip of {shown}");
        }
        for bad in ["", "10.0.0.5/33", "10.0.0.5:0", "10.0.0.5:99999", "example.com", "[fd00::5", "fd00::/129"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} should not parse");
        }
        let json = serde_json::to_string(&vec![Endpoint::host_port("10.1.2.3".parse().unwrap(), 22)]).unwrap();
        assert_eq!(json, r#"["10.1.2.3/32:22"]"#);
    }

    #[test]
    fn script_allows_only_what_is_configured() {
        let spec = IsolationSpec {
            management: vec!["10.9.0.2:7000".parse().unwrap(), "fd00::/64".parse().unwrap()],
            dns: vec!["192.0.2.53".parse().unwrap()],
            allow_dhcp: false,
        };
        let s = script(&spec, 42);
        assert!(s.starts_with("table inet edr_isolation\ndelete table inet edr_isolation\n"));
        assert_eq!(s.matches("policy drop;").count(), 3);
        assert!(s.contains("ip daddr 10.9.0.2/32 meta l4proto { tcp, udp } th dport 7000 accept"));
        assert!(s.contains("ip saddr 10.9.0.2/32 meta l4proto { tcp, udp } th sport 7000 accept"));
        assert!(s.contains("ip saddr 10.9.0.2/32 ct state established,related accept"));
        assert!(s.contains("ip6 daddr fd00::/64 accept"));
        assert!(s.contains("ip daddr 192.0.2.53 meta l4proto { tcp, udp } th dport 53 accept"));
        assert!(s.contains("since=42"));
        assert!(!s.contains("dport 67"), "no DHCP unless asked");
    }

    #[test]
    fn state_is_parsed_from_nft_json() {
        // Shape of `nft -j list table inet edr_isolation` (nftables 1.0.6).
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "edr_isolation", "handle": 2}},
          {"chain": {"family": "inet", "table": "edr_isolation", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "drop"}},
          {"chain": {"family": "inet", "table": "edr_isolation", "name": "output", "handle": 2, "type": "filter", "hook": "output", "prio": -10, "policy": "drop"}},
          {"chain": {"family": "inet", "table": "edr_isolation", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": -10, "policy": "drop"}},
          {"rule": {"family": "inet", "table": "edr_isolation", "chain": "input", "handle": 4, "comment": "edr:loopback since=1700000000000000000", "expr": []}},
          {"rule": {"family": "inet", "table": "edr_isolation", "chain": "output", "handle": 7, "comment": "edr:mgmt 10.1.0.2/32:7000", "expr": []}},
          {"rule": {"family": "inet", "table": "edr_isolation", "chain": "output", "handle": 8, "comment": "edr:dns 192.0.2.53", "expr": []}}]}"#;
        let st = parse_state(json).unwrap();
        assert!(st.isolated && st.intact);
        assert_eq!(st.since, Some(1_700_000_000_000_000_000));
        assert_eq!(st.management, vec!["10.1.0.2:7000".parse::<Endpoint>().unwrap()]);
        assert_eq!(st.dns, vec!["192.0.2.53".parse::<IpAddr>().unwrap()]);
        let partial = json.replace(r#""hook": "forward", "prio": -10, "policy": "drop""#, r#""hook": "forward", "prio": -10, "policy": "accept""#);
        assert_ne!(partial, json);
        assert!(!parse_state(&partial).unwrap().intact);
    }

    #[test]
    fn fingerprint_ignores_handles_and_sees_changes() {
        let a = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "edr_isolation", "handle": 2}},
          {"chain": {"family": "inet", "table": "edr_isolation", "name": "input", "handle": 1, "hook": "input", "policy": "drop"}},
          {"rule": {"family": "inet", "table": "edr_isolation", "chain": "input", "handle": 4, "comment": "edr:loopback since=1", "expr": [{"accept": null}]}}]}"#;
        let reloaded = a.replace(r#""handle": 2"#, r#""handle": 9"#).replace(r#""handle": 4"#, r#""handle": 12"#).replace("1.0.6", "1.1.0");
        assert_eq!(fingerprint_of(a).unwrap(), fingerprint_of(&reloaded).unwrap(), "a re-applied table compares equal");
        let weakened = a.replace(r#""policy": "drop""#, r#""policy": "accept""#);
        assert_ne!(fingerprint_of(a).unwrap(), fingerprint_of(&weakened).unwrap());
        let extra =
            a.replace("]}}]}", r#"]}}, {"rule": {"family": "inet", "table": "edr_isolation", "chain": "input", "handle": 5, "expr": [{"accept": null}]}}]}"#);
        assert_ne!(fingerprint_of(a).unwrap(), fingerprint_of(&extra).unwrap(), "an added rule is an alteration");
    }

    #[test]
    fn isolating_without_management_is_refused() {
        let iso = Isolator::new(None);
        let err = iso.isolate(&IsolationSpec { management: vec![], dns: vec![], allow_dhcp: true }).unwrap_err();
        assert!(matches!(err, RespondError::Config(_)), "{err}");
    }
}
