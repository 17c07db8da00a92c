//! File helpers shared by quarantine, delete and fetch: opening a regular
//! file without following a final symlink, hashing, copying with fsync,
//! private store directories and atomic sidecar writes.

use crate::RespondError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Read size for hashing and copying.
const CHUNK: usize = 256 * 1024;

/// What we record about a file before acting on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: i64,
    /// Access time, seconds since the epoch.
    pub atime_sec: i64,
    /// Nanoseconds part of the access time.
    pub atime_nsec: i64,
    /// Device the file lived on.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Hard links the file had (more than 1: other names still reach the inode).
    pub nlink: u64,
}

impl FileMeta {
    /// From `stat` results.
    pub(crate) fn from_metadata(m: &fs::Metadata) -> FileMeta {
        FileMeta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            size: m.size(),
            mtime_sec: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            atime_sec: m.atime(),
            atime_nsec: m.atime_nsec(),
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
        }
    }
}

/// Refuses relative paths (plugins send strings; a relative path would be
/// resolved against the agent's working directory).
pub(crate) fn check_absolute(path: &Path) -> Result<(), RespondError> {
    if !path.is_absolute() {
        return Err(RespondError::invalid(path.display(), "the path must be absolute"));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(RespondError::invalid(path.display(), "the path must not contain `..`"));
    }
    Ok(())
}

/// Opens a regular file for reading. The final component must not be a
/// symlink (intermediate ones, such as `/bin -> usr/bin`, are fine) and the
/// file must be a regular file: directories, devices, FIFOs and sockets are
/// refused (a FIFO would hang a reader, `/dev/zero` never ends).
pub(crate) fn open_regular(path: &Path) -> Result<(File, fs::Metadata), RespondError> {
    check_absolute(path)?;
    let lmeta = fs::symlink_metadata(path).map_err(|e| RespondError::io("cannot stat", path, e))?;
    if lmeta.file_type().is_symlink() {
        return Err(RespondError::invalid(path.display(), "is a symbolic link; name the file it points to"));
    }
    if !lmeta.is_file() {
        return Err(RespondError::invalid(path.display(), "is not a regular file (directory, device, FIFO or socket)"));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| RespondError::io("cannot open", path, e))?;
    let meta = file.metadata().map_err(|e| RespondError::io("cannot stat", path, e))?;
    if !meta.is_file() {
        return Err(RespondError::invalid(path.display(), "is not a regular file"));
    }
    Ok((file, meta))
}

/// Reads `file` from offset 0 with `pread` (the file's own offset is left
/// alone), hands each chunk to `sink` and hashes it: the sha256 and the
/// length read. Stops with `FileTooLarge` past `max` bytes (a file that grows
/// while it is read).
pub(crate) fn sha256_chunks(file: &File, max: Option<u64>, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(max) = max {
            if off + n as u64 > max {
                return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("the file grew past the limit of {max} bytes while being read")));
            }
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
        off += n as u64;
    }
    Ok((hasher.finalize().into(), off))
}

/// The sha256 (lowercase hex) and length of a file's content, read from
/// offset 0 with `pread` (the file's own offset is left alone).
pub(crate) fn sha256_file(file: &File) -> io::Result<(String, u64)> {
    let (sha, len) = sha256_chunks(file, None, |_| Ok(()))?;
    Ok((hex::encode(sha), len))
}

/// Copies `src` (from offset 0) into `dst`, hashing on the way, then fsyncs
/// `dst`. Stops with an error past `max` bytes.
pub(crate) fn copy_hashing(src: &File, dst: &mut File, max: Option<u64>) -> io::Result<(String, u64)> {
    let (sha, len) = sha256_chunks(src, max, |chunk| dst.write_all(chunk))?;
    dst.sync_all()?;
    Ok((hex::encode(sha), len))
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The parent directory of a path (`/` for top-level names).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("/"),
    }
}

/// `len` random bytes as lowercase hex (getrandom(2)).
pub(crate) fn random_hex(len: usize) -> String {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), len - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // getrandom cannot fail on Linux >= 3.17 once the pool is ready;
            // fall back to time and a counter rather than fail an action.
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let seed = edr_event::time::now() ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32) ^ u64::from(std::process::id());
            for (i, b) in buf[filled..].iter_mut().enumerate() {
                *b = (seed.rotate_left((i % 8) as u32 * 8) >> 56) as u8 ^ i as u8;
            }
            filled = len;
        }
    }
    hex::encode(buf)
}

