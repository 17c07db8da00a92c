//! Process collector: exec and exit events with lineage, and the process tree.
//!
//! * `ebpf` (root, kernel BTF; the first choice of `auto`): hooks on
//!   `sched_process_fork/exec/exit` hand every fork, exec and exit over a
//!   ring buffer with pid, ppid, start time, euid, argv, exe and cwd read in
//!   the kernel (the private module `ebpf` documents what still comes from
//!   `/proc`). Records the ring buffer could not take are counted per CPU
//!   (`lost`). Where the hooks do not load, `auto` falls back to `netlink`
//!   and the mode says why (`[eBPF unavailable: ...]`).
//! * `netlink` (root; any user on recent kernels, which then cannot read
//!   other users' `/proc/<pid>/exe`, so their execs are partial): the
//!   kernel's process connector (CN_PROC) reports every
//!   fork, exec and exit as it happens. Each exec is enriched at once from
//!   `/proc/<pid>` (exe, argv, cwd, effective uid, start time). A process that
//!   is gone before that (short-lived; its `/proc/<pid>/exe` no longer
//!   resolves) still yields an exec event with what is known (pid, ppid, the
//!   parent from the tree), marked partial and counted. Its executable comes
//!   from fanotify `FAN_OPEN_EXEC` where that is available (root: mode
//!   `netlink + fanotify exec paths ...`; a separate fd-mode group with a
//!   filesystem mark on every local filesystem, read on this collector's
//!   thread right after each exec message, which the kernel sends only
//!   once the exec's files were reported: the private modules `exec_paths`
//!   and `exec_match` document the details), counted in
//!   `exe_recovered`; its argv is then the executed files (`[exe]`, or
//!   `[interpreter, script]`), else its comm when `/proc/<pid>/stat` was
//!   still readable. Without fanotify the mode says why, and such execs
//!   have no exe (`exe_missing` counts them). Execs fanotify cannot see
//!   (a memfd: `memfd_create` + `execve("/proc/self/fd/N")` or `fexecve`)
//!   report only their loader, which never stands for the exe: such a
//!   process is recorded as `/proc` names it (`/memfd:NAME (deleted)`,
//!   with its argv) and, when gone before that, with an unknown exe.
//!   A deleted executable keeps its path with ` (deleted)`. When the socket buffer overflows
//!   the kernel drops messages and `recv` fails with ENOBUFS: that is counted
//!   (`overflows`), logged, and the number of messages lost is recovered from
//!   gaps in the connector's per-CPU sequence numbers (`lost`).
//! * `poll` (degraded, not root or no connector): the process table is
//!   diffed every `poll_interval` with `sysinfo`. Processes living shorter
//!   than the interval are not seen; exit codes are unknown (exit events are
//!   partial with code 0); a fork without exec is recognised (same image as
//!   the parent) and recorded without an event.
//!
//! Both seed the tree from `/proc` at start. Exit codes: the exit status for
//! a normal exit, minus the signal number for a process killed by a signal.

mod ebpf;
pub(crate) mod elf;
pub(crate) mod exec_match;
pub(crate) mod exec_paths;
mod netlink;
mod poll;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use edr_event::{EventBody, ProcessExec, ProcessExit};

use crate::procfs::{self, Snapshot, Stat};
use crate::sink::Sink;
use crate::tree::Node;
use crate::{CollectError, Ctx, ProcessConfig, ProcessMode};

pub(crate) use netlink::wait_readable;

