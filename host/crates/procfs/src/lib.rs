//! Reading `/proc`: one process's stat, exe, argv, cwd and uids, the boot
//! identity, and the stable process entity id.
//!
//! Telemetry (`edr-collect`) and response (`edr-respond`) both identify a
//! process by its entity id; they must compute it from the same fields the
//! same way, so both read `/proc` through this crate.
//!
//! Parsers take text so they are tested without a live process; readers wrap
//! them around `/proc/<pid>/...`.
#![deny(missing_docs)]

pub mod net;

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A `/proc` file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ProcError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 1.
    pub pid: u32,
    /// Field 2, without the parentheses (at most 15 bytes, may hold spaces and `)`).
    pub comm: String,
    /// Field 3 (`R`, `S`, `Z`, `T`, `I`, ...).
    pub state: char,
    /// Field 4. `0` means unknown for any process but the roots (pid 1 and
    /// kthreadd) and those whose parent is outside the reader's pid
    /// namespace: the kernel also prints 0 for a task being reaped, whose
    /// signal handlers it can no longer lock. Use [`Stat::parent`].
    pub ppid: u32,
    /// Field 9: the kernel's `PF_*` flags (`PF_KTHREAD` marks kernel threads).
    pub flags: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start_ticks: u64,
    /// Fields 48 and 49: where the argv lives in the address space. A new
    /// image (exec) gets a new one (randomised by ASLR), so two reads that
    /// differ bracket an exec. `None` on old kernels, and `(0, 0)` where the
    /// reader may not look into the process or it has exited.
    pub arg_area: Option<(u64, u64)>,
}

impl Stat {
    /// The parent's pid, `None` when the kernel printed 0 (see
    /// [`Stat::ppid`]): a process caught while being reaped must not be
    /// reported as an orphan.
    pub fn parent(&self) -> Option<u32> {
        (self.ppid != 0).then_some(self.ppid)
    }
}

/// `PF_KTHREAD` in [`Stat::flags`].
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses a `/proc/<pid>/stat` line. The comm field is everything between
/// the first `(` and the last `)`, since a comm may contain both.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = line[..open].trim().parse().ok()?;
    let comm = line[open + 1..close].to_string();
    // rest[0] is field 3; field N is rest[N - 3].
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        flags: field(9)?,
        start_ticks: field(22)?,
        arg_area: field(48).zip(field(49)),
    })
}

/// Reads and parses `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> io::Result<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&s).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat")))
}

/// Splits `/proc/<pid>/cmdline` (NUL-separated, NUL-terminated) into argv.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The real and effective uid from `/proc/<pid>/status`.
pub fn parse_status_uids(s: &str) -> Option<(u32, u32)> {
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    let mut it = line["Uid:".len()..].split_whitespace();
    let real = it.next()?.parse().ok()?;
    let effective = it.next()?.parse().ok()?;
    Some((real, effective))
}

/// The `btime` line of `/proc/stat`: boot time in seconds since the epoch.
pub fn parse_btime(s: &str) -> Option<u64> {
    s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The executable path (`/proc/<pid>/exe`); fails for kernel threads and
/// processes that are gone (or zombies).
pub fn read_exe(pid: u32) -> io::Result<String> {
    fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned())
}

/// The argument vector; empty for kernel threads and zombies.
pub fn read_cmdline(pid: u32) -> io::Result<Vec<String>> {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| parse_cmdline(&b))
}

/// The working directory.
pub fn read_cwd(pid: u32) -> io::Result<String> {
    fs::read_link(format!("/proc/{pid}/cwd")).map(|p| p.to_string_lossy().into_owned())
}

/// The effective uid and gid from `/proc/<pid>/status`.
pub fn read_effective_ids(pid: u32) -> io::Result<(u32, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let effective = |key: &str| {
        let line = s.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().nth(1)?.parse().ok()
    };
    effective("Uid:").zip(effective("Gid:")).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no Uid/Gid lines in /proc/{pid}/status")))
}

