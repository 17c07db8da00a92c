//! Block execution of files by path or sha256, with fanotify permission events.
//!
//! While at least one block exists, a fanotify group (`FAN_CLASS_CONTENT`)
//! holds a `FAN_OPEN_EXEC_PERM` mark on every local filesystem
//! (`FAN_MARK_FILESYSTEM`, so every mount and mount namespace of that
//! filesystem is covered). The kernel then holds every `execve` (and the
//! opening of the ELF interpreter) until the agent answers. A stuck answer
//! would freeze the host, so:
//!
//! * **The watchdog process** (`edr-exec-dog`, forked when blocking starts;
//!   see `block_watchdog.rs`) is the only reader of the group. It hands each
//!   event (with a dup of its fd) to the agent over a socketpair and writes
//!   the agent's verdict; an event the agent has not answered within
//!   [`BlockSettings::deadline_ms`] (`[respond] block_deadline_ms`) is
//!   answered with the fail mode ([`BlockFailMode`], allow by default) and
//!   counted ([`BlockStats::deadline_answers`]). A stopped agent (SIGSTOP
//!   stops every thread) therefore delays each exec by the deadline instead
//!   of freezing the host.
//! * **The reader thread** (`edr-exec-perm`) receives the events from the
//!   watchdog and answers what it can at once: ALLOW when nothing is blocked, DENY/ALLOW by path
//!   (`readlink /proc/self/fd/N`, in-kernel), and by sha256 when the file's
//!   hash is cached under (dev, inode, size, mtime, ctime). It never reads a
//!   file, takes a slow lock, logs, or waits on a channel.
//! * **Hasher threads** (`edr-exec-hash`, [`BlockSettings::hashers`]) hash
//!   cache misses from the event's fd and answer. Files over
//!   [`BlockSettings::hash_max_bytes`] are allowed without hashing (counted).
//!   A full hasher queue means ALLOW (counted).
//! * **The watchdog thread** (`edr-exec-watchdog`) answers ALLOW to any
//!   event still unanswered after [`BlockSettings::hash_timeout_ms`] (a hash
//!   stuck on a slow disk), counts it, and writes the deny log lines. While
//!   an event is being hashed the watchdog process waits up to
//!   `hash_timeout_ms + deadline_ms` for it (the agent tells it so), so a
//!   stopped agent delays such an exec by that much at most. The thread also
//!   resumes (SIGCONT) a stopped watchdog process and counts it.
//! * Any internal error answers ALLOW and is counted ([`BlockStats::errors`]).
//!   Each event is answered exactly once (an atomic flag per event).
//!
//! FUSE and network filesystems (nfs, cifs, 9p, ceph, ...) are not marked:
//! hashing a file there could wait on a daemon or a server. Pseudo
//! filesystems (proc, sysfs, cgroup, ...) are not marked either.
//! Filesystems mounted after a block was set are picked up at the next block
//! request.
//!
//! When the last block is removed the engine stops: marks are flushed first
//! (no new events), the watchdog process answers ALLOW to what it holds and
//! exits, the threads exit and the group fd is closed (the kernel allows
//! anything still pending). If the agent dies, the watchdog sees its socket
//! close, allows what it holds and exits, and the kernel releases the group.
//! If the watchdog process is killed, the agent sees the socket close,
//! flushes the marks (no new events are held), records the error and
//! restarts the engine at the next block request; execs the dead process
//! had read stay held until then (the group is still open).
//!
//! Cost: each exec takes one more socket round trip with an fd passed
//! (measured in BENCHMARKS-style numbers in the `exec_latency` test of
//! `tests/block.rs`).
//!
//! Limits: only direct execution is seen. `sh script.sh` or
//! `/lib64/ld-linux-x86-64.so.2 ./binary` read the file with a plain open
//! and are not blocked; blocking does not stop processes already running.

use crate::fsutil;
use crate::{Detail, RespondError};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use edr_event::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "block_watchdog.rs"]
mod watchdog;
use watchdog::Watchdog;

/// How a permission event the agent did not answer in time is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockFailMode {
    /// Let the exec run (default: a stopped agent must not stop the host).
    #[default]
    Allow,
    /// Refuse the exec (fail closed: nothing new runs while the agent is stopped).
    Deny,
}

/// Smallest and largest `[respond] block_deadline_ms`.
pub const BLOCK_DEADLINE_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=10_000;

/// Default `[respond] block_deadline_ms`.
pub const DEFAULT_BLOCK_DEADLINE_MS: u64 = 250;

/// Reads `block_deadline_ms`, refusing values outside [`BLOCK_DEADLINE_MS_RANGE`].
pub fn deserialize_deadline_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if !BLOCK_DEADLINE_MS_RANGE.contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "block_deadline_ms = {v} is out of range {}..={} (ms an exec waits for the agent's verdict before the fail mode answers it)",
            BLOCK_DEADLINE_MS_RANGE.start(),
            BLOCK_DEADLINE_MS_RANGE.end()
        )));
    }
    Ok(v)
}

