//! The block list: what is blocked (paths, hashes), its canonical form,
//! the set the permission threads check, where it is saved, and the
//! executables that may never be blocked.

use crate::fsutil;
use crate::RespondError;
use edr_event::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// What to block.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockTarget {
    /// An absolute path (resolved through symlinks when it exists).
    Path(PathBuf),
    /// A sha256 of the file's content (64 hex characters).
    Sha256(String),
}

impl BlockTarget {
    /// Reads a plugin's string: 64 hex characters are a sha256, anything
    /// else a path (checked to be absolute when the block is requested).
    pub fn parse(s: &str) -> BlockTarget {
        let t = s.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            BlockTarget::Sha256(t.to_ascii_lowercase())
        } else {
            BlockTarget::Path(PathBuf::from(t))
        }
    }
}

impl fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockTarget::Path(p) => write!(f, "path {}", p.display()),
            BlockTarget::Sha256(h) => write!(f, "sha256 {h}"),
        }
    }
}

/// One active block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// What is blocked (paths resolved, hashes lowercase).
    pub target: BlockTarget,
    /// Since when, ns since the epoch.
    pub since: Timestamp,
    /// The reason the requester gave.
    pub reason: String,
    /// Who asked.
    pub requester: String,
}

/// What the permission threads check against.
#[derive(Debug, Default)]
pub(super) struct BlockSet {
    /// Blocked paths (resolved).
    pub(super) paths: HashSet<PathBuf>,
    /// Blocked sha256 hashes.
    pub(super) hashes: HashSet<[u8; 32]>,
}

impl BlockSet {
    /// The set of the active entries.
    pub(super) fn from_entries(entries: &[BlockEntry]) -> BlockSet {
        let mut s = BlockSet::default();
        for e in entries {
            match &e.target {
                BlockTarget::Path(p) => {
                    s.paths.insert(p.clone());
                }
                BlockTarget::Sha256(h) => {
                    let mut raw = [0u8; 32];
                    if hex::decode_to_slice(h, &mut raw).is_ok() {
                        s.hashes.insert(raw);
                    }
                }
            }
        }
        s
    }
}

/// Reads the saved block list; an absent file is an empty list.
pub(super) fn load(path: &Path) -> Result<Vec<BlockEntry>, RespondError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(|e| RespondError::io("cannot read the block list", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| RespondError::Config(format!("block list {} is not valid JSON ({e}); fix or remove it", path.display())))
}

/// Saves the block list (atomically, mode 0600).
pub(super) fn save(path: &Path, entries: &[BlockEntry]) -> Result<(), RespondError> {
    let dir = fsutil::parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "blocks.json".into());
    fsutil::write_json_atomic(&dir, &name, &entries, 0o600)
}

/// Checks a target and puts it in canonical form: lowercase hashes; absolute
/// paths resolved through symlinks (the kernel reports resolved paths), or
/// with their directory resolved when the file does not exist (yet).
pub(super) fn normalize(target: &BlockTarget) -> Result<BlockTarget, RespondError> {
    match target {
        BlockTarget::Sha256(h) => Ok(BlockTarget::Sha256(fsutil::normalize_sha256(h)?)),
        BlockTarget::Path(p) => {
            fsutil::check_absolute(p)?;
            match std::fs::canonicalize(p) {
                Ok(c) => {
                    if c.is_dir() {
                        return Err(RespondError::invalid(p.display(), "is a directory; block files"));
                    }
                    Ok(BlockTarget::Path(c))
                }
                Err(_) => {
                    let parent = fsutil::parent_of(p);
                    let base = std::fs::canonicalize(&parent).unwrap_or(parent);
                    match p.file_name() {
                        Some(name) => Ok(BlockTarget::Path(base.join(name))),
                        None => Err(RespondError::invalid(p.display(), "names no file")),
                    }
                }
            }
        }
    }
}

/// Executables whose blocking would break the host or the agent: the agent,
/// the dynamic loaders, `/bin/sh`, the `nft` binary (release needs it).
pub(crate) fn critical_executables() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if let Ok(p) = std::fs::read_link("/proc/self/exe") {
        out.push((p, "the agent's own executable".to_string()));
    }
    for p in [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-linux-armhf.so.3",
        "/lib/ld-linux.so.2",
        "/lib/ld-musl-x86_64.so.1",
        "/lib/ld-musl-aarch64.so.1",
    ] {
        if Path::new(p).exists() {
            out.push((PathBuf::from(p), "the dynamic loader".to_string()));
        }
    }
    for p in ["/bin/sh", "/usr/sbin/nft", "/sbin/nft"] {
        if Path::new(p).exists() {
            out.push((PathBuf::from(p), "needed by the system or the agent".to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let h = "AB".repeat(32);
        assert_eq!(BlockTarget::parse(&h), BlockTarget::Sha256("ab".repeat(32)));
        assert_eq!(BlockTarget::parse("/tmp/x"), BlockTarget::Path("/tmp/x".into()));
        assert!(normalize(&BlockTarget::Path("tmp/x".into())).is_err());
        assert!(normalize(&BlockTarget::Sha256("abc".into())).is_err());
        assert!(normalize(&BlockTarget::Path("/".into())).is_err());
        // /bin is a symlink on merged-/usr systems; the kernel reports the resolved path.
        let t = normalize(&BlockTarget::Path("/bin/true".into())).unwrap();
        assert_eq!(t, BlockTarget::Path(std::fs::canonicalize("/bin/true").unwrap()));
    }
}
