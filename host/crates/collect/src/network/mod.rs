//! Network collector: new TCP/UDP connections and listeners.
//!
//! Mode `ebpf` (tried first by `auto`; `EDR_NETWORK_EBPF=0` skips it):
//! TCP from the kernel's `inet_sock_set_state` hook, every connection
//! however short, with its pid ([`ebpf`]); UDP from the poller below.
//!
//! Mode `procfs`: `/proc/net/{tcp,tcp6,udp,udp6}` is read every `interval`
//! (250 ms) and diffed by socket inode. Chosen over `sock_diag` netlink
//! because it needs no privilege (a non-root agent still sees every socket,
//! only the owner pid of other users' sockets is hidden), has one code path
//! for both, and its text is easy to test from fixtures; at the sizes of an
//! endpoint (hundreds to a few thousand sockets) reading it costs well under
//! a millisecond per tick. A busy server with 100k sockets would want
//! `sock_diag` with state filters instead.
//!
//! * `connect`: a TCP socket first seen in SYN_SENT (so failed attempts
//!   count; reported at once) or ESTABLISHED on a local port nobody listens
//!   on (reported one interval later: the kernel prints listeners before
//!   connections and a table read is not atomic, so a listener created during
//!   the read can be missing while its accepted connection is not); a
//!   connected UDP socket.
//! * `accept`: an ESTABLISHED TCP socket whose local port is a listening
//!   port (seen once the application has accepted it).
//! * `listen`: a TCP socket in LISTEN; a bound, unconnected UDP socket (which
//!   includes clients that `sendto` without `connect`, on ephemeral ports).
//!
//! New socket inodes are mapped to pids by scanning `/proc/*/fd` only when a
//! socket appears that the last scan did not see. The exe, entity and uid
//! come from the process tree or `/proc`.
//!
//! It reports no `close`: a socket that leaves the table may have closed,
//! or only been missed by a read that raced a change (see below), and its
//! byte counts are not in `/proc/net` at all. Closes with bytes come from
//! the eBPF mode only.
//!
//! What it cannot see: a connection that opens and closes within one
//! interval; sockets in other network namespaces (containers); the owner of
//! a socket that was closed (or passed on) before the fd scan, which yields a
//! partial event without pid. Sockets that exist when the collector starts
//! are a baseline and produce no events. The kernel renders these files a
//! page (~27 sockets) per `read` and re-finds its place between reads, so a
//! table that changes while it is read can miss a line in one snapshot: a
//! socket is forgotten only after missing from several snapshots, and
//! listeners are remembered.

pub(crate) mod ebpf;
use edr_procfs::net as procnet;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edr_event::{EventBody, NetworkEvent, NetworkOp, Transport};

use crate::attribute::attribute;
use crate::sink::Sink;
use crate::{CollectError, Ctx, NetworkConfig, NetworkMode};
use procnet::{socket_inode, state, SockLine};

const TABLES: [(&str, Transport); 4] =
    [("/proc/net/tcp", Transport::Tcp), ("/proc/net/tcp6", Transport::Tcp), ("/proc/net/udp", Transport::Udp), ("/proc/net/udp6", Transport::Udp)];

