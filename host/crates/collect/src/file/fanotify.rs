//! fanotify with directory file handles and names (`FAN_REPORT_DFID_NAME`).
//!
//! Filesystem marks (`FAN_MARK_FILESYSTEM`) on every filesystem that holds
//! an include path report create, delete, rename, attrib and close-write
//! for the whole filesystem; events are filtered by path in userspace. The
//! directory handle of each event is turned into a path with
//! `open_by_handle_at` on an fd of that filesystem and a readlink of
//! `/proc/self/fd/N`; resolved directories are cached, and the cache is
//! cleared whenever a directory is renamed (so cached paths never go stale).
//!
//! Why `FAN_CLOSE_WRITE` and not `FAN_MODIFY`: one event per write session
//! (open, writes, close) instead of one per `write(2)`, which on a
//! filesystem-wide mark would be a flood (every log append on `/`). The cost:
//! a file kept open for writing is reported when it is closed, and writes
//! through a shared mapping are not reported.
//!
//! Sensitive files (`/etc/shadow`, ...) get an inode mark for `FAN_OPEN`
//! (one event per open, whatever the reads that follow, including mmap;
//! `FAN_ACCESS` would fire per `read(2)`). The mark is re-added when the file
//! is replaced (tools write a new file and rename it over the old one).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Events asked for on filesystem marks (kernel >= 5.17 for `FAN_RENAME`).
pub(crate) const FS_MASK: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB | libc::FAN_RENAME | libc::FAN_ONDIR;
/// The same for kernels before 5.17: moves come as two events.
pub(crate) const FS_MASK_NO_RENAME: u64 =
    libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_ONDIR;
/// Events asked for on sensitive files.
pub(crate) const READ_MASK: u64 = libc::FAN_OPEN;

/// Filesystem id as reported in fid records and by `fstatfs`.
pub(crate) type Fsid = [i32; 2];

/// One fid record of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FidInfo {
    pub kind: u8,
    pub fsid: Fsid,
    pub handle_type: i32,
    pub handle: Vec<u8>,
    /// The entry name for `*_DFID_NAME` records.
    pub name: Option<String>,
}

/// One event as read from the fanotify fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub mask: u64,
    pub pid: i32,
    pub infos: Vec<FidInfo>,
}

impl RawEvent {
    /// The first record of a kind.
    pub fn info(&self, kind: u8) -> Option<&FidInfo> {
        self.infos.iter().find(|i| i.kind == kind)
    }
}

const META_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

fn rd_u16(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes(s.try_into().unwrap()))
}
fn rd_u32(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4).map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
}
fn rd_i32(b: &[u8], o: usize) -> Option<i32> {
    b.get(o..o + 4).map(|s| i32::from_ne_bytes(s.try_into().unwrap()))
}
fn rd_u64(b: &[u8], o: usize) -> Option<u64> {
    b.get(o..o + 8).map(|s| u64::from_ne_bytes(s.try_into().unwrap()))
}

/// Parses a buffer of fanotify events (metadata followed by info records).
pub(crate) fn parse_events(buf: &[u8]) -> Vec<RawEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + META_LEN <= buf.len() {
        let Some(event_len) = rd_u32(buf, off).map(|v| v as usize) else {
            break;
        };
        let meta_len = rd_u16(buf, off + 6).unwrap_or(0) as usize;
        if event_len < META_LEN || meta_len < META_LEN || off + event_len > buf.len() || meta_len > event_len {
            break;
        }
        let ev = &buf[off..off + event_len];
        let mask = rd_u64(ev, 8).unwrap_or(0);
        let pid = rd_i32(ev, 20).unwrap_or(0);
        let mut infos = Vec::new();
        let mut io = meta_len;
        while io + 4 <= ev.len() {
            let kind = ev[io];
            let len = rd_u16(ev, io + 2).unwrap_or(0) as usize;
            if len < 4 || io + len > ev.len() {
                break;
            }
            if let Some(info) = parse_fid(kind, &ev[io..io + len]) {
                infos.push(info);
            }
            io += len;
        }
        out.push(RawEvent { mask, pid, infos });
        off += event_len;
    }
    out
}

