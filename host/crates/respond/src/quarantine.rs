//! The quarantine store: files moved out of reach, and restored byte-exact.
//!
//! Layout of the store directory (mode 0700, owned by root):
//!
//! * `<id>.bin`: the file's content, mode 0400, owned by root. No execute
//!   bit, so `execve` fails even for root; setuid/setgid bits are gone.
//! * `<id>.json`: the sidecar (mode 0600): original path, owner, mode,
//!   times, size, sha256, when, why and who ([`QuarantineEntry`]).
//!
//! Quarantine renames the file into the store when both are on the same
//! filesystem (the inode moves; any other hard link to it also loses its
//! execute bits, since the mode belongs to the inode). Across filesystems it
//! copies (hashing on the way), fsyncs the copy, renames it into place and
//! only then unlinks the original. The sidecar is written last; a blob without
//! a sidecar (a crash in between) is reported at start-up.
//!
//! Restore copies the blob next to the original path, checks its sha256,
//! sets owner, then mode (after chown, which clears setuid), then times,
//! fsyncs, and renames it into place without replacing anything
//! (`RENAME_NOREPLACE`) unless forced. Extended attributes, ACLs and file
//! capabilities are not kept.

use crate::fsutil::{self, FileMeta};
use crate::{Detail, RespondError};
use edr_event::Timestamp;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A quarantined file, as its sidecar records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// The store id (32 hex characters); `Restore { id }` takes it.
    pub id: String,
    /// Where the file was.
    pub original_path: PathBuf,
    /// sha256 of the stored content (lowercase hex).
    pub sha256: String,
    /// Size of the stored content.
    pub size: u64,
    /// Owner, mode and times of the original file.
    pub meta: FileMeta,
    /// When it was quarantined, ns since the epoch.
    pub quarantined_at: Timestamp,
    /// The reason the requester gave.
    pub reason: String,
    /// Who asked.
    pub requester: String,
    /// True when the file was copied across filesystems rather than renamed.
    pub copied_across_filesystems: bool,
    /// Where the content is stored now (filled in when read back).
    #[serde(default, skip_serializing)]
    pub stored_path: PathBuf,
}

