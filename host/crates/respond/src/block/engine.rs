//! The exec-permission engine: the fanotify group and its marks, the
//! watchdog process that reads it, and the agent's threads that decide
//! (reader), hash (hashers) and time out (watchdog thread). See the
//! [module doc](super) for how an event flows and what bounds each wait.

use super::cache::{self, HashCache, Key};
use super::list::BlockSet;
use super::watchdog::Watchdog;
use super::{BlockFailMode, BlockSettings};
use crate::RespondError;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use edr_fanotify::Response;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The engine's counters (see [`super::BlockStats`]).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) events: AtomicU64,
    pub(super) allowed: AtomicU64,
    pub(super) denied: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) overloaded: AtomicU64,
    pub(super) too_large: AtomicU64,
    pub(super) hashed: AtomicU64,
    pub(super) cache_hits: AtomicU64,
    /// Watchdog process counters of engines that stopped (a running one adds its own).
    pub(super) deadline_answers: AtomicU64,
    pub(super) late_verdicts: AtomicU64,
    pub(super) undelivered: AtomicU64,
    pub(super) watchdog_resumed: AtomicU64,
}

/// State shared by the blocker and its threads.
pub(super) struct Shared {
    /// What is blocked, swapped whole on a change.
    pub(super) set: RwLock<Arc<BlockSet>>,
    /// The engine's counters.
    pub(super) counters: Counters,
    /// Hashes of executed files.
    pub(super) cache: HashCache,
    /// The engine's tuning.
    pub(super) settings: BlockSettings,
    /// The reader thread runs.
    pub(super) alive: AtomicBool,
}

impl Shared {
    fn snapshot(&self) -> Arc<BlockSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
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
pub(super) fn flush_marks(fan: BorrowedFd<'_>) {
    if let Err(e) = edr_fanotify::flush_filesystem_marks(fan) {
        tracing::warn!(error = %e, "cannot remove the exec blocking marks");
    }
}

/// The running permission engine.
pub(super) struct Engine {
    fan: Arc<OwnedFd>,
    /// The watchdog process (its counters and pid are reported).
    pub(super) dog: Arc<Watchdog>,
    stop: OwnedFd,
    reader: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
    hashers: Vec<JoinHandle<()>>,
    /// Filesystems marked at the last (re)scan.
    pub(super) marked: usize,
}

impl Engine {
    /// Creates the group, starts the threads, then marks the filesystems.
    pub(super) fn start(shared: Arc<Shared>) -> Result<Engine, RespondError> {
        let fan =
            edr_fanotify::init(libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK, (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32)
                .map_err(|source| RespondError::Fanotify { what: "fanotify_init(FAN_CLASS_CONTENT)".into(), source })?;
        let fan = Arc::new(fan);
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
    pub(super) fn remark(&mut self) {
        self.marked = mark_all(self.fan.as_fd());
    }

    /// Flushes the marks, stops the threads and closes the group.
    pub(super) fn stop(&mut self) {
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
        drain_allow(fan.as_fd(), &mut buf, &shared.counters);
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

/// Answers ALLOW to everything queued (shutdown and panic paths).
fn drain_allow(fan: BorrowedFd<'_>, buf: &mut [u8], c: &Counters) {
    for _ in 0..10_000 {
        let events = match edr_fanotify::read_events(fan, buf) {
            Ok(Some(events)) if events.bytes() > 0 => events,
            _ => break,
        };
        for ev in events {
            let Ok(ev) = ev else {
                c.errors.fetch_add(1, Relaxed);
                continue;
            };
            match ev.fd {
                Some(fd) if ev.mask & libc::FAN_OPEN_EXEC_PERM != 0 => {
                    c.events.fetch_add(1, Relaxed);
                    if edr_fanotify::respond(fan, fd.as_raw_fd(), Response::Allow).is_err() {
                        c.errors.fetch_add(1, Relaxed);
                    }
                    c.allowed.fetch_add(1, Relaxed);
                }
                None if ev.is_overflow() => {
                    c.errors.fetch_add(1, Relaxed);
                }
                _ => {}
            }
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
    let key = cache::key_of_stat(&st);
    let cached = shared.cache.try_get(&key);
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
        match cache::hash_fd(&file, shared.settings.hash_max_bytes) {
            Ok(h) => {
                c.hashed.fetch_add(1, Relaxed);
                shared.cache.insert(p.key, h);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
