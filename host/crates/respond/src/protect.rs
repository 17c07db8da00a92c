//! What response must never harm: verified system executables (the basis of
//! process protection) and protected paths (refused by quarantine, delete
//! and, for executables, block).
//!
//! # Verified executables
//!
//! A process's name (`comm`, `prctl(PR_SET_NAME)`, `/proc/PID/comm`) and the
//! file name of its executable are chosen by whoever starts it, so neither
//! can make a process protected. [`verified_executable`] accepts a process's
//! executable only when
//!
//! * `readlink /proc/PID/exe` names a file that `lstat` shows to be the very
//!   inode `fstat` of `/proc/PID/exe` has (same device and inode: not a
//!   deleted or replaced file, not a file of another mount namespace);
//! * the file is a regular file owned by root and not writable by group or
//!   others, and every directory above it is owned by root, is no symlink and
//!   is not writable by group or others (so no user could have put it there);
//! * it lies in a system location: `/usr/bin`, `/usr/sbin`, `/usr/lib*`
//!   (including `/usr/libexec`), `/bin`, `/sbin`, `/lib*`.
//!
//! # Protected paths
//!
//! [`PathGuard`] holds the files and directories quarantine and delete refuse
//! by default: the agent's data dir (and everything in it), its config file,
//! its trust key files, its own executable, the dynamic loader and the C
//! library it runs with, the account files, the shells the host boots with,
//! and `[respond] protected_paths`. A target matches by its resolved path
//! (symlinks in the path resolved) and by (device, inode), so neither a
//! symlinked directory nor a hard link elsewhere gets around it.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Account and system databases the host needs to let anyone log in or run
/// anything. (`/etc/ld.so.preload` is deliberately absent: it is a
/// persistence target operators must be able to clean up.)
pub const ACCOUNT_FILES: &[&str] = &["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/sudoers", "/etc/ld.so.cache"];

/// Shells the host needs to boot (init scripts, `system(3)`, logins).
pub const SYSTEM_SHELLS: &[&str] = &["/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/dash"];

/// Most entries walked under a protected directory to find hard links to its files.
const TREE_WALK_MAX: usize = 100_000;

/// A process's executable that passed every check of [`verified_executable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedExe {
    /// Its path (as the kernel reports it, which is resolved).
    pub path: PathBuf,
}

/// Whether `path` is in a system location (see the module docs).
pub(crate) fn in_system_location(path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix("/") else { return false };
    let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
    let system_dir = |d: &str| d == "bin" || d == "sbin" || d.starts_with("lib");
    match parts.as_slice() {
        ["usr", dir, _, ..] => system_dir(dir),
        [dir, _, ..] => *dir != "usr" && system_dir(dir),
        _ => false,
    }
}