/// `/etc/passwd` as uid -> user name (`name:x:uid:...`): the first entry
/// of a uid wins, as `getpwuid` answers; comments, lines without a uid and
/// entries without a name are skipped.
pub fn parse_passwd(text: &str) -> std::collections::HashMap<u32, String> {
    let mut names = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else { continue };
        if let (false, Ok(uid)) = (name.is_empty(), uid.parse::<u32>()) {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

/// The cgroup v2 id of a process: the inode of its cgroup's directory in
/// the cgroup2 mount (what the kernel's `bpf_get_current_cgroup_id` returns).
///
/// # Errors
/// No cgroup2 hierarchy mounted, or the process or its cgroup is gone.
pub fn read_cgroup_id(pid: u32) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = parse_cgroup_v2_path(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no cgroup v2 line in /proc/{pid}/cgroup")))?;
    let mount = cgroup2_mount().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 hierarchy is mounted"))?;
    fs::metadata(format!("{mount}{}", path.trim_end_matches('/'))).map(|m| m.ino())
}

/// The path of the `0::PATH` line of `/proc/<pid>/cgroup` (the unified hierarchy).
pub fn parse_cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::")).filter(|p| p.starts_with('/'))
}

/// Where the cgroup2 hierarchy is mounted, from `/proc/self/mountinfo` (read once).
fn cgroup2_mount() -> Option<&'static str> {
    static MOUNT: OnceLock<Option<String>> = OnceLock::new();
    MOUNT.get_or_init(|| fs::read_to_string("/proc/self/mountinfo").ok().and_then(|t| parse_cgroup2_mount(&t).map(str::to_string))).as_deref()
}

/// The mount point of the first cgroup2 file system in a `mountinfo` text
/// mounted at the hierarchy's root (a container's view of a sub-tree has
/// paths that would not match the process's cgroup path).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|l| {
        let (fields, fs_type) = l.split_once(" - ")?;
        let f: Vec<&str> = fields.split(' ').collect();
        (fs_type.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| f.get(4).copied()).flatten()
    })
}

/// The effective uid.
pub fn read_euid(pid: u32) -> io::Result<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_uids(&s).map(|(_, e)| e).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no Uid line in /proc/{pid}/status")))
}

/// The pids in `/proc` (processes, not threads).
pub fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Boot identity and clock facts used to build start times and entity ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Boot time, seconds since the epoch (`btime` of `/proc/stat`).
    pub btime: u64,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    pub clk_tck: u64,
}

impl BootInfo {
    /// Reads the boot id, boot time and tick rate.
    pub fn read() -> Result<BootInfo, ProcError> {
        let read = |p: &str| fs::read_to_string(p).map_err(|source| ProcError { path: PathBuf::from(p), source });
        let boot_id = read("/proc/sys/kernel/random/boot_id")?.trim().to_string();
        let btime = parse_btime(&read("/proc/stat")?)
            .ok_or_else(|| ProcError { path: PathBuf::from("/proc/stat"), source: io::Error::new(io::ErrorKind::InvalidData, "no btime line") })?;
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(BootInfo { boot_id, btime, clk_tck: if tck > 0 { tck as u64 } else { 100 } })
    }