/// What to block.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockTarget {
    /// An absolute path (resolved through symlinks when it exists).
    Path(PathBuf),
    /// A sha256 of the file's content (64 hex characters).
    Sha256(String),
}

impl BlockTarget {
    /// Reads a plugin's string: 64 hex characters are a sha256, anything
    /// else a path (checked to be absolute when the block is requested).
    pub fn parse(s: &str) -> BlockTarget {
        let t = s.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            BlockTarget::Sha256(t.to_ascii_lowercase())
        } else {
            BlockTarget::Path(PathBuf::from(t))
        }
    }
}

impl fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockTarget::Path(p) => write!(f, "path {}", p.display()),
            BlockTarget::Sha256(h) => write!(f, "sha256 {h}"),
        }
    }
}

/// One active block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// What is blocked (paths resolved, hashes lowercase).
    pub target: BlockTarget,
    /// Since when, ns since the epoch.
    pub since: Timestamp,
    /// The reason the requester gave.
    pub reason: String,
    /// Who asked.
    pub requester: String,
}

/// Tuning of the exec-permission engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockSettings {
    /// Executables larger than this are allowed without hashing (default 256 MiB).
    pub hash_max_bytes: u64,
    /// An exec still undecided after this long is allowed (default 2000 ms).
    pub hash_timeout_ms: u64,
    /// Hashing threads (default 2).
    pub hashers: usize,
    /// How long an exec waits for the agent before the watchdog process
    /// answers it with `fail_mode` (set from `[respond] block_deadline_ms`).
    #[serde(skip)]
    pub deadline_ms: u64,
    /// The answer when the deadline passes (set from `[respond] block_fail_mode`).
    #[serde(skip)]
    pub fail_mode: BlockFailMode,
}

impl Default for BlockSettings {
    fn default() -> Self {
        BlockSettings { hash_max_bytes: 256 << 20, hash_timeout_ms: 2000, hashers: 2, deadline_ms: DEFAULT_BLOCK_DEADLINE_MS, fail_mode: BlockFailMode::Allow }
    }
}

/// Counters of the exec-permission engine (since the agent started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    /// The permission threads are running.
    pub running: bool,
    /// Filesystems marked at the last (re)scan.
    pub filesystems_marked: usize,
    /// Exec permission events seen.
    pub events: u64,
    /// Answered ALLOW.
    pub allowed: u64,
    /// Answered DENY.
    pub denied: u64,
    /// Internal errors (each answered ALLOW).
    pub errors: u64,
    /// Allowed because hashing took longer than the timeout.
    pub timeouts: u64,
    /// Allowed because the hashing queue was full.
    pub overloaded: u64,
    /// Allowed without hashing because the file was over the size limit.
    pub too_large: u64,
    /// Files hashed.
    pub hashed: u64,
    /// Hashes found in the cache.
    pub cache_hits: u64,
    /// The deadline of a permission event, ms.
    pub deadline_ms: u64,
    /// How an event is answered when the deadline passes.
    pub fail_mode: BlockFailMode,
    /// Events the watchdog process answered with the fail mode because the
    /// agent did not answer in time (the agent was stopped or overloaded).
    pub deadline_answers: u64,
    /// Verdicts of the agent that came after the deadline had answered.
    pub late_verdicts: u64,
    /// Events the watchdog could not hand to the agent (left to the deadline).
    pub undelivered: u64,
    /// Times the agent found the watchdog process stopped and resumed it.
    pub watchdog_resumed: u64,
    /// The pid of the watchdog process, while it runs.
    pub watchdog_pid: Option<i32>,
    /// The last error starting or running the engine.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    overloaded: AtomicU64,
    too_large: AtomicU64,
    hashed: AtomicU64,
    cache_hits: AtomicU64,
    /// Watchdog process counters of engines that stopped (a running one adds its own).
    deadline_answers: AtomicU64,
    late_verdicts: AtomicU64,
    undelivered: AtomicU64,
    watchdog_resumed: AtomicU64,
}

/// What the permission threads check against.
#[derive(Debug, Default)]
struct BlockSet {
    paths: HashSet<PathBuf>,
    hashes: HashSet<[u8; 32]>,
}

impl BlockSet {
    fn from_entries(entries: &[BlockEntry]) -> BlockSet {
        let mut s = BlockSet::default();
        for e in entries {
            match &e.target {
                BlockTarget::Path(p) => {
                    s.paths.insert(p.clone());
                }
                BlockTarget::Sha256(h) => {
                    let mut raw = [0u8; 32];
                    if hex::decode_to_slice(h, &mut raw).is_ok() {
                        s.hashes.insert(raw);
                    }
                }
            }
        }
        s
    }
}

/// Cache key: a file's content is assumed unchanged while these are.
type Key = (u64, u64, u64, i64, i64, i64, i64);

/// Hash cache entries kept before the cache is cleared.
const CACHE_MAX: usize = 65_536;

/// State shared by the blocker and its threads.
struct Shared {
    set: RwLock<Arc<BlockSet>>,
    counters: Counters,
    cache: Mutex<HashMap<Key, [u8; 32]>>,
    settings: BlockSettings,
    alive: AtomicBool,
}

