//! Fetch a file into the evidence store.
//!
//! Layout of the evidence directory (mode 0700, owned by root): `<id>.bin`
//! (the copy, mode 0400) and `<id>.json` (the sidecar, [`EvidenceEntry`]).
//! The original is left untouched. Files over
//! [`crate::ResponseConfig::fetch_max_bytes`] are refused.

use crate::fsutil::{self, FileMeta};
use crate::{Detail, RespondError};
use edr_event::Timestamp;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A fetched file, as its sidecar records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// The evidence id (32 hex characters).
    pub id: String,
    /// Where the file was copied from.
    pub original_path: PathBuf,
    /// sha256 of the copy (lowercase hex).
    pub sha256: String,
    /// Size of the copy.
    pub size: u64,
    /// Owner, mode and times of the original.
    pub meta: FileMeta,
    /// When it was fetched, ns since the epoch.
    pub fetched_at: Timestamp,
    /// The reason the requester gave.
    pub reason: String,
    /// Who asked.
    pub requester: String,
    /// Where the copy is (filled in when read back).
    #[serde(default, skip_serializing)]
    pub stored_path: PathBuf,
}

/// The evidence directory.
pub(crate) struct EvidenceStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl EvidenceStore {
    /// Opens (creating it 0700 if needed) the store.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<EvidenceStore, RespondError> {
        fsutil::ensure_private_dir(dir, "evidence directory")?;
        Ok(EvidenceStore { dir: dir.to_path_buf(), max_bytes })
    }

    /// What fetching would copy (simulate mode).
    pub(crate) fn preview(&self, path: &Path) -> Result<Detail, RespondError> {
        let (file, meta) = fsutil::open_regular(path)?;
        if meta.len() > self.max_bytes {
            return Err(RespondError::TooLarge { path: path.to_path_buf(), size: meta.len(), max: self.max_bytes });
        }
        let (sha, size) = fsutil::sha256_file(&file).map_err(|e| RespondError::io("cannot read", path, e))?;
        Ok(Detail::from([("sha256".into(), sha), ("size".into(), size.to_string())]))
    }

    /// Copies `path` into the store.
    pub(crate) fn fetch(&self, path: &Path, reason: &str, requester: &str) -> Result<EvidenceEntry, RespondError> {
        let (file, meta) = fsutil::open_regular(path)?;
        if meta.len() > self.max_bytes {
            return Err(RespondError::TooLarge { path: path.to_path_buf(), size: meta.len(), max: self.max_bytes });
        }
        let id = fsutil::random_hex(16);
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let blob = self.dir.join(format!("{id}.bin"));
        let result = (|| {
            let mut dst = fsutil::create_new(&tmp, 0o400).map_err(|e| RespondError::io("cannot create", &tmp, e))?;
            if fsutil::euid() == 0 {
                fsutil::fchown(&dst, 0, 0).map_err(|e| RespondError::io("cannot chown root", &tmp, e))?;
            }
            let (sha, size) = fsutil::copy_hashing(&file, &mut dst, Some(self.max_bytes)).map_err(|e| RespondError::io("cannot copy", path, e))?;
            fs::rename(&tmp, &blob).map_err(|e| RespondError::io("cannot rename into the evidence store", &tmp, e))?;
            Ok((sha, size))
        })();
        let (sha256, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let entry = EvidenceEntry {
            id: id.clone(),
            original_path: path.to_path_buf(),
            sha256,
            size,
            meta: FileMeta::from_metadata(&meta),
            fetched_at: edr_event::time::now(),
            reason: reason.to_string(),
            requester: requester.to_string(),
            stored_path: blob.clone(),
        };
        if let Err(e) = fsutil::write_json_atomic(&self.dir, &format!("{id}.json"), &entry, 0o600) {
            let _ = fs::remove_file(&blob);
            return Err(e);
        }
        tracing::info!(id = %id, path = %path.display(), sha256 = %entry.sha256, "fetched file into evidence");
        Ok(entry)
    }

    /// Every fetched file, oldest first.
    pub(crate) fn list(&self) -> Vec<EvidenceEntry> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else { continue };
            if id.starts_with('.') {
                continue;
            }
            let parsed =
                fs::read(e.path()).and_then(|b| serde_json::from_slice::<EvidenceEntry>(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)));
            match parsed {
                Ok(mut entry) => {
                    entry.stored_path = self.dir.join(format!("{id}.bin"));
                    out.push(entry);
                }
                Err(err) => tracing::warn!(path = %e.path().display(), error = %err, "unreadable evidence sidecar"),
            }
        }
        out.sort_by(|a, b| a.fetched_at.cmp(&b.fetched_at).then(a.id.cmp(&b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_files_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(&dir.path().join("ev"), 4).unwrap();
        let p = dir.path().join("big");
        fs::write(&p, b"12345").unwrap();
        assert!(matches!(store.fetch(&p, "", ""), Err(RespondError::TooLarge { size: 5, max: 4, .. })));
        fs::write(&p, b"1234").unwrap();
        let e = store.fetch(&p, "", "").unwrap();
        assert_eq!(fs::read(&e.stored_path).unwrap(), b"1234");
        assert_eq!(store.list(), vec![e]);
    }
}
