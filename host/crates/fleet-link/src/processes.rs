//! The `processes` command: the host's process list from `/proc`.
//!
//! Each process: pid, parent pid, executable, argv, real uid and user name
//! (from `/etc/passwd`; users only known to NSS show their uid), start time
//! (clock ticks since boot), and its lineage: the ancestors' pids, nearest
//! first, up to pid 1 (or where the chain leaves the list). Kernel threads
//! are listed with `kernel_thread: true` and no executable. Bounded: at most
//! [`MAX_PROCESSES`] processes, argv cut to [`MAX_ARGV_BYTES`] per process,
//! so the answer fits in one NATS reply; `truncated` says when it was cut.

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Processes listed at most.
pub const MAX_PROCESSES: usize = 4000;
/// Bytes of argv kept per process (the rest is cut, `argv_truncated`).
pub const MAX_ARGV_BYTES: usize = 1024;
/// Ancestors listed per process at most (a loop in a hostile /proc cannot run away).
const MAX_LINEAGE: usize = 64;

/// One process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// The parent's pid (0: unknown or none).
    pub ppid: u32,
    /// `comm`.
    pub name: String,
    /// The executable (empty when unreadable or a kernel thread).
    pub exe: String,
    /// The command line.
    pub argv: Vec<String>,
    /// argv was cut to [`MAX_ARGV_BYTES`].
    pub argv_truncated: bool,
    /// Real uid.
    pub uid: Option<u32>,
    /// The uid's name in `/etc/passwd`.
    pub user: Option<String>,
    /// Start, clock ticks since boot.
    pub start_ticks: u64,
    /// A kernel thread.
    pub kernel_thread: bool,
    /// Ancestors' pids, nearest first.
    pub lineage: Vec<u32>,
}

fn cut_argv(argv: Vec<String>) -> (Vec<String>, bool) {
    let mut used = 0;
    let mut out = Vec::new();
    for a in argv {
        if used + a.len() > MAX_ARGV_BYTES {
            let room = MAX_ARGV_BYTES.saturating_sub(used);
            let mut end = room.min(a.len());
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            out.push(a[..end].to_string());
            return (out, true);
        }
        used += a.len();
        out.push(a);
    }
    (out, false)
}

fn read_one(pid: u32, users: &HashMap<u32, String>) -> Option<ProcessInfo> {
    let stat = edr_procfs::read_stat(pid).ok()?;
    let kernel_thread = stat.flags & edr_procfs::PF_KTHREAD != 0;
    let (argv, argv_truncated) = cut_argv(edr_procfs::read_cmdline(pid).unwrap_or_default());
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| edr_procfs::parse_status_uids(&s)).map(|(real, _)| real);
    Some(ProcessInfo {
        pid,
        ppid: stat.ppid,
        name: stat.comm,
        exe: if kernel_thread { String::new() } else { edr_procfs::read_exe(pid).unwrap_or_default() },
        argv,
        argv_truncated,
        uid,
        user: uid.and_then(|u| users.get(&u).cloned()),
        start_ticks: stat.start_ticks,
        kernel_thread,
        lineage: Vec::new(),
    })
}

/// Fills each process's lineage from the parents in `list`.
pub fn link_lineage(list: &mut [ProcessInfo]) {
    let parent: BTreeMap<u32, u32> = list.iter().map(|p| (p.pid, p.ppid)).collect();
    for p in list.iter_mut() {
        let mut at = p.ppid;
        while at != 0 && p.lineage.len() < MAX_LINEAGE && !p.lineage.contains(&at) && at != p.pid {
            p.lineage.push(at);
            at = parent.get(&at).copied().unwrap_or(0);
        }
    }
}

/// The process list as the command's output.
///
/// # Errors
/// When `/proc` cannot be listed.
pub fn list() -> Result<Value, String> {
    let users = edr_procfs::parse_passwd(&std::fs::read_to_string("/etc/passwd").unwrap_or_default());
    let mut pids = edr_procfs::list_pids().map_err(|e| format!("cannot list /proc: {e}"))?;
    pids.sort_unstable();
    let truncated = pids.len() > MAX_PROCESSES;
    pids.truncate(MAX_PROCESSES);
    // A process that exits while being read is simply not listed.
    let mut list: Vec<ProcessInfo> = pids.into_iter().filter_map(|pid| read_one(pid, &users)).collect();
    link_lineage(&mut list);
    Ok(json!({"count": list.len(), "truncated": truncated, "processes": list}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            name: String::new(),
            exe: String::new(),
            argv: vec![],
            argv_truncated: false,
            uid: None,
            user: None,
            start_ticks: 0,
            kernel_thread: false,
            lineage: vec![],
        }
    }

    #[test]
    fn lineage_follows_parents_and_survives_loops() {
        let mut l = vec![p(1, 0), p(10, 1), p(20, 10), p(30, 99), p(40, 41), p(41, 40), p(50, 50)];
        link_lineage(&mut l);
        assert_eq!(l[2].lineage, vec![10, 1]);
        assert_eq!(l[3].lineage, vec![99], "a parent outside the list ends the chain");
        assert_eq!(l[4].lineage, vec![41], "a loop ends at the first repeat");
        assert!(l[6].lineage.is_empty(), "its own parent");
    }

    #[test]
    fn argv_is_bounded() {
        let (a, cut) = cut_argv(vec!["a".repeat(1000), "é".repeat(100)]);
        assert!(cut && a.iter().map(String::len).sum::<usize>() <= MAX_ARGV_BYTES);
        assert_eq!(cut_argv(vec!["ls".into(), "-l".into()]), (vec!["ls".to_string(), "-l".to_string()], false));
    }

    #[test]
    fn this_process_is_listed_with_its_parent() {
        let v = list().unwrap();
        let me = std::process::id();
        let procs = v["processes"].as_array().unwrap();
        let mine = procs.iter().find(|p| p["pid"] == me).expect("this test process is listed");
        assert_eq!(mine["ppid"].as_u64(), Some(u64::from(std::os::unix::process::parent_id())));
        assert_eq!(mine["lineage"][0], mine["ppid"]);
        assert_eq!(mine["exe"].as_str().map(std::path::PathBuf::from), std::env::current_exe().ok());
        assert_eq!(mine["argv"][0].as_str().map(std::path::PathBuf::from), std::env::args().next().map(std::path::PathBuf::from));
    }
}