impl Shared {
    fn snapshot(&self) -> Arc<BlockSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Writes a permission response.
fn respond(fan: RawFd, fd: RawFd, allow: bool) -> io::Result<()> {
    let r = libc::fanotify_response { fd, response: if allow { libc::FAN_ALLOW } else { libc::FAN_DENY } };
    let len = std::mem::size_of::<libc::fanotify_response>();
    // SAFETY: writes `len` bytes from a live struct.
    let n = unsafe { libc::write(fan, (&r as *const libc::fanotify_response).cast(), len) };
    if n == len as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An event handed to a hasher, answered exactly once.
struct Pending {
    fd: OwnedFd,
    dog: Arc<Watchdog>,
    id: u64,
    answered: AtomicBool,
    deadline: Instant,
    key: Key,
    pid: i32,
}

impl Pending {
    /// Answers unless someone already did; returns whether this call answered.
    fn answer(&self, allow: bool, c: &Counters) -> bool {
        if self.answered.swap(true, Relaxed) {
            return false;
        }
        if !self.dog.answer(self.id, allow) {
            c.errors.fetch_add(1, Relaxed);
        }
        if allow {
            c.allowed.fetch_add(1, Relaxed);
        } else {
            c.denied.fetch_add(1, Relaxed);
        }
        true
    }
}

/// Messages to the watchdog.
enum Watch {
    Pending(Arc<Pending>),
    Denied(i32, String),
}

/// The mounts to mark, one per filesystem (a filesystem mark covers all
/// its mounts): pseudo, network and FUSE filesystems are left out.
fn mark_targets(mounts: &[edr_fanotify::Mount]) -> Vec<&edr_fanotify::Mount> {
    let mut seen = HashSet::new();
    mounts.iter().filter(|m| !edr_fanotify::is_pseudo(&m.fstype) && !edr_fanotify::is_remote_or_fuse(&m.fstype)).filter(|m| seen.insert(m.dev)).collect()
}

/// Marks every local filesystem for exec permission events. Returns how many.
fn mark_all(fan: BorrowedFd<'_>) -> usize {
    let mounts = edr_fanotify::read_mountinfo().unwrap_or_default();
    let mut marked = 0;
    for m in mark_targets(&mounts) {
        match edr_fanotify::mark(fan, libc::FAN_MARK_FILESYSTEM, libc::FAN_OPEN_EXEC_PERM, Path::new(&m.mount_point)) {
            Ok(()) => marked += 1,
            Err(e) => tracing::debug!(dev = ?m.dev, mount = %m.mount_point, fstype = %m.fstype, error = %e, "cannot mark filesystem for exec blocking"),
        }
    }
    marked
}

/// Removes every filesystem mark of the group: no new events after this.
fn flush_marks(fan: BorrowedFd<'_>) {
    if let Err(e) = edr_fanotify::flush_filesystem_marks(fan) {
        tracing::warn!(error = %e, "cannot remove the exec blocking marks");
    }
}

/// sha256 of an open file via pread, refusing to read past `max`.
fn hash_fd(file: &File, max: u64) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        off += n as u64;
        if off > max {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "grew past the hash limit"));
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// The running permission engine.
struct Engine {
    fan: Arc<OwnedFd>,
    dog: Arc<Watchdog>,
    stop: OwnedFd,
    reader: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    hashers: Vec<JoinHandle<()>>,
    marked: usize,
}

impl Engine {
    /// Creates the group, starts the threads, then marks the filesystems.
    fn start(shared: Arc<Shared>) -> Result<Engine, RespondError> {
        // SAFETY: plain syscall; the result is a new fd or -1.
        let fd = unsafe {
            libc::fanotify_init(libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK, (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32)
        };
        if fd < 0 {
            return Err(RespondError::Fanotify { what: "fanotify_init(FAN_CLASS_CONTENT)".into(), source: io::Error::last_os_error() });
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fan = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(RespondError::sys("eventfd for the exec-permission thread"));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(efd) };
        let stop_for_reader = stop.try_clone().map_err(|e| RespondError::Sys { what: "dup eventfd".into(), source: e })?;
        let st = &shared.settings;
        let deadline = Duration::from_millis(st.deadline_ms.max(1));
        let extend = deadline + Duration::from_millis(st.hash_timeout_ms);
        let dog = Arc::new(Watchdog::spawn(fan.as_raw_fd(), deadline, extend, st.fail_mode == BlockFailMode::Allow)?);

        let (hash_tx, hash_rx) = bounded::<Arc<Pending>>(256);
        let (watch_tx, watch_rx) = bounded::<Watch>(4096);
        shared.alive.store(true, Relaxed);
        let spawn_err = |e: io::Error| RespondError::Sys { what: "cannot start an exec-permission thread".into(), source: e };

        let mut engine = Engine { fan: fan.clone(), dog: dog.clone(), stop, reader: None, watchdog: None, hashers: Vec::new(), marked: 0 };
        let (s, d) = (shared.clone(), dog.clone());
        engine.watchdog = Some(std::thread::Builder::new().name("edr-exec-watchdog".into()).spawn(move || watchdog_loop(watch_rx, s, d)).map_err(spawn_err)?);
        for _ in 0..shared.settings.hashers.max(1) {
            let (rx, s) = (hash_rx.clone(), shared.clone());
            match std::thread::Builder::new().name("edr-exec-hash".into()).spawn(move || hasher_loop(rx, s)) {
                Ok(h) => engine.hashers.push(h),
                Err(e) => {
                    drop((hash_tx, watch_tx));
                    engine.stop();
                    return Err(spawn_err(e));
                }
            }
        }
        drop(hash_rx);
        let (s, f, d) = (shared.clone(), fan.clone(), dog.clone());
        match std::thread::Builder::new().name("edr-exec-perm".into()).spawn(move || reader_main(f, d, stop_for_reader, s, hash_tx, watch_tx)) {
            Ok(h) => engine.reader = Some(h),
            Err(e) => {
                engine.stop();
                return Err(spawn_err(e));
            }
        }
        engine.marked = mark_all(fan.as_fd());
        if engine.marked == 0 {
            engine.stop();
            return Err(RespondError::Fanotify {
                what: "fanotify_mark(FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC_PERM) on every filesystem".into(),
                source: io::Error::other("no filesystem could be marked"),
            });
        }
        tracing::info!(filesystems = engine.marked, watchdog_pid = dog.pid(), deadline_ms = st.deadline_ms, fail_mode = ?st.fail_mode, "exec blocking started");
        Ok(engine)
    }

    /// Picks up filesystems mounted since the last scan.
    fn remark(&mut self) {
        self.marked = mark_all(self.fan.as_fd());
    }

    /// Flushes the marks, stops the threads and closes the group.
    fn stop(&mut self) {
        flush_marks(self.fan.as_fd());
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        // Allows what the watchdog process holds, then it exits.
        self.dog.stop();
        let until = Instant::now() + Duration::from_secs(2);
        while self.hashers.iter().any(|h| !h.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        for h in self.hashers.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!("an exec hashing thread is stuck on a read; left behind (its filesystem marks are already removed)");
            }
        }
        tracing::info!("exec blocking stopped");
    }
}

/// Reader thread entry: runs the loop; on a panic, removes the marks and
/// answers what is queued so nothing stays frozen.
fn reader_main(fan: Arc<OwnedFd>, dog: Arc<Watchdog>, stop: OwnedFd, shared: Arc<Shared>, hash_tx: Sender<Arc<Pending>>, watch_tx: Sender<Watch>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader_loop(&dog, &stop, &shared, &hash_tx, &watch_tx)));
    if !matches!(r, Ok(ReaderEnd::Stopped)) {
        // A panic, or the watchdog process died: no new events, allow what is queued.
        shared.counters.errors.fetch_add(1, Relaxed);
        flush_marks(fan.as_fd());
        dog.stop();
        let mut buf = vec![0u8; 64 * 1024];
        drain_allow(fan.as_raw_fd(), &mut buf, &shared.counters);
    }
    shared.alive.store(false, Relaxed);
}

