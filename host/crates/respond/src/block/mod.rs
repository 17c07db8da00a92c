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
//!   see `watchdog.rs`) is the only reader of the group. It hands each
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
//! Layout: `list.rs` holds what is blocked and where it is saved, `cache.rs`
//! the hashing and the hash caches, `engine.rs` the group, its marks and the
//! threads, `watchdog.rs` the watchdog process; this module the settings,
//! the counters and the `Blocker` that ties them together. Events are
//! decoded and answered with `edr_fanotify`'s reader.
//!
//! Limits: only direct execution is seen. `sh script.sh` or
//! `/lib64/ld-linux-x86-64.so.2 ./binary` read the file with a plain open
//! and are not blocked; blocking does not stop processes already running.

use crate::{Detail, RespondError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

mod cache;
mod engine;
mod list;
mod watchdog;

use cache::{HashCache, ProtectedHashes};
use engine::{Counters, Engine, Shared};
pub(crate) use list::critical_executables;
use list::{normalize, BlockSet};
pub use list::{BlockEntry, BlockTarget};
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

/// Blocks, their persistence and the engine's lifetime.
pub(crate) struct Blocker {
    shared: Arc<Shared>,
    entries: Mutex<Vec<BlockEntry>>,
    engine: Mutex<Option<Engine>>,
    persist: Option<PathBuf>,
    last_error: Mutex<Option<String>>,
    /// sha256 of protected executables, by path and file identity.
    protected_hashes: ProtectedHashes,
}

impl Blocker {
    /// Loads persisted blocks (if any) and starts the engine for them.
    pub(crate) fn new(settings: BlockSettings, persist: Option<PathBuf>) -> Result<Blocker, RespondError> {
        let entries = match &persist {
            Some(p) => list::load(p)?,
            None => Vec::new(),
        };
        let b = Blocker {
            shared: Arc::new(Shared {
                set: RwLock::new(Arc::new(BlockSet::from_entries(&entries))),
                counters: Counters::default(),
                cache: HashCache::default(),
                settings,
                alive: AtomicBool::new(false),
            }),
            entries: Mutex::new(entries),
            engine: Mutex::new(None),
            persist,
            last_error: Mutex::new(None),
            protected_hashes: ProtectedHashes::default(),
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
            list::save(p, entries)?;
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
    fn protected_hash(&self, path: &std::path::Path) -> Option<[u8; 32]> {
        self.protected_hashes.get(path, self.shared.settings.hash_max_bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_executables_are_refused() {
        let b = Blocker::new(BlockSettings::default(), None).unwrap();
        let crit = critical_executables();
        let sh = crit.iter().find(|(p, _)| p == std::path::Path::new("/bin/sh")).expect("/bin/sh exists").0.clone();
        let err = b.check(&BlockTarget::Path(sh.clone()), &crit).unwrap_err();
        assert!(matches!(err, RespondError::ProtectedFile { .. }), "{err}");
        let raw = cache::hash_fd(&std::fs::File::open(&sh).unwrap(), u64::MAX).unwrap();
        let err = b.check(&BlockTarget::Sha256(hex::encode(raw)), &crit).unwrap_err();
        assert!(matches!(err, RespondError::ProtectedFile { .. }), "{err}");
        assert!(b.check(&BlockTarget::Sha256("00".repeat(32)), &crit).is_ok());
        assert!(!b.stats().running, "checking starts nothing");
    }
}
