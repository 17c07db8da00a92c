//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use edr_testkit::is_root;

/// Returns from the test, recorded as skipped, unless running as root.
#[allow(unused_imports)]
pub use edr_testkit::require_root;

/// uid/gid of `nobody`: the attacker in these tests.
pub const NOBODY: u32 = 65534;

/// `chown uid:uid path` without following a link.
pub fn chown(path: &std::path::Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// The permission bits of `path` (not following a link).
pub fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// `chmod mode path`.
pub fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
