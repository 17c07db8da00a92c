//! Delete a file, recording what it was first.
//!
//! There is no undo: the audit record keeps the sha256, size, owner, mode and
//! times, not the content. Use quarantine when the file may have to come back.

use crate::fsutil::{self, FileMeta};
use crate::{Detail, RespondError};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the audit record says about the file.
fn describe(sha: String, size: u64, m: &FileMeta) -> Detail {
    Detail::from([
        ("sha256".into(), sha),
        ("size".into(), size.to_string()),
        ("owner".into(), format!("{}:{}", m.uid, m.gid)),
        ("mode".into(), format!("{:04o}", m.mode)),
        ("mtime".into(), format!("{}.{:09}", m.mtime_sec, m.mtime_nsec)),
        ("inode".into(), format!("{}:{}", m.dev, m.ino)),
        ("links".into(), m.nlink.to_string()),
    ])
}

/// What deleting `path` would remove (simulate mode).
pub(crate) fn plan_delete(path: &Path) -> Result<Detail, RespondError> {
    let (file, meta) = fsutil::open_regular(path)?;
    let (sha, size) = fsutil::sha256_file(&file).map_err(|e| RespondError::io("cannot read", path, e))?;
    Ok(describe(sha, size, &FileMeta::from_metadata(&meta)))
}

/// Hashes and records the file, then unlinks it (only if the path still
/// names the inode that was hashed). When the file has other hard links
/// (`links` > 1 in the detail) its content stays reachable through them.
pub(crate) fn delete(path: &Path) -> Result<Detail, RespondError> {
    let (file, meta) = fsutil::open_regular(path)?;
    let m = FileMeta::from_metadata(&meta);
    let (sha, size) = fsutil::sha256_file(&file).map_err(|e| RespondError::io("cannot read", path, e))?;
    let now = fs::symlink_metadata(path).map_err(|e| RespondError::io("cannot stat", path, e))?;
    if (now.dev(), now.ino()) != (m.dev, m.ino) {
        return Err(RespondError::Sys {
            what: format!("{} was replaced while being hashed; nothing was deleted", path.display()),
            source: std::io::Error::other("race"),
        });
    }
    fs::remove_file(path).map_err(|e| RespondError::io("cannot delete", path, e))?;
    let parent = fsutil::parent_of(path);
    if let Err(e) = fsutil::fsync_dir(&parent) {
        tracing::warn!(dir = %parent.display(), error = %e, "fsync after delete failed");
    }
    tracing::info!(path = %path.display(), sha256 = %sha, "deleted file");
    Ok(describe(sha, size, &m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_records_hash_then_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("evil");
        fs::write(&p, b"abc").unwrap();
        let plan = plan_delete(&p).unwrap();
        assert!(p.exists(), "planning deletes nothing");
        let d = delete(&p).unwrap();
        assert_eq!(d["sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d["size"], "3");
        assert_eq!(plan["sha256"], d["sha256"]);
        assert!(!p.exists());
        assert!(matches!(delete(&p), Err(RespondError::Io { .. })));
    }
}