/// Starts the network collector.
pub(crate) fn start(cfg: &NetworkConfig, ctx: &Arc<Ctx>, sink: Sink) -> Result<Vec<JoinHandle<()>>, CollectError> {
    if cfg.mode == NetworkMode::Off {
        sink.counters.set_mode("off");
        return Ok(Vec::new());
    }
    let (hooks, ebpf_why) = tcp_hooks(cfg.mode)?;
    let tcp = hooks.as_ref().map(ebpf::describe);
    let mut threads = match hooks {
        Some(h) => ebpf::spawn(h, ctx, sink.clone())?,
        None => Vec::new(),
    };
    if let Err(e) = std::fs::metadata("/proc/net/tcp") {
        let reason = format!("/proc/net/tcp: {e}");
        if cfg.mode == NetworkMode::Procfs {
            return Err(CollectError::Unavailable { collector: "network", mode: "procfs".into(), reason });
        }
        sink.counters.set_mode(match tcp {
            Some(tcp) => format!("{tcp}; udp off (unavailable: {reason})"),
            None => format!("off (unavailable: {reason})"),
        });
        return Ok(threads);
    }
    // With the hooks, the poller keeps only the UDP tables.
    let tables = if tcp.is_some() { &TABLES[2..] } else { &TABLES[..] };
    let mut tracker = Tracker::default();
    let mut reader = TableReader { buf: Vec::new(), tables };
    tracker.diff(&reader.read_tables()); // the baseline
                                         // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Reading the tables makes the kernel walk its whole TCP hash (sized by
    // RAM, not by sockets): ~2 ms a read on a 24 GiB host, most of an idle
    // agent's CPU at 4 polls a second. So the interval adapts: `interval`
    // while sockets come and go, doubling on every quiet poll up to
    // IDLE_INTERVAL, back to `interval` at the first change.
    const IDLE_INTERVAL: Duration = Duration::from_secs(2);
    let poll = format!("poll {}ms-{}s adaptive", cfg.interval.as_millis(), IDLE_INTERVAL.as_secs());
    let degraded = if root { "" } else { "; degraded: not root, owners of other users' sockets unknown" };
    sink.counters.set_mode(match (tcp, ebpf_why) {
        (Some(tcp), _) => format!("{tcp} + procfs udp {poll} (misses UDP sockets shorter than the interval{degraded})"),
        (None, Some(why)) => format!("procfs {poll} (misses connections shorter than the interval{degraded}; no eBPF: {why})"),
        (None, None) => format!("procfs {poll} (misses connections shorter than the interval{degraded})"),
    });
    let ctx = ctx.clone();
    let interval = cfg.interval;
    threads.extend(crate::process::spawn("network", move || {
        let mut inodes = InodeMap::default();
        let mut current = interval;
        while !ctx.stopping() {
            let started = Instant::now();
            let found = tracker.diff(&reader.read_tables());
            current = if found.is_empty() { (current * 2).min(IDLE_INTERVAL.max(interval)) } else { interval };
            if !found.is_empty() {
                let wanted: HashSet<u64> = found.iter().map(|f| f.line.inode).collect();
                inodes.resolve(&wanted);
                for f in found {
                    emit(&ctx, &sink, &inodes, f);
                }
            }
            ctx.sleep(current.saturating_sub(started.elapsed()));
        }
    })?);
    Ok(threads)
}

/// The eBPF TCP hooks when the mode wants them: `ebpf` requires them,
/// `auto` tries them unless `EDR_NETWORK_EBPF=0` (then the second value
/// says why there are none, for the mode string).
fn tcp_hooks(mode: NetworkMode) -> Result<(Option<edr_ebpf::NetHooks>, Option<String>), CollectError> {
    match mode {
        NetworkMode::Ebpf => {
            let h = ebpf::load().map_err(|reason| CollectError::Unavailable { collector: "network", mode: "ebpf".into(), reason })?;
            Ok((Some(h), None))
        }
        NetworkMode::Auto if !ebpf::allowed_by_env() => Ok((None, Some(format!("{}=0", ebpf::ENV_SWITCH)))),
        NetworkMode::Auto => match ebpf::load() {
            Ok(h) => Ok((Some(h), None)),
            Err(why) => {
                tracing::info!(%why, "network: TCP on the /proc/net poller");
                Ok((None, Some(why)))
            }
        },
        NetworkMode::Procfs | NetworkMode::Off => Ok((None, None)),
    }
}

/// Reads the tables with a reused, large buffer.
///
/// The kernel renders these files a page at a time and re-finds its place
/// between `read` calls, so a table that changes while it is read can miss
/// or repeat a line. Large reads (no small probe read) keep the passes few,
/// and [`Tracker`] tolerates a socket missing from one snapshot.
#[derive(Debug)]
pub(crate) struct TableReader {
    buf: Vec<u8>,
    /// The tables read: all four, or the UDP ones when eBPF does TCP.
    tables: &'static [(&'static str, Transport)],
}

impl Default for TableReader {
    fn default() -> Self {
        TableReader { buf: Vec::new(), tables: &TABLES }
    }
}