/// Refuses a file or directory that a user other than root could have
/// written or replaced; `Err` says which and why.
fn root_controlled(path: &Path, m: &fs::Metadata) -> Result<(), String> {
    if m.uid() != 0 {
        return Err(format!("{} is owned by uid {}, not root", path.display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by group or others (mode {:04o})", path.display(), m.mode() & 0o7777));
    }
    Ok(())
}

/// Checks that `path` is a root-owned file no one else can write, in a
/// system location, below root-owned directories no one else can write.
pub(crate) fn check_system_file(path: &Path) -> Result<fs::Metadata, String> {
    if !in_system_location(path) {
        return Err(format!("{} is not in a system location (/usr/bin, /usr/sbin, /usr/lib*, /bin, /sbin, /lib*)", path.display()));
    }
    let m = fs::symlink_metadata(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    root_controlled(path, &m)?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        let dm = fs::symlink_metadata(d).map_err(|e| format!("cannot stat {}: {e}", d.display()))?;
        if !dm.is_dir() {
            return Err(format!("{} is not a directory", d.display()));
        }
        root_controlled(d, &dm)?;
        dir = d.parent();
    }
    Ok(m)
}

/// The verified executable of `pid` (see the module docs), or why it is not one.
pub(crate) fn verified_executable(pid: u32) -> Result<VerifiedExe, String> {
    let link = format!("/proc/{pid}/exe");
    let path = fs::read_link(&link).map_err(|e| format!("cannot read {link}: {e}"))?;
    // O_PATH follows the magic link to the inode the process runs, whatever its name now.
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(&link).map_err(|e| format!("cannot open {link}: {e}"))?;
    // SAFETY: libc::stat is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a stat buffer of the right type.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(format!("cannot fstat {link}: {}", std::io::Error::last_os_error()));
    }
    let m = check_system_file(&path)?;
    if (m.dev(), m.ino()) != (st.st_dev, st.st_ino) {
        return Err(format!("{} is not the file pid {pid} runs (replaced, deleted, or in another mount namespace)", path.display()));
    }
    Ok(VerifiedExe { path })
}

/// The real and effective uid of `pid` (from `/proc/PID/status`).
fn uids(pid: u32) -> Option<(u32, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut it = line.split_whitespace().filter_map(|v| v.parse::<u32>().ok());
    Some((it.next()?, it.next()?))
}

/// The systemd system service `pid` belongs to (`/system.slice/NAME.service`
/// in its cgroup), when it is directly in one. Only the system manager can
/// put a process there (containers and user managers have their own
/// subtrees, which are deeper or elsewhere).
pub(crate) fn system_service(pid: u32) -> Option<String> {
    service_in_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The `NAME.service` directly under `/system.slice` in a `/proc/PID/cgroup` text.
fn service_in_cgroup(s: &str) -> Option<String> {
    s.lines().find_map(|l| {
        let path = l.splitn(3, ':').nth(2)?;
        let unit = path.strip_prefix("/system.slice/")?;
        (unit.ends_with(".service") && !unit.contains('/')).then(|| unit.to_string())
    })
}

/// Who started `pid` in a way no ordinary user can forge: root (real and
/// effective uid 0) or a system service. A program an unprivileged user
/// starts (even a system binary, which the user could steer with
/// `LD_PRELOAD`) gets `None`.
pub(crate) fn trusted_runner(pid: u32) -> Option<String> {
    if let Some(unit) = system_service(pid) {
        return Some(format!("system service {unit}"));
    }
    match uids(pid) {
        Some((0, 0)) => Some("run by root".to_string()),
        _ => None,
    }
}

/// The dynamic loader the agent runs with (its `AT_BASE` mapping in
/// `/proc/self/maps`) and the C library mapped into it.
pub(crate) fn own_loader_and_libc() -> (Option<PathBuf>, Option<PathBuf>) {
    // SAFETY: getauxval reads the auxiliary vector; 0 when absent (static binary).
    let base = unsafe { libc::getauxval(libc::AT_BASE) } as u64;
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else { return (None, None) };
    let (mut loader, mut libc_path) = (None, None);
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(path)) = (f.next(), f.nth(4)) else { continue };
        if !path.starts_with('/') {
            continue;
        }
        let start = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok());
        if base != 0 && start == Some(base) && loader.is_none() {
            loader = Some(PathBuf::from(path));
        }
        let name = Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_libc = name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("libc.musl") || name.starts_with("ld-musl");
        if is_libc && libc_path.is_none() {
            libc_path = Some(PathBuf::from(path));
        }
    }
    (loader, libc_path)
}

/// One protected file or directory.
#[derive(Debug, Clone)]
struct Guarded {
    path: PathBuf,
    why: String,
    /// An executable (or library) the host or agent needs: block refuses it too.
    exec: bool,
}

/// The paths quarantine and delete refuse by default (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct PathGuard {
    entries: Vec<Guarded>,
}

impl PathGuard {
    /// The built-in classes plus the agent's own files and `extra`.
    pub(crate) fn new(cfg: &crate::ResponseConfig) -> PathGuard {
        let mut g = PathGuard::default();
        if let Some(d) = &cfg.data_dir {
            g.add(d, "the agent's data directory (its record, audit log and pack state)", false);
        }
        if let Some(c) = &cfg.config_file {
            g.add(c, "the agent's configuration file", false);
        }
        for k in &cfg.trust_keys {
            g.add(k, "a trust key file of the agent", false);
        }
        if let Some(b) = &cfg.agent_binary {
            g.add(b, "the agent's own executable", true);
        }
        if let Ok(b) = fs::read_link("/proc/self/exe") {
            g.add(&b, "the agent's own executable", true);
        }
        let (loader, libc_path) = own_loader_and_libc();
        if let Some(l) = loader {
            g.add(&l, "the dynamic loader", true);
        }
        if let Some(l) = libc_path {
            g.add(&l, "the C library", true);
        }
        for f in ACCOUNT_FILES {
            g.add(Path::new(f), "an account or system database the host needs", false);
        }
        for s in SYSTEM_SHELLS {
            g.add(Path::new(s), "a shell the host needs to boot", true);
        }
        for p in &cfg.protected_paths {
            g.add(p, "listed in [respond] protected_paths", true);
        }
        g
    }

