//! The central record against a real nats-server and the real management
//! server: a host's events are forwarded from its record in hash-chained
//! batches and kept at the centre, where they are queried with the record's
//! own views after the host's `events.db` is deleted, and an alert's
//! storyline is answered there; a link restart sends
//! nothing twice; a forged batch (a broken chain) on a host's own subject
//! is reported as an alert on that host, and one naming another host is
//! dropped.

mod common;

use common::TestFleet;
use edr_event::{Event, EventBody, ProcessExec};
use edr_fleet_proto::central::{EventBatch, GENESIS};
use edr_fleet_server::InitOptions;
use edr_store::{Store, StoreConfig};
use edr_testkit::wait_until;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn exec(id: u64) -> Event {
    let body = EventBody::ProcessExec(ProcessExec {
        pid: 1000 + id as u32,
        ppid: 1,
        entity_id: 0x5000 + id,
        exe: if id.is_multiple_of(2) { "/usr/bin/curl".into() } else { "/usr/bin/bash".into() },
        argv: vec!["x".into(), format!("arg{id}")],
        ..Default::default()
    });
    Event { id, time: 1_700_000_000_000_000_000 + id, partial: false, body }
}

fn record(data: &Path, ids: std::ops::RangeInclusive<u64>) {
    let store = Store::open(StoreConfig::new(data.join("events.db"))).unwrap();
    store.writer().append_events(Arc::new(ids.map(exec).collect())).unwrap();
    store.writer().flush().unwrap();
}

fn start(data: &Path) -> edr_fleet_link::FleetLink {
    let store = Arc::new(Store::open(StoreConfig::new(data.join("events.db"))).unwrap());
    common::link(data, store, "0.1.0-central")
}

fn central(fleet: &TestFleet, host: &str) -> Value {
    let v = fleet.admin.get("/api/v1/central").unwrap();
    v["hosts"].as_array().unwrap().iter().find(|h| h["host_id"] == host).cloned().unwrap_or(Value::Null)
}

