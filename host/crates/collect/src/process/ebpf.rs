//! The eBPF process source: fork, exec and exit from the `edr-ebpf` hooks.
//!
//! Each record carries what the kernel knew at the hook: pid, tgid, ppid,
//! effective uid, comm, the task's start time (the same clock and value
//! `/proc/<pid>/stat` reports, so entity ids match the ones seeded from
//! `/proc`), and for an exec the argv read from the new image, the
//! executable's path and the working directory, both walked from their
//! dentries in the hook (as `/proc/<pid>/exe` and `cwd` name them, in the
//! process's mount namespace; a deleted file or a memfd with ` (deleted)`).
//! The tree is fed from these alone. `/proc` is read only for what the
//! hook could not give:
//!
//! * a path deeper (48 names) or longer (512 bytes) than the hook copies:
//!   `/proc/<pid>/cwd`, and for the executable the file the kernel ran
//!   (`bprm->interp`) made canonical, or `/proc/<pid>/exe` when that was a
//!   descriptor (`/proc/self/fd/N`) or is gone;
//! * an argv longer than the hook copies (1 KiB): the full one from
//!   `/proc/<pid>/cmdline` when it still starts with what the hook saw.
//!
//! The cgroup id of each record is not in the event model yet.

use std::time::{Duration, Instant};

use edr_ebpf::{Hooks, Kind, ProcEvent};

use crate::procfs::{self, Snapshot, Stat};
use crate::sink::Sink;
use crate::Ctx;

/// How the hooks are described in `edr status`.
pub(crate) const MODE: &str = "ebpf (tp_btf sched_process_fork/exec/exit, 4 MiB ring buffer)";

/// Why eBPF is not used in `auto` mode, or `None` when it should be tried.
pub(crate) fn disabled_by_env() -> Option<&'static str> {
    (std::env::var("EDR_PROCESS_EBPF").as_deref() == Ok("0")).then_some("off (EDR_PROCESS_EBPF=0)")
}