    fn add(&mut self, path: &Path, why: &str, exec: bool) {
        if !self.entries.iter().any(|e| e.path == path) {
            self.entries.push(Guarded { path: path.to_path_buf(), why: why.to_string(), exec });
        }
    }

    /// Why `path` is protected, or `None`. Matches the path itself, its
    /// resolved form, anything under a protected directory, and any hard
    /// link to a protected file (same device and inode).
    pub(crate) fn why(&self, path: &Path) -> Option<String> {
        let canon = resolve(path);
        let target = fs::symlink_metadata(path).ok();
        for e in &self.entries {
            let ec = resolve(&e.path);
            let em = fs::metadata(&e.path).ok();
            let is_dir = em.as_ref().is_some_and(|m| m.is_dir());
            let by_path = if is_dir { canon.starts_with(&ec) || path.starts_with(&e.path) } else { canon == ec || path == e.path };
            if by_path {
                return Some(format!("{}: {}", e.why, e.path.display()));
            }
            let (Some(t), Some(m)) = (&target, &em) else { continue };
            if !is_dir && (t.dev(), t.ino()) == (m.dev(), m.ino()) {
                return Some(format!("a hard link to {} ({})", e.path.display(), e.why));
            }
            if is_dir && t.is_file() && t.nlink() > 1 {
                if let Some(inside) = find_inode(&e.path, t.dev(), t.ino()) {
                    return Some(format!("a hard link to {} ({}: {})", inside.display(), e.why, e.path.display()));
                }
            }
        }
        None
    }

    /// The protected executables (for block), with why.
    pub(crate) fn executables(&self) -> Vec<(PathBuf, String)> {
        self.entries.iter().filter(|e| e.exec && fs::metadata(&e.path).is_ok_and(|m| m.is_file())).map(|e| (e.path.clone(), e.why.clone())).collect()
    }
}

/// `path` with its symlinks resolved; for a missing file, its directory resolved.
fn resolve(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => fs::canonicalize(dir).map(|d| d.join(name)).unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    })
}

/// A file under `dir` with this device and inode (a bounded walk that does
/// not follow symlinks).
fn find_inode(dir: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > TREE_WALK_MAX {
                return None;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if (m.dev(), m.ino()) == (dev, ino) {
                return Some(e.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_locations() {
        for p in
            ["/usr/bin/sshd", "/usr/sbin/sshd", "/usr/lib/systemd/systemd", "/usr/libexec/x", "/usr/lib64/x", "/bin/sh", "/sbin/init", "/lib/x", "/lib64/ld.so"]
        {
            assert!(in_system_location(Path::new(p)), "{p}");
        }
        for p in ["/tmp/x/sshd", "/home/u/sshd", "/usr/local/bin/sshd", "/usr/bin", "/opt/bin/x", "/usr/share/x", "bin/sh", "/bin"] {
            assert!(!in_system_location(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn the_own_loader_and_libc_are_found() {
        let (loader, libc_path) = own_loader_and_libc();
        let libc_path = libc_path.expect("the test binary maps a C library");
        assert!(libc_path.exists(), "{}", libc_path.display());
        if let Some(l) = loader {
            assert!(l.file_name().unwrap().to_string_lossy().starts_with("ld-"), "{}", l.display());
        }
    }

    #[test]
    fn service_identity_comes_only_from_a_system_service_cgroup() {
        assert_eq!(service_in_cgroup("0::/system.slice/ssh.service\n").as_deref(), Some("ssh.service"));
        assert_eq!(service_in_cgroup("1:name=systemd:/system.slice/auditd.service\n").as_deref(), Some("auditd.service"));
        for text in [
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/ssh.service\n",
            "0::/system.slice/docker-0123.scope\n",
            "0::/system.slice/docker-0123.scope/system.slice/ssh.service\n",
            "0::/init.scope\n",
        ] {
            assert_eq!(service_in_cgroup(text), None, "{text}");
        }
    }

    #[test]
    fn a_file_in_tmp_is_not_a_system_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sshd");
        fs::write(&p, b"x").unwrap();
        assert!(check_system_file(&p).unwrap_err().contains("not in a system location"));
    }
}
