//! Kill, suspend and resume processes; protected processes; pid reuse checks.
//!
//! Signals go through a pidfd (`pidfd_open` + `pidfd_send_signal`): the pidfd
//! is opened *before* `/proc/<pid>/stat` is read for the identity and
//! protection checks, so if the pid is reused in between, the signal goes to
//! the exited process (ESRCH) and never to the newcomer.
//!
//! A tree kill first stops the root and every descendant (SIGSTOP, repeated
//! until a scan finds no new child, so nothing forks while we work), then
//! sends SIGKILL leaves first and the root last. Children are found through
//! `/proc/<pid>/task/<tid>/children` when the kernel has it
//! (CONFIG_PROC_CHILDREN) and by scanning the ppid of every `/proc/<pid>/stat`
//! otherwise. Protected descendants are spared (not stopped, not killed, their
//! own children left alone) and listed in the audit detail.

use crate::{protect, Detail, RespondError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edr_procfs::{read_stat, BootInfo, Stat, PF_KTHREAD};

/// How long a kill waits for its targets to exit before reporting survivors.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Rounds of child discovery in a tree kill (each round stops what it finds).
const TREE_ROUNDS: usize = 64;

/// Who a kill request means, so a reused pid is not killed by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessIdentity {
    /// The process start time in ns since the epoch, as in
    /// `edr_event::ProcessExec::start_time` (boot time + start ticks).
    StartTime(u64),
    /// The agent's entity id (`edr_event::ProcessExec::entity_id`): a hash of
    /// the boot id, the pid and the start ticks, as `edr_procfs::entity_id`
    /// computes it.
    EntityId(u64),
}

impl std::fmt::Display for ProcessIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessIdentity::StartTime(t) => write!(f, "start time {t}"),
            ProcessIdentity::EntityId(e) => write!(f, "entity id {e}"),
        }
    }
}

/// The identity of a live process, in the form of `want`.
fn identity_of(stat: &Stat, want: ProcessIdentity) -> ProcessIdentity {
    match want {
        ProcessIdentity::StartTime(_) => ProcessIdentity::StartTime(BootInfo::current().start_time_ns(stat.start_ticks)),
        ProcessIdentity::EntityId(_) => ProcessIdentity::EntityId(BootInfo::current().entity_id(stat.pid, stat.start_ticks)),
    }
}

/// The entity id of a process, as the collector computes it (for tests and
/// for callers that only have a pid).
pub fn current_entity_id(pid: u32) -> Option<u64> {
    read_stat(pid).ok().map(|s| BootInfo::current().entity_id(pid, s.start_ticks))
}

/// The start time (ns since the epoch) of a process, as the collector computes it.
pub fn current_start_time(pid: u32) -> Option<u64> {
    read_stat(pid).ok().map(|s| BootInfo::current().start_time_ns(s.start_ticks))
}

/// Which processes are never killed or suspended.
///
/// Protection rests only on what an unprivileged user cannot forge (see
/// [`crate::protect`]): the pid (1, the agent, its ancestors), kernel
/// threads, and for configured names a *verified* system executable run by
/// root or a system service. A process's `comm` and the file name of an
/// unverified executable count for nothing.
#[derive(Debug, Clone)]
pub(crate) struct Protection {
    own_pid: u32,
    names: Vec<String>,
}