fn count_at_centre(fleet: &TestFleet, host: &str, sql: &str) -> u64 {
    let v = fleet.admin.post("/api/v1/central/query", &json!({"sql": sql, "hosts": [host]})).unwrap();
    assert_eq!(v["source"], "centre");
    v["hosts"][0]["output"]["rows"][0][0].as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn events_reach_the_centre_once_survive_the_hosts_record_and_forgeries_are_reported() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let fleet = TestFleet::start(InitOptions { name: "central".into(), heartbeat_secs: 1, ..Default::default() }, |_| {});
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edr_fleet_link::enroll::enroll(a_dir.path(), &fleet.token(), "web-1").unwrap();
    let b = edr_fleet_link::enroll::enroll(b_dir.path(), &fleet.token(), "web-2").unwrap();
    record(a_dir.path(), 1..=5000);
    // An alert on the exec of event 2 (a curl), as a plugin would record it.
    {
        let store = Store::open(StoreConfig::new(a_dir.path().join("events.db"))).unwrap();
        let mut alert = common::alert(1);
        alert.finding.event_ids = vec![2];
        store.writer().append_alert(&alert).unwrap();
        store.writer().flush().unwrap();
    }

    // 5000 events: three batches (2000 a batch), chained, each stored once.
    let link = start(a_dir.path());
    assert!(wait_until(Duration::from_secs(30), || central(&fleet, &a.host_id)["events"] == 5000), "{}", central(&fleet, &a.host_id));
    let st = central(&fleet, &a.host_id);
    assert_eq!((st["batches"].as_u64(), st["last_event_id"].as_u64(), st["chain"].as_str()), (Some(3), Some(5000), Some("intact")), "{st}");
    link.stop();
    // A restart with nothing new sends nothing; new events continue the chain.
    record(a_dir.path(), 5001..=5010);
    let link = start(a_dir.path());
    assert!(wait_until(Duration::from_secs(20), || central(&fleet, &a.host_id)["events"] == 5010), "{}", central(&fleet, &a.host_id));
    std::thread::sleep(Duration::from_secs(2));
    let st = central(&fleet, &a.host_id);
    assert_eq!((st["events"].as_u64(), st["batches"].as_u64(), st["chain"].as_str()), (Some(5010), Some(4), Some("intact")), "nothing twice: {st}");
    link.stop();

    // The attacker deletes the host's record: the centre still answers, with the record's views.
    for f in ["events.db", "events.db-wal", "events.db-shm"] {
        let _ = std::fs::remove_file(a_dir.path().join(f));
    }
    assert_eq!(count_at_centre(&fleet, &a.host_id, "SELECT count(*) FROM process"), 5010);
    assert_eq!(count_at_centre(&fleet, &a.host_id, "SELECT count(*) FROM process WHERE exe = '/usr/bin/curl'"), 2505);
    // The alert's storyline, from the centre: the alert and its process.
    let story = fleet.admin.get(&format!("/api/v1/central/{}/storyline/1", a.host_id)).unwrap();
    assert_eq!(story["alert"]["id"], 1, "{story}");
    assert!(story["processes"].as_array().is_some_and(|p| !p.is_empty()), "{story}");
    assert!(story.to_string().contains("/usr/bin/curl"), "the trigger is the curl exec: {story}");
    let refused = fleet.admin.post("/api/v1/central/query", &json!({"sql": "DELETE FROM events", "hosts": [a.host_id]})).unwrap();
    assert_eq!(refused["hosts"][0]["status"], "failed", "the central stores are read-only to queries: {refused}");
    assert_eq!(count_at_centre(&fleet, &a.host_id, "SELECT count(*) FROM process"), 5010);

    // Forgeries, with host B's own credentials: a batch naming host A on B's subject is dropped;
    // a batch on B's subject whose chain does not start at the genesis is a break, reported as an alert on B.
    let kp = edr_fleet_link::Identity::key_pair(&edr_fleet_link::identity::state_dir(b_dir.path()).unwrap()).unwrap();
    let events: Vec<Event> = (1..=3).map(exec).collect();
    let as_a = edr_fleet_proto::central::next_batch(&a.host_id, (4, "00"), &events).unwrap().unwrap();
    let forged = edr_fleet_proto::central::next_batch(&b.host_id, (6, "ab"), &events).unwrap().unwrap();
    assert_ne!(forged.prev, GENESIS);
    fleet.rt.block_on(async {
        let client = common::connect_as(&b, kp).await;
        let js = async_nats::jetstream::new(client);
        for batch in [&as_a, &forged] {
            let body: Vec<u8> = serde_json::to_vec::<EventBatch>(batch).unwrap();
            js.publish(edr_fleet_proto::subjects::events(&b.host_id), body.into()).await.unwrap().await.unwrap();
        }
    });
    let broken = || central(&fleet, &b.host_id)["chain"].as_str().unwrap_or("").starts_with("broken");
    assert!(wait_until(Duration::from_secs(20), broken), "{}", central(&fleet, &b.host_id));
    assert!(central(&fleet, &b.host_id)["chain"].as_str().unwrap().contains("batches 1..6 are missing"), "{}", central(&fleet, &b.host_id));
    let alerted = || {
        let v = fleet.admin.get(&format!("/api/v1/alerts?host={}", b.host_id)).unwrap();
        v["alerts"].as_array().unwrap().iter().any(|x| x["rule_id"] == edr_fleet_server::central::CHAIN_RULE)
    };
    assert!(wait_until(Duration::from_secs(20), alerted), "the break is an alert on host B");
    assert_eq!(central(&fleet, &a.host_id)["events"], 5010, "a batch naming host A on B's subject changed nothing of A");

    // Host A's data dir wiped and recreated (record and cursor): its chain restarts at batch 1 with
    // other content. That is a break too, reported; the centre's earlier events stay as they were.
    let _ = std::fs::remove_file(a_dir.path().join("fleet/central.json"));
    record(a_dir.path(), 1..=3);
    let link = start(a_dir.path());
    let reset = || central(&fleet, &a.host_id)["chain"].as_str().unwrap_or("").contains("arrived again with other content");
    assert!(wait_until(Duration::from_secs(20), reset), "{}", central(&fleet, &a.host_id));
    link.stop();
    assert_eq!(count_at_centre(&fleet, &a.host_id, "SELECT count(*) FROM process"), 5010, "nothing earlier was replaced");
}
