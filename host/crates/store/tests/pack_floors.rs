//! The anti-rollback floors kept in the record (`pack_floors`), and the
//! migration that adds them to a version-1 store.

use edr_store::{Store, StoreConfig, StoreError};

#[test]
fn floors_are_committed_survive_a_reopen_and_are_replaced_per_pack() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    let floors = store.pack_floors();
    assert!(floors.all().unwrap().is_empty());
    floors.record("com.vendor.a", "1.0.0").unwrap();
    floors.record("com.vendor.b", "0.3.0").unwrap();
    floors.record("com.vendor.a", "2.0.0").unwrap();
    // Another handle (the agent's pack thread has its own) sees the commit at once.
    assert_eq!(store.pack_floors().all().unwrap(), vec![("com.vendor.a".to_string(), "2.0.0".to_string()), ("com.vendor.b".to_string(), "0.3.0".to_string())]);
    drop(store);
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    assert_eq!(store.pack_floors().all().unwrap()[0], ("com.vendor.a".to_string(), "2.0.0".to_string()));
    drop(store);
    // Read-only (the CLI while the agent runs): readable, not writable.
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(ro.pack_floors().all().unwrap().len(), 2);
    assert!(matches!(ro.pack_floors().record("com.vendor.a", "0.1.0"), Err(StoreError::ReadOnly)));
}

#[test]
fn a_version_1_store_gets_the_floors_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    // What a version-1 agent left behind.
    let conn = rusqlite::Connection::open(&path).unwrap();
    edr_store::schema::create_at_version(&conn, 1).unwrap();
    drop(conn);
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    let version: i32 = rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, edr_store::schema::SCHEMA_VERSION);
    store.pack_floors().record("com.vendor.a", "1.2.3").unwrap();
    assert_eq!(store.pack_floors().all().unwrap(), vec![("com.vendor.a".to_string(), "1.2.3".to_string())]);
}
