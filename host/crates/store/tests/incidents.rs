//! Incidents in the record (schema version 3): alerts carry their incident,
//! the incident's row follows its alerts, a version-2 store migrates, and
//! damaged files or rows are refused with a clear error.

mod common;

use common::*;
use edr_event::*;
use edr_store::*;
use std::time::Duration;

fn incident(id: u64, first: u64, last: u64, alerts: u64, suppressed: u64) -> IncidentRecord {
    IncidentRecord {
        id,
        first_time: first,
        last_time: last,
        hostname: "web-1".into(),
        root_entity_id: Some(0xfeed),
        root_pid: Some(4200),
        root_exe: "/usr/bin/sudo".into(),
        severity: Severity::High,
        score: 79,
        alert_count: alerts,
        suppressed,
        rules: vec![IncidentRule { id: "r.account".into(), name: "Account created".into(), severity: Severity::High, count: alerts }],
        summary: format!("high: {alerts} alerts of 1 rule"),
    }
}

fn user_version(path: &std::path::Path) -> i32 {
    rusqlite::Connection::open(path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

#[test]
fn alerts_carry_their_incident_and_its_row_follows_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ev = exec(1, T0, 4242, 4200, 0xdead_beef, 0xfeed, "/usr/sbin/useradd", &["useradd", "eve"]);
    ingest(&store, vec![ev.clone()]);
    let w = store.writer();
    w.append_alert_in(&alert(10, T0, "r.account", &ev), incident(10, T0, T0, 1, 0)).unwrap();
    w.append_alert_in(&alert(11, T0 + S, "r.account", &ev), incident(10, T0, T0 + S, 2, 1)).unwrap();
    w.append_alert(&alert(12, T0 + 2 * S, "ungrouped", &ev)).unwrap();
    w.flush().unwrap();

    let all = store.incidents(None, None, 10).unwrap();
    assert_eq!(all, vec![incident(10, T0, T0 + S, 2, 1)], "one row, as of its latest alert");
    assert_eq!(store.incident(10).unwrap().unwrap().suppressed, 1);
    assert!(store.incident(11).unwrap().is_none());
    let members: Vec<u64> = store.incident_alerts(10, 100).unwrap().iter().map(|a| a.id).collect();
    assert_eq!(members, vec![10, 11], "the record keeps every alert, repeats included");
    assert_eq!(store.alert(12).unwrap().unwrap().incident_id, None);
    // Time filters: the incident's span must meet the range.
    assert_eq!(store.incidents(Some(T0 + S), None, 10).unwrap().len(), 1);
    assert!(store.incidents(Some(T0 + 2 * S), None, 10).unwrap().is_empty());
    assert!(store.incidents(None, Some(T0 - 1), 10).unwrap().is_empty());
    // The operators' views.
    let r = store.query("SELECT id, root_entity_id, root_exe, score, alert_count, suppressed, first_ts FROM incident").unwrap();
    assert_eq!(r.rows[0][0], 10);
    assert_eq!(r.rows[0][1], "000000000000feed");
    assert_eq!((r.rows[0][4].clone(), r.rows[0][5].clone()), (2.into(), 1.into()));
    let r = store.query("SELECT count(*) FROM alert WHERE incident_id = 10").unwrap();
    assert_eq!(r.rows[0][0], 2);
    // Read-only (the CLI beside the agent) reads them too.
    drop(store);
    let ro = Store::open_read_only(dir.path().join("events.db")).unwrap();
    assert_eq!(ro.incidents(None, None, 10).unwrap().len(), 1);
}

#[test]
fn a_version_2_store_migrates_and_keeps_its_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    schema::create_at_version(&conn, 2).unwrap();
    // An alert as a version-2 agent recorded it (no incident_id column).
    conn.execute_batch(
        "INSERT INTO alerts (id, time, rule_id, rule_name, severity, score, plugin, event_ids, techniques, message, entity_id, pid, ecs)
         VALUES (5, 1780000000000000000, 'old.rule', 'Old', 'high', 73, 'lineage', '[1]', '[]', 'm', 7, 70, '{}');
         UPDATE meta SET value = 1 WHERE key = 'alerts';
         UPDATE meta SET value = 5 WHERE key = 'max_alert_id';",
    )
    .unwrap();
    drop(conn);
    assert_eq!(user_version(&path), 2);

    let store = Store::open(StoreConfig::new(&path)).unwrap();
    assert_eq!(user_version(&path), schema::SCHEMA_VERSION);
    let old = store.alert(5).unwrap().unwrap();
    assert_eq!((old.rule_id.as_str(), old.incident_id), ("old.rule", None));
    assert_eq!(store.max_alert_id().unwrap(), 5);
    assert!(store.incidents(None, None, 10).unwrap().is_empty());
    let ev = exec(1, T0, 4242, 4200, 0xdead_beef, 0xfeed, "/usr/sbin/useradd", &["useradd"]);
    store.writer().append_alert_in(&alert(6, T0, "r.account", &ev), incident(6, T0, T0, 1, 0)).unwrap();
    store.writer().flush().unwrap();
    assert_eq!(store.alert(6).unwrap().unwrap().incident_id, Some(6));
    assert_eq!(store.query("SELECT count(*) FROM incident").unwrap().rows[0][0], 1);
    drop(store);
    // Opening again does not migrate again.
    drop(Store::open(StoreConfig::new(&path)).unwrap());
    assert_eq!(user_version(&path), schema::SCHEMA_VERSION);
}