/// Effective uid of the agent.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates (if needed) a store directory readable only by its owner: mode
/// 0700, owned by root when the agent runs as root. Refuses a symlink, a
/// non-directory, or (as root) a directory another user owns.
pub(crate) fn ensure_private_dir(dir: &Path, what: &str) -> Result<(), RespondError> {
    if !dir.is_absolute() {
        return Err(RespondError::Config(format!("{what} {} must be an absolute path", dir.display())));
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|e| RespondError::io(format!("cannot create the parent of the {what}"), parent, e))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RespondError::io(format!("cannot create the {what}"), dir, e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| RespondError::io(format!("cannot stat the {what}"), dir, e))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(RespondError::Config(format!("{what} {} is not a directory (a symlink is refused too)", dir.display())));
    }
    let me = euid();
    if meta.uid() != me {
        if me == 0 {
            return Err(RespondError::Config(format!("{what} {} is owned by uid {}, not root; remove it or `chown root:root` it", dir.display(), meta.uid())));
        }
        return Err(RespondError::Config(format!("{what} {} is owned by uid {}, not by the agent (uid {me})", dir.display(), meta.uid())));
    }
    if meta.mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| RespondError::io(format!("cannot chmod 0700 the {what}"), dir, e))?;
    }
    Ok(())
}

/// Creates a new file (`O_EXCL`, no symlink following) with `mode`.
pub(crate) fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

/// Writes `value` as pretty JSON to `dir/name` atomically (temporary file,
/// fsync, rename, fsync of the directory), with `mode`.
pub(crate) fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, value: &T, mode: u32) -> Result<(), RespondError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", random_hex(4)));
    let path = dir.join(name);
    let json = serde_json::to_vec_pretty(value).map_err(|e| RespondError::io("cannot encode", &path, io::Error::other(e)))?;
    let result = (|| {
        let mut f = create_new(&tmp, mode)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fsync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(RespondError::io("cannot write", path, e));
    }
    Ok(())
}

/// `fchown(2)`.
pub(crate) fn fchown(file: &File, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchmod(2)` with the full permission bits (setuid included).
pub(crate) fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets access and modification times (`futimens(2)`).
pub(crate) fn set_times(file: &File, meta: &FileMeta) -> io::Result<()> {
    let times = [
        libc::timespec { tv_sec: meta.atime_sec as libc::time_t, tv_nsec: meta.atime_nsec as _ },
        libc::timespec { tv_sec: meta.mtime_sec as libc::time_t, tv_nsec: meta.mtime_nsec as _ },
    ];
    // SAFETY: the fd is open and `times` holds two timespecs.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `renameat2(RENAME_NOREPLACE)`: fails with `AlreadyExists` instead of
/// replacing. Falls back to link+unlink on filesystems without the flag.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cfrom = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cto = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, cfrom.as_ptr(), libc::AT_FDCWD, cto.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(libc::ENOSYS) {
        fs::hard_link(from, to)?;
        return fs::remove_file(from);
    }
    Err(err)
}

/// Whether a path names anything, without following a final symlink.
pub(crate) fn exists_nofollow(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// A 64-character lowercase sha256, or an error naming what is wrong.
pub(crate) fn normalize_sha256(s: &str) -> Result<String, RespondError> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RespondError::invalid(s, "a sha256 is 64 hexadecimal characters"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let (h, n) = sha256_file(&File::open(&p).unwrap()).unwrap();
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
    }

    #[test]
    fn open_regular_refuses_symlinks_dirs_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        fs::write(&target, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(open_regular(&link), Err(RespondError::InvalidTarget { .. })));
        assert!(matches!(open_regular(dir.path()), Err(RespondError::InvalidTarget { .. })));
        assert!(matches!(open_regular(Path::new("rel/x")), Err(RespondError::InvalidTarget { .. })));
        assert!(matches!(open_regular(Path::new("/tmp/../etc/passwd")), Err(RespondError::InvalidTarget { .. })));
        assert!(open_regular(&target).is_ok());
    }

    #[test]
    fn rename_noreplace_does_not_replace() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"b");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"a");
        assert!(!a.exists());
    }

    #[test]
    fn sha256_normalisation() {
        let h = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        assert_eq!(normalize_sha256(h).unwrap(), h.to_ascii_lowercase());
        assert!(normalize_sha256("abc").is_err());
        assert!(normalize_sha256(&"g".repeat(64)).is_err());
    }

    #[test]
    fn random_ids_differ() {
        let a = random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_hex(16));
    }
}