/// Why the reader loop ended.
enum ReaderEnd {
    /// The engine is stopping.
    Stopped,
    /// The watchdog process is gone (killed): the engine must be restarted.
    WatchdogGone,
}

const META_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

/// Reads one buffer of events; calls `f(mask, fd, pid)` for each. Returns
/// Ok(false) when the queue is empty.
fn read_events(fan: RawFd, buf: &mut [u8], c: &Counters, mut f: impl FnMut(u64, OwnedFd, i32)) -> io::Result<bool> {
    // SAFETY: reads into our buffer.
    let n = unsafe { libc::read(fan, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(false),
            io::ErrorKind::Interrupted => Ok(true),
            _ => Err(e),
        };
    }
    let n = n as usize;
    let mut off = 0;
    while off + META_LEN <= n {
        // SAFETY: at least META_LEN bytes are in bounds; read_unaligned copes with alignment.
        let m: libc::fanotify_event_metadata = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
        let len = m.event_len as usize;
        if len < META_LEN || off + len > n {
            c.errors.fetch_add(1, Relaxed);
            break;
        }
        off += len;
        if m.vers != libc::FANOTIFY_METADATA_VERSION {
            c.errors.fetch_add(1, Relaxed);
        }
        if m.fd < 0 {
            if m.mask & libc::FAN_Q_OVERFLOW != 0 {
                c.errors.fetch_add(1, Relaxed);
            }
            continue;
        }
        // SAFETY: the kernel gave us this fd with the event.
        let fd = unsafe { OwnedFd::from_raw_fd(m.fd) };
        f(m.mask, fd, m.pid);
    }
    Ok(true)
}

