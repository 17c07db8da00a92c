//! Reading `/proc`: process snapshots, boot identity, entity ids, user names.
//!
//! Parsers take text so they are tested without a live process; readers wrap
//! them around `/proc/<pid>/...`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::CollectError;

/// The fields of `/proc/<pid>/stat` the collectors use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 2, without the parentheses (at most 15 bytes, may hold spaces and `)`).
    pub comm: String,
    /// Field 3 (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start_ticks: u64,
    /// Fields 48 and 49: where the argv lives in the address space. A new
    /// image (exec) gets a new one (randomised by ASLR), so two reads that
    /// differ bracket an exec. `None` on old kernels, and `(0, 0)` where the
    /// reader may not look into the process.
    pub arg_area: Option<(u64, u64)>,
}

/// Parses `/proc/<pid>/stat`. The comm field is everything between the
/// first `(` and the last `)`, since a comm may contain both.
pub(crate) fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = s[open + 1..close].to_string();
    // Fields from 3 on.
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let start_ticks = rest.get(22 - 3)?.parse().ok()?;
    let field = |n: usize| rest.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        comm,
        state,
        ppid,
        start_ticks,
        arg_area: field(48).zip(field(49)),
    })
}

/// Splits `/proc/<pid>/cmdline` (NUL-separated, NUL-terminated) into argv.
pub(crate) fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The real and effective uid from `/proc/<pid>/status`.
pub(crate) fn parse_status_uids(s: &str) -> Option<(u32, u32)> {
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    let mut it = line["Uid:".len()..].split_whitespace();
    let real = it.next()?.parse().ok()?;
    let effective = it.next()?.parse().ok()?;
    Some((real, effective))
}

/// The `btime` line of `/proc/stat`: boot time in seconds since the epoch.
pub(crate) fn parse_btime(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads and parses `/proc/<pid>/stat`.
pub(crate) fn read_stat(pid: u32) -> io::Result<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&s).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

/// The executable path (`/proc/<pid>/exe`); fails for kernel threads and
/// processes that are gone (or zombies).
pub(crate) fn read_exe(pid: u32) -> io::Result<String> {
    fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned())
}

/// The argument vector; empty for kernel threads and zombies.
pub(crate) fn read_cmdline(pid: u32) -> io::Result<Vec<String>> {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| parse_cmdline(&b))
}

/// The working directory.
pub(crate) fn read_cwd(pid: u32) -> io::Result<String> {
    fs::read_link(format!("/proc/{pid}/cwd")).map(|p| p.to_string_lossy().into_owned())
}

/// The effective uid.
pub(crate) fn read_euid(pid: u32) -> io::Result<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_uids(&s).map(|(_, e)| e).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no Uid line in /proc/{pid}/status"),
        )
    })
}

/// The pids in `/proc` (processes, not threads).
pub(crate) fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// What `/proc/<pid>` said about a process; `None` fields could not be read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub exe: Option<String>,
    pub argv: Option<Vec<String>>,
    pub stat: Option<Stat>,
    pub cwd: Option<String>,
    pub euid: Option<u32>,
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
        let euid = read_euid(pid).ok();
        let cwd = read_cwd(pid).ok();
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
        Snapshot {
            exe,
            argv,
            stat: stat.or(before),
            cwd,
            euid,
        }
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
                    stat.comm = name.chars().scan(0, |len, c| {
                        *len += c.len_utf8();
                        (*len <= 15).then_some(c)
                    }).collect();
                }
                true
            }
            _ => false,
        }
    }

    /// Whether every field was read.
    pub fn complete(&self) -> bool {
        self.exe.is_some()
            && self.argv.is_some()
            && self.stat.is_some()
            && self.cwd.is_some()
            && self.euid.is_some()
    }
}

/// Boot identity and clock facts used to build start times and entity ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootInfo {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Boot time, seconds since the epoch (`btime` of `/proc/stat`).
    pub btime: u64,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    pub clk_tck: u64,
}

impl BootInfo {
    /// Reads the boot id, boot time and tick rate.
    pub fn read() -> Result<BootInfo, CollectError> {
        let read = |p: &str| {
            fs::read_to_string(p).map_err(|source| CollectError::Proc {
                path: PathBuf::from(p),
                source,
            })
        };
        let boot_id = read("/proc/sys/kernel/random/boot_id")?.trim().to_string();
        let stat = read("/proc/stat")?;
        let btime = parse_btime(&stat).ok_or_else(|| CollectError::Proc {
            path: PathBuf::from("/proc/stat"),
            source: io::Error::new(io::ErrorKind::InvalidData, "no btime line"),
        })?;
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(BootInfo {
            boot_id,
            btime,
            clk_tck: if tck > 0 { tck as u64 } else { 100 },
        })
    }

    /// Start time in ns since the epoch from ticks since boot.
    pub fn start_time_ns(&self, ticks: u64) -> u64 {
        self.btime * 1_000_000_000 + ticks * (1_000_000_000 / self.clk_tck)
    }

