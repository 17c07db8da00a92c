//! Fetched files, kept at the centre: when a host answers a `fetch` with
//! the file's content, the server checks the content against the sha256 the
//! host reported and puts it into the JetStream object store bucket
//! [`BUCKET`] as `<host id>/<command id>` (metadata: host, command, path,
//! sha256, who asked). The answer then names the object and where to
//! download it; the content stays in the answer too (the CLI and the
//! console check and save it at once). Nothing is kept on the server's
//! disk: the object store is the evidence locker, replicated when the
//! NATS cluster has replicas.
//!
//! | method, path | role | what |
//! |---|---|---|
//! | `GET /api/v1/evidence` | responder | every kept file: object, host, command, path, size, sha256, time |
//! | `GET /api/v1/evidence/{host}/{command}` | responder | the file's bytes (`x-edr-sha256` says their hash, checked again on the way out) |

use crate::api::{authorize, ok, ApiError, ApiResult, AppState};
use crate::api_auth::Role;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use edr_fleet_proto::command::{Command, CommandBody, CommandResult};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// The object store bucket of fetched files.
pub const BUCKET: &str = "EDR_EVIDENCE";

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/evidence", get(list)).route("/api/v1/evidence/{host}/{command}", get(download))
}

async fn bucket(s: &AppState) -> Result<ObjectStore, String> {
    s.bus.object_bucket(BUCKET, "files fetched from hosts (edr fleet fetch)").await
}

/// The object name of one fetch.
fn object_name(host: &str, command_id: &str) -> String {
    format!("{host}/{command_id}")
}

/// Keeps the content of a done `fetch` in the evidence bucket and adds
/// `evidence` (object, download path) to the answer; a content whose hash
/// differs from the host's claim is not kept and `evidence_error` says so.
pub(crate) async fn keep(s: &AppState, who: &str, host: &str, parsed: &CommandBody, result: &mut CommandResult) {
    let Command::Fetch { path } = &parsed.command else { return };
    if result.status != "done" {
        return;
    }
    let Some(content) = result.output.get("content_base64").and_then(Value::as_str) else { return };
    let note = match store(s, who, host, parsed, path, content, &result.output).await {
        Ok(evidence) => ("evidence", evidence),
        Err(e) => {
            tracing::warn!(host, command_id = %parsed.command_id, "evidence not kept: {e}");
            ("evidence_error", Value::String(e))
        }
    };
    if let Some(o) = result.output.as_object_mut() {
        o.insert(note.0.into(), note.1);
    }
}

async fn store(s: &AppState, who: &str, host: &str, parsed: &CommandBody, path: &str, content: &str, output: &Value) -> Result<Value, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(content).map_err(|e| format!("the host's content is not base64: {e}"))?;
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let claimed = output.get("sha256").and_then(Value::as_str).unwrap_or("");
    if sha256 != claimed {
        return Err(format!("the content hashes to {sha256}, the host said {claimed:?}: not kept"));
    }
    let name = object_name(host, &parsed.command_id);
    let metadata = HashMap::from([
        ("host".to_string(), host.to_string()),
        ("command_id".to_string(), parsed.command_id.clone()),
        ("path".to_string(), path.to_string()),
        ("sha256".to_string(), sha256.clone()),
        ("fetched_by".to_string(), who.to_string()),
        ("reason".to_string(), parsed.reason.clone()),
    ]);
    let meta = ObjectMetadata { name: name.clone(), description: Some(format!("{path} from host {host}")), metadata, ..Default::default() };
    bucket(s).await?.put(meta, &mut bytes.as_slice()).await.map_err(|e| format!("cannot put {name} into {BUCKET}: {e}"))?;
    Ok(json!({
        "bucket": BUCKET,
        "object": name,
        "sha256": sha256,
        "size": bytes.len(),
        "download": format!("/api/v1/evidence/{host}/{}", parsed.command_id),
    }))
}

async fn list(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Responder)?;
    let store = bucket(&s).await.map_err(unavailable)?;
    let mut objects = store.list().await.map_err(|e| unavailable(format!("cannot list {BUCKET}: {e}")))?;
    let mut out = Vec::new();
    while let Some(info) = objects.next().await {
        let info = info.map_err(|e| unavailable(format!("listing {BUCKET}: {e}")))?;
        let m = |k: &str| info.metadata.get(k).cloned().unwrap_or_default();
        out.push(json!({
            "object": info.name,
            "host": m("host"),
            "command_id": m("command_id"),
            "path": m("path"),
            "sha256": m("sha256"),
            "fetched_by": m("fetched_by"),
            "reason": m("reason"),
            "size": info.size,
            "time": info.modified.map(|t| t.unix_timestamp()),
        }));
    }
    ok(json!({"evidence": out}))
}

async fn download(State(s): State<Arc<AppState>>, headers: HeaderMap, Path((host, command)): Path<(String, String)>) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Responder)?;
    let name = object_name(&host, &command);
    let store = bucket(&s).await.map_err(unavailable)?;
    let mut object = store
        .get(&name)
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no evidence {name} ({e}): see `edr fleet evidence list`")))?;
    let want = object.info().metadata.get("sha256").cloned().unwrap_or_default();
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.map_err(|e| unavailable(format!("reading {name}: {e}")))?;
    let got = hex::encode(sha2::Sha256::digest(&bytes));
    if got != want {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "evidence_damaged",
            format!("{name} hashes to {got}, it was kept as {want}: the stored copy is damaged"),
        ));
    }
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&got) {
        h.insert("x-edr-sha256", v);
    }
    Ok(resp)
}

fn unavailable(e: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "nats", e)
}