/// Answers ALLOW to everything queued (shutdown and panic paths).
fn drain_allow(fan: RawFd, buf: &mut [u8], c: &Counters) {
    for _ in 0..10_000 {
        let more = read_events(fan, buf, c, |mask, fd, _| {
            if mask & libc::FAN_OPEN_EXEC_PERM != 0 {
                c.events.fetch_add(1, Relaxed);
                if respond(fan, fd.as_raw_fd(), true).is_err() {
                    c.errors.fetch_add(1, Relaxed);
                }
                c.allowed.fetch_add(1, Relaxed);
            }
        });
        if !matches!(more, Ok(true)) {
            break;
        }
    }
}

fn reader_loop(dog: &Arc<Watchdog>, stop: &OwnedFd, shared: &Arc<Shared>, hash_tx: &Sender<Arc<Pending>>, watch_tx: &Sender<Watch>) -> ReaderEnd {
    let c = &shared.counters;
    loop {
        let mut fds =
            [libc::pollfd { fd: dog.fd(), events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                c.errors.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        if fds[1].revents != 0 {
            return ReaderEnd::Stopped;
        }
        if fds[0].revents == 0 {
            continue;
        }
        loop {
            match dog.recv() {
                Ok(Some(req)) => {
                    c.events.fetch_add(1, Relaxed);
                    handle(dog, req.id, req.fd, req.pid, shared, hash_tx, watch_tx);
                }
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let err = format!("the exec watchdog process (pid {}) is gone; exec blocking stopped until the next block request restarts it", dog.pid());
                    tracing::error!("{err}");
                    return ReaderEnd::WatchdogGone;
                }
                Err(_) => {
                    c.errors.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }
}

/// Decides one event, or hands it to a hasher. Never blocks.
fn handle(dog: &Arc<Watchdog>, id: u64, fd: OwnedFd, pid: i32, shared: &Arc<Shared>, hash_tx: &Sender<Arc<Pending>>, watch_tx: &Sender<Watch>) {
    let c = &shared.counters;
    let answer = |allow: bool| {
        if !dog.answer(id, allow) {
            c.errors.fetch_add(1, Relaxed);
        }
        if allow {
            c.allowed.fetch_add(1, Relaxed);
        } else {
            c.denied.fetch_add(1, Relaxed);
        }
    };
    // A writer holds this lock only to swap an Arc: never a slow wait.
    let set = shared.snapshot();
    if set.paths.is_empty() && set.hashes.is_empty() {
        return answer(true);
    }
    if !set.paths.is_empty() {
        match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(p) => {
                if set.paths.contains(&p) {
                    answer(false);
                    let _ = watch_tx.try_send(Watch::Denied(pid, format!("path {}", p.display())));
                    return;
                }
            }
            Err(_) => {
                c.errors.fetch_add(1, Relaxed);
            }
        }
    }
    if set.hashes.is_empty() {
        return answer(true);
    }
    // SAFETY: fstat into a zeroed struct on a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        c.errors.fetch_add(1, Relaxed);
        return answer(true);
    }
    let key: Key = (st.st_dev, st.st_ino, st.st_size as u64, st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec);
    let cached = match shared.cache.try_lock() {
        Ok(cache) => cache.get(&key).copied(),
        Err(_) => None,
    };
    if let Some(h) = cached {
        c.cache_hits.fetch_add(1, Relaxed);
        let deny = set.hashes.contains(&h);
        answer(!deny);
        if deny {
            let _ = watch_tx.try_send(Watch::Denied(pid, format!("sha256 {}", hex::encode(h))));
        }
        return;
    }
    if key.2 > shared.settings.hash_max_bytes {
        c.too_large.fetch_add(1, Relaxed);
        return answer(true);
    }
    let deadline = Instant::now() + Duration::from_millis(shared.settings.hash_timeout_ms);
    let p = Arc::new(Pending { fd, dog: dog.clone(), id, answered: AtomicBool::new(false), deadline, key, pid });
    // The watchdog process waits `hash_timeout_ms + deadline_ms` for a hashed file.
    dog.extend(id);
    if watch_tx.try_send(Watch::Pending(p.clone())).is_err() {
        c.overloaded.fetch_add(1, Relaxed);
        p.answer(true, c);
        return;
    }
    match hash_tx.try_send(p) {
        Ok(()) => {}
        Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => {
            c.overloaded.fetch_add(1, Relaxed);
            p.answer(true, c);
        }
    }
}

fn hasher_loop(rx: Receiver<Arc<Pending>>, shared: Arc<Shared>) {
    let c = &shared.counters;
    for p in rx.iter() {
        if p.answered.load(Relaxed) {
            continue;
        }
        let file = match p.fd.try_clone() {
            Ok(fd) => File::from(fd),
            Err(_) => {
                c.errors.fetch_add(1, Relaxed);
                p.answer(true, c);
                continue;
            }
        };
        match hash_fd(&file, shared.settings.hash_max_bytes) {
            Ok(h) => {
                c.hashed.fetch_add(1, Relaxed);
                {
                    let mut cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(p.key, h);
                }
                let deny = shared.snapshot().hashes.contains(&h);
                if p.answer(!deny, c) && deny {
                    tracing::warn!(pid = p.pid, sha256 = %hex::encode(h), "blocked execution");
                }
            }
            Err(_) => {
                c.errors.fetch_add(1, Relaxed);
                p.answer(true, c);
            }
        }
    }
}

fn watchdog_loop(rx: Receiver<Watch>, shared: Arc<Shared>, dog: Arc<Watchdog>) {
    let c = &shared.counters;
    let mut pending: Vec<Arc<Pending>> = Vec::new();
    let mut last_check = Instant::now();
    loop {
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            if dog.resume_if_stopped() {
                c.watchdog_resumed.fetch_add(1, Relaxed);
                tracing::warn!(pid = dog.pid(), "the exec watchdog process was stopped; resumed it (a stopped watchdog holds every exec)");
            }
        }
        let first = rx.recv_timeout(Duration::from_millis(20));
        let mut msgs = Vec::new();
        match first {
            Ok(m) => msgs.push(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for p in pending.drain(..) {
                    p.answer(true, c);
                }
                return;
            }
        }
        msgs.extend(rx.try_iter());
        for m in msgs {
            match m {
                Watch::Pending(p) => pending.push(p),
                Watch::Denied(pid, what) => tracing::warn!(pid, target = %what, "blocked execution"),
            }
        }
        let now = Instant::now();
        pending.retain(|p| {
            if p.answered.load(Relaxed) {
                return false;
            }
            if now >= p.deadline {
                if p.answer(true, c) {
                    c.timeouts.fetch_add(1, Relaxed);
                    tracing::warn!(pid = p.pid, "exec allowed: hashing took too long");
                }
                return false;
            }
            true
        });
    }
}

/// Blocks, their persistence and the engine's lifetime.
pub(crate) struct Blocker {
    shared: Arc<Shared>,
    entries: Mutex<Vec<BlockEntry>>,
    engine: Mutex<Option<Engine>>,
    persist: Option<PathBuf>,
    last_error: Mutex<Option<String>>,
    /// sha256 of protected executables, by path and file identity.
    protected_hashes: Mutex<HashMap<(PathBuf, Key), [u8; 32]>>,
}

/// The cache key of an open file.
fn key_of(m: &std::fs::Metadata) -> Key {
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

impl Blocker {
    /// Loads persisted blocks (if any) and starts the engine for them.
    pub(crate) fn new(settings: BlockSettings, persist: Option<PathBuf>) -> Result<Blocker, RespondError> {
        let entries: Vec<BlockEntry> = match &persist {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p).map_err(|e| RespondError::io("cannot read the block list", p, e))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| RespondError::Config(format!("block list {} is not valid JSON ({e}); fix or remove it", p.display())))?
            }
            _ => Vec::new(),
        };
        let b = Blocker {
            shared: Arc::new(Shared {
                set: RwLock::new(Arc::new(BlockSet::from_entries(&entries))),
                counters: Counters::default(),
                cache: Mutex::new(HashMap::new()),
                settings,
                alive: AtomicBool::new(false),
            }),
            entries: Mutex::new(entries),
            engine: Mutex::new(None),
            persist,
            last_error: Mutex::new(None),
            protected_hashes: Mutex::new(HashMap::new()),
        };
        let has = !b.entries.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if has {
            if let Err(e) = b.ensure_running() {
                tracing::error!(error = %e, "persisted execution blocks are NOT enforced");
            }
        }
        Ok(b)
    }

    fn record_error(&self, e: &RespondError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// Starts the engine, or restarts it if its reader died; re-marks filesystems.
    fn ensure_running(&self) -> Result<usize, RespondError> {
        let mut eng = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = eng.as_mut() {
            if self.shared.alive.load(Relaxed) {
                e.remark();
                return Ok(e.marked);
            }
            e.stop();
            fold_dog_counters(&self.shared.counters, &e.dog);
            *eng = None;
        }
        match Engine::start(self.shared.clone()) {
            Ok(e) => {
                let m = e.marked;
                *eng = Some(e);
                Ok(m)
            }
            Err(err) => {
                self.record_error(&err);
                Err(err)
            }
        }
    }

    fn stop_engine(&self) {
        if let Some(mut e) = self.engine.lock().unwrap_or_else(|p| p.into_inner()).take() {
            e.stop();
            fold_dog_counters(&self.shared.counters, &e.dog);
        }
    }

    fn publish(&self, entries: &[BlockEntry]) -> Result<(), RespondError> {
        *self.shared.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(BlockSet::from_entries(entries));
        if let Some(p) = &self.persist {
            let dir = fsutil::parent_of(p);
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "blocks.json".into());
            fsutil::write_json_atomic(&dir, &name, &entries, 0o600)?;
        }
        Ok(())
    }

    /// Normalises a target and refuses protected executables.
    pub(crate) fn check(&self, target: &BlockTarget, protected: &[(PathBuf, String)]) -> Result<BlockTarget, RespondError> {
        let t = normalize(target)?;
        match &t {
            BlockTarget::Path(p) => {
                for (q, why) in protected {
                    if std::fs::canonicalize(q).map(|c| c == *p).unwrap_or(false) || q == p {
                        return Err(RespondError::ProtectedFile { path: p.clone(), why: why.clone() });
                    }
                }
            }
            BlockTarget::Sha256(h) => {
                for (q, why) in protected {
                    if self.protected_hash(q).is_some_and(|raw| hex::encode(raw) == *h) {
                        return Err(RespondError::ProtectedFile { path: q.clone(), why: format!("{why}; it has this sha256") });
                    }
                }
            }
        }
        Ok(t)
    }

    /// The sha256 of a protected executable, cached while the file is unchanged.
    fn protected_hash(&self, path: &Path) -> Option<[u8; 32]> {
        let f = File::open(path).ok()?;
        let m = f.metadata().ok()?;
        if m.size() > self.shared.settings.hash_max_bytes {
            return None;
        }
        let k = (path.to_path_buf(), key_of(&m));
        if let Some(h) = self.protected_hashes.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return Some(*h);
        }
        let h = hash_fd(&f, self.shared.settings.hash_max_bytes).ok()?;
        let mut cache = self.protected_hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(k, h);
        Some(h)
    }

    /// Adds a block (idempotent) and makes sure the engine enforces it.
    pub(crate) fn block(&self, target: &BlockTarget, reason: &str, requester: &str, protected: &[(PathBuf, String)]) -> Result<Detail, RespondError> {
        let t = self.check(target, protected)?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let marked = self.ensure_running()?;
        let already = entries.iter().any(|e| e.target == t);
        if !already {
            entries.push(BlockEntry { target: t.clone(), since: edr_event::time::now(), reason: reason.to_string(), requester: requester.to_string() });
            if let Err(e) = self.publish(&entries) {
                entries.pop();
                let _ = self.publish(&entries);
                return Err(e);
            }
        }
        tracing::warn!(target = %t, "execution blocked");
        Ok(Detail::from([
            ("blocked".into(), t.to_string()),
            ("already_blocked".into(), already.to_string()),
            ("filesystems_marked".into(), marked.to_string()),
            ("active_blocks".into(), entries.len().to_string()),
        ]))
    }

    /// Removes a block; stops the engine when none is left.
    pub(crate) fn unblock(&self, target: &BlockTarget) -> Result<Detail, RespondError> {
        let t = normalize(target)?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pos) = entries.iter().position(|e| e.target == t) else {
            return Err(RespondError::invalid(&t, format!("is not blocked ({} active blocks)", entries.len())));
        };
        let removed = entries.remove(pos);
        if let Err(e) = self.publish(&entries) {
            entries.insert(pos, removed);
            let _ = self.publish(&entries);
            return Err(e);
        }
        let stopped = entries.is_empty();
        if stopped {
            self.stop_engine();
        }
        tracing::warn!(target = %t, "execution block removed");
        Ok(Detail::from([
            ("unblocked".into(), t.to_string()),
            ("active_blocks".into(), entries.len().to_string()),
            ("engine_stopped".into(), stopped.to_string()),
        ]))
    }

    /// What unblocking would do (simulate mode).
    pub(crate) fn plan_unblock(&self, target: &BlockTarget) -> Result<Detail, RespondError> {
        let t = normalize(target)?;
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.iter().any(|e| e.target == t) {
            return Err(RespondError::invalid(&t, "is not blocked"));
        }
        Ok(Detail::from([("would_unblock".into(), t.to_string())]))
    }

    /// The active blocks.
    pub(crate) fn entries(&self) -> Vec<BlockEntry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counters and state of the engine.
    pub(crate) fn stats(&self) -> BlockStats {
        let c = &self.shared.counters;
        let eng = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let dog = eng.as_ref().map(|e| e.dog.counters());
        let with_dog = |base: &AtomicU64, f: fn(&watchdog::DogCounters) -> &AtomicU64| base.load(Relaxed) + dog.map_or(0, |d| f(d).load(Relaxed));
        BlockStats {
            running: eng.is_some() && self.shared.alive.load(Relaxed),
            filesystems_marked: eng.as_ref().map_or(0, |e| e.marked),
            events: c.events.load(Relaxed),
            allowed: c.allowed.load(Relaxed),
            denied: c.denied.load(Relaxed),
            errors: c.errors.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            overloaded: c.overloaded.load(Relaxed),
            too_large: c.too_large.load(Relaxed),
            hashed: c.hashed.load(Relaxed),
            cache_hits: c.cache_hits.load(Relaxed),
            deadline_ms: self.shared.settings.deadline_ms,
            fail_mode: self.shared.settings.fail_mode,
            deadline_answers: with_dog(&c.deadline_answers, |d| &d.deadline_answers),
            late_verdicts: with_dog(&c.late_verdicts, |d| &d.late_verdicts),
            undelivered: with_dog(&c.undelivered, |d| &d.undelivered),
            watchdog_resumed: c.watchdog_resumed.load(Relaxed),
            watchdog_pid: eng.as_ref().filter(|_| self.shared.alive.load(Relaxed)).map(|e| e.dog.pid()),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        self.stop_engine();
    }
}