impl TableReader {
    fn read_file(&mut self, path: &str) -> std::io::Result<&str> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        if self.buf.len() < 256 * 1024 {
            self.buf.resize(256 * 1024, 0);
        }
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(len * 2, 0);
            }
            match f.read(&mut self.buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        std::str::from_utf8(&self.buf[..len]).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Every socket of this network namespace in the tables read.
    pub fn read_tables(&mut self) -> Vec<(Transport, SockLine)> {
        let mut out = Vec::new();
        for &(path, t) in self.tables {
            if let Ok(text) = self.read_file(path) {
                out.extend(procnet::parse_table(text).into_iter().map(|l| (t, l)));
            }
        }
        out
    }
}

fn emit(ctx: &Ctx, sink: &Sink, inodes: &InodeMap, f: Found) {
    let pid = inodes.pid(f.line.inode);
    if pid.is_some_and(|p| ctx.exclude_pids.contains(&p)) {
        return;
    }
    let who = pid.map(|p| attribute(ctx, p)).unwrap_or_default();
    let partial = pid.is_none() || !who.complete();
    let ev = NetworkEvent {
        op: f.op,
        transport: f.transport,
        local_ip: f.line.local_ip.to_string(),
        local_port: f.line.local_port,
        remote_ip: f.line.remote_ip.to_string(),
        remote_port: f.line.remote_port,
        pid,
        entity_id: who.entity_id,
        exe: who.exe,
        // The socket's owner uid is known even when the process is not.
        uid: Some(f.line.uid),
        // /proc/net shows the agent's own namespace.
        netns: own_netns(),
        bytes_sent: None,
        bytes_received: None,
    };
    sink.emit(EventBody::Network(ev), partial);
}

/// The agent's network namespace (the one `/proc/net` describes), read once.
fn own_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    static NETNS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *NETNS.get_or_init(|| std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino()))
}

/// A socket that needs an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub op: NetworkOp,
    pub transport: Transport,
    pub line: SockLine,
}

/// What the collector knows about each socket (by transport and inode).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    known: HashMap<(Transport, u64), Known>,
    /// Established TCP sockets with no listener on their port, held one
    /// snapshot before they are called `connect` (see [`Tracker::diff`]).
    pending: HashMap<(Transport, u64), SockLine>,
    primed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    /// The op reported, `None` while the socket was not reportable.
    reported: Option<NetworkOp>,
    local_port: u16,
    /// Consecutive snapshots the socket was missing from.
    absent: u8,
}

/// Snapshots a socket may be missing from before it is forgotten (see
/// [`TableReader`]); socket inodes are not reused, so this only suppresses
/// duplicates.
const GRACE: u8 = 3;

/// What a socket line means, given the listening ports.
pub(crate) fn classify(t: Transport, l: &SockLine, listening: &HashSet<u16>) -> Option<NetworkOp> {
    match t {
        Transport::Tcp => match l.state {
            state::LISTEN => Some(NetworkOp::Listen),
            state::SYN_SENT => Some(NetworkOp::Connect),
            state::SYN_RECV | state::CLOSE | state::TIME_WAIT => None,
            // ESTABLISHED, or already closing when first seen.
            _ if listening.contains(&l.local_port) => Some(NetworkOp::Accept),
            _ => Some(NetworkOp::Connect),
        },
        Transport::Udp => match l.state {
            state::ESTABLISHED => Some(NetworkOp::Connect),
            state::CLOSE if l.local_port != 0 => Some(NetworkOp::Listen),
            _ => None,
        },
    }
}

