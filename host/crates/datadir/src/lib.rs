//! `edr-datadir`: the agent's data directory, trusted only when it is safe.
//!
//! The data directory holds the record of every command line on the host
//! (`events.db`, `alerts.jsonl`, `actions.jsonl`), the anti-rollback state of
//! the packs and the drop-in directory packs are installed from. A root agent
//! that writes there must not be steered by anyone else, so [`DataDir`]:
//!
//! * creates a missing directory 0700 (and `fchmod`s it, whatever the umask);
//! * refuses an existing one that is a symbolic link, not a directory, not
//!   owned by the agent's user, or writable by group or others, and one whose
//!   parents someone else could rename it out of (owned by another user, or
//!   writable by others without the sticky bit), saying what it found and
//!   how to fix it;
//! * tightens an agent-owned directory readable by others (0755) to 0700;
//! * opens every file through the directory's fd with `O_NOFOLLOW`, creates
//!   files 0600 and tightens existing ones readable by others, and refuses a
//!   link, a non-regular file or a file owned by another user.
//!
//! The path functions ([`open_append_path`], [`open_private_path`],
//! [`write_atomically_path`], [`private_dir_all`]) do the same for a file
//! given by path (a store or an alerts file configured elsewhere): the last
//! component is never followed.
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Mode of the data directory and of every directory created in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file created in the data directory.
pub const FILE_MODE: u32 = 0o600;
const STICKY: u32 = 0o1000;

/// Why the data directory (or a file in it) was refused or could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Someone other than the agent's user could change what the agent writes.
    #[error("refusing {}: {problem}; {fix}", path.display())]
    Unsafe {
        /// The directory or file refused.
        path: PathBuf,
        /// What was found (owner, mode, kind).
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// A symbolic link where the agent writes: never followed.
    #[error("refusing {}: it is a symbolic link, and the agent never follows links in its data directory (one can redirect its writes to any file on the host); remove the link, find out who made it, or choose another path", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A file is bigger than its limit: refused before reading it.
    #[error("{} is {size} bytes, more than the limit of {limit} bytes; refused without reading it", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least: reading stops one byte past the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An operating system error.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`cannot open`, ...).
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl DataDirError {
    fn io(what: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        DataDirError::Io { what, path: path.to_path_buf(), source: source.into() }
    }
}

impl From<DataDirError> for io::Error {
    fn from(e: DataDirError) -> io::Error {
        match e {
            DataDirError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => io::Error::new(io::ErrorKind::NotFound, source),
            e => io::Error::other(e),
        }
    }
}

/// The effective uid of this process: whom the data directory must belong to.
pub fn agent_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A directory the agent trusts (checked or created by it), held open.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    fd: File,
    uid: u32,
}