impl Protection {
    /// The agent itself (`std::process::id()`), its ancestors, pid 1, kernel
    /// threads, and processes matching one of `names`: a plain name matches
    /// the file name of a verified executable, an absolute path its path, a
    /// `NAME.service` the system service the process is in (its executable
    /// still verified). The agent's own executable name is added.
    pub(crate) fn new(names: &[String]) -> Protection {
        let mut names: Vec<String> = names.iter().filter(|n| !n.is_empty()).cloned().collect();
        if let Some(own) = fs::read_link("/proc/self/exe").ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())) {
            if !names.contains(&own) {
                names.push(own);
            }
        }
        Protection { own_pid: std::process::id(), names }
    }

    /// Why a process is protected, or `None`.
    pub(crate) fn why(&self, stat: &Stat) -> Option<String> {
        let pid = stat.pid;
        if pid <= 1 {
            return Some("init (pid 1)".into());
        }
        if pid == self.own_pid {
            return Some("the agent itself".into());
        }
        if pid == 2 || stat.ppid == 2 || stat.flags & PF_KTHREAD != 0 {
            return Some(format!("kernel thread `{}`", stat.comm));
        }
        if let Err(e) = fs::read_link(format!("/proc/{pid}/exe")) {
            if e.kind() == io::ErrorKind::NotFound && stat.state != 'Z' && stat.state != 'X' {
                return Some(format!("kernel thread `{}` (no executable)", stat.comm));
            }
        }
        if self.ancestors().contains(&pid) {
            return Some("an ancestor of the agent".into());
        }
        self.by_name(pid)
    }

    /// The configured name `pid` matches through its verified executable
    /// (run by root or a system service), or `None`.
    fn by_name(&self, pid: u32) -> Option<String> {
        // Cheap candidates first (a /proc scan asks this of every process), then the checks.
        let link = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let service = protect::system_service(pid);
        let name = self.names.iter().find(|n| {
            link.file_name().and_then(|f| f.to_str()) == Some(n.as_str()) || Path::new(n.as_str()) == link || service.as_deref() == Some(n.as_str())
        })?;
        let exe = protect::verified_executable(pid).ok()?;
        if exe.path != link {
            return None;
        }
        let runner = protect::trusted_runner(pid)?;
        Some(format!("protected name `{name}`: verified system executable {} ({runner})", exe.path.display()))
    }

    /// The agent's ancestors (its parent chain), read now.
    fn ancestors(&self) -> HashSet<u32> {
        let mut out = HashSet::new();
        let mut pid = self.own_pid;
        for _ in 0..4096 {
            let Ok(st) = read_stat(pid) else { break };
            if st.ppid <= 1 || !out.insert(st.ppid) {
                break;
            }
            pid = st.ppid;
        }
        out
    }
}

/// A process pinned by a pidfd (when the kernel has pidfds).
struct Target {
    stat: Stat,
    pidfd: Option<OwnedFd>,
}

impl Target {
    /// Opens a pidfd for `pid`, then reads its stat (in that order, see the
    /// module docs).
    fn open(pid: u32) -> Result<Target, RespondError> {
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(RespondError::invalid(format!("pid {pid}"), "not a valid pid"));
        }
        // SAFETY: pidfd_open takes a pid and flags; the result is a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us; nobody else owns it.
            Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        } else {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ESRCH) => return Err(RespondError::NoSuchProcess { pid }),
                Some(libc::ENOSYS) => None,
                _ => return Err(RespondError::Sys { what: format!("pidfd_open({pid})"), source: err }),
            }
        };
        let stat = read_stat(pid).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RespondError::NoSuchProcess { pid }
            } else {
                RespondError::io("cannot read", format!("/proc/{pid}/stat"), e)
            }
        })?;
        Ok(Target { stat, pidfd })
    }

    fn pid(&self) -> u32 {
        self.stat.pid
    }

    /// Sends `sig` through the pidfd (or kill(2) without pidfds).
    fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: plain syscalls with integer arguments; the pidfd is open.
        let rc = match &self.pidfd {
            Some(fd) => unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) },
            None => unsafe { libc::kill(self.pid() as libc::pid_t, sig) as libc::c_long },
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits until the process has exited (zombie or reaped), up to `until`.
    fn wait_exit(&self, until: Instant) -> bool {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match &self.pidfd {
                Some(fd) => {
                    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    let ms = left.as_millis().min(i32::MAX as u128) as i32;
                    // SAFETY: one valid pollfd.
                    let n = unsafe { libc::poll(&mut p, 1, ms) };
                    if n > 0 {
                        return true;
                    }
                    if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return false;
                }
                None => {
                    match read_stat(self.pid()) {
                        Ok(s) if s.start_ticks == self.stat.start_ticks && s.state != 'Z' && s.state != 'X' => {}
                        _ => return true,
                    }
                    if left.is_zero() {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(10).min(left));
                }
            }
        }
    }
}

