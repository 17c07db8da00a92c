//! Commands queued for an offline host (against a real nats-server): sent
//! when the host comes back and answered by it; one whose signed expiry
//! passes while it waits is `expired` and never sent.

mod common;

use common::TestFleet;
use edr_fleet_proto::command::Command;
use edr_fleet_server::InitOptions;
use edr_store::{Store, StoreConfig};
use edr_testkit::wait_until;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn state_of(fleet: &TestFleet, command_id: &str) -> String {
    let v = fleet.admin.get("/api/v1/commands").unwrap();
    v["commands"].as_array().unwrap().iter().find(|c| c["command_id"] == command_id).map(|c| c["state"].as_str().unwrap().to_string()).unwrap_or_default()
}

#[test]
fn a_queued_command_runs_when_the_host_returns_and_an_expired_one_never() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let fleet = TestFleet::start(InitOptions { name: "queue".into(), heartbeat_secs: 1, ..Default::default() }, |_| {});
    let data = tempfile::tempdir().unwrap();
    let id = edr_fleet_link::enroll::enroll(data.path(), &fleet.token(), "laptop-3").unwrap();
    let key = fleet.fleet_dir().join("keys/command.ed25519");
    let post = |ttl: u64, queue: bool| -> Result<Value, String> {
        let signed = edr_fleet_server::client::sign_command(&key, &id.host_id, Command::Status, ttl).unwrap();
        let path = format!("/api/v1/hosts/{}/commands{}", id.host_id, if queue { "?queue=true" } else { "" });
        let cid = serde_json::from_str::<Value>(&signed.body).unwrap()["command_id"].as_str().unwrap().to_string();
        fleet
            .admin
            .post(&path, &serde_json::to_value(&signed).unwrap())
            .map(|mut v| {
                v["sent_id"] = cid.into();
                v
            })
            .map_err(|e| e.to_string())
    };

    // Offline (never seen): queued at once, not waited on for 30 s.
    let started = std::time::Instant::now();
    let kept = post(300, true).unwrap();
    assert_eq!(kept["status"], "queued", "{kept}");
    assert!(started.elapsed() < Duration::from_secs(5), "an offline host's command is queued without waiting for an answer");
    let short = post(2, true).unwrap();
    assert_eq!(short["status"], "queued", "{short}");
    let (kept, short) = (kept["command_id"].as_str().unwrap().to_string(), short["command_id"].as_str().unwrap().to_string());
    assert_eq!(state_of(&fleet, &kept), "queued");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(state_of(&fleet, &short), "expired");

    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let link = common::link(data.path(), store, "0.1.0-queue");
    assert!(wait_until(Duration::from_secs(20), || state_of(&fleet, &kept) == "done"), "{}", fleet.admin.get("/api/v1/commands").unwrap());
    assert_eq!(state_of(&fleet, &short), "expired", "an expired command is never sent");
    // The host's own audit has the one it ran and nothing of the expired one.
    let host_log = std::fs::read_to_string(data.path().join("fleet/commands.jsonl")).unwrap();
    assert!(host_log.contains(&kept) && !host_log.contains(&short), "{host_log}");
    link.stop();
}