impl Tracker {
    /// Diffs one snapshot; returns the sockets to report. The first call
    /// only records the baseline.
    pub fn diff(&mut self, snapshot: &[(Transport, SockLine)]) -> Vec<Found> {
        // Listening ports: this snapshot's, and those of listeners it may
        // have missed.
        let mut listening: HashSet<u16> =
            snapshot.iter().filter(|(t, l)| *t == Transport::Tcp && l.state == state::LISTEN).map(|(_, l)| l.local_port).collect();
        listening.extend(self.known.iter().filter(|((t, _), k)| *t == Transport::Tcp && k.reported == Some(NetworkOp::Listen)).map(|(_, k)| k.local_port));
        let mut present = HashSet::with_capacity(snapshot.len());
        let mut out = Vec::new();
        for (t, l) in snapshot {
            if l.inode == 0 {
                continue;
            }
            let key = (*t, l.inode);
            present.insert(key);
            let op = classify(*t, l, &listening);
            // The op already reported for this socket, if any.
            let reported = self.known.get(&key).and_then(|k| k.reported);
            let mut report = match reported {
                // New, or known but not reportable until now (bound, then
                // listening or connected).
                None => op,
                // A bound UDP socket that connected.
                Some(NetworkOp::Listen) if *t == Transport::Udp && op == Some(NetworkOp::Connect) => op,
                Some(_) => None,
            };
            // The listening part of the table is read before the established
            // part, so a listener created while the table was read can be
            // missing while its accepted connection is there: an established
            // socket that looks outbound is judged again on the next snapshot.
            let held = self.pending.remove(&key).is_some();
            if self.primed && !held && *t == Transport::Tcp && report == Some(NetworkOp::Connect) && l.state != state::SYN_SENT {
                self.pending.insert(key, l.clone());
                report = None;
            }
            self.known.insert(key, Known { reported: report.or(reported), local_port: l.local_port, absent: 0 });
            if let (Some(op), true) = (report, self.primed) {
                out.push(Found { op, transport: *t, line: l.clone() });
            }
        }
        // Held sockets that closed since: outbound after all.
        let gone: Vec<(Transport, u64)> = self.pending.keys().filter(|k| !present.contains(k)).copied().collect();
        for key in gone {
            if let Some(line) = self.pending.remove(&key) {
                if let Some(k) = self.known.get_mut(&key) {
                    k.reported = Some(NetworkOp::Connect);
                }
                out.push(Found { op: NetworkOp::Connect, transport: key.0, line });
            }
        }
        self.known.retain(|key, k| {
            if !present.contains(key) {
                k.absent += 1;
            }
            k.absent <= GRACE
        });
        self.primed = true;
        out
    }
}

/// Socket inode -> owning pid, from `/proc/*/fd`.
#[derive(Debug, Default)]
pub(crate) struct InodeMap {
    map: HashMap<u64, u32>,
}