/// Refuses a pid that no longer is the process `expect` names.
fn check_identity(stat: &Stat, expect: Option<ProcessIdentity>) -> Result<(), RespondError> {
    let Some(want) = expect else { return Ok(()) };
    let found = identity_of(stat, want);
    if found != want {
        return Err(RespondError::PidReused { pid: stat.pid, expected: want.to_string(), found: found.to_string() });
    }
    Ok(())
}

/// Opens and checks a target: it exists, is the expected process and is not protected.
fn checked_target(pid: u32, expect: Option<ProcessIdentity>, prot: &Protection) -> Result<Target, RespondError> {
    let t = Target::open(pid)?;
    check_identity(&t.stat, expect)?;
    if let Some(why) = prot.why(&t.stat) {
        return Err(RespondError::Protected { pid, why });
    }
    Ok(t)
}

/// The cheap checks of a kill or suspend target: it is the expected process
/// and not protected.
pub(crate) fn check(pid: u32, expect: Option<ProcessIdentity>, prot: &Protection) -> Result<(), RespondError> {
    checked_target(pid, expect, prot).map(|_| ())
}

/// Whether `/proc/<pid>/task/<tid>/children` exists (CONFIG_PROC_CHILDREN).
fn proc_children_supported() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| Path::new(&format!("/proc/self/task/{}/children", std::process::id())).exists())
}

