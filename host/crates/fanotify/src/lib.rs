//! fanotify, shared by the collectors (exec paths, file events) and by
//! response (exec blocking): one reading of the mount table, one rule for
//! which filesystems may be marked, one wrapper around `fanotify_mark(2)`,
//! and one reader of the event buffer ([`reader`]: typed events owning
//! their fds, the permission response).
//!
//! A filesystem mark (`FAN_MARK_FILESYSTEM`) covers every mount of a
//! superblock, so callers mark one mount per device. Pseudo filesystems
//! are never marked (nothing is executed from them), nor are network and
//! FUSE filesystems (marking looks the mount point up, which can hang on an
//! unresponsive server or daemon).

#![deny(missing_docs)]

pub mod reader;

pub use reader::{
    decode, init, read_events, respond, DecodeError, Events, FanotifyEvent, FanotifyReader, FidRecord, InfoRecord, Record, Response, FAN_REPORT_FD_ERROR,
    METADATA_LEN,
};

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One line of `/proc/self/mountinfo`, the fields the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 1: the mount id (unique while mounted).
    pub id: u32,
    /// Field 3: the device (`st_dev`) as major and minor.
    pub dev: (u32, u32),
    /// Field 5, unescaped (`\040` is a space).
    pub mount_point: String,
    /// The filesystem type after the ` - ` separator.
    pub fstype: String,
    /// Mounted `noexec`: an exec from it fails after the open.
    pub noexec: bool,
}

/// Parses `/proc/self/mountinfo` text; malformed lines are skipped.
pub fn parse_mountinfo(s: &str) -> Vec<Mount> {
    s.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let id = f.next()?.parse().ok()?;
            let _parent = f.next()?;
            let (maj, min) = f.next()?.split_once(':')?;
            let _root = f.next()?;
            let mount_point = unescape(f.next()?);
            let noexec = f.next()?.split(',').any(|o| o == "noexec");
            // Optional fields end at " - ".
            let mut rest = f.skip_while(|x| *x != "-");
            rest.next()?;
            let fstype = rest.next()?.to_string();
            Some(Mount { id, dev: (maj.parse().ok()?, min.parse().ok()?), mount_point, fstype, noexec })
        })
        .collect()
}

/// Reads and parses this process's mount table.
pub fn read_mountinfo() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\012` for a newline).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystems nothing is executed from and no detection watches.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "autofs",
    "rpc_pipefs",
    "nfsd",
    "selinuxfs",
    "hugetlbfs",
];

/// Whether `fstype` is a pseudo filesystem (never marked).
pub fn is_pseudo(fstype: &str) -> bool {
    PSEUDO_FS.contains(&fstype)
}

/// Whether `fstype` is a network or FUSE filesystem, whose mount point may
/// hang a lookup (never marked).
pub fn is_remote_or_fuse(fstype: &str) -> bool {
    matches!(
        fstype,
        "nfs" | "nfs4" | "cifs" | "smb3" | "smbfs" | "ceph" | "glusterfs" | "lustre" | "afs" | "9p" | "ocfs2" | "gfs2" | "virtiofs" | "fuse" | "fuseblk"
    ) || fstype.starts_with("fuse.")
}

/// Whether `path` lies on a `noexec` mount: the mount with the longest
/// mount point above it (the last one mounted there, when several are).
/// A `" (deleted)"` suffix (as `/proc/<pid>/exe` shows) is ignored.
pub fn is_noexec(mounts: &[Mount], path: &str) -> bool {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let mut best: Option<&Mount> = None;
    for m in mounts {
        let mp = m.mount_point.as_str();
        let under = mp == "/" || path == mp || (path.starts_with(mp) && path.as_bytes().get(mp.len()) == Some(&b'/'));
        if under && best.is_none_or(|b| mp.len() >= b.mount_point.len()) {
            best = Some(m);
        }
    }
    best.is_some_and(|m| m.noexec)
}

/// `fanotify_mark(fd, FAN_MARK_ADD | flags, mask, AT_FDCWD, path)`.
pub fn mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("path with a NUL byte: {}", path.display())))?;
    // SAFETY: a valid fd and a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::fanotify_mark(fd.as_raw_fd(), libc::FAN_MARK_ADD | flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Removes every filesystem mark of the group: no new events after this.
pub fn flush_filesystem_marks(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid fd; FLUSH ignores the path.
    let rc = unsafe { libc::fanotify_mark(fd.as_raw_fd(), libc::FAN_MARK_FLUSH | libc::FAN_MARK_FILESYSTEM, 0, libc::AT_FDCWD, std::ptr::null()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let s = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                 30 22 0:25 / /tmp/with\\040space rw,nosuid,noexec - tmpfs tmpfs rw\n\
                 31 22 0:26 / /mnt/nfs rw master:3 shared:4 - nfs4 srv:/x rw\n\
                 garbage\n\
                 32 22 x:1 / /bad rw - ext4 a rw\n";
        let m = parse_mountinfo(s);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], Mount { id: 22, dev: (8, 1), mount_point: "/".into(), fstype: "ext4".into(), noexec: false });
        assert_eq!(m[1].mount_point, "/tmp/with space");
        assert_eq!((m[2].fstype.as_str(), m[2].dev), ("nfs4", (0, 26)));
        assert!(!m[0].noexec && m[1].noexec && !m[2].noexec);
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("/srv\\040data"), "/srv data");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/end\\04"), "/end\\04", "a short escape stays");
        assert_eq!(unescape("/x\\9999"), "/x\\9999", "not octal");
    }

    #[test]
    fn filesystem_kinds() {
        assert!(is_remote_or_fuse("nfs4") && is_remote_or_fuse("fuse.sshfs") && is_remote_or_fuse("virtiofs"));
        assert!(!is_remote_or_fuse("tmpfs") && !is_remote_or_fuse("ext4"));
        assert!(is_pseudo("proc") && is_pseudo("cgroup2") && !is_pseudo("tmpfs") && !is_pseudo("overlay"));
    }

    #[test]
    fn noexec_is_decided_by_the_deepest_mount() {
        let s = "1 0 8:1 / / rw - ext4 a rw\n\
                 2 1 0:2 / /tmp rw,noexec - tmpfs t rw\n\
                 3 2 0:3 / /tmp/ok rw - tmpfs t rw\n\
                 4 1 0:4 / /srv rw - tmpfs d rw\n\
                 5 1 0:5 / /srv rw,noexec - tmpfs e rw\n";
        let m = parse_mountinfo(s);
        assert!(is_noexec(&m, "/tmp/x"));
        assert!(is_noexec(&m, "/tmp/x (deleted)"));
        assert!(!is_noexec(&m, "/tmp/ok/x"));
        assert!(!is_noexec(&m, "/tmpfoo/x"), "a prefix is not a parent");
        assert!(!is_noexec(&m, "/usr/bin/x"));
        assert!(is_noexec(&m, "/srv/a"), "the last mount on a point wins");
    }

    #[test]
    fn marking_needs_a_fanotify_group() {
        // A plain fd (not a fanotify group) is refused, with the OS error.
        let f = std::fs::File::open("/proc/self/mountinfo").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&f);
        let e = mark(fd, libc::FAN_MARK_FILESYSTEM, libc::FAN_OPEN_EXEC, Path::new("/")).unwrap_err();
        assert!(e.raw_os_error().is_some(), "{e}");
        let e = mark(fd, 0, libc::FAN_OPEN_EXEC, Path::new("/a\0b")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(flush_filesystem_marks(fd).is_err());
    }
}