/// Starts the process collector; returns its threads.
pub(crate) fn start(cfg: &ProcessConfig, ctx: &Arc<Ctx>, sink: Sink) -> Result<Vec<JoinHandle<()>>, CollectError> {
    match cfg.mode {
        ProcessMode::Off => {
            sink.counters.set_mode("off");
            Ok(Vec::new())
        }
        ProcessMode::Ebpf => match edr_ebpf::Hooks::load() {
            Ok(hooks) => start_ebpf(hooks, ctx, sink),
            Err(e) => Err(CollectError::Unavailable {
                collector: "process",
                mode: "ebpf".into(),
                reason: format!("{e} (eBPF needs root or CAP_BPF + CAP_PERFMON, and kernel BTF at /sys/kernel/btf/vmlinux)"),
            }),
        },
        ProcessMode::Auto => {
            let why = match ebpf::disabled_by_env() {
                Some(off) => off.to_string(),
                None => match edr_ebpf::Hooks::load() {
                    Ok(hooks) => return start_ebpf(hooks, ctx, sink),
                    Err(e) => e.to_string(),
                },
            };
            tracing::info!("process collector: eBPF hooks not used ({why}); trying the netlink process connector");
            start_netlink(cfg, ctx, sink, Some(format!("eBPF unavailable: {why}")))
        }
        ProcessMode::Netlink => start_netlink(cfg, ctx, sink, None),
        ProcessMode::Poll => start_poll(cfg, ctx, sink, None),
    }
}

/// The eBPF source on its thread; hooks attached first, then the tree
/// seeded, so nothing starts unseen in between.
fn start_ebpf(hooks: edr_ebpf::Hooks, ctx: &Arc<Ctx>, sink: Sink) -> Result<Vec<JoinHandle<()>>, CollectError> {
    let n = seed(ctx);
    tracing::info!(processes = n, mode = ebpf::MODE, "process collector: eBPF hooks attached, tree seeded from /proc");
    sink.counters.set_mode(ebpf::MODE);
    let ctx = ctx.clone();
    spawn("process", move || ebpf::run(hooks, &ctx, &sink))
}

/// The netlink process connector, with fanotify exec paths where allowed;
/// `note` (why a better source is not used) is kept in the mode string.
fn start_netlink(cfg: &ProcessConfig, ctx: &Arc<Ctx>, sink: Sink, note: Option<String>) -> Result<Vec<JoinHandle<()>>, CollectError> {
    match netlink::CnProc::open(cfg.netlink_rcvbuf) {
        Ok(sock) => {
            let paths = if cfg.exec_paths {
                exec_paths::ExecPaths::open(&ctx.exclude_pids).map_err(|e| e.to_string())
            } else {
                Err("off in the configuration".to_string())
            };
            // Subscribed and marked first, then seeded: nothing starts
            // unseen in between.
            let n = seed(ctx);
            let mode = netlink_mode(paths.as_ref().map(|p| p.describe()).map_err(|e| e.as_str()), note.as_deref());
            if let Err(why) = &paths {
                if cfg.exec_paths {
                    tracing::warn!("process collector: no exec paths from fanotify ({why}): processes that exit at once may lack their executable")
                }
            }
            tracing::info!(processes = n, mode = %mode, "process collector: netlink process connector, tree seeded from /proc");
            sink.counters.set_mode(mode);
            let ctx = ctx.clone();
            spawn("process", move || netlink::run(sock, paths.ok(), note, &ctx, &sink))
        }
        Err(e) if cfg.mode == ProcessMode::Netlink => Err(CollectError::Unavailable {
            collector: "process",
            mode: "netlink".into(),
            reason: format!("{e} (the process connector needs the initial namespaces, and root / CAP_NET_ADMIN on older kernels)"),
        }),
        Err(e) => {
            let why = match note {
                Some(n) => format!("{n}; netlink process connector unavailable: {e}"),
                None => format!("netlink process connector unavailable: {e}"),
            };
            tracing::warn!("process collector degraded to polling every {:?}: {why}", cfg.poll_interval);
            start_poll(cfg, ctx, sink, Some(why))
        }
    }
}