/// Adds a stopped engine's watchdog counters to the totals.
fn fold_dog_counters(c: &Counters, dog: &Watchdog) {
    let d = dog.counters();
    c.deadline_answers.fetch_add(d.deadline_answers.load(Relaxed), Relaxed);
    c.late_verdicts.fetch_add(d.late_verdicts.load(Relaxed), Relaxed);
    c.undelivered.fetch_add(d.undelivered.load(Relaxed), Relaxed);
    c.errors.fetch_add(d.errors.load(Relaxed), Relaxed);
}

/// Checks a target and puts it in canonical form: lowercase hashes; absolute
/// paths resolved through symlinks (the kernel reports resolved paths), or
/// with their directory resolved when the file does not exist (yet).
fn normalize(target: &BlockTarget) -> Result<BlockTarget, RespondError> {
    match target {
        BlockTarget::Sha256(h) => Ok(BlockTarget::Sha256(fsutil::normalize_sha256(h)?)),
        BlockTarget::Path(p) => {
            fsutil::check_absolute(p)?;
            match std::fs::canonicalize(p) {
                Ok(c) => {
                    if c.is_dir() {
                        return Err(RespondError::invalid(p.display(), "is a directory; block files"));
                    }
                    Ok(BlockTarget::Path(c))
                }
                Err(_) => {
                    let parent = fsutil::parent_of(p);
                    let base = std::fs::canonicalize(&parent).unwrap_or(parent);
                    match p.file_name() {
                        Some(name) => Ok(BlockTarget::Path(base.join(name))),
                        None => Err(RespondError::invalid(p.display(), "names no file")),
                    }
                }
            }
        }
    }
}

