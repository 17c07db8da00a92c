//! Degraded process collection: diff the process table (via `sysinfo`)
//! every interval and synthesise exec and exit events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use crate::procfs::{self, Snapshot};
use crate::sink::Sink;
use crate::Ctx;

/// What the poller remembers of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    start_ticks: u64,
    exe: Option<PathBuf>,
}

/// The polling state.
pub(crate) struct Poller {
    sys: System,
    seen: HashMap<u32, Seen>,
    /// Processes caught in the middle of an exec (new exe, arguments not
    /// set up yet): looked at again next tick, a few times at most.
    deferred: HashMap<u32, u8>,
}

/// Ticks a process caught mid-exec is waited for.
const MAX_DEFER: u8 = 3;

fn refresh_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().with_exe(UpdateKind::Always).without_tasks()
}

impl Poller {
    /// Takes the first snapshot (the baseline: no events for it).
    pub fn new(_ctx: &Ctx) -> Result<Poller, String> {
        let sys = System::new().map_err(|e| format!("sysinfo: {e}"))?;
        let mut p = Poller { sys, seen: HashMap::new(), deferred: HashMap::new() };
        p.refresh();
        for (pid, exe) in p.table() {
            if let Ok(st) = procfs::read_stat(pid) {
                p.seen.insert(pid, Seen { start_ticks: st.start_ticks, exe });
            }
        }
        Ok(p)
    }

    fn refresh(&mut self) {
        self.sys.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
    }

    fn table(&self) -> Vec<(u32, Option<PathBuf>)> {
        self.sys.processes().iter().filter(|(_, p)| p.thread_kind().is_none()).map(|(pid, p)| (pid.as_u32(), p.exe().map(PathBuf::from))).collect()
    }

    /// Polls until stopped.
    pub fn run(mut self, ctx: &Ctx, sink: &Sink, interval: Duration) {
        let mut last_evict = Instant::now();
        while !ctx.stopping() {
            let started = Instant::now();
            self.tick(ctx, sink);
            if last_evict.elapsed() >= Duration::from_secs(1) {
                ctx.tree.evict(Instant::now());
                last_evict = Instant::now();
            }
            let spent = started.elapsed();
            ctx.sleep(interval.saturating_sub(spent));
        }
    }

    /// Whether a process caught mid-exec (new exe, no arguments yet) is
    /// looked at again next tick instead of now.
    fn defer(&self, pid: u32, snap: &Snapshot, deferred: &mut HashMap<u32, u8>) -> bool {
        let mid_exec = snap.exe.is_some() && snap.argv.is_none() && snap.stat.as_ref().is_some_and(|s| s.state != 'Z');
        let tries = self.deferred.get(&pid).copied().unwrap_or(0);
        if mid_exec && tries < MAX_DEFER {
            deferred.insert(pid, tries + 1);
            return true;
        }
        false
    }

    /// One diff of the process table.
    pub(crate) fn tick(&mut self, ctx: &Ctx, sink: &Sink) {
        self.refresh();
        let table = self.table();
        let mut current: HashMap<u32, Seen> = HashMap::with_capacity(table.len());
        let mut new_pids = Vec::new();
        let mut deferred = HashMap::new();
        for (pid, exe) in table {
            match self.seen.get(&pid) {
                Some(s) if s.exe == exe => {
                    current.insert(pid, s.clone());
                }
                Some(s) => {
                    // Same pid, new image: an exec in place, or a reused pid.
                    let ticks = procfs::read_stat(pid).map(|st| st.start_ticks).unwrap_or(s.start_ticks);
                    if ticks != s.start_ticks {
                        super::on_exit(ctx, sink, pid, None);
                        new_pids.push((pid, exe.clone()));
                    } else {
                        let snap = Snapshot::read(pid);
                        if self.defer(pid, &snap, &mut deferred) {
                            current.insert(pid, s.clone());
                            continue;
                        }
                        let fallback = exe.as_ref().map(|e| super::ExecImage { exe: e.to_string_lossy().into_owned(), ..Default::default() });
                        super::on_exec(ctx, sink, pid, snap, None, fallback);
                    }
                    current.insert(pid, Seen { start_ticks: ticks, exe });
                }
                None => new_pids.push((pid, exe)),
            }
        }
        let gone: Vec<u32> = self.seen.keys().filter(|p| !current.contains_key(p) && !new_pids.iter().any(|(n, _)| n == *p)).copied().collect();
        // Parents before children, so lineage links up within one tick.
        new_pids.sort_by_key(|(pid, _)| procfs::read_stat(*pid).map(|s| s.start_ticks).unwrap_or(u64::MAX));
        for (pid, exe) in new_pids {
            let snap = Snapshot::read(pid);
            if self.defer(pid, &snap, &mut deferred) {
                continue;
            }
            let ticks = snap.stat.as_ref().map_or(0, |s| s.start_ticks);
            let fallback = exe.as_ref().map(|e| super::ExecImage { exe: e.to_string_lossy().into_owned(), ..Default::default() });
            let parent = snap.stat.as_ref().and_then(|s| ctx.tree.live_node(s.ppid));
            let fork_only = match (&parent, &snap.exe, &snap.argv) {
                (Some(p), Some(e), Some(a)) => p.info.exe == *e && p.info.argv == crate::tree::Node::cap_argv(a),
                _ => false,
            };
            if fork_only {
                if let Some(p) = parent {
                    super::on_fork(ctx, p.info.pid, pid, 0);
                }
            } else {
                super::on_exec(ctx, sink, pid, snap, None, fallback);
            }
            current.insert(pid, Seen { start_ticks: ticks, exe });
        }
        for pid in gone {
            super::on_exit(ctx, sink, pid, None);
        }
        self.seen = current;
        self.deferred = deferred;
    }
}