    /// Ticks since boot from a CLOCK_MONOTONIC-style ns timestamp (the
    /// connector's): an estimate used only when `/proc/<pid>/stat` is gone.
    pub fn ticks_from_ns(&self, ns: u64) -> u64 {
        ns / (1_000_000_000 / self.clk_tck)
    }

    /// The stable entity id of (this boot, pid, start ticks).
    pub fn entity_id(&self, pid: u32, start_ticks: u64) -> u64 {
        entity_id(&self.boot_id, pid, start_ticks)
    }
}

/// A process's stable identity: a 64-bit hash (FNV-1a, then a SplitMix64
/// finaliser) of the boot id, the pid and the start time in ticks. The same
/// process gets the same id across agent restarts; a reused pid gets a new one.
/// Never 0 (0 means "unknown").
pub fn entity_id(boot_id: &str, pid: u32, start_ticks: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(boot_id.as_bytes());
    feed(&[0xff]);
    feed(&pid.to_le_bytes());
    feed(&start_ticks.to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 {
        1
    } else {
        z
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
        Users {
            path: path.into(),
            state: Mutex::new(UsersState::default()),
        }
    }

    /// The user name of `uid`, or an empty string when unknown.
    pub fn name(&self, uid: u32) -> String {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stale = st
            .checked
            .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if stale
            || (!st.names.contains_key(&uid)
                && st
                    .checked
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(500)))
        {
            st.checked = Some(Instant::now());
            let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            if mtime != st.mtime || st.names.is_empty() {
                st.mtime = mtime;
                st.names = fs::read_to_string(&self.path)
                    .map(|s| parse_passwd(&s))
                    .unwrap_or_default();
            }
        }
        st.names.get(&uid).cloned().unwrap_or_default()
    }
}

/// Parses passwd lines (`name:x:uid:...`).
pub(crate) fn parse_passwd(s: &str) -> HashMap<u32, String> {
    let mut m = HashMap::new();
    for line in s.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            m.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    m
}

/// Whether a path exists (without following a final symlink).
pub(crate) fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let s = "4242 (my (evil) proc) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 10000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 140737488347000 140737488347100 140737488347200 0";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, "my (evil) proc");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.start_ticks, 987654);
        assert_eq!(st.arg_area, Some((140737488347000, 140737488347100)));
        assert!(parse_stat("12 (x) S 1").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn a_later_image_in_proc_is_not_taken_for_the_exec_being_handled() {
        let snap = || Snapshot {
            exe: Some("/usr/bin/sleep".into()),
            argv: Some(vec!["sleep".into(), "60".into()]),
            stat: parse_stat("7 (sleep) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0 0"),
            cwd: Some("/root".into()),
            euid: Some(0),
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
    fn stat_of_this_process() {
        let st = read_stat(std::process::id()).unwrap();
        assert_eq!(st.ppid, std::os::unix::process::parent_id());
        assert!(st.start_ticks > 0);
    }

    #[test]
    fn cmdline_and_status() {
        assert_eq!(
            parse_cmdline(b"bash\0-c\0echo hi\0"),
            vec!["bash", "-c", "echo hi"]
        );
        assert_eq!(
            parse_cmdline(b"nginx: worker process"),
            vec!["nginx: worker process"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert!(parse_cmdline(b"").is_empty());
        let status = "Name:\tsudo\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_status_uids(status), Some((1000, 0)));
        assert_eq!(parse_status_uids("Name:\tx\n"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn snapshot_of_this_process_is_complete() {
        let snap = Snapshot::read(std::process::id());
        assert!(snap.complete(), "{snap:?}");
        assert_eq!(
            snap.exe.as_deref(),
            Some(std::env::current_exe().unwrap().to_str().unwrap())
        );
        let gone = Snapshot::read(u32::MAX - 1);
        assert!(gone.exe.is_none() && gone.stat.is_none() && !gone.complete());
    }

    #[test]
    fn entity_ids_are_stable_and_distinct() {
        let a = entity_id("6f1c2f1e-0000-4000-8000-000000000001", 4242, 1000);
        assert_eq!(
            a,
            entity_id("6f1c2f1e-0000-4000-8000-000000000001", 4242, 1000)
        );
        // Pinned: ids are stored, so the function must not change between releases.
        assert_eq!(a, 0xfb2f_9d33_3cea_4da0);
        assert_ne!(
            a,
            entity_id("6f1c2f1e-0000-4000-8000-000000000001", 4242, 1001),
            "pid reuse"
        );
        assert_ne!(
            a,
            entity_id("6f1c2f1e-0000-4000-8000-000000000001", 4243, 1000)
        );
        assert_ne!(
            a,
            entity_id("6f1c2f1e-0000-4000-8000-000000000002", 4242, 1000),
            "other boot"
        );
        assert_ne!(a, 0);
        let boot = BootInfo::read().unwrap();
        let st = read_stat(std::process::id()).unwrap();
        assert_eq!(
            boot.entity_id(std::process::id(), st.start_ticks),
            boot.entity_id(std::process::id(), st.start_ticks)
        );
        // The start time is after boot and not in the future.
        let start = boot.start_time_ns(st.start_ticks);
        assert!(
            start >= boot.btime * 1_000_000_000 && start <= edr_event::time::now() + 1_000_000_000
        );
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