    /// This boot's, read once. Where `/proc` cannot say (never on Linux),
    /// an empty boot id and boot time 0: ids then still tell processes
    /// apart within this boot.
    pub fn current() -> &'static BootInfo {
        static BOOT: OnceLock<BootInfo> = OnceLock::new();
        BOOT.get_or_init(|| BootInfo::read().unwrap_or(BootInfo { boot_id: String::new(), btime: 0, clk_tck: 100 }))
    }

    /// Start time in ns since the epoch from ticks since boot.
    pub fn start_time_ns(&self, ticks: u64) -> u64 {
        self.btime * 1_000_000_000 + ticks * (1_000_000_000 / self.clk_tck)
    }

    /// Ticks since boot from a CLOCK_MONOTONIC-style ns timestamp (the
    /// process connector's): an estimate for when `/proc/<pid>/stat` is gone.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_first_entry_wins_and_junk_is_skipped() {
        let u = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# c:x:7\nbad\n:x:5:5::/:\nnobody:x:65534:65534::/:/usr/sbin/nologin\nweird:x:notanumber:0::/:\ntoor:x:0:0::/:\n",
        );
        assert_eq!(u.get(&0).map(String::as_str), Some("root"), "the first entry of uid 0");
        assert_eq!(u.get(&65534).map(String::as_str), Some("nobody"));
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn cgroup_v2_path_and_mount() {
        assert_eq!(parse_cgroup_v2_path("12:pids:/x\n0::/system.slice/ssh.service\n"), Some("/system.slice/ssh.service"));
        assert_eq!(parse_cgroup_v2_path("4:memory:/a\n"), None);
        assert_eq!(parse_cgroup_v2_path("0::garbage\n"), None);
        let info = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw\n\
                    41 31 0:38 /sub /mnt/c rw - cgroup2 cgroup2 rw\n\
                    42 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(info), Some("/sys/fs/cgroup/unified"));
        assert_eq!(parse_cgroup2_mount("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn cgroup_id_of_this_process_when_cgroup2_is_mounted() {
        // Where cgroup2 is mounted, our own cgroup's directory exists and has an inode.
        if cgroup2_mount().is_some() {
            assert!(read_cgroup_id(std::process::id()).unwrap() > 0);
        }
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let s = "4242 (my (evil) proc) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 10000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 140737488347000 140737488347100 140737488347200 0";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "my (evil) proc");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_ticks, 987654);
        assert_eq!(st.arg_area, Some((140737488347000, 140737488347100)));
        assert_eq!(st.parent(), Some(1));
        // A task being reaped: the kernel prints ppid 0 and no arg area.
        let reaped = parse_stat(
            "9 (true) Z 0 0 0 0 -1 4227852 0 0 0 0 0 0 0 0 20 0 0 0 99 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0",
        )
        .unwrap();
        assert_eq!((reaped.ppid, reaped.parent(), reaped.arg_area), (0, None, Some((0, 0))));
        // An old kernel's shorter line: no arg area.
        assert_eq!(parse_stat("7 (x) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0").unwrap().arg_area, None);
        assert!(parse_stat("12 (x) S 1").is_none());
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("x (y) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99").is_none(), "pid not a number");
    }

    #[test]
    fn stat_of_this_process() {
        let st = read_stat(std::process::id()).unwrap();
        assert_eq!(st.pid, std::process::id());
        assert_eq!(st.ppid, std::os::unix::process::parent_id());
        assert!(st.start_ticks > 0);
        assert_eq!(st.flags & PF_KTHREAD, 0);
        let (start, end) = st.arg_area.expect("kernel 3.5+");
        assert!(end > start, "our own argv area is visible to us");
    }

    #[test]
    fn cmdline_status_and_btime() {
        assert_eq!(parse_cmdline(b"bash\0-c\0echo hi\0"), vec!["bash", "-c", "echo hi"]);
        assert_eq!(parse_cmdline(b"nginx: worker process"), vec!["nginx: worker process"]);
        assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(parse_status_uids("Name:\tx\nUid:\t1000\t0\t0\t0\n"), Some((1000, 0)));
        assert_eq!(parse_status_uids("Name:\tx\n"), None);
        assert_eq!(parse_btime("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000));
        assert_eq!(read_cmdline(std::process::id()).unwrap().len(), std::env::args().count());
        assert!(list_pids().unwrap().contains(&std::process::id()));
    }

    #[test]
    fn entity_ids_are_stable_distinct_and_never_zero() {
        let boot = "6f1c2f1e-0000-4000-8000-000000000001";
        assert_eq!(entity_id(boot, 4242, 1000), 18099858270816193952, "a change here breaks every stored id");
        assert_ne!(entity_id(boot, 4242, 1001), entity_id(boot, 4242, 1000));
        assert_ne!(entity_id(boot, 4243, 1000), entity_id(boot, 4242, 1000));
        assert_ne!(entity_id("other-boot", 4242, 1000), entity_id(boot, 4242, 1000));
        let b = BootInfo::current();
        let me = read_stat(std::process::id()).unwrap();
        assert_eq!(b.entity_id(me.pid, me.start_ticks), entity_id(&b.boot_id, me.pid, me.start_ticks));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let started = b.start_time_ns(me.start_ticks);
        assert!(started <= now && now - started < 3_600 * 1_000_000_000, "this test started within the hour");
    }
}
