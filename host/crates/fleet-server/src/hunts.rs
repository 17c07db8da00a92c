//! Fleet hunts that wait for offline hosts (`edr fleet query --until`).
//!
//! A hunt with `until_secs` gets an id. The hosts that answer at once are
//! answered as usual; each host that does not (offline, or no answer in
//! time) has its signed `query` queued ([`crate::queue`]): the dispatcher
//! sends it when the host is back, until the command's own signed expiry.
//! Every answer, live or late, is kept in the JetStream object store bucket
//! [`BUCKET`] under the command's id, and the hunt itself (which host got
//! which command) under `hunt-<id>`; `GET /api/v1/hunts/{id}` (viewer)
//! answers in the shape of `POST /api/v1/query`, each host `done`,
//! `failed`, `refused` as it answered, or still `queued` / `expired`.
//! Nothing is kept on the server's disk but the queue's index rows, which
//! are rebuilt from the streams.

use crate::api::{authorize, ok, ApiError, ApiResult, AppState};
use crate::api_auth::Role;
use async_nats::jetstream::object_store::ObjectStore;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use edr_fleet_proto::command::CommandResult;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// The object store bucket of hunt answers.
pub const BUCKET: &str = "EDR_HUNTS";
/// The longest a hunt may wait for hosts (the signed commands' own limit).
pub const UNTIL_MAX_SECS: u64 = edr_fleet_proto::command::MAX_LIFETIME_SECS;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/hunts/{id}", get(status))
}

/// One hunt: who got which command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hunt {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) until: u64,
    pub(crate) actor: String,
    /// (host, command id), in the order asked.
    pub(crate) hosts: Vec<(String, String)>,
}

async fn bucket(s: &AppState) -> Result<ObjectStore, String> {
    s.bus.object_bucket(BUCKET, "fleet hunt answers (edr fleet query --until)").await
}

async fn put_json(s: &AppState, name: &str, v: &impl Serialize) -> Result<(), String> {
    let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    bucket(s).await?.put(name, &mut bytes.as_slice()).await.map(|_| ()).map_err(|e| format!("cannot keep {name} in {BUCKET}: {e}"))
}

async fn get_json(store: &ObjectStore, name: &str) -> Option<Value> {
    let mut object = store.get(name).await.ok()?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps the hunt's plan.
pub(crate) async fn record(s: &AppState, hunt: &Hunt) -> Result<(), String> {
    put_json(s, &format!("hunt-{}", hunt.id), hunt).await
}

/// Keeps one host's answer to a hunt's command (live or delivered from the queue).
pub(crate) async fn keep_answer(s: &AppState, result: &CommandResult) {
    let answer = json!({"host": result.host_id, "status": result.status, "output": result.output});
    if let Err(e) = put_json(s, &format!("answer-{}", result.command_id), &answer).await {
        tracing::warn!(command_id = %result.command_id, "hunt answer not kept: {e}");
    }
}

async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad(format!("{id:?} is not a hunt id (hex, as `edr fleet query --until` printed it)")));
    }
    let store = bucket(&s).await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "nats", e))?;
    let Some(plan) = get_json(&store, &format!("hunt-{id}")).await else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no hunt {id}")));
    };
    let plan: Hunt = serde_json::from_value(plan).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "damaged", format!("hunt {id}: {e}")))?;
    let now = edr_fleet_proto::now_secs();
    let queued = crate::queue::list(&s.index, None, 10_000, now)?;
    let mut hosts = Vec::with_capacity(plan.hosts.len());
    for (host, command_id) in &plan.hosts {
        if let Some(answer) = get_json(&store, &format!("answer-{command_id}")).await {
            hosts.push(answer);
            continue;
        }
        let state = queued.iter().find(|q| q["command_id"] == command_id.as_str()).and_then(|q| q["state"].as_str()).unwrap_or("no_answer").to_string();
        hosts.push(json!({"host": host, "status": state, "output": {"reason": format!("waiting for the host until {}", plan.until)}}));
    }
    ok(json!({"hunt_id": plan.id, "created": plan.created, "until": plan.until, "actor": plan.actor, "hosts": hosts}))
}