impl DataDir {
    /// Opens the data directory at `path`, creating it 0700 when missing
    /// (its missing parents 0755); refuses one that anyone but `uid` (the
    /// agent's euid, see [`agent_uid`]) could change, and tightens one that
    /// others can read to 0700.
    pub fn open_or_create(path: &Path, uid: u32) -> Result<DataDir, DataDirError> {
        let abs =
            if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map_err(|e| DataDirError::io("cannot resolve", path, e))?.join(path) };
        let name = last_component(&abs)?;
        let parent = abs.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|e| DataDirError::io("cannot create", parent, e))?;
        let parent = std::fs::canonicalize(parent).map_err(|e| DataDirError::io("cannot resolve", parent, e))?;
        check_parents(&parent, uid)?;
        let parent = DataDir::open_unchecked(&parent, uid)?;
        parent.dir_at(name, "data directory")
    }

    /// The directory's path (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// The subdirectory `name` (one component), created 0700 when missing,
    /// refused when it is a link or others could change it, tightened to
    /// 0700 when others can read it.
    pub fn subdir(&self, name: &str) -> Result<DataDir, DataDirError> {
        self.dir_at(component(&self.path, name)?, "directory")
    }

    /// Opens `name` for appending, creating it 0600.
    pub fn open_append(&self, name: &str) -> Result<File, DataDirError> {
        self.open_file(component(&self.path, name)?, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
    }

    /// Opens `name` read-write, creating it 0600 (not truncated).
    pub fn open_read_write(&self, name: &str) -> Result<File, DataDirError> {
        self.open_file(component(&self.path, name)?, OFlags::RDWR | OFlags::CREATE)
    }

    /// Opens an existing `name` for reading; `None` when there is none.
    pub fn open_read(&self, name: &str) -> Result<Option<File>, DataDirError> {
        match self.open_file(component(&self.path, name)?, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(f) => Ok(Some(f)),
            Err(DataDirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `name` whole if it holds at most `limit` bytes: the size is
    /// checked on the opened file before reading, and reading stops one byte
    /// past the limit (a file growing meanwhile is refused too). `None` when
    /// there is no such file.
    pub fn read_limited(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, DataDirError> {
        let Some(file) = self.open_read(name)? else { return Ok(None) };
        let path = self.join(name);
        let len = file.metadata().map_err(|e| DataDirError::io("cannot stat", &path, e))?.len();
        if len > limit {
            return Err(DataDirError::TooLarge { path, size: len, limit });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| DataDirError::io("cannot read", &path, e))?;
        if bytes.len() as u64 > limit {
            return Err(DataDirError::TooLarge { path, size: bytes.len() as u64, limit });
        }
        Ok(Some(bytes))
    }

    /// Replaces `name` with `bytes` durably: a new 0600 temporary file
    /// (never an existing one, never through a link), fsync, rename over
    /// `name` (which replaces a link rather than writing through it), fsync
    /// of the directory.
    pub fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), DataDirError> {
        let name = component(&self.path, name)?;
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(".tmp");
        let tmp_path = self.path.join(&tmp);
        match rustix::fs::unlinkat(&self.fd, tmp.as_os_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(DataDirError::io("cannot remove", &tmp_path, e)),
        }
        let mut f = self.open_file(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| DataDirError::io("cannot write", &tmp_path, e))?;
        drop(f);
        rustix::fs::renameat(&self.fd, tmp.as_os_str(), &self.fd, name).map_err(|e| DataDirError::io("cannot rename into place", &self.path.join(name), e))?;
        self.fd.sync_all().map_err(|e| DataDirError::io("cannot sync", &self.path, e))
    }

    /// Moves `name` to `to/to_name` (rename, so a link at the destination
    /// is replaced, never followed). A missing `name` is `NotFound`.
    pub fn rename_to(&self, name: &str, to: &DataDir, to_name: &str) -> io::Result<()> {
        let (from, dest) = (component(&self.path, name)?, component(&to.path, to_name)?);
        rustix::fs::renameat(&self.fd, from, &to.fd, dest).map_err(io::Error::from)
    }

    /// Removes the file `name` (a link is removed, not its target).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, component(&self.path, name)?, AtFlags::empty()).map_err(io::Error::from)
    }

    /// Opens `path` as a directory without checking it (a parent given by
    /// the configuration, or one already checked).
    fn open_unchecked(path: &Path, uid: u32) -> Result<DataDir, DataDirError> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| DataDirError::io("cannot open directory", path, e))?;
        Ok(DataDir { path: path.to_path_buf(), fd: File::from(fd), uid })
    }

    /// Creates (0700) or opens the directory `name` in this one, then checks it.
    fn dir_at(&self, name: &OsStr, what: &str) -> Result<DataDir, DataDirError> {
        let path = self.path.join(name);
        let created = match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(DataDirError::io("cannot create", &path, e)),
        };
        let fd = rustix::fs::openat(&self.fd, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| self.refusal(name, &path, e, "cannot open directory"))?;
        let dir = DataDir { path, fd: File::from(fd), uid: self.uid };
        if created {
            // mkdirat applied the umask; the mode is set, not hoped for.
            dir.fd.set_permissions(Permissions::from_mode(DIR_MODE)).map_err(|e| DataDirError::io("cannot chmod", &dir.path, e))?;
            tracing::debug!(path = %dir.path.display(), "created {what} 0700");
            return Ok(dir);
        }
        check_owned(&dir.fd, &dir.path, self.uid, what, DIR_MODE)?;
        Ok(dir)
    }

    /// Opens `name` with `flags` plus `O_NOFOLLOW | O_CLOEXEC | O_NOCTTY`
    /// (created 0600), then checks what was opened.
    fn open_file(&self, name: &OsStr, flags: OFlags) -> Result<File, DataDirError> {
        let path = self.path.join(name);
        let fd: OwnedFd = rustix::fs::openat(&self.fd, name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::from_raw_mode(FILE_MODE))
            .map_err(|e| self.refusal(name, &path, e, "cannot open"))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| DataDirError::io("cannot stat", &path, e))?;
        if !meta.file_type().is_file() {
            return Err(DataDirError::Unsafe { path, problem: format!("it is not a regular file (mode {:o})", meta.mode()), fix: "move it aside".into() });
        }
        check_owned(&file, &path, self.uid, "file", FILE_MODE)?;
        Ok(file)
    }

    /// Turns an open error into [`DataDirError::Symlink`] when a link is
    /// what stopped it.
    fn refusal(&self, name: &OsStr, path: &Path, e: Errno, what: &'static str) -> DataDirError {
        if matches!(e, Errno::LOOP | Errno::NOTDIR | Errno::MLINK) {
            if let Ok(st) = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
                    return DataDirError::Symlink { path: path.to_path_buf() };
                }
                return DataDirError::Unsafe {
                    path: path.to_path_buf(),
                    problem: format!("it is not what the agent expects there (mode {:o})", st.st_mode),
                    fix: "move it aside".into(),
                };
            }
        }
        DataDirError::io(what, path, e)
    }
}

