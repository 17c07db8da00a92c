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

use edr_fanotify::FanotifyReader;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
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

impl RawEvent {
    /// The owned form of a decoded event: its fid records (other records
    /// are left out); an error when a record does not fit the event.
    fn new(mask: u64, pid: i32, info: edr_fanotify::reader::InfoRecords<'_>) -> Result<RawEvent, edr_fanotify::DecodeError> {
        let mut infos = Vec::new();
        for r in info {
            infos.extend(r?.fid().map(FidInfo::from));
        }
        Ok(RawEvent { mask, pid, infos })
    }
}

impl From<edr_fanotify::FidRecord<'_>> for FidInfo {
    fn from(f: edr_fanotify::FidRecord<'_>) -> FidInfo {
        let name = f.name.map(|n| String::from_utf8_lossy(n).into_owned());
        FidInfo { kind: f.kind, fsid: f.fsid, handle_type: f.handle_type, handle: f.handle.to_vec(), name }
    }
}

/// Parses a buffer of fanotify events (metadata followed by info records):
/// the well-formed events up to the first broken frame (the decoder stops there).
#[cfg(test)]
pub(crate) fn parse_events(buf: &[u8]) -> Vec<RawEvent> {
    edr_fanotify::decode(buf).filter_map(Result::ok).filter_map(|r| RawEvent::new(r.mask, r.pid, r.info).ok()).collect()
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
    reader: FanotifyReader,
    /// One open directory per marked filesystem, for `open_by_handle_at`.
    mounts: Vec<(Fsid, OwnedFd)>,
    cache: HashMap<(Fsid, i32, Vec<u8>), String>,
    /// Whether `FAN_RENAME` is supported (kernel >= 5.17).
    pub rename: bool,
    fs_marks: usize,
}

const CACHE_MAX: usize = 16_384;

/// Bytes read at once (events with fid records are ~60 bytes).
const READ_BUF: usize = 256 * 1024;

impl Fanotify {
    /// `fanotify_init` for notifications with directory fids and names.
    pub fn init() -> io::Result<Fanotify> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME;
        let reader = FanotifyReader::init(flags, (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32, READ_BUF).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root / CAP_SYS_ADMIN)",
                Some(libc::EINVAL) => " (FAN_REPORT_DFID_NAME needs kernel >= 5.9)",
                Some(libc::ENOSYS) => " (kernel built without CONFIG_FANOTIFY)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("fanotify_init: {e}{hint}"))
        })?;
        Ok(Fanotify { reader, mounts: Vec::new(), cache: HashMap::new(), rename: true, fs_marks: 0 })
    }

    /// The group, to poll.
    pub fn as_raw_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    fn mark(&self, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
        edr_fanotify::mark(self.reader.as_fd(), flags, mask, path)
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

    /// Reads what is queued (non-blocking; `EINTR` retried): `Ok(None)`
    /// when nothing is. Malformed events are counted in `malformed` and
    /// left out (the rest of a buffer after a broken frame with them).
    pub fn read(&mut self, malformed: &mut u64) -> io::Result<Option<Vec<RawEvent>>> {
        let Some(events) = self.reader.read()? else { return Ok(None) };
        let mut out = Vec::new();
        for ev in events {
            match ev {
                Ok(ev) => match RawEvent::new(ev.mask, ev.pid, ev.info) {
                    Ok(raw) => out.push(raw),
                    Err(e) => {
                        *malformed += 1;
                        tracing::warn!("fanotify: {e}");
                    }
                },
                Err(e) => {
                    *malformed += 1;
                    tracing::warn!("fanotify: {e}");
                }
            }
        }
        Ok(Some(out))
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
    use edr_fanotify::METADATA_LEN as META_LEN;

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
