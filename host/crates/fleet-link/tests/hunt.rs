//! A fleet hunt that waits for an offline host (`until_secs`, what `edr
//! fleet query --until` sends), against a real nats-server: the online host
//! answers at once, the offline one is queued; when its link starts, its
//! answer lands in the hunt (`GET /api/v1/hunts/ID`). Hostile requests are
//! refused with a message.

mod common;

use common::TestFleet;
use edr_fleet_link::commands::{BuiltIn, CommandExecutor};
use edr_fleet_proto::command::{Command, CommandBody};
use edr_fleet_server::client::{self, ClientError, HuntRequest};
use edr_fleet_server::InitOptions;
use edr_store::{Store, StoreConfig};
use edr_testkit::wait_until;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Answers `query` from the host's record, the rest as the built-in executor.
struct RecordQueries {
    store: Arc<Store>,
    builtin: BuiltIn,
}

impl CommandExecutor for RecordQueries {
    fn execute(&self, body: &CommandBody) -> Result<Value, String> {
        match &body.command {
            Command::Query { sql, .. } => {
                let r = self.store.query(sql).map_err(|e| e.to_string())?;
                Ok(json!({"columns": r.columns, "rows": r.rows, "truncated": r.truncated}))
            }
            _ => self.builtin.execute(body),
        }
    }
}

fn start_link(data: &Path, alerts: u64) -> edr_fleet_link::FleetLink {
    let store = Arc::new(Store::open(StoreConfig::new(data.join("events.db"))).unwrap());
    common::write_alerts(&store, 1..=alerts);
    let status: Arc<dyn edr_fleet_link::StatusProvider> = Arc::new(common::status_doc("0.1.0-hunt"));
    let exec = Arc::new(RecordQueries { store: store.clone(), builtin: BuiltIn(status.clone()) });
    let opts = edr_fleet_link::LinkOptions { heartbeat: Some(Duration::from_secs(1)), ..Default::default() };
    edr_fleet_link::FleetLink::start_with(data, opts, store, status, exec).unwrap()
}

fn hunt_hosts(v: &Value) -> Vec<(String, String)> {
    v["hosts"].as_array().unwrap().iter().map(|h| (h["host"].as_str().unwrap().to_string(), h["status"].as_str().unwrap().to_string())).collect()
}

#[test]
fn a_hunt_waits_for_an_offline_host_and_keeps_its_late_answer() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let fleet = TestFleet::start(InitOptions { name: "hunt".into(), heartbeat_secs: 1, ..Default::default() }, |_| {});
    let (online, offline) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edr_fleet_link::enroll::enroll(online.path(), &fleet.token(), "web-1").unwrap();
    let b = edr_fleet_link::enroll::enroll(offline.path(), &fleet.token(), "laptop-7").unwrap();
    let link_a = start_link(online.path(), 2);
    assert!(wait_until(Duration::from_secs(20), || fleet.hosts().iter().any(|h| h["host_id"] == a.host_id.as_str() && h["state"] == "online")));

    let key = fleet.fleet_dir().join("keys/command.ed25519");
    let hosts = vec![a.host_id.clone(), b.host_id.clone()];
    let q =
        HuntRequest { sql: "SELECT count(*) AS n FROM alert", limit: 10, reason: "hunt for case 12", ttl_secs: 300, timeout_secs: 2, until_secs: Some(300) };
    let answer = fleet.admin.post("/api/v1/query", &client::query_request(&key, &hosts, &q).unwrap()).unwrap();
    let id = answer["hunt_id"].as_str().expect("a hunt id").to_string();
    assert_eq!(hunt_hosts(&answer), vec![(a.host_id.clone(), "done".into()), (b.host_id.clone(), "queued".into())], "{answer}");
    let now = fleet.admin.get(&format!("/api/v1/hunts/{id}")).unwrap();
    assert_eq!(hunt_hosts(&now), hunt_hosts(&answer), "the hunt as kept: {now}");

    // The offline host returns: its queued query runs and its answer joins the hunt.
    let link_b = start_link(offline.path(), 5);
    let done = || fleet.admin.get(&format!("/api/v1/hunts/{id}")).map(|v| hunt_hosts(&v).iter().all(|(_, s)| s == "done")).unwrap_or(false);
    assert!(wait_until(Duration::from_secs(30), done), "{}", fleet.admin.get(&format!("/api/v1/hunts/{id}")).unwrap());
    let merged = client::merge_hunt(&fleet.admin.get(&format!("/api/v1/hunts/{id}")).unwrap());
    let rows: Vec<(String, u64)> = merged["rows"].as_array().unwrap().iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap())).collect();
    assert_eq!(rows, vec![(a.host_id.clone(), 2), (b.host_id.clone(), 5)], "{merged}");

    // Hostile: a wait out of range, a hunt that does not exist, an id that is not one.
    let bad = HuntRequest { until_secs: Some(0), ..q };
    let e = fleet.admin.post("/api/v1/query", &client::query_request(&key, &hosts, &bad).unwrap()).unwrap_err();
    assert!(matches!(&e, ClientError::Refused { status: 400, message } if message.contains("until_secs 0")), "{e}");
    let e = fleet.admin.get("/api/v1/hunts/00112233aabbccdd").unwrap_err();
    assert!(matches!(&e, ClientError::Refused { status: 404, .. }), "{e}");
    let e = fleet.admin.get("/api/v1/hunts/..%2f..").unwrap_err();
    assert!(matches!(&e, ClientError::Refused { status: 400, .. }), "{e}");
    link_a.stop();
    link_b.stop();
}