/// Executables whose blocking would break the host or the agent: the agent,
/// the dynamic loaders, `/bin/sh`, the `nft` binary (release needs it).
pub(crate) fn critical_executables() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if let Ok(p) = std::fs::read_link("/proc/self/exe") {
        out.push((p, "the agent's own executable".to_string()));
    }
    for p in [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-linux-armhf.so.3",
        "/lib/ld-linux.so.2",
        "/lib/ld-musl-x86_64.so.1",
        "/lib/ld-musl-aarch64.so.1",
    ] {
        if Path::new(p).exists() {
            out.push((PathBuf::from(p), "the dynamic loader".to_string()));
        }
    }
    for p in ["/bin/sh", "/usr/sbin/nft", "/sbin/nft"] {
        if Path::new(p).exists() {
            out.push((PathBuf::from(p), "needed by the system or the agent".to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let h = "AB".repeat(32);
        assert_eq!(BlockTarget::parse(&h), BlockTarget::Sha256("ab".repeat(32)));
        assert_eq!(BlockTarget::parse("/tmp/x"), BlockTarget::Path("/tmp/x".into()));
        assert!(normalize(&BlockTarget::Path("tmp/x".into())).is_err());
        assert!(normalize(&BlockTarget::Sha256("abc".into())).is_err());
        assert!(normalize(&BlockTarget::Path("/".into())).is_err());
        // /bin is a symlink on merged-/usr systems; the kernel reports the resolved path.
        let t = normalize(&BlockTarget::Path("/bin/true".into())).unwrap();
        assert_eq!(t, BlockTarget::Path(std::fs::canonicalize("/bin/true").unwrap()));
    }

    #[test]
    fn mountinfo_skips_pseudo_fuse_and_duplicates() {
        let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    28 27 254:0 /srv /srv\\040data rw - ext4 /dev/vda rw\n\
                    30 24 0:27 / /dev/shm rw - tmpfs tmpfs rw\n\
                    31 27 0:50 / /mnt/s rw - fuse.sshfs host: rw\n\
                    32 27 0:51 / /mnt/n rw - nfs4 srv:/x rw\n";
        let all = edr_fanotify::parse_mountinfo(text);
        let mounts: Vec<_> = mark_targets(&all).iter().map(|m| (m.mount_point.as_str(), m.fstype.as_str())).collect();
        assert_eq!(mounts, vec![("/", "ext4"), ("/dev/shm", "tmpfs")]);
    }

    #[test]
    fn critical_executables_are_refused() {
        let b = Blocker::new(BlockSettings::default(), None).unwrap();
        let crit = critical_executables();
        let sh = crit.iter().find(|(p, _)| p == Path::new("/bin/sh")).expect("/bin/sh exists").0.clone();
        let err = b.check(&BlockTarget::Path(sh.clone()), &crit).unwrap_err();
        assert!(matches!(err, RespondError::ProtectedFile { .. }), "{err}");
        let raw = hash_fd(&File::open(&sh).unwrap(), u64::MAX).unwrap();
        let err = b.check(&BlockTarget::Sha256(hex::encode(raw)), &crit).unwrap_err();
        assert!(matches!(err, RespondError::ProtectedFile { .. }), "{err}");
        assert!(b.check(&BlockTarget::Sha256("00".repeat(32)), &crit).is_ok());
        assert!(!b.stats().running, "checking starts nothing");
    }
}