/// Checks that what `f` holds is owned by `uid` and writable by no one
/// else; tightens it to `mode` when others can read it.
fn check_owned(f: &File, path: &Path, uid: u32, what: &str, mode: u32) -> Result<(), DataDirError> {
    let meta = f.metadata().map_err(|e| DataDirError::io("cannot stat", path, e))?;
    let found = meta.mode() & 0o7777;
    let fix = || {
        let owner = if uid == 0 { "root:root".to_string() } else { format!("{uid}") };
        format!(
            "only the agent's user (uid {uid}) may own or write it: fix it with `chown {owner} {p} && chmod {mode:04o} {p}`, or choose another path",
            p = path.display()
        )
    };
    if meta.uid() != uid {
        return Err(DataDirError::Unsafe {
            path: path.to_path_buf(),
            problem: format!("this {what} is owned by uid {} (mode {found:04o}), not by the agent's user (uid {uid})", meta.uid()),
            fix: fix(),
        });
    }
    if found & 0o022 != 0 {
        let who = if found & 0o002 != 0 { "every user" } else { "its group" };
        return Err(DataDirError::Unsafe { path: path.to_path_buf(), problem: format!("this {what} is writable by {who} (mode {found:04o})"), fix: fix() });
    }
    if found & 0o077 != 0 {
        f.set_permissions(Permissions::from_mode(mode)).map_err(|e| DataDirError::io("cannot chmod", path, e))?;
        tracing::warn!(path = %path.display(), "{what} was mode {found:04o}, readable by other users; tightened to {mode:04o} (the record holds every command line on the host)");
    }
    Ok(())
}