#[test]
fn damaged_files_and_rows_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A version-2 file that already has an `incidents` table of its own: the
    // migration fails whole, names the step, and leaves the file at version 2.
    let clash = dir.path().join("clash.db");
    let conn = rusqlite::Connection::open(&clash).unwrap();
    schema::create_at_version(&conn, 2).unwrap();
    conn.execute_batch("CREATE TABLE incidents (x TEXT); INSERT INTO incidents VALUES ('keep');").unwrap();
    drop(conn);
    let e = Store::open(StoreConfig::new(&clash)).unwrap_err().to_string();
    assert!(e.contains("migrating the event store from schema 2 to 3"), "{e}");
    assert_eq!(user_version(&clash), 2);
    let kept: String = rusqlite::Connection::open(&clash).unwrap().query_row("SELECT x FROM incidents", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, "keep");
    // A schema version no agent writes.
    let negative = dir.path().join("negative.db");
    let conn = rusqlite::Connection::open(&negative).unwrap();
    schema::create_at_version(&conn, 2).unwrap();
    conn.pragma_update(None, "user_version", -1).unwrap();
    drop(conn);
    match Store::open(StoreConfig::new(&negative)) {
        Err(e @ StoreError::BadVersion { found: -1, .. }) => assert!(e.to_string().contains("no agent writes"), "{e}"),
        other => panic!("expected BadVersion, got {other:?}"),
    }
    // Not a database at all.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"SQLite format 3\0 but then \xff\xfe nothing a database holds".repeat(200)).unwrap();
    let e = Store::open(StoreConfig::new(&garbage)).unwrap_err().to_string();
    assert!(e.contains("cannot open the event store") && e.contains("garbage.db"), "{e}");
    // A damaged incident row is named, not skipped silently.
    let store = open(dir.path());
    let ev = exec(1, T0, 1, 1, 1, 1, "/x", &["x"]);
    store.writer().append_alert_in(&alert(1, T0, "r", &ev), incident(1, T0, T0, 1, 0)).unwrap();
    store.writer().flush().unwrap();
    let path = store.path().to_path_buf();
    drop(store);
    rusqlite::Connection::open(&path).unwrap().execute_batch("UPDATE incidents SET rules = '{not json'").unwrap();
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    match store.incidents(None, None, 10) {
        Err(e @ StoreError::Corrupt { table: "incidents", id: 1, .. }) => assert!(e.to_string().contains("rules"), "{e}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn age_retention_deletes_old_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("events.db"));
    cfg.max_age = Some(Duration::from_secs(24 * 3600));
    let store = Store::open(cfg).unwrap();
    let now = edr_event::time::now();
    let day = 24 * 3600 * S;
    let ev = exec(1, now, 1, 1, 1, 1, "/x", &["x"]);
    let w = store.writer();
    w.append_alert_in(&alert(1, now - 10 * day, "r", &ev), incident(1, now - 10 * day, now - 10 * day, 1, 0)).unwrap();
    w.append_alert_in(&alert(2, now, "r", &ev), incident(2, now - 2 * day, now, 1, 0)).unwrap();
    w.flush().unwrap();
    let report = store.enforce_retention().unwrap();
    assert_eq!(report.alerts_deleted, 1);
    let left: Vec<u64> = store.incidents(None, None, 10).unwrap().iter().map(|i| i.id).collect();
    assert_eq!(left, vec![2], "an incident still active stays, however old its first alert");
}