impl InodeMap {
    /// Makes sure every wanted inode is looked up: scans `/proc/*/fd` when
    /// one is missing, stopping once all are found.
    pub fn resolve(&mut self, wanted: &HashSet<u64>) {
        if wanted.iter().all(|i| self.map.contains_key(i)) {
            return;
        }
        if self.map.len() > 65_536 {
            self.map.clear();
        }
        let mut missing: HashSet<u64> = wanted.iter().filter(|i| !self.map.contains_key(i)).copied().collect();
        let Ok(mut pids) = crate::procfs::list_pids() else {
            return;
        };
        // Newest first: new sockets mostly belong to new processes.
        pids.sort_unstable_by(|a, b| b.cmp(a));
        for pid in pids {
            let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(target) = std::fs::read_link(e.path()) else {
                    continue;
                };
                if let Some(inode) = socket_inode(&target.to_string_lossy()) {
                    self.map.insert(inode, pid);
                    missing.remove(&inode);
                }
            }
            if missing.is_empty() {
                return;
            }
        }
    }

    /// The pid owning a socket inode, when found.
    pub fn pid(&self, inode: u64) -> Option<u32> {
        self.map.get(&inode).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn line(local: u16, remote: u16, st: u8, inode: u64) -> SockLine {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        SockLine { local_ip: ip, local_port: local, remote_ip: ip, remote_port: remote, state: st, uid: 0, inode }
    }

    #[test]
    fn diff_reports_listen_connect_accept_once() {
        let mut t = Tracker::default();
        let base = vec![(Transport::Tcp, line(22, 0, state::LISTEN, 1))];
        assert!(t.diff(&base).is_empty(), "baseline");
        let mut snap = base.clone();
        snap.push((Transport::Tcp, line(8080, 0, state::LISTEN, 2)));
        snap.push((Transport::Tcp, line(40000, 4444, state::SYN_SENT, 3)));
        snap.push((Transport::Tcp, line(22, 50000, state::ESTABLISHED, 4)));
        snap.push((Transport::Tcp, line(22, 50001, state::ESTABLISHED, 0))); // not accepted yet
        let found = t.diff(&snap);
        let ops: Vec<(NetworkOp, u64)> = found.iter().map(|f| (f.op, f.line.inode)).collect();
        assert_eq!(ops, vec![(NetworkOp::Listen, 2), (NetworkOp::Connect, 3), (NetworkOp::Accept, 4)]);
        // SYN_SENT -> ESTABLISHED is the same connection: no second event.
        snap[2] = (Transport::Tcp, line(40000, 4444, state::ESTABLISHED, 3));
        assert!(t.diff(&snap).is_empty());
        // A socket missing from one snapshot (the kernel's text view is not
        // atomic) and back in the next is not new.
        let full = snap.clone();
        snap.truncate(1);
        assert!(t.diff(&snap).is_empty());
        assert!(t.diff(&full).is_empty());
        // Gone for longer than the grace: forgotten; an inode that comes back is new.
        for _ in 0..=GRACE {
            assert!(t.diff(&snap).is_empty());
        }
        snap.push((Transport::Tcp, line(40001, 443, state::ESTABLISHED, 3)));
        assert!(t.diff(&snap).is_empty(), "an established outbound socket is held one snapshot");
        assert_eq!(t.diff(&snap)[0].op, NetworkOp::Connect);
        assert!(t.diff(&snap).is_empty());
        // A listener missing from a snapshot still makes its connections accepts.
        let mut t = Tracker::default();
        t.diff(&[]);
        assert_eq!(t.diff(&[(Transport::Tcp, line(7000, 0, state::LISTEN, 20))])[0].op, NetworkOp::Listen);
        assert_eq!(t.diff(&[(Transport::Tcp, line(7000, 5000, state::ESTABLISHED, 21))])[0].op, NetworkOp::Accept);
    }

    #[test]
    fn a_listener_missing_from_the_snapshot_of_its_first_accept() {
        let mut t = Tracker::default();
        t.diff(&[]);
        // The listening part was read before bind(), the rest after accept().
        let torn = vec![(Transport::Tcp, line(41000, 50000, state::ESTABLISHED, 31)), (Transport::Tcp, line(50000, 41000, state::ESTABLISHED, 30))];
        assert!(t.diff(&torn).is_empty(), "both held");
        let mut whole = torn.clone();
        whole.insert(0, (Transport::Tcp, line(41000, 0, state::LISTEN, 29)));
        let mut ops: Vec<(NetworkOp, u64)> = t.diff(&whole).iter().map(|f| (f.op, f.line.inode)).collect();
        ops.sort_by_key(|o| o.1);
        assert_eq!(ops, vec![(NetworkOp::Listen, 29), (NetworkOp::Connect, 30), (NetworkOp::Accept, 31)]);
        assert!(t.diff(&whole).is_empty());
        // A held socket that closes before the next snapshot is still reported.
        let short = vec![(Transport::Tcp, line(45000, 80, state::ESTABLISHED, 40))];
        assert!(t.diff(&short).is_empty());
        let found = t.diff(&[]);
        assert_eq!((found[0].op, found[0].line.inode), (NetworkOp::Connect, 40));
        assert!(t.diff(&[]).is_empty());
    }

    #[test]
    fn bound_then_listening_and_udp() {
        let mut t = Tracker::default();
        t.diff(&[]);
        // A TCP socket bound (CLOSE) is nothing yet; then it listens.
        let bound = vec![(Transport::Tcp, line(9000, 0, state::CLOSE, 10))];
        assert!(t.diff(&bound).is_empty());
        let listening = vec![(Transport::Tcp, line(9000, 0, state::LISTEN, 10))];
        assert_eq!(t.diff(&listening)[0].op, NetworkOp::Listen);
        // UDP: bound = listen, then connected = connect.
        let udp = vec![(Transport::Udp, line(5353, 0, state::CLOSE, 11))];
        assert_eq!(t.diff(&udp)[0].op, NetworkOp::Listen);
        let udp = vec![(Transport::Udp, line(5353, 53, state::ESTABLISHED, 11))];
        assert_eq!(t.diff(&udp)[0].op, NetworkOp::Connect);
        assert!(t.diff(&udp).is_empty());
        // An unbound UDP socket (port 0) is nothing.
        assert!(t.diff(&[(Transport::Udp, line(0, 0, state::CLOSE, 12))]).is_empty());
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn maps_own_socket_inode_to_own_pid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let inode = procnet::parse_table(&text).into_iter().find(|s| s.local_port == port && s.state == state::LISTEN).unwrap().inode;
        let mut m = InodeMap::default();
        m.resolve(&HashSet::from([inode]));
        assert_eq!(m.pid(inode), Some(std::process::id()));
    }
}
