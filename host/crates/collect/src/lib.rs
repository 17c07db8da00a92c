//! Live endpoint telemetry for the `edr` agent.
//!
//! [`Collectors::start`] starts one collector per kind of event, each on its
//! own thread, and sends [`edr_event::Event`]s (id 0: the agent numbers
//! them; `time` = now in ns; `partial` when fields are missing) into the
//! agent's bounded channel. A full channel never blocks a collector: the
//! event is dropped and counted.
//!
//! | collector | best mode (root) | degraded mode |
//! |---|---|---|
//! | [`process`](ProcessConfig) | `netlink`: CN_PROC fork/exec/exit, enriched from `/proc`; the exe of processes gone before that from fanotify `FAN_OPEN_EXEC` | `netlink` without those exes (not root); `poll`: `sysinfo` table diff |
//! | [`file`](FileConfig) | `fanotify`: filesystem marks, pid-attributed | `inotify` (`notify` crate), no pid |
//! | [`network`](NetworkConfig) | `ebpf` TCP (`inet_sock_set_state`: every connection, pid from the kernel) + `procfs` UDP | `procfs`: `/proc/net/{tcp,udp}{,6}` polled, inode -> pid; pids of other users unknown when not root |
//! | [`login`](LoginConfig) | tail the auth log + wtmp/btmp | same |
//!
//! [`Collectors::status`] reports, per collector, the mode in use (and why it
//! is degraded), the events sent, the partial events, the events dropped on
//! a full channel, what the kernel reported lost, and the event rate; for
//! processes also how many exec events got their exe from fanotify
//! (`exe_recovered`) and how many have none (`exe_missing`).
//! [`Collectors::process_tree`] gives the lineage of any process the agent
//! saw, including ones that already exited.
//!
//! ```no_run
//! use edr_collect::{CollectConfig, Collectors};
//! let (tx, rx) = crossbeam_channel::bounded(65_536);
//! let mut cfg = CollectConfig::default(); // excludes this process's own activity
//! cfg.exclude_paths.push("/var/lib/edr".into()); // the agent's data dir
//! let collectors = Collectors::start(cfg, tx)?;
//! for s in collectors.status() {
//!     eprintln!("{}: {}", s.name, s.mode);
//! }
//! let event = rx.recv().unwrap();
//! collectors.stop();
//! # Ok::<(), edr_collect::CollectError>(())
//! ```

#![deny(missing_docs)]

mod attribute;
mod config;
mod error;
pub mod file;
pub mod login;
pub mod network;
pub mod process;
mod procfs;
mod sink;
mod tree;

pub use config::{
    CollectConfig, FileConfig, FileMode, LoginConfig, LoginMode, NetworkConfig, NetworkMode, ProcessConfig, ProcessMode, DEFAULT_EXCLUDE, DEFAULT_INCLUDE,
    DEFAULT_SENSITIVE,
};
pub use error::CollectError;
pub use procfs::entity_id;
pub use sink::CollectorStatus;
pub use tree::{ProcessTree, MAX_TREE_ARGS, MAX_TREE_ARGV_BYTES};

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use edr_event::Event;

use procfs::{BootInfo, Users};
use sink::{Counters, Sink};

/// What every collector shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub boot: BootInfo,
    pub tree: Arc<ProcessTree>,
    pub users: Users,
    pub exclude_pids: HashSet<u32>,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
}

impl Ctx {
    pub(crate) fn new(boot: BootInfo, tree: Arc<ProcessTree>, exclude_pids: HashSet<u32>) -> Ctx {
        Ctx { boot, tree, users: Users::new("/etc/passwd"), exclude_pids, stop: AtomicBool::new(false), wake: (Mutex::new(()), Condvar::new()) }
    }

    /// Whether the collectors are being stopped.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`, waking early when the collectors are stopped.
    pub(crate) fn sleep(&self, d: Duration) {
        let guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopping() {
            return;
        }
        let _ = self.wake.1.wait_timeout(guard, d);
    }

    pub(crate) fn request_stop(&self) {
        let _g = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        self.stop.store(true, Ordering::Release);
        self.wake.1.notify_all();
    }
}

/// The running collectors. Dropping it stops them too.
pub struct Collectors {
    ctx: Arc<Ctx>,
    counters: Vec<Arc<Counters>>,
    threads: Vec<JoinHandle<()>>,
    /// Resources that live as long as the collectors (the inotify watcher).
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let modes: Vec<(&str, String)> = self.counters.iter().map(|c| (c.name, c.mode())).collect();
        f.debug_struct("Collectors").field("modes", &modes).finish()
    }
}

impl Collectors {
    /// Starts every enabled collector on its own thread(s); events go to `tx`
    /// (bounded). A full channel never blocks a collector: the event is
    /// dropped and counted. Returns once every collector is live (subscribed,
    /// marked, baseline taken), so activity after this returns is seen.
    ///
    /// A collector in `Auto` mode degrades rather than fail; a specific mode
    /// that is unavailable is an error.
    pub fn start(cfg: CollectConfig, tx: Sender<Event>) -> Result<Collectors, CollectError> {
        let boot = BootInfo::read()?;
        let tree = Arc::new(ProcessTree::new(tree::Retention { max_age: cfg.process.retain_exited, max_exited: cfg.process.max_exited }));
        let ctx = Arc::new(Ctx::new(boot, tree, cfg.exclude_pids.iter().copied().collect()));
        let mut me = Collectors { ctx: ctx.clone(), counters: Vec::new(), threads: Vec::new(), _keep: Vec::new() };

        let c = Counters::new("process", "starting");
        me.counters.push(c.clone());
        me.threads.extend(process::start(&cfg.process, &ctx, Sink::new(tx.clone(), c))?);

        let c = Counters::new("file", "starting");
        me.counters.push(c.clone());
        let (threads, keep) = file::start(&cfg.file, &cfg.exclude_paths, &ctx, Sink::new(tx.clone(), c))?;
        me.threads.extend(threads);
        me._keep.extend(keep);

        let c = Counters::new("network", "starting");
        me.counters.push(c.clone());
        me.threads.extend(network::start(&cfg.network, &ctx, Sink::new(tx.clone(), c))?);

        let c = Counters::new("login", "starting");
        me.counters.push(c.clone());
        me.threads.extend(login::start(&cfg.login, &ctx, Sink::new(tx, c))?);
        Ok(me)
    }

    /// One entry per collector (`process`, `file`, `network`, `login`).
    pub fn status(&self) -> Vec<CollectorStatus> {
        self.counters.iter().map(|c| c.status()).collect()
    }

    /// The process tree (kept up to date by the process collector; empty
    /// when it is off).
    pub fn process_tree(&self) -> Arc<ProcessTree> {
        self.ctx.tree.clone()
    }

    /// Stops every collector and joins its threads (within ~250 ms).
    pub fn stop(self) {
        drop(self)
    }

    fn shutdown(&mut self) {
        self.ctx.request_stop();
        self._keep.clear();
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("collector").to_string();
            if t.join().is_err() {
                tracing::error!("{name} panicked");
            }
        }
    }
}

impl Drop for Collectors {
    fn drop(&mut self) {
        self.shutdown();
    }
}