/// The collector loop: poll the ring buffer, handle each record, keep the
/// tree tidy, report kernel-side loss.
pub(crate) fn run(mut hooks: Hooks, ctx: &Ctx, sink: &Sink) {
    let mut last_evict = Instant::now();
    let mut last_sweep = Instant::now();
    let mut lost_seen = 0u64;
    let mut bad_seen = 0u64;
    while !ctx.stopping() {
        if let Err(e) = hooks.poll(Duration::from_millis(200), |e| handle(ctx, sink, e)) {
            tracing::error!("process collector: eBPF ring buffer: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let lost = hooks.lost();
        if lost > lost_seen {
            sink.counters.lost.fetch_add(lost - lost_seen, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(lost = lost - lost_seen, per_cpu = ?hooks.lost_per_cpu(), "process collector: eBPF ring buffer full, the kernel dropped records (counted as lost)");
            lost_seen = lost;
        }
        let bad = hooks.unparsable();
        if bad > bad_seen {
            sink.counters.unresolved.fetch_add(bad - bad_seen, std::sync::atomic::Ordering::Relaxed);
            bad_seen = bad;
        }
        let now = Instant::now();
        if now.duration_since(last_evict) >= Duration::from_secs(1) {
            ctx.tree.evict(now);
            last_evict = now;
        }
        if now.duration_since(last_sweep) >= Duration::from_secs(30) {
            super::sweep(ctx);
            last_sweep = now;
        }
    }
}

fn handle(ctx: &Ctx, sink: &Sink, e: ProcEvent) {
    match e.kind {
        // Threads share the process's node.
        Kind::Fork if e.pid == e.tgid => super::on_fork_at(ctx, e.ppid, e.tgid, ctx.boot.ticks_from_ns(e.start_ns), false),
        Kind::Fork => {}
        Kind::Exec => {
            let snap = snapshot(ctx, &e);
            super::on_exec(ctx, sink, e.tgid, snap, None, None);
        }
        Kind::Exit => super::on_exit(ctx, sink, e.tgid, Some(e.exit_code as u32)),
    }
}

/// What the exec record and the few `/proc` reads it needs say.
fn snapshot(ctx: &Ctx, e: &ProcEvent) -> Snapshot {
    let start_ticks = ctx.boot.ticks_from_ns(e.start_ns);
    let cwd = e.cwd.clone().or_else(|| procfs::read_cwd(e.tgid).ok());
    let exe = e.exe.clone().or_else(|| resolve_exe(e.tgid, &e.filename, cwd.as_deref()));
    Snapshot {
        exe,
        argv: exec_argv(e),
        stat: Some(Stat { pid: e.tgid, comm: e.comm.clone(), state: 'R', ppid: e.ppid, flags: 0, start_ticks, arg_area: None }),
        cwd,
        euid: Some(e.euid),
        egid: Some(e.egid),
        cgroup_id: Some(e.cgroup_id),
    }
}

/// The argv the hook read; `None` when it could not (the event is then
/// partial); a cut one is completed from `/proc` when that is still the
/// same command line.
fn exec_argv(e: &ProcEvent) -> Option<Vec<String>> {
    if e.argv_fault || e.argv.is_empty() {
        return None;
    }
    if e.argv_truncated {
        let cut_prefix = e.argv.join("\0");
        if let Ok(full) = procfs::read_cmdline(e.tgid) {
            if full.join("\0").starts_with(&cut_prefix) {
                return Some(full);
            }
        }
    }
    Some(e.argv.clone())
}

/// A path that names an open descriptor, not a file: what it runs is only
/// known from `/proc/<pid>/exe`.
fn is_fd_path(p: &str) -> bool {
    p.starts_with("/dev/fd/") || (p.starts_with("/proc/") && p.contains("/fd/"))
}

/// The executable as `/proc/<pid>/exe` names it, from the file the kernel
/// ran, when the hook's own walk was cut. See the module documentation.
fn resolve_exe(pid: u32, ran: &str, cwd: Option<&str>) -> Option<String> {
    if ran.is_empty() {
        return procfs::read_exe(pid).ok();
    }
    if is_fd_path(ran) {
        return procfs::read_exe(pid).ok();
    }
    let path = match (ran.starts_with('/'), cwd) {
        (true, _) => std::path::PathBuf::from(ran),
        (false, Some(cwd)) => std::path::Path::new(cwd).join(ran),
        (false, None) => return procfs::read_exe(pid).ok().filter(|exe| same_file_name(exe, ran)),
    };
    match std::fs::canonicalize(&path) {
        Ok(p) => Some(p.to_string_lossy().into_owned()),
        // Deleted (or renamed) since: the kernel still names it while the
        // process lives, unless the process exec'd something else since.
        Err(_) => procfs::read_exe(pid).ok().filter(|exe| same_file_name(exe, ran)).or_else(|| Some(path.to_string_lossy().into_owned())),
    }
}

/// Whether `exe` (from `/proc`, maybe ` (deleted)`) has the file name of `ran`.
fn same_file_name(exe: &str, ran: &str) -> bool {
    let name = |p: &str| p.strip_suffix(" (deleted)").unwrap_or(p).rsplit('/').next().unwrap_or_default().to_string();
    name(exe) == name(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_paths_are_recognised() {
        assert!(is_fd_path("/proc/self/fd/5"));
        assert!(is_fd_path("/proc/123/fd/5"));
        assert!(is_fd_path("/dev/fd/3"));
        assert!(!is_fd_path("/usr/bin/true"));
        assert!(!is_fd_path("/proc/sys/kernel/x"));
    }

    #[test]
    fn resolving_follows_symlinks_and_relative_paths_and_never_invents() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-prog");
        std::fs::write(&real, b"x").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let real_s = std::fs::canonicalize(&real).unwrap().to_string_lossy().into_owned();
        let link = dir.path().join("link").to_string_lossy().into_owned();
        // A pid far above pid_max: /proc has nothing to say.
        let nobody = 4_000_123;
        assert_eq!(resolve_exe(nobody, &link, None).as_deref(), Some(real_s.as_str()));
        let cwd = dir.path().to_string_lossy().into_owned();
        assert_eq!(resolve_exe(nobody, "./link", Some(&cwd)).as_deref(), Some(real_s.as_str()));
        assert_eq!(resolve_exe(nobody, "./link", None), None, "relative without a cwd: unknown");
        assert_eq!(resolve_exe(nobody, "/proc/self/fd/9", None), None, "a descriptor of a gone process: unknown");
        let gone = dir.path().join("gone").to_string_lossy().into_owned();
        assert_eq!(resolve_exe(nobody, &gone, None).as_deref(), Some(gone.as_str()), "deleted: the path the kernel ran");
        assert!(same_file_name("/tmp/x/sleep (deleted)", "/tmp/x/sleep"));
        assert!(!same_file_name("/usr/bin/true", "/usr/bin/env"));
    }
}