fn parse_fid(kind: u8, rec: &[u8]) -> Option<FidInfo> {
    use libc::{
        FAN_EVENT_INFO_TYPE_DFID, FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    };
    let has_name = matches!(kind, FAN_EVENT_INFO_TYPE_DFID_NAME | FAN_EVENT_INFO_TYPE_OLD_DFID_NAME | FAN_EVENT_INFO_TYPE_NEW_DFID_NAME);
    if !has_name && !matches!(kind, FAN_EVENT_INFO_TYPE_FID | FAN_EVENT_INFO_TYPE_DFID) {
        return None;
    }
    let fsid = [rd_i32(rec, 4)?, rd_i32(rec, 8)?];
    let hbytes = rd_u32(rec, 12)? as usize;
    let handle_type = rd_i32(rec, 16)?;
    let handle = rec.get(20..20 + hbytes)?.to_vec();
    let name = if has_name {
        let rest = rec.get(20 + hbytes..)?;
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    } else {
        None
    };
    Some(FidInfo { kind, fsid, handle_type, handle, name })
}

/// Joins a directory and an entry name (`.` or empty: the directory itself).
pub(crate) fn join(dir: &str, name: &str) -> String {
    if name.is_empty() || name == "." {
        dir.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// An initialised fanotify group plus what resolving its handles needs.
pub(crate) struct Fanotify {
    pub fd: OwnedFd,
    /// One open directory per marked filesystem, for `open_by_handle_at`.
    mounts: Vec<(Fsid, OwnedFd)>,
    cache: HashMap<(Fsid, i32, Vec<u8>), String>,
    /// Whether `FAN_RENAME` is supported (kernel >= 5.17).
    pub rename: bool,
    fs_marks: usize,
}

const CACHE_MAX: usize = 16_384;

impl Fanotify {
    /// `fanotify_init` for notifications with directory fids and names.
    pub fn init() -> io::Result<Fanotify> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME;
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root / CAP_SYS_ADMIN)",
                Some(libc::EINVAL) => " (FAN_REPORT_DFID_NAME needs kernel >= 5.9)",
                Some(libc::ENOSYS) => " (kernel built without CONFIG_FANOTIFY)",
                _ => "",
            };
            return Err(io::Error::new(e.kind(), format!("fanotify_init: {e}{hint}")));
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Fanotify { fd: unsafe { OwnedFd::from_raw_fd(fd) }, mounts: Vec::new(), cache: HashMap::new(), rename: true, fs_marks: 0 })
    }

    fn mark(&self, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
        edr_fanotify::mark(self.fd.as_fd(), flags, mask, path)
    }

    /// Marks the filesystem holding `dir` (unless already marked) and keeps
    /// an fd on it for handle resolution. Returns whether a new mark was added.
    pub fn mark_filesystem(&mut self, dir: &Path) -> io::Result<bool> {
        let dfd = open_dir(dir)?;
        let fsid = fsid_of(&dfd)?;
        if self.mounts.iter().any(|(f, _)| *f == fsid) {
            return Ok(false);
        }
        let mask = if self.rename { FS_MASK } else { FS_MASK_NO_RENAME };
        match self.mark(libc::FAN_MARK_FILESYSTEM, mask, dir) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.rename => {
                // Before 5.17: no FAN_RENAME.
                self.mark(libc::FAN_MARK_FILESYSTEM, FS_MASK_NO_RENAME, dir)?;
                self.rename = false;
                tracing::info!("fanotify: FAN_RENAME unsupported (kernel < 5.17); moves are reported without their old path");
            }
            r => r?,
        }
        self.mounts.push((fsid, dfd));
        self.fs_marks += 1;
        Ok(true)
    }

    /// How many filesystems carry a mark.
    pub fn marked_filesystems(&self) -> usize {
        self.fs_marks
    }

    /// Marks one file for opens (`FAN_OPEN`, inode mark).
    pub fn mark_reads(&mut self, file: &Path) -> io::Result<()> {
        self.mark(libc::FAN_MARK_INODE, READ_MASK, file)?;
        if let Some(parent) = file.parent() {
            let dfd = open_dir(parent)?;
            let fsid = fsid_of(&dfd)?;
            if !self.mounts.iter().any(|(f, _)| *f == fsid) {
                self.mounts.push((fsid, dfd));
            }
        }
        Ok(())
    }

    /// Reads what is queued (non-blocking); `Ok(0)` when nothing is.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        Ok(n as usize)
    }

    /// Forgets every resolved directory (after a directory rename).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// The path of the directory a fid record names, `None` when it is gone.
    pub fn resolve_dir(&mut self, info: &FidInfo) -> Option<String> {
        let key = (info.fsid, info.handle_type, info.handle.clone());
        if let Some(p) = self.cache.get(&key) {
            return Some(p.clone());
        }
        let mount = self.mounts.iter().find(|(f, _)| *f == info.fsid).map(|(_, fd)| fd.as_raw_fd())?;
        // struct file_handle: handle_bytes, handle_type, f_handle[]; 8-aligned storage.
        let mut storage = vec![0u64; (8 + info.handle.len()).div_ceil(8)];
        let bytes: &mut [u8] =
            // SAFETY: the u64 buffer is reinterpreted as bytes of the same total size.
            unsafe { std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast::<u8>(), storage.len() * 8) };
        bytes[0..4].copy_from_slice(&(info.handle.len() as u32).to_ne_bytes());
        bytes[4..8].copy_from_slice(&info.handle_type.to_ne_bytes());
        bytes[8..8 + info.handle.len()].copy_from_slice(&info.handle);
        // SAFETY: storage holds a well-formed file_handle; mount is an open fd.
        let fd = unsafe { libc::open_by_handle_at(mount, storage.as_mut_ptr().cast::<libc::file_handle>(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let mut s = path.to_string_lossy().into_owned();
        if let Some(stripped) = s.strip_suffix(" (deleted)") {
            s = stripped.to_string();
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key, s.clone());
        Some(s)
    }
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: NUL-terminated path; the fd is owned right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fsid_of(fd: &OwnedFd) -> io::Result<Fsid> {
    // SAFETY: zeroed statfs is valid for fstatfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsid_t is two c_ints (its fields are private in libc).
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, Fsid>(st.f_fsid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u64, pid: i32, records: &[(u8, &[u8], &str)]) -> Vec<u8> {
        let mut infos = Vec::new();
        for (kind, handle, name) in records {
            let mut r = vec![*kind, 0, 0, 0];
            r.extend_from_slice(&7i32.to_ne_bytes());
            r.extend_from_slice(&9i32.to_ne_bytes());
            r.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
            r.extend_from_slice(&1i32.to_ne_bytes());
            r.extend_from_slice(handle);
            r.extend_from_slice(name.as_bytes());
            r.push(0);
            while r.len() % 4 != 0 {
                r.push(0);
            }
            let len = r.len() as u16;
            r[2..4].copy_from_slice(&len.to_ne_bytes());
            infos.extend(r);
        }
        let total = META_LEN + infos.len();
        let mut e = Vec::new();
        e.extend_from_slice(&(total as u32).to_ne_bytes());
        e.push(3); // vers
        e.push(0);
        e.extend_from_slice(&(META_LEN as u16).to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        e.extend_from_slice(&pid.to_ne_bytes());
        e.extend(infos);
        e
    }

    #[test]
    fn parses_dfid_name_and_rename_records() {
        let mut buf = event(libc::FAN_CREATE | libc::FAN_CLOSE_WRITE, 42, &[(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, &[1, 2, 3, 4, 5, 6, 7, 8], "evil.sh")]);
        buf.extend(event(
            libc::FAN_RENAME,
            43,
            &[(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, &[1; 8], "a"), (libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, &[2; 12], "authorized_keys")],
        ));
        let evs = parse_events(&buf);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].mask, libc::FAN_CREATE | libc::FAN_CLOSE_WRITE);
        assert_eq!(evs[0].pid, 42);
        let i = evs[0].info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME).unwrap();
        assert_eq!((i.fsid, i.handle_type, i.handle.as_slice(), i.name.as_deref()), ([7, 9], 1, &[1, 2, 3, 4, 5, 6, 7, 8][..], Some("evil.sh")));
        assert_eq!(evs[1].info(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME).unwrap().name.as_deref(), Some("a"));
        let new = evs[1].info(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME).unwrap();
        assert_eq!((new.handle.len(), new.name.as_deref()), (12, Some("authorized_keys")));
        // A truncated buffer yields only the whole events.
        assert_eq!(parse_events(&buf[..buf.len() - 3]).len(), 1);
    }

    #[test]
    fn joins_names() {
        assert_eq!(join("/etc", "passwd"), "/etc/passwd");
        assert_eq!(join("/", "etc"), "/etc");
        assert_eq!(join("/etc", "."), "/etc");
        assert_eq!(join("/etc", ""), "/etc");
    }
}
