//! The sha256 side of exec blocking: hashing an open file, the cache of
//! hashes by file identity the permission threads consult, and the cache
//! of protected executables' hashes a sha256 block is checked against.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Cache key: a file's content is assumed unchanged while these are
/// (dev, inode, size, mtime, mtime ns, ctime, ctime ns).
pub(super) type Key = (u64, u64, u64, i64, i64, i64, i64);

/// Hash cache entries kept before the cache is cleared.
const CACHE_MAX: usize = 65_536;

/// Protected executables' hashes kept before that cache is cleared.
const PROTECTED_MAX: usize = 4096;

/// The cache key of an open file.
pub(super) fn key_of(m: &std::fs::Metadata) -> Key {
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

/// The cache key from a raw `fstat` (the reader thread's, which allocates nothing).
pub(super) fn key_of_stat(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino, st.st_size as u64, st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec)
}

/// sha256 of an open file via pread, refusing to read past `max`.
pub(super) fn hash_fd(file: &File, max: u64) -> io::Result<[u8; 32]> {
    Ok(crate::fsutil::sha256_chunks(file, Some(max), |_| Ok(()))?.0)
}

/// Hashes of executed files by [`Key`], shared by the reader and the hashers.
#[derive(Debug, Default)]
pub(super) struct HashCache(Mutex<HashMap<Key, [u8; 32]>>);

impl HashCache {
    /// The cached hash, unless the lock is busy (the reader thread never waits).
    pub(super) fn try_get(&self, key: &Key) -> Option<[u8; 32]> {
        self.0.try_lock().ok()?.get(key).copied()
    }

    /// Remembers a hash (clearing the cache when it is full).
    pub(super) fn insert(&self, key: Key, hash: [u8; 32]) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, hash);
    }
}

/// sha256 of protected executables, by path and file identity.
#[derive(Debug, Default)]
pub(super) struct ProtectedHashes(Mutex<HashMap<(PathBuf, Key), [u8; 32]>>);

impl ProtectedHashes {
    /// The sha256 of `path`, cached while the file is unchanged; `None`
    /// when it cannot be read or is over `max` bytes.
    pub(super) fn get(&self, path: &Path, max: u64) -> Option<[u8; 32]> {
        let f = File::open(path).ok()?;
        let m = f.metadata().ok()?;
        if m.size() > max {
            return None;
        }
        let k = (path.to_path_buf(), key_of(&m));
        if let Some(h) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return Some(*h);
        }
        let h = hash_fd(&f, max).ok()?;
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > PROTECTED_MAX {
            cache.clear();
        }
        cache.insert(k, h);
        Some(h)
    }
}