fn start_poll(cfg: &ProcessConfig, ctx: &Arc<Ctx>, sink: Sink, why: Option<String>) -> Result<Vec<JoinHandle<()>>, CollectError> {
    let poller = poll::Poller::new(ctx).map_err(|e| CollectError::Unavailable { collector: "process", mode: "poll".into(), reason: e })?;
    seed(ctx);
    let ms = cfg.poll_interval.as_millis();
    sink.counters.set_mode(match why {
        Some(why) => format!("poll {ms}ms (degraded: {why}; misses processes shorter than the interval, no exit codes)"),
        None => format!("poll {ms}ms (misses processes shorter than the interval, no exit codes)"),
    });
    let ctx = ctx.clone();
    let interval = cfg.poll_interval;
    spawn("process", move || poller.run(&ctx, &sink, interval))
}

/// The mode string of the netlink collector, with or without exec paths
/// (`Err`: why not), and why a better source is not used (`note`).
pub(crate) fn netlink_mode(paths: Result<String, &str>, note: Option<&str>) -> String {
    let mode = match paths {
        Ok(p) => format!("netlink + {p}"),
        Err(why) => format!("netlink (no exec paths from fanotify: {why}; processes that exit at once may lack their exe)"),
    };
    match note {
        Some(n) => format!("{mode} [{n}]"),
        None => mode,
    }
}

/// What is known of an exec's image from elsewhere than `/proc/<pid>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExecImage {
    /// The executable, as `/proc/<pid>/exe` would have named it.
    pub exe: String,
    /// Stands in for an unreadable `/proc/<pid>/cmdline` (empty: the comm).
    pub argv: Vec<String>,
    /// Learnt from fanotify (counted in `exe_recovered` when used).
    pub recovered: bool,
    /// `exe` is a dynamic loader that was the only file reported: the
    /// exe only if the process's comm names it (see
    /// [`exec_match::Chain::only_loader`]).
    pub only_loader: bool,
}

impl ExecImage {
    /// The image of an exec from its `FAN_OPEN_EXEC` records, when they name
    /// the executable (or only a loader, for [`on_exec`] to judge).
    pub fn recovered(chain: &exec_match::Chain) -> Option<ExecImage> {
        if let Some(ld) = chain.only_loader() {
            return Some(ExecImage { exe: ld.to_string(), argv: vec![ld.to_string()], recovered: true, only_loader: true });
        }
        Some(ExecImage { exe: chain.exe()?.to_string(), argv: chain.argv(), recovered: true, only_loader: false })
    }

    /// Whether this image may stand for an exec whose process had `comm`.
    /// A loader that was the only file reported is the exe only when it
    /// was exec'd itself (`ld.so PROG`: the kernel sets the comm from the
    /// file name exec'd); otherwise the program's own file went unreported
    /// (a memfd, an unmarked filesystem) and its exe is unknown, never
    /// the loader.
    fn stands_for(&self, comm: &str) -> bool {
        !self.exe.is_empty() && (!self.only_loader || (!comm.is_empty() && comm == task_comm(&self.exe)))
    }
}