/// The quarantine directory.
pub(crate) struct QuarantineStore {
    dir: PathBuf,
    /// Serialises store operations (restore and quarantine of the same id).
    lock: Mutex<()>,
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl QuarantineStore {
    /// Opens (creating it 0700 if needed) the store and reports orphan blobs.
    pub(crate) fn open(dir: &Path) -> Result<QuarantineStore, RespondError> {
        fsutil::ensure_private_dir(dir, "quarantine directory")?;
        let store = QuarantineStore { dir: dir.to_path_buf(), lock: Mutex::new(()) };
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".bin") {
                    if !store.sidecar(id).exists() {
                        tracing::warn!(blob = %e.path().display(), "quarantine blob without a sidecar (the agent stopped mid-quarantine?); its original path is unknown");
                    }
                }
            }
        }
        Ok(store)
    }

    fn blob(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    fn sidecar(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// What quarantining `path` would record (simulate mode).
    pub(crate) fn preview(&self, path: &Path) -> Result<Detail, RespondError> {
        let (file, meta) = fsutil::open_regular(path)?;
        let (sha, size) = fsutil::sha256_file(&file).map_err(|e| RespondError::io("cannot read", path, e))?;
        let m = FileMeta::from_metadata(&meta);
        Ok(Detail::from([
            ("sha256".into(), sha),
            ("size".into(), size.to_string()),
            ("owner".into(), format!("{}:{}", m.uid, m.gid)),
            ("mode".into(), format!("{:04o}", m.mode)),
        ]))
    }

    /// Moves `path` into the store.
    pub(crate) fn quarantine(&self, path: &Path, reason: &str, requester: &str) -> Result<QuarantineEntry, RespondError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (file, meta) = fsutil::open_regular(path)?;
        let fm = FileMeta::from_metadata(&meta);
        let id = fsutil::random_hex(16);
        let blob = self.blob(&id);
        let parent = fsutil::parent_of(path);
        let (sha256, size, copied) = match fs::rename(path, &blob) {
            Ok(()) => match self.seal_renamed(path, &blob, &fm) {
                Ok((sha, size)) => (sha, size, false),
                Err(e) => {
                    self.unrename(path, &blob, &fm);
                    return Err(e);
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let (sha, size) = self.copy_in(path, &file, &fm, &id)?;
                (sha, size, true)
            }
            Err(e) => return Err(RespondError::io("cannot move into the quarantine store", path, e)),
        };
        drop(file);
        let entry = QuarantineEntry {
            id: id.clone(),
            original_path: path.to_path_buf(),
            sha256,
            size,
            meta: fm,
            quarantined_at: edr_event::time::now(),
            reason: reason.to_string(),
            requester: requester.to_string(),
            copied_across_filesystems: copied,
            stored_path: blob.clone(),
        };
        if let Err(e) = fsutil::write_json_atomic(&self.dir, &format!("{id}.json"), &entry, 0o600) {
            // Without a sidecar nobody could restore it: put the file back.
            let undo = self.put_back(&entry, false);
            return Err(match undo {
                Ok(()) => {
                    let _ = fs::remove_file(&blob);
                    e
                }
                Err(u) => RespondError::Sys {
                    what: format!("{e}; putting the file back failed too ({u}); its content is in {}", blob.display()),
                    source: io::Error::other("sidecar"),
                },
            });
        }
        if let Err(e) = fsutil::fsync_dir(&parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "fsync after quarantine failed");
        }
        tracing::info!(id = %id, path = %path.display(), sha256 = %entry.sha256, "quarantined file");
        Ok(entry)
    }

    /// Undoes a same-filesystem move after a later step failed: gives the
    /// inode back its owner and mode and renames it back (best effort, logged).
    fn unrename(&self, path: &Path, blob: &Path, fm: &FileMeta) {
        let Ok(f) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(blob) else { return };
        if f.metadata().map(|m| (m.dev(), m.ino()) != (fm.dev, fm.ino)).unwrap_or(true) {
            return; // not ours (seal_renamed already gave it back)
        }
        let _ = fsutil::fchown(&f, fm.uid, fm.gid);
        let _ = fsutil::fchmod(&f, fm.mode);
        if let Err(e) = fsutil::rename_noreplace(blob, path) {
            tracing::error!(path = %path.display(), blob = %blob.display(), error = %e, "quarantine failed half-way and the file could not be put back; it is in the store without a sidecar");
        }
    }

    /// After a same-filesystem rename: checks the inode is the one we opened,
    /// takes the file away from its owner (0400, root) and hashes it.
    fn seal_renamed(&self, path: &Path, blob: &Path, fm: &FileMeta) -> Result<(String, u64), RespondError> {
        let stored = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(blob)
            .map_err(|e| RespondError::io("cannot open the stored file", blob, e))?;
        let sm = stored.metadata().map_err(|e| RespondError::io("cannot stat", blob, e))?;
        if (sm.dev(), sm.ino()) != (fm.dev, fm.ino) {
            // The path was swapped between open and rename: give back whatever we moved.
            let _ = fsutil::rename_noreplace(blob, path);
            return Err(RespondError::Sys {
                what: format!("{} was replaced while being quarantined; nothing was quarantined", path.display()),
                source: io::Error::other("race"),
            });
        }
        if fsutil::euid() == 0 {
            fsutil::fchown(&stored, 0, 0).map_err(|e| RespondError::io("cannot chown root the stored file", blob, e))?;
        }
        fsutil::fchmod(&stored, 0o400).map_err(|e| RespondError::io("cannot chmod 0400 the stored file", blob, e))?;
        let (sha, size) = fsutil::sha256_file(&stored).map_err(|e| RespondError::io("cannot hash", blob, e))?;
        stored.sync_all().map_err(|e| RespondError::io("cannot fsync", blob, e))?;
        fsutil::fsync_dir(&self.dir).map_err(|e| RespondError::io("cannot fsync", &self.dir, e))?;
        Ok((sha, size))
    }

    /// Across filesystems: copy (hashing), fsync, rename into place, then
    /// unlink the original if it still is the file we copied.
    fn copy_in(&self, path: &Path, src: &File, fm: &FileMeta, id: &str) -> Result<(String, u64), RespondError> {
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let blob = self.blob(id);
        let result = (|| {
            let mut dst = fsutil::create_new(&tmp, 0o400).map_err(|e| RespondError::io("cannot create", &tmp, e))?;
            if fsutil::euid() == 0 {
                fsutil::fchown(&dst, 0, 0).map_err(|e| RespondError::io("cannot chown root", &tmp, e))?;
            }
            let (sha, size) = fsutil::copy_hashing(src, &mut dst, None).map_err(|e| RespondError::io("cannot copy into the store", path, e))?;
            fs::rename(&tmp, &blob).map_err(|e| RespondError::io("cannot rename into the store", &tmp, e))?;
            fsutil::fsync_dir(&self.dir).map_err(|e| RespondError::io("cannot fsync", &self.dir, e))?;
            Ok((sha, size))
        })();
        let (sha, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let still_same = fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()) == (fm.dev, fm.ino)).unwrap_or(false);
        if !still_same {
            let _ = fs::remove_file(&blob);
            return Err(RespondError::Sys {
                what: format!("{} was replaced while being copied into quarantine; nothing was quarantined", path.display()),
                source: io::Error::other("race"),
            });
        }
        if let Err(e) = fs::remove_file(path) {
            let _ = fs::remove_file(&blob);
            return Err(RespondError::io("copied into quarantine but cannot remove the original (copy discarded)", path, e));
        }
        Ok((sha, size))
    }

    /// Reads one entry.
    pub(crate) fn get(&self, id: &str) -> Result<QuarantineEntry, RespondError> {
        if !valid_id(id) {
            return Err(RespondError::invalid(id, "a quarantine id is 32 lowercase hex characters"));
        }
        let path = self.sidecar(id);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RespondError::invalid(id, "no such quarantine entry")
            } else {
                RespondError::io("cannot read", &path, e)
            }
        })?;
        let mut entry: QuarantineEntry =
            serde_json::from_slice(&bytes).map_err(|e| RespondError::io("cannot parse", &path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if entry.id != id {
            return Err(RespondError::io("sidecar names another id", &path, io::Error::new(io::ErrorKind::InvalidData, entry.id)));
        }
        entry.stored_path = self.blob(id);
        Ok(entry)
    }

    /// Every entry, oldest first. Unreadable sidecars are logged and skipped.
    pub(crate) fn list(&self) -> Vec<QuarantineEntry> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else { continue };
            if !valid_id(id) {
                continue;
            }
            match self.get(id) {
                Ok(entry) => out.push(entry),
                Err(err) => tracing::warn!(id, error = %err, "unreadable quarantine sidecar"),
            }
        }
        out.sort_by(|a, b| a.quarantined_at.cmp(&b.quarantined_at).then(a.id.cmp(&b.id)));
        out
    }

    /// What restoring would do (simulate mode): the checks only.
    pub(crate) fn plan_restore(&self, id: &str, force: bool) -> Result<Detail, RespondError> {
        let entry = self.get(id)?;
        let occupied = fsutil::exists_nofollow(&entry.original_path);
        if occupied && !force {
            return Err(RespondError::Occupied { path: entry.original_path });
        }
        Ok(Detail::from([
            ("path".into(), entry.original_path.display().to_string()),
            ("sha256".into(), entry.sha256),
            ("would_replace".into(), occupied.to_string()),
        ]))
    }

    /// Puts a quarantined file back and removes it from the store.
    pub(crate) fn restore(&self, id: &str, force: bool) -> Result<QuarantineEntry, RespondError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let entry = self.get(id)?;
        self.put_back(&entry, force)?;
        let blob = self.blob(id);
        for p in [&blob, &self.sidecar(id)] {
            if let Err(e) = fs::remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "restored, but cannot remove from the store");
            }
        }
        let _ = fsutil::fsync_dir(&self.dir);
        tracing::info!(id, path = %entry.original_path.display(), "restored quarantined file");
        Ok(entry)
    }

    /// Copies the blob to its original path with its owner, mode and times.
    fn put_back(&self, entry: &QuarantineEntry, force: bool) -> Result<(), RespondError> {
        let target = &entry.original_path;
        fsutil::check_absolute(target)?;
        let parent = fsutil::parent_of(target);
        match fs::metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(RespondError::invalid(target.display(), format!("{} is not a directory", parent.display()))),
            Err(e) => return Err(RespondError::io("cannot restore: the original directory is missing", &parent, e)),
        }
        if let Ok(m) = fs::symlink_metadata(target) {
            if !force {
                return Err(RespondError::Occupied { path: target.clone() });
            }
            if m.is_dir() {
                return Err(RespondError::invalid(target.display(), "is now a directory; it will not be replaced"));
            }
        }
        let blob = self.blob(&entry.id);
        let src = File::open(&blob).map_err(|e| RespondError::io("cannot open the stored file", &blob, e))?;
        let tmp = parent.join(format!(".edr-restore-{}", fsutil::random_hex(8)));
        let result = (|| {
            let mut dst = fsutil::create_new(&tmp, 0o600).map_err(|e| RespondError::io("cannot create", &tmp, e))?;
            let (sha, _) = fsutil::copy_hashing(&src, &mut dst, None).map_err(|e| RespondError::io("cannot copy out of the store to", &tmp, e))?;
            if sha != entry.sha256 {
                return Err(RespondError::Integrity { path: blob.clone(), expected: entry.sha256.clone(), found: sha });
            }
            let m = &entry.meta;
            let me = fsutil::euid();
            if me == 0 || m.uid != me {
                fsutil::fchown(&dst, m.uid, m.gid).map_err(|e| RespondError::io(format!("cannot give back owner {}:{} to", m.uid, m.gid), &tmp, e))?;
            }
            // chmod after chown: chown clears setuid/setgid.
            fsutil::fchmod(&dst, m.mode).map_err(|e| RespondError::io(format!("cannot give back mode {:04o} to", m.mode), &tmp, e))?;
            fsutil::set_times(&dst, m).map_err(|e| RespondError::io("cannot give back the times of", &tmp, e))?;
            dst.sync_all().map_err(|e| RespondError::io("cannot fsync", &tmp, e))?;
            if force {
                fs::rename(&tmp, target).map_err(|e| RespondError::io("cannot move the restored file to", target, e))?;
            } else {
                fsutil::rename_noreplace(&tmp, target).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        RespondError::Occupied { path: target.clone() }
                    } else {
                        RespondError::io("cannot move the restored file to", target, e)
                    }
                })?;
            }
            fsutil::fsync_dir(&parent).map_err(|e| RespondError::io("cannot fsync", &parent, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn quarantine_and_restore_without_root() {
        let store_dir = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = QuarantineStore::open(&store_dir.path().join("q")).unwrap();
        let p = work.path().join("payload.sh");
        fs::write(&p, b"#!/bin/sh\necho owned\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o750)).unwrap();
        let e = store.quarantine(&p, "test", "operator (uid 0)").unwrap();
        assert!(!p.exists());
        let stored = fs::metadata(store.blob(&e.id)).unwrap();
        assert_eq!(stored.mode() & 0o7777, 0o400);
        assert_eq!(store.list().len(), 1);
        assert!(matches!(store.restore("not-an-id", false), Err(RespondError::InvalidTarget { .. })));
        assert!(matches!(store.restore(&"ab".repeat(16), false), Err(RespondError::InvalidTarget { .. })));
        store.restore(&e.id, false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"#!/bin/sh\necho owned\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o750);
        assert!(store.list().is_empty());
    }

    #[test]
    fn tampered_blob_is_not_restored() {
        let store_dir = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = QuarantineStore::open(&store_dir.path().join("q")).unwrap();
        let p = work.path().join("f");
        fs::write(&p, b"original").unwrap();
        let e = store.quarantine(&p, "", "").unwrap();
        let blob = store.blob(&e.id);
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&blob, b"tampered").unwrap();
        assert!(matches!(store.restore(&e.id, false), Err(RespondError::Integrity { .. })));
        assert!(!p.exists(), "nothing restored");
        let leftovers: Vec<_> = fs::read_dir(work.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "temporary file removed");
    }
}