/// Child pids of any of `parents`.
fn children_of(parents: &HashSet<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    if proc_children_supported() {
        for p in parents {
            let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else { continue };
            for t in tasks.flatten() {
                if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                    out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
    } else if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Ok(st) = read_stat(pid) {
                if parents.contains(&st.ppid) {
                    out.push(pid);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn join_pids<'a>(pids: impl IntoIterator<Item = &'a u32>) -> String {
    pids.into_iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

/// One member of a tree being killed.
struct Member {
    target: Target,
    depth: usize,
}

/// The process tree under a root, found without changing anything (used by
/// simulate mode): member pids (root first) and spared protected descendants.
fn scan_tree(root: u32, prot: &Protection) -> (Vec<u32>, Vec<(u32, String)>) {
    let mut members = vec![root];
    let mut seen: HashSet<u32> = HashSet::from([root]);
    let mut spared = Vec::new();
    let mut frontier: HashSet<u32> = HashSet::from([root]);
    for _ in 0..TREE_ROUNDS {
        let mut next = HashSet::new();
        for c in children_of(&frontier) {
            if !seen.insert(c) {
                continue;
            }
            match read_stat(c) {
                Ok(st) => match prot.why(&st) {
                    Some(why) => spared.push((c, why)),
                    None => {
                        members.push(c);
                        next.insert(c);
                    }
                },
                Err(_) => continue,
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    (members, spared)
}

/// What a kill would do, without doing it (simulate mode; also the checks).
pub(crate) fn plan_kill(pid: u32, tree: bool, expect: Option<ProcessIdentity>, prot: &Protection) -> Result<Detail, RespondError> {
    let t = checked_target(pid, expect, prot)?;
    let mut d = Detail::new();
    d.insert("comm".into(), t.stat.comm.clone());
    if tree {
        let (members, spared) = scan_tree(pid, prot);
        d.insert("would_kill".into(), join_pids(&members));
        if !spared.is_empty() {
            d.insert("would_spare".into(), spared.iter().map(|(p, w)| format!("{p} ({w})")).collect::<Vec<_>>().join(", "));
        }
    } else {
        d.insert("would_kill".into(), pid.to_string());
    }
    Ok(d)
}

/// Kills a process (SIGKILL), or its whole tree leaves first.
pub(crate) fn kill(pid: u32, tree: bool, expect: Option<ProcessIdentity>, prot: &Protection) -> Result<Detail, RespondError> {
    let root = checked_target(pid, expect, prot)?;
    let mut d = Detail::new();
    d.insert("comm".into(), root.stat.comm.clone());
    if !tree {
        root.signal(libc::SIGKILL).map_err(|e| signal_error(pid, "SIGKILL", e))?;
        let dead = root.wait_exit(Instant::now() + KILL_WAIT);
        d.insert("killed".into(), pid.to_string());
        if !dead {
            d.insert("still_running".into(), pid.to_string());
            return Err(RespondError::Sys {
                what: format!("pid {pid} did not exit within {KILL_WAIT:?} of SIGKILL (uninterruptible sleep?)"),
                source: io::Error::from_raw_os_error(libc::ETIMEDOUT),
            });
        }
        tracing::info!(pid, "killed process");
        return Ok(d);
    }

    // Freeze the tree so nothing forks while we look, then kill leaves first.
    root.signal(libc::SIGSTOP).map_err(|e| signal_error(pid, "SIGSTOP", e))?;
    let mut members: BTreeMap<u32, Member> = BTreeMap::new();
    let mut spared: Vec<(u32, String)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    members.insert(pid, Member { target: root, depth: 0 });
    for _ in 0..TREE_ROUNDS {
        // Children of everything found so far: a stopped parent cannot fork,
        // but one that forked just before its SIGSTOP shows up in this pass.
        let parents: HashSet<u32> = members.keys().copied().collect();
        let mut found = false;
        for c in children_of(&parents) {
            if members.contains_key(&c) || spared.iter().any(|(p, _)| *p == c) {
                continue;
            }
            let t = match Target::open(c) {
                Ok(t) => t,
                Err(_) => continue, // exited meanwhile
            };
            let Some(parent_depth) = members.get(&t.stat.ppid).map(|m| m.depth) else { continue };
            if let Some(why) = prot.why(&t.stat) {
                spared.push((c, why));
                continue;
            }
            if let Err(e) = t.signal(libc::SIGSTOP) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    errors.push(format!("SIGSTOP {c}: {e}"));
                }
            }
            members.insert(c, Member { target: t, depth: parent_depth + 1 });
            found = true;
        }
        if !found {
            break;
        }
    }

    let mut order: Vec<&Member> = members.values().collect();
    order.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.target.pid().cmp(&b.target.pid())));
    let mut killed = Vec::new();
    for m in &order {
        match m.target.signal(libc::SIGKILL) {
            Ok(()) => killed.push(m.target.pid()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => killed.push(m.target.pid()),
            Err(e) => errors.push(format!("SIGKILL {}: {e}", m.target.pid())),
        }
    }
    let until = Instant::now() + KILL_WAIT;
    let survivors: Vec<u32> = order.iter().filter(|m| !m.target.wait_exit(until)).map(|m| m.target.pid()).collect();
    d.insert("killed".into(), join_pids(&killed));
    if !spared.is_empty() {
        d.insert("spared".into(), spared.iter().map(|(p, w)| format!("{p} ({w})")).collect::<Vec<_>>().join(", "));
    }
    if !survivors.is_empty() {
        d.insert("still_running".into(), join_pids(&survivors));
        errors.push(format!("pids {} did not exit within {KILL_WAIT:?}", join_pids(&survivors)));
    }
    tracing::info!(pid, killed = %d["killed"], "killed process tree");
    if !errors.is_empty() {
        return Err(RespondError::Sys {
            what: format!("tree kill of pid {pid} was incomplete (signalled: {}): {}", d["killed"], errors.join("; ")),
            source: io::Error::other("incomplete"),
        });
    }
    Ok(d)
}

fn signal_error(pid: u32, sig: &str, e: io::Error) -> RespondError {
    if e.raw_os_error() == Some(libc::ESRCH) {
        RespondError::NoSuchProcess { pid }
    } else {
        RespondError::Sys { what: format!("cannot send {sig} to pid {pid}"), source: e }
    }
}

/// Checks a suspend request without acting (simulate mode).
pub(crate) fn plan_suspend(pid: u32, prot: &Protection) -> Result<Detail, RespondError> {
    let t = checked_target(pid, None, prot)?;
    Ok(Detail::from([("comm".to_string(), t.stat.comm.clone()), ("state".to_string(), t.stat.state.to_string())]))
}

/// Waits (up to 1 s) until the process's state satisfies `ok`; returns the last state seen.
fn wait_state(t: &Target, ok: impl Fn(char) -> bool) -> Option<char> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let st = read_stat(t.pid()).ok().filter(|s| s.start_ticks == t.stat.start_ticks).map(|s| s.state);
        match st {
            Some(c) if ok(c) => return Some(c),
            None => return None,
            Some(c) if Instant::now() >= until => return Some(c),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Stops a process (SIGSTOP) and waits until it shows state `T`.
pub(crate) fn suspend(pid: u32, prot: &Protection) -> Result<Detail, RespondError> {
    let t = checked_target(pid, None, prot)?;
    t.signal(libc::SIGSTOP).map_err(|e| signal_error(pid, "SIGSTOP", e))?;
    let state = wait_state(&t, |c| c == 'T' || c == 't');
    tracing::info!(pid, "suspended process");
    Ok(Detail::from([("comm".to_string(), t.stat.comm.clone()), ("state".to_string(), state.map_or_else(|| "exited".to_string(), |c| c.to_string()))]))
}

/// Checks a resume request without acting (simulate mode).
pub(crate) fn plan_resume(pid: u32) -> Result<Detail, RespondError> {
    let t = Target::open(pid)?;
    Ok(Detail::from([("comm".to_string(), t.stat.comm.clone()), ("state".to_string(), t.stat.state.to_string())]))
}

/// Continues a stopped process (SIGCONT). Not restricted by protection:
/// resuming cannot harm a process.
pub(crate) fn resume(pid: u32) -> Result<Detail, RespondError> {
    let t = Target::open(pid)?;
    t.signal(libc::SIGCONT).map_err(|e| signal_error(pid, "SIGCONT", e))?;
    let state = wait_state(&t, |c| c != 'T' && c != 't');
    tracing::info!(pid, "resumed process");
    Ok(Detail::from([("comm".to_string(), t.stat.comm.clone()), ("state".to_string(), state.map_or_else(|| "exited".to_string(), |c| c.to_string()))]))
}

/// The executables of pid 1 and of running processes protected by name
/// (so only verified system executables: a renamed interpreter or a copy
/// named like a daemon shields nothing).
pub(crate) fn protected_executables(prot: &Protection) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    if let Ok(p) = fs::read_link("/proc/1/exe") {
        out.push((p, "the executable of pid 1".to_string()));
    }
    let Ok(dir) = fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid <= 2 {
            continue;
        }
        let Some(why) = prot.by_name(pid) else { continue };
        let Ok(p) = fs::read_link(format!("/proc/{pid}/exe")) else { continue };
        if !out.iter().any(|(q, _)| *q == p) {
            out.push((p, format!("the executable of protected process {pid} ({why})")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_and_init_and_kthreadd_are_protected() {
        let prot = Protection::new(&[]);
        let me = read_stat(std::process::id()).unwrap();
        assert_eq!(prot.why(&me).as_deref(), Some("the agent itself"));
        let init = Stat { pid: 1, comm: "init".into(), state: 'S', ppid: 0, flags: 0, start_ticks: 1, arg_area: None };
        assert!(prot.why(&init).is_some());
        let kthread = Stat { pid: 77, comm: "kworker/0:1".into(), state: 'I', ppid: 2, flags: PF_KTHREAD, start_ticks: 1, arg_area: None };
        assert!(prot.why(&kthread).unwrap().contains("kernel thread"));
        let parent = read_stat(me.ppid).unwrap();
        if parent.pid > 1 {
            assert!(prot.why(&parent).is_some(), "the agent's parent is protected");
        }
    }

    #[test]
    fn identity_check_detects_reuse() {
        let me = read_stat(std::process::id()).unwrap();
        let st = BootInfo::current().start_time_ns(me.start_ticks);
        assert!(check_identity(&me, Some(ProcessIdentity::StartTime(st))).is_ok());
        assert!(matches!(check_identity(&me, Some(ProcessIdentity::StartTime(st + 1))), Err(RespondError::PidReused { .. })));
        let eid = current_entity_id(me.pid).unwrap();
        assert!(check_identity(&me, Some(ProcessIdentity::EntityId(eid))).is_ok());
        assert!(matches!(check_identity(&me, Some(ProcessIdentity::EntityId(eid ^ 1))), Err(RespondError::PidReused { .. })));
    }
}