/// The comm the kernel gives a process exec'ing `path`: its file name, cut
/// to 15 bytes (TASK_COMM_LEN with the NUL), at a character boundary here.
fn task_comm(path: &str) -> String {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

pub(crate) fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<Vec<JoinHandle<()>>, CollectError> {
    std::thread::Builder::new().name(format!("edr-collect-{name}")).spawn(f).map(|h| vec![h]).map_err(|source| CollectError::Thread { collector: name, source })
}

/// Fills the tree from `/proc`; returns how many processes it holds.
pub(crate) fn seed(ctx: &Ctx) -> usize {
    let Ok(pids) = procfs::list_pids() else {
        return 0;
    };
    let snaps: Vec<(u32, Snapshot)> = pids.into_iter().map(|p| (p, Snapshot::read(p))).filter(|(_, s)| s.stat.is_some()).collect();
    let entity_of: std::collections::HashMap<u32, u64> =
        snaps.iter().filter_map(|(p, s)| s.stat.as_ref().map(|st| (*p, ctx.boot.entity_id(*p, st.start_ticks)))).collect();
    let now = Instant::now();
    for (pid, snap) in &snaps {
        let ppid = snap.stat.as_ref().map_or(0, |s| s.ppid);
        let parent = entity_of.get(&ppid).copied().unwrap_or(0);
        let ticks = snap.stat.as_ref().map_or(0, |s| s.start_ticks);
        ctx.tree.insert_live(node_from_snapshot(ctx, *pid, snap, ticks, parent, None), now);
    }
    snaps.len()
}

/// A tree node from a snapshot; fields it lacks come from `fallback` (the
/// fork-time copy of the parent's image), else stay empty.
fn node_from_snapshot(ctx: &Ctx, pid: u32, snap: &Snapshot, start_ticks: u64, parent_entity: u64, fallback: Option<&Node>) -> Node {
    let uid = snap.euid.or(fallback.map(|f| f.info.uid)).unwrap_or(0);
    let comm = snap.stat.as_ref().map(|s| s.comm.clone()).unwrap_or_default();
    Node {
        info: edr_event::ProcessInfo {
            pid,
            entity_id: ctx.boot.entity_id(pid, start_ticks),
            exe: snap.exe.clone().unwrap_or_default(),
            argv: Node::cap_argv(snap.argv.as_deref().unwrap_or_default()),
            uid,
            start_time: ctx.boot.start_time_ns(start_ticks),
        },
        ppid: snap.stat.as_ref().and_then(Stat::parent).or(fallback.map(|f| f.ppid)).unwrap_or(0),
        parent_entity,
        cwd: snap.cwd.clone().unwrap_or_default(),
        user: ctx.users.name(uid),
        comm,
        start_ticks,
        partial: !snap.complete(),
        inherited: false,
        exited: false,
    }
}

/// The tree node of a live process not seen before (e.g. a parent the
/// connector's fork event came before the tree knew about), read from /proc.
fn adopt(ctx: &Ctx, pid: u32) -> Option<Node> {
    let snap = Snapshot::read(pid);
    let stat = snap.stat.as_ref()?;
    let parent = ctx.tree.live_node(stat.ppid).map_or(0, |n| n.info.entity_id);
    let node = node_from_snapshot(ctx, pid, &snap, stat.start_ticks, parent, None);
    ctx.tree.insert_live(node.clone(), Instant::now());
    Some(node)
}

/// A fork seen by the process connector: its start time from `/proc`, or
/// estimated from the event's time when the child is gone already.
pub(crate) fn on_fork(ctx: &Ctx, parent_tgid: u32, child: u32, ts_ns: u64) {
    match procfs::read_stat(child) {
        Ok(s) => on_fork_at(ctx, parent_tgid, child, s.start_ticks, false),
        Err(_) => on_fork_at(ctx, parent_tgid, child, ctx.boot.ticks_from_ns(ts_ns), true),
    }
}

/// A fork: the child enters the tree with its parent's image, so a fork
/// without exec still has lineage. No event (the model has none for forks).
/// `estimated`: the start time is a guess (the node is then partial).
pub(crate) fn on_fork_at(ctx: &Ctx, parent_tgid: u32, child: u32, start_ticks: u64, estimated: bool) {
    let entity = ctx.boot.entity_id(child, start_ticks);
    if ctx.tree.node(entity).is_some_and(|n| !n.exited) {
        return; // already seeded
    }
    let parent = ctx.tree.live_node(parent_tgid).or_else(|| adopt(ctx, parent_tgid));
    let node = match parent {
        Some(p) => Node {
            info: edr_event::ProcessInfo {
                pid: child,
                entity_id: entity,
                exe: p.info.exe.clone(),
                argv: p.info.argv.clone(),
                uid: p.info.uid,
                start_time: ctx.boot.start_time_ns(start_ticks),
            },
            ppid: parent_tgid,
            parent_entity: p.info.entity_id,
            cwd: p.cwd.clone(),
            user: p.user.clone(),
            comm: p.comm.clone(),
            start_ticks,
            partial: p.partial || estimated,
            inherited: true,
            exited: false,
        },
        None => Node {
            info: edr_event::ProcessInfo { pid: child, entity_id: entity, start_time: ctx.boot.start_time_ns(start_ticks), ..Default::default() },
            ppid: parent_tgid,
            start_ticks,
            partial: true,
            ..Node::default()
        },
    };
    ctx.tree.insert_live(node, Instant::now());
}

/// An exec: enrich from `/proc` now (the snapshot is read by the caller as
/// early as possible), update the tree, emit the event.
/// `ts_ns` is the kernel's event time, used only to estimate a start time
/// for a process that is gone and was never seen forking. `fallback` fills
/// the exe (and the argv) that `/proc` could not give.
pub(crate) fn on_exec(ctx: &Ctx, sink: &Sink, pid: u32, snap: Snapshot, ts_ns: Option<u64>, fallback: Option<ExecImage>) {
    let known = ctx.tree.live_node(pid);
    let start_ticks =
        snap.stat.as_ref().map(|s| s.start_ticks).or(known.as_ref().map(|k| k.start_ticks)).or(ts_ns.map(|t| ctx.boot.ticks_from_ns(t))).unwrap_or(0);
    // The fork-time node, unless the pid was reused since.
    let known = known.filter(|k| k.start_ticks == start_ticks);
    // A process being reaped reads as ppid 0: the fork-time node knows.
    let ppid = snap.stat.as_ref().and_then(Stat::parent).or(known.as_ref().map(|k| k.ppid)).unwrap_or(0);
    let mut parent_entity = known.as_ref().map_or(0, |k| k.parent_entity);
    if parent_entity == 0 && ppid != 0 {
        parent_entity = ctx.tree.live_node(ppid).or_else(|| adopt(ctx, ppid)).map_or(0, |n| n.info.entity_id);
    }
    let partial = !snap.complete();
    let mut node = node_from_snapshot(ctx, pid, &snap, start_ticks, parent_entity, known.as_ref());
    let mut used = None;
    if node.info.exe.is_empty() {
        if let Some(img) = fallback.filter(|f| f.stands_for(&node.comm)) {
            node.info.exe = img.exe.clone();
            used = Some(img);
        }
    }
    // What the process is now: not its parent's image any more. A process
    // gone before enrichment is known by the files it executed, else by its
    // comm, at best.
    let mut argv = snap.argv.clone().unwrap_or_default();
    if argv.is_empty() {
        argv = match &used {
            Some(img) if !img.argv.is_empty() => img.argv.clone(),
            _ if !node.comm.is_empty() => vec![node.comm.clone()],
            _ => Vec::new(),
        };
        node.info.argv = Node::cap_argv(&argv);
    }
    if snap.cwd.is_none() {
        node.cwd = known.as_ref().map(|k| k.cwd.clone()).unwrap_or_default();
    }
    let entity = node.info.entity_id;
    let exec = ProcessExec {
        pid,
        ppid,
        entity_id: entity,
        parent_entity_id: parent_entity,
        exe: node.info.exe.clone(),
        argv,
        cwd: node.cwd.clone(),
        uid: node.info.uid,
        gid: snap.egid.unwrap_or(0),
        cgroup_id: snap.cgroup_id.unwrap_or(0),
        user: node.user.clone(),
        start_time: node.info.start_time,
        parent_exe: String::new(),
        parent_argv: Vec::new(),
        ancestry: Vec::new(),
    };
    ctx.tree.insert_live(node, Instant::now());
    if ctx.exclude_pids.contains(&pid) {
        return;
    }
    if used.as_ref().is_some_and(|i| i.recovered) {
        sink.counters.exe_recovered.fetch_add(1, Ordering::Relaxed);
    }
    if exec.exe.is_empty() {
        sink.counters.exe_missing.fetch_add(1, Ordering::Relaxed);
    }
    let (parent, ancestry) = ctx.tree.lineage(entity);
    let (parent_exe, parent_argv) = parent.map(|p| (p.info.exe, p.info.argv)).unwrap_or_default();
    sink.emit(EventBody::ProcessExec(ProcessExec { parent_exe, parent_argv, ancestry, ..exec }), partial);
}

/// An exit: mark it in the tree and emit the event. `status` is the raw wait
/// status (`None` when unknown, as in poll mode).
pub(crate) fn on_exit(ctx: &Ctx, sink: &Sink, pid: u32, status: Option<u32>) {
    let node = ctx.tree.exit(pid, Instant::now());
    if ctx.exclude_pids.contains(&pid) {
        return;
    }
    // Unknown to the tree: a zombie's stat is still readable.
    let entity = node.map(|n| n.info.entity_id).or_else(|| procfs::read_stat(pid).ok().map(|s| ctx.boot.entity_id(pid, s.start_ticks)));
    let partial = entity.is_none() || status.is_none();
    let exit_code = status.map_or(0, decode_exit_status);
    sink.emit(EventBody::ProcessExit(ProcessExit { pid, entity_id: entity.unwrap_or(0), exit_code }), partial);
}

/// The exit status for a normal exit; minus the signal number for a
/// process killed by a signal.
pub(crate) fn decode_exit_status(status: u32) -> i32 {
    let sig = status & 0x7f;
    if sig == 0 {
        ((status >> 8) & 0xff) as i32
    } else {
        -(sig as i32)
    }
}

/// Retires live processes whose exit was never reported (lost messages).
pub(crate) fn sweep(ctx: &Ctx) -> usize {
    let now = Instant::now();
    let mut n = 0;
    for (pid, ticks) in ctx.tree.live_pids() {
        match procfs::read_stat(pid) {
            Ok(s) if s.start_ticks == ticks => {}
            _ => {
                ctx.tree.exit(pid, now);
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_decoding() {
        assert_eq!(decode_exit_status(0), 0);
        assert_eq!(decode_exit_status(3 << 8), 3);
        assert_eq!(decode_exit_status(255 << 8), 255);
        assert_eq!(decode_exit_status(9), -9);
        assert_eq!(decode_exit_status(11 | 0x80), -11, "core dumped");
    }

    /// A collector context with an empty tree and a sink whose events `rx` receives.
    fn test_pipeline() -> (Ctx, Sink, crossbeam_channel::Receiver<edr_event::Event>) {
        use std::time::Duration;
        let ctx = Ctx::new(
            procfs::BootInfo::read().unwrap(),
            Arc::new(crate::ProcessTree::new(crate::tree::Retention { max_age: Duration::from_secs(60), max_exited: 1000 })),
            Default::default(),
        );
        let (tx, rx) = crossbeam_channel::bounded(16);
        (ctx, Sink::new(tx, crate::sink::Counters::new("process", "test")), rx)
    }

    /// An exec whose only fanotify record is the loader (a memfd, whose
    /// own open is never reported) of a process gone from `/proc` but for
    /// its stat (a zombie): its exe is unknown, not the loader; the loader
    /// exec'd directly (`ld.so PROG`, comm = the loader's name) keeps it.
    #[test]
    fn a_lone_loader_record_is_the_exe_only_when_the_comm_names_it() {
        let (ctx, sink, rx) = test_pipeline();
        const LD: &str = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
        let chain = exec_match::Chain { files: vec![LD.into()] };
        let image = ExecImage::recovered(&chain).unwrap();
        assert!(image.only_loader);
        let zombie = |pid: u32, comm: &str| Snapshot {
            stat: Some(Stat { pid, comm: comm.into(), state: 'Z', ppid: 1, flags: 0, start_ticks: 555, arg_area: Some((0, 0)) }),
            euid: Some(0),
            ..Snapshot::default()
        };
        let exec_of = |rx: &crossbeam_channel::Receiver<edr_event::Event>| {
            let ev = rx.try_recv().unwrap();
            let EventBody::ProcessExec(x) = ev.body else { panic!("{ev:?}") };
            (x, ev.partial)
        };
        // execve("/proc/self/fd/5") of a memfd: the comm is "5".
        on_exec(&ctx, &sink, 4_000_011, zombie(4_000_011, "5"), None, Some(image.clone()));
        let (x, partial) = exec_of(&rx);
        assert_eq!(x.exe, "", "never the loader: {x:?}");
        assert_eq!(x.argv, vec!["5"], "the comm, at best");
        assert!(partial);
        // fexecve of a memfd on Linux 6.14+: the comm is the memfd's name.
        on_exec(&ctx, &sink, 4_000_012, zombie(4_000_012, "memfd:payload"), None, Some(image.clone()));
        assert_eq!(exec_of(&rx).0.exe, "");
        // Gone entirely (no comm): unknown too.
        on_exec(&ctx, &sink, 4_000_013, Snapshot::default(), Some(1), Some(image.clone()));
        assert_eq!(exec_of(&rx).0.exe, "");
        // The loader run as a program.
        on_exec(&ctx, &sink, 4_000_014, zombie(4_000_014, "ld-linux-x86-64"), None, Some(image));
        let (x, _) = exec_of(&rx);
        assert_eq!((x.exe.as_str(), x.argv), (LD, vec![LD.to_string()]));
        assert_eq!(sink.counters.status().exe_missing, 3);
        assert_eq!(task_comm("/tmp/a-rather-long-program-name (deleted)"), "a-rather-long-p");
        assert_eq!(task_comm("/tmp/ééééééééé"), "ééééééé", "cut at a character boundary");
    }

    /// The kernel prints ppid 0 in the `stat` of a task it is reaping (it
    /// can no longer lock its signal handlers). An exec read at that moment
    /// keeps the parent the fork gave it; seen in CI as shell-loop children
    /// reported with ppid 0 and the right parent entity.
    #[test]
    fn an_exec_read_while_reaped_keeps_its_forked_parent() {
        let (ctx, sink, rx) = test_pipeline();
        // Pids far above pid_max, so /proc has nothing to add.
        let (shell, child, ticks) = (4_000_001, 4_000_002, 777);
        let node = |pid, ppid, parent_entity, exe: &str| Node {
            info: edr_event::ProcessInfo { pid, entity_id: ctx.boot.entity_id(pid, ticks), exe: exe.into(), argv: vec![exe.into()], ..Default::default() },
            ppid,
            parent_entity,
            start_ticks: ticks,
            ..Node::default()
        };
        let sh = node(shell, 1, 0, "/usr/bin/dash");
        let sh_entity = sh.info.entity_id;
        ctx.tree.insert_live(sh, Instant::now());
        ctx.tree.insert_live(node(child, shell, sh_entity, "/usr/bin/dash"), Instant::now());
        let reaped = |ppid| Snapshot {
            exe: Some("/tmp/x/true".into()),
            argv: Some(vec!["/tmp/x/true".into()]),
            stat: Some(Stat { pid: child, comm: "true".into(), state: 'Z', ppid, flags: 0, start_ticks: ticks, arg_area: Some((0, 0)) }),
            cwd: None,
            euid: Some(0),
            egid: Some(0),
            cgroup_id: None,
        };
        on_exec(&ctx, &sink, child, reaped(0), None, None);
        let ev = rx.try_recv().unwrap();
        let EventBody::ProcessExec(x) = ev.body else { panic!("{ev:?}") };
        assert_eq!((x.ppid, x.parent_entity_id), (shell, sh_entity), "{x:?}");
        assert_eq!(x.parent_exe, "/usr/bin/dash");
        // A real ppid in stat wins over the fork-time one (reparenting).
        on_exec(&ctx, &sink, child, reaped(1), None, None);
        let ev = rx.try_recv().unwrap();
        let EventBody::ProcessExec(x) = ev.body else { panic!("{ev:?}") };
        assert_eq!(x.ppid, 1, "{x:?}");
    }
}
