//! The store's files on disk (issue 14, items 2 and 8): `events.db`, its
//! `-wal` / `-shm` and the lock file are 0600, and a link planted in place
//! of any of them is refused, never followed.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn the_store_files_are_0600_and_an_old_0644_store_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    ingest(&store, mixed(1, 50, T0));
    for f in ["events.db", "events.db-wal", "events.db-shm", "events.db.lock"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    drop(store);
    for f in ["events.db", "events.db.lock"] {
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.stats().events, 50, "the old record is kept");
    for f in ["events.db", "events.db.lock"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f} tightened");
    }
}

#[test]
fn a_link_in_place_of_the_store_or_its_wal_is_refused() {
    for name in ["events.db", "events.db-wal", "events.db-shm", "events.db.lock"] {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's secret\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        let e = edr_store::Store::open(edr_store::StoreConfig::new(dir.path().join("events.db"))).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains(&dir.path().join(name).display().to_string()), "{name}: {e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's secret\n", "{name}: written through");
    }
}