/// Every directory from `dir` up to `/` must be owned by root or `uid`, and
/// writable by others only with the sticky bit (like `/tmp`): otherwise its
/// owner or writers could rename the data directory and put their own there.
fn check_parents(dir: &Path, uid: u32) -> Result<(), DataDirError> {
    for d in dir.ancestors() {
        let meta = std::fs::symlink_metadata(d).map_err(|e| DataDirError::io("cannot stat", d, e))?;
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 && meta.uid() != uid {
            return Err(DataDirError::Unsafe {
                path: d.to_path_buf(),
                problem: format!("this parent of the data directory is owned by uid {} (mode {mode:04o}), who could replace the data directory", meta.uid()),
                fix: "put the data directory under directories owned by root (e.g. /var/lib/edr)".into(),
            });
        }
        if mode & 0o022 != 0 && mode & STICKY == 0 {
            return Err(DataDirError::Unsafe {
                path: d.to_path_buf(),
                problem: format!("this parent of the data directory is writable by other users without the sticky bit (mode {mode:04o}), so they could replace the data directory"),
                fix: format!("`chmod go-w {}`, or put the data directory elsewhere (e.g. /var/lib/edr)", d.display()),
            });
        }
    }
    Ok(())
}

/// The last component of a data directory path.
fn last_component(path: &Path) -> Result<&OsStr, DataDirError> {
    match path.components().next_back() {
        Some(Component::Normal(n)) => Ok(n),
        _ => Err(DataDirError::Unsafe {
            path: path.to_path_buf(),
            problem: "the path does not end with a directory name".into(),
            fix: "give the data directory as a plain path (e.g. /var/lib/edr)".into(),
        }),
    }
}

/// `name` as one path component (no `/`, not `.` or `..`).
fn component<'a>(dir: &Path, name: &'a (impl AsRef<OsStr> + ?Sized)) -> Result<&'a OsStr, DataDirError> {
    let n = name.as_ref();
    let b = n.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(DataDirError::Unsafe { path: dir.join(n), problem: "not a single file name".into(), fix: "name a file directly in the directory".into() });
    }
    Ok(n)
}

/// The directory holding `path` (created 0700 with its missing parents) and
/// the file name in it.
fn parent_of(path: &Path) -> Result<(DataDir, &OsStr), DataDirError> {
    let name = last_component(path)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(parent).map_err(|e| DataDirError::io("cannot create", parent, e))?;
    Ok((DataDir::open_unchecked(parent, agent_uid())?, name))
}

/// How [`open_private_path`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Append, creating it 0600.
    Append,
    /// Read and write, creating it 0600, not truncated.
    ReadWrite,
    /// Only tighten and check an existing file (`Ok(None)` when missing).
    Existing,
}

/// Opens the file at `path` the way [`DataDir`] opens its files: never
/// through a link at its last component, created 0600 (its missing parent
/// directories 0700), tightened to 0600 when others can read it, refused
/// when it is not a regular file owned by the agent's user.
pub fn open_private_path(path: &Path, access: Access) -> Result<Option<File>, DataDirError> {
    let (dir, name) = parent_of(path)?;
    match access {
        Access::Append => dir.open_file(name, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE).map(Some),
        Access::ReadWrite => dir.open_file(name, OFlags::RDWR | OFlags::CREATE).map(Some),
        Access::Existing => match dir.open_file(name, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(f) => Ok(Some(f)),
            Err(DataDirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// [`open_private_path`] for appending.
pub fn open_append_path(path: &Path) -> Result<File, DataDirError> {
    Ok(open_private_path(path, Access::Append)?.expect("append creates the file"))
}

/// [`DataDir::write_atomically`] for a file given by path.
pub fn write_atomically_path(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let (dir, name) = parent_of(path)?;
    dir.write_atomically(name.to_str().ok_or_else(|| DataDirError::io("cannot write", path, io::Error::other("the file name is not UTF-8")))?, bytes)
}

/// The directory at `path` as a [`DataDir`] subdirectory of its parent:
/// created 0700 when missing, refused when it is a link or others could
/// change it, tightened to 0700 when others can read it.
pub fn private_dir_all(path: &Path) -> Result<DataDir, DataDirError> {
    let (parent, name) = parent_of(path)?;
    parent.dir_at(name, "directory")
}
