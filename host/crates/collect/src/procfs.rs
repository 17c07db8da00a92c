//! Reading `/proc` for the collectors: process snapshots and user names, on
//! top of the readers shared with response ([`edr_procfs`]: stat, exe, argv,
//! boot identity, entity ids).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub use edr_procfs::entity_id;
pub(crate) use edr_procfs::{list_pids, read_cgroup_id, read_cmdline, read_cwd, read_effective_ids, read_euid, read_exe, read_stat, BootInfo, Stat};

/// What `/proc/<pid>` said about a process; `None` fields could not be read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub exe: Option<String>,
    pub argv: Option<Vec<String>>,
    pub stat: Option<Stat>,
    pub cwd: Option<String>,
    pub euid: Option<u32>,
    pub egid: Option<u32>,
    pub cgroup_id: Option<u64>,
}

impl Snapshot {
    /// Reads what it can, the race-prone `exe` first: a short-lived process
    /// is often gone by the time its exec event is handled.
    ///
    /// The reads are bracketed by two reads of `stat`: when the process
    /// exec'd in between (`env prog`, `sh -c 'exec prog'`), exe and argv may
    /// come from different images, or the argv be torn, so neither is kept
    /// (the event is partial and its exe comes from fanotify).
    pub fn read(pid: u32) -> Snapshot {
        let before = read_stat(pid).ok();
        let mut exe = read_exe(pid).ok();
        let mut argv = read_cmdline(pid).ok().filter(|a| !a.is_empty());
        let (euid, egid) = read_effective_ids(pid).ok().unzip();
        let cwd = read_cwd(pid).ok();
        let cgroup_id = read_cgroup_id(pid).ok();
        let stat = read_stat(pid).ok();
        // (0, 0): not ours to see, or the process has exited (no address
        // space): no evidence of an exec.
        let area = |s: &Option<Stat>| s.as_ref().and_then(|s| s.arg_area).filter(|a| *a != (0, 0));
        if let (Some(a), Some(b)) = (area(&before), area(&stat)) {
            if a != b {
                exe = None;
                argv = None;
            }
        }
        Snapshot { exe, argv, stat: stat.or(before), cwd, euid, egid, cgroup_id }
    }

    /// Drops what belongs to a later image than the exec being handled,
    /// whose executable was `exe` (from fanotify): a process that exec'd
    /// again before `/proc` was read (`sh -c 'exec prog'`, `env prog`,
    /// `nohup`, ...) shows the later program there, and reporting that for
    /// the earlier exec would hide the earlier one. Its exe and argv are
    /// then unknown (the caller takes the exe from fanotify, and the event
    /// is partial) and its comm is the exe's file name, as the kernel sets
    /// it. Returns whether it did.
    pub fn forget_later_image(&mut self, exe: &str) -> bool {
        let plain = |p: &str| p.strip_suffix(" (deleted)").unwrap_or(p).to_string();
        match &self.exe {
            Some(now) if plain(now) != plain(exe) => {
                self.exe = None;
                self.argv = None;
                if let Some(stat) = self.stat.as_mut() {
                    let name = exe.rsplit('/').next().unwrap_or(exe);
                    // TASK_COMM_LEN: 15 bytes and the NUL.
                    stat.comm = name
                        .chars()
                        .scan(0, |len, c| {
                            *len += c.len_utf8();
                            (*len <= 15).then_some(c)
                        })
                        .collect();
                }
                true
            }
            _ => false,
        }
    }

    /// Whether every field was read.
    pub fn complete(&self) -> bool {
        self.exe.is_some() && self.argv.is_some() && self.stat.is_some() && self.cwd.is_some() && self.euid.is_some()
    }
}

/// uid -> user name from `/etc/passwd`, cached; reloaded when the file
/// changes (checked at most every 5 s). NSS sources other than the passwd
/// file (LDAP, sssd) are not consulted: their lookups can block on the network.
#[derive(Debug)]
pub(crate) struct Users {
    path: PathBuf,
    state: Mutex<UsersState>,
}

#[derive(Debug, Default)]
struct UsersState {
    names: HashMap<u32, String>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Users {
    pub fn new(path: impl Into<PathBuf>) -> Users {
        Users { path: path.into(), state: Mutex::new(UsersState::default()) }
    }

    /// The user name of `uid`, or an empty string when unknown.
    pub fn name(&self, uid: u32) -> String {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stale = st.checked.is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if stale || (!st.names.contains_key(&uid) && st.checked.is_none_or(|t| t.elapsed() > Duration::from_millis(500))) {
            st.checked = Some(Instant::now());
            let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            if mtime != st.mtime || st.names.is_empty() {
                st.mtime = mtime;
                st.names = fs::read_to_string(&self.path).map(|s| edr_procfs::parse_passwd(&s)).unwrap_or_default();
            }
        }
        st.names.get(&uid).cloned().unwrap_or_default()
    }
}

/// Whether a path exists (without following a final symlink).
pub(crate) fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_image_in_proc_is_not_taken_for_the_exec_being_handled() {
        let snap = || Snapshot {
            exe: Some("/usr/bin/sleep".into()),
            argv: Some(vec!["sleep".into(), "60".into()]),
            stat: edr_procfs::parse_stat("7 (sleep) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0 0"),
            cwd: Some("/root".into()),
            euid: Some(0),
            egid: Some(0),
            cgroup_id: None,
        };
        // Same image (a deleted file counts as itself): kept.
        let mut same = snap();
        assert!(!same.forget_later_image("/usr/bin/sleep"));
        assert!(!same.forget_later_image("/usr/bin/sleep (deleted)"));
        assert!(same.complete());
        // The exec being handled ran a reverse shell that has since exec'd sleep.
        let mut later = snap();
        assert!(later.forget_later_image("/tmp/edr-revshell-with-a-long-name"));
        assert_eq!((later.exe, later.argv), (None, None));
        let stat = later.stat.unwrap();
        assert_eq!(stat.comm, "edr-revshell-wi", "the kernel's 15-byte comm of the earlier image");
        assert_eq!((stat.ppid, stat.start_ticks), (1, 99), "the process itself is the same");
        assert_eq!(later.cwd.as_deref(), Some("/root"));
        // Nothing read from /proc: nothing to forget.
        let mut gone = Snapshot::default();
        assert!(!gone.forget_later_image("/tmp/x"));
    }

    #[test]
    fn snapshot_of_this_process_is_complete() {
        let snap = Snapshot::read(std::process::id());
        assert!(snap.complete(), "{snap:?}");
        assert_eq!(snap.exe.as_deref(), Some(std::env::current_exe().unwrap().to_str().unwrap()));
        let gone = Snapshot::read(u32::MAX - 1);
        assert!(gone.exe.is_none() && gone.stat.is_none() && !gone.complete());
    }

    #[test]
    fn passwd_parsing_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        fs::write(&p, "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n").unwrap();
        let users = Users::new(&p);
        assert_eq!(users.name(0), "root");
        assert_eq!(users.name(1000), "alice");
        assert_eq!(users.name(4242), "");
    }
}
