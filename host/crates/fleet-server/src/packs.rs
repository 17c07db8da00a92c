//! Pack rollout: the server keeps a published pack's bytes in the
//! `EDR_PACKS` stream (chunks on `edr.pack.<sha256>.<n>`), relays one
//! operator-signed `pack_install` per target host, and answers the hosts'
//! chunk requests on `edr.host.<id>.pack.get` (only for a host the rollout
//! targets). The host checks size and sha256 against the signed command and
//! its pack manager verifies the publisher's signature: the server vouches
//! for nothing. Per-host outcomes are `EDR_SERVER` events, so the index is
//! rebuilt with them; status is cross-checked with each host's heartbeat.
//!
//! | method, path | role | what |
//! |---|---|---|
//! | `POST /api/v1/packs` | admin | `{"archive_base64", "commands": [SignedCommand]}`: one signed `pack_install` per target; the rollout starts |
//! | `GET /api/v1/packs` | viewer | every rollout with per-state counts |
//! | `GET /api/v1/packs/{name}` | viewer | the newest rollout of pack `name`, each host's state |
//! | `POST /api/v1/packs/{name}/halt` | responder | hosts not yet reached get nothing |
//! | `POST /api/v1/packs/{name}/rollback` | admin | `{"commands": [SignedCommand]}`: one signed `pack_rollback` per host; halts first |

use crate::api::{authorize, ok, parse_body, relay, ApiError, ApiResult, AppState};
use crate::api_auth::Role;
use crate::error::FleetError;
use async_nats::jetstream::stream;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use edr_fleet_proto::command::{Command, CommandBody, SignedCommand, PACK_MAX_BYTES};
use edr_fleet_proto::msg::{self, Change, PackChunkReply, PackChunkRequest};
use edr_fleet_proto::subjects;
use futures_util::StreamExt;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;

/// The index's rollout tables (a cache of the `pack_*` server events).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pack_rollouts (name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    chunks INTEGER NOT NULL, actor TEXT NOT NULL, published_at INTEGER NOT NULL, halted INTEGER NOT NULL DEFAULT 0,
    rolled_back INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS pack_hosts (name TEXT NOT NULL, version TEXT NOT NULL, host_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, time INTEGER NOT NULL, PRIMARY KEY (name, version, host_id));
";

/// How long the server waits for one host's install (fetch, verify, stage, canary).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Hosts installing at once.
const CONCURRENT_HOSTS: usize = 8;
/// The most hosts one rollout reaches.
const MAX_TARGETS: usize = 10_000;

/// Applies a pack event to the index (inside the index's transaction).
pub(crate) fn apply(tx: &Connection, time: u64, actor: &str, change: &Change) -> rusqlite::Result<usize> {
    let t = time.min(i64::MAX as u64) as i64;
    match change {
        Change::PackPublished { name, version, sha256, size, chunks, targets } => {
            tx.execute(
                "INSERT OR REPLACE INTO pack_rollouts (name, version, sha256, size, chunks, actor, published_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![name, version, sha256, *size as i64, *chunks as i64, actor, t],
            )?;
            for h in targets {
                tx.execute(
                    "INSERT OR REPLACE INTO pack_hosts (name, version, host_id, state, reason, time) VALUES (?1, ?2, ?3, 'pending', '', ?4)",
                    params![name, version, h, t],
                )?;
            }
            Ok(1)
        }
        Change::PackHost { name, version, host_id, state, reason } => tx.execute(
            "INSERT OR REPLACE INTO pack_hosts (name, version, host_id, state, reason, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, version, host_id, state, reason, t],
        ),
        Change::PackHalted { name, version, rollback } => tx.execute(
            "UPDATE pack_rollouts SET halted = 1, rolled_back = max(rolled_back, ?3) WHERE name = ?1 AND version = ?2",
            params![name, version, *rollback as i64],
        ),
        _ => Ok(0),
    }
}

/// The routes, merged into the API's router.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/packs", post(publish).get(list))
        .route("/api/v1/packs/{name}", get(status))
        .route("/api/v1/packs/{name}/halt", post(halt))
        .route("/api/v1/packs/{name}/rollback", post(rollback))
        // A pack is at most 64 MiB, base64 in JSON.
        .layer(DefaultBodyLimit::max((PACK_MAX_BYTES as usize) * 4 / 3 + (4 << 20)))
}

/// One rollout as the index holds it.
struct Rollout {
    version: String,
    sha256: String,
    size: u64,
    chunks: u64,
    halted: bool,
}

fn newest_rollout(s: &AppState, name: &str) -> Result<Option<Rollout>, FleetError> {
    s.index.with_conn("read rollout", |c| {
        c.query_row(
            "SELECT version, sha256, size, chunks, halted FROM pack_rollouts WHERE name = ?1 ORDER BY published_at DESC, rowid DESC LIMIT 1",
            [name],
            |r| Ok(Rollout { version: r.get(0)?, sha256: r.get(1)?, size: r.get::<_, i64>(2)? as u64, chunks: r.get::<_, i64>(3)? as u64, halted: r.get(4)? }),
        )
        .optional()
    })
}

fn unknown_pack(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_pack", format!("no rollout of pack {name:?} on this server: see `edr fleet pack status`"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    archive_base64: String,
    commands: Vec<SignedCommand>,
}

/// What every command of one publish must agree on.
#[derive(PartialEq, Clone)]
struct PackFacts {
    name: String,
    version: String,
    sha256: String,
    size: u64,
}

/// Checks the signed commands: each a `pack_install` of the same pack for a
/// host of this fleet, each host once.
fn check_installs(s: &AppState, commands: &[SignedCommand]) -> Result<(PackFacts, Vec<String>), ApiError> {
    if commands.is_empty() || commands.len() > MAX_TARGETS {
        return Err(ApiError::bad(format!("give 1 to {MAX_TARGETS} signed pack_install commands, one per host")));
    }
    let mut facts = None;
    let mut hosts = Vec::new();
    for signed in commands {
        let body: CommandBody =
            serde_json::from_str(&signed.body).map_err(|e| ApiError::bad(format!("a signed body is not a command this server knows: {e}")))?;
        let Command::PackInstall { name, version, sha256, size, .. } = body.command else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("`{}` is not a pack_install: this endpoint relays only pack_install", body.command.op()),
            ));
        };
        let these = PackFacts { name, version, sha256, size };
        if facts.get_or_insert_with(|| these.clone()) != &these {
            return Err(ApiError::bad("the signed commands name different packs: one publish is one pack version"));
        }
        if !s.index.has_host(&body.host_id)? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_host", format!("no host {:?} in this fleet: see `edr fleet hosts`", body.host_id)));
        }
        if hosts.contains(&body.host_id) {
            return Err(ApiError::bad(format!("host {} is given twice", body.host_id)));
        }
        hosts.push(body.host_id);
    }
    Ok((facts.unwrap_or_else(|| unreachable!("at least one command")), hosts))
}

/// Stores the archive's chunks in `EDR_PACKS`; returns how many.
async fn store_chunks(s: &AppState, sha256: &str, archive: &[u8]) -> Result<u64, FleetError> {
    let cfg = stream::Config {
        name: subjects::STREAM_PACKS.into(),
        subjects: vec![subjects::PACKS_FILTER.into()],
        max_messages_per_subject: 1,
        ..Default::default()
    };
    s.bus.js.get_or_create_stream(cfg).await.map_err(|e| FleetError::nats("stream EDR_PACKS", e))?;
    let mut n = 0u64;
    for chunk in archive.chunks(subjects::PACK_CHUNK_BYTES) {
        let ack =
            s.bus.js.publish(subjects::pack_chunk(sha256, n), Bytes::copy_from_slice(chunk)).await.map_err(|e| FleetError::nats("storing a pack chunk", e))?;
        ack.await.map_err(|e| FleetError::nats("pack chunk not acknowledged", e))?;
        n += 1;
    }
    Ok(n)
}

async fn publish(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Admin)?;
    let req: PublishRequest = parse_body(&body)?;
    let archive =
        base64::engine::general_purpose::STANDARD.decode(&req.archive_base64).map_err(|e| ApiError::bad(format!("archive_base64 is not base64: {e}")))?;
    if archive.is_empty() || archive.len() as u64 > PACK_MAX_BYTES {
        return Err(ApiError::bad(format!("the archive is {} bytes: give 1 to {PACK_MAX_BYTES}", archive.len())));
    }
    let (facts, hosts) = check_installs(&s, &req.commands)?;
    let sha = hex::encode(sha2::Sha256::digest(&archive));
    if sha != facts.sha256 || archive.len() as u64 != facts.size {
        return Err(ApiError::bad(format!(
            "the archive ({} bytes, sha256 {sha}) is not the one the commands are signed for ({} bytes, sha256 {})",
            archive.len(),
            facts.size,
            facts.sha256
        )));
    }
    let chunks = store_chunks(&s, &sha, &archive).await?;
    let change = Change::PackPublished {
        name: facts.name.clone(),
        version: facts.version.clone(),
        sha256: sha.clone(),
        size: facts.size,
        chunks,
        targets: hosts.clone(),
    };
    s.bus.record(&s.index, &who.name, change).await?;
    tracing::info!(pack = %facts.name, version = %facts.version, hosts = hosts.len(), "pack rollout started");
    let targets: Vec<(String, SignedCommand)> = hosts.iter().cloned().zip(req.commands).collect();
    tokio::spawn(roll_out(s.clone(), who.name, facts.name.clone(), facts.version.clone(), targets));
    ok(json!({"name": facts.name, "version": facts.version, "sha256": sha, "size": facts.size, "chunks": chunks, "targets": hosts}))
}

/// What a host's answer to a pack command means for the rollout.
fn outcome(status: &str, result: Option<&edr_fleet_proto::command::CommandResult>, rollback: bool) -> (String, String) {
    let why = |k: &str| result.and_then(|r| r.output.get(k)).and_then(Value::as_str).unwrap_or_default().to_string();
    match (status, rollback) {
        ("done", false) => (result.and_then(|r| r.output["state"].as_str()).unwrap_or("staged").to_string(), String::new()),
        ("done", true) => ("rolled_back".into(), String::new()),
        ("failed", false) => ("refused".into(), why("error")),
        ("refused", false) => ("refused".into(), why("reason")),
        ("failed", true) => ("rollback_failed".into(), why("error")),
        ("refused", true) => ("rollback_failed".into(), why("reason")),
        _ => ("no_answer".into(), format!("no answer within {} s", if rollback { 30 } else { INSTALL_TIMEOUT.as_secs() })),
    }
}

/// Relays one pack command, audits it and records the host's outcome.
async fn reach_host(s: &AppState, who: &str, name: &str, version: &str, host: &str, signed: &SignedCommand, rollback: bool) -> Value {
    let timeout = if rollback { Duration::from_secs(30) } else { INSTALL_TIMEOUT };
    let (status, result) = relay(s, host, signed, timeout).await;
    if let Ok(parsed) = serde_json::from_str::<CommandBody>(&signed.body) {
        if let Err(e) = crate::api::record_command(s, who, host, &parsed, signed, status.clone(), result.as_ref()).await {
            tracing::error!(host, "cannot audit a pack command: {e:?}");
        }
    }
    let (state, reason) = outcome(&status, result.as_ref(), rollback);
    let change = Change::PackHost { name: name.into(), version: version.into(), host_id: host.into(), state: state.clone(), reason: reason.clone() };
    if let Err(e) = s.bus.record(&s.index, who, change).await {
        tracing::error!(host, "cannot record a host's pack state: {e}");
    }
    json!({"host": host, "state": state, "reason": reason})
}

fn is_halted(s: &AppState, name: &str, version: &str) -> bool {
    s.index
        .with_conn("read rollout", |c| {
            c.query_row("SELECT halted FROM pack_rollouts WHERE name = ?1 AND version = ?2", params![name, version], |r| r.get::<_, bool>(0))
        })
        .unwrap_or(true)
}

/// Sends each target its signed install, a few at a time; a halted rollout sends no more.
async fn roll_out(s: Arc<AppState>, who: String, name: String, version: String, targets: Vec<(String, SignedCommand)>) {
    let (s, who, name, version) = (&s, &who, &name, &version);
    futures_util::stream::iter(targets)
        .map(|(host, signed)| async move {
            if is_halted(s, name, version) {
                tracing::info!(pack = %name, %version, host, "rollout halted: not sent");
                return;
            }
            reach_host(s, who, name, version, &host, &signed, false).await;
        })
        .buffer_unordered(CONCURRENT_HOSTS)
        .collect::<Vec<()>>()
        .await;
    tracing::info!(pack = %name, %version, "pack rollout finished");
}

/// Each host of the rollout: its recorded state, cross-checked with its heartbeat.
fn host_states(s: &AppState, name: &str, version: &str) -> Result<Vec<Value>, FleetError> {
    let rows: Vec<(String, String, String, i64)> = s.index.with_conn("read rollout hosts", |c| {
        let mut st = c.prepare("SELECT host_id, state, reason, time FROM pack_hosts WHERE name = ?1 AND version = ?2 ORDER BY host_id")?;
        let rows = st.query_map(params![name, version], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect()
    })?;
    let hosts = s.index.hosts(edr_fleet_proto::now_secs())?;
    Ok(rows
        .into_iter()
        .map(|(host, state, reason, time)| {
            let hb = hosts.iter().find(|h| h.host_id == host).and_then(|h| h.heartbeat.clone()).unwrap_or(Value::Null);
            let running = hb["packs"].as_array().into_iter().flatten().find(|p| p["id"] == name).and_then(|p| p["version"].as_str()).map(String::from);
            // The heartbeat is the host's own word on what runs: staged becomes active once it shows the version.
            let shown = if matches!(state.as_str(), "staged" | "active") && running.as_deref() == Some(version) { "active".to_string() } else { state };
            json!({"host": host, "state": shown, "reason": reason, "time": time, "heartbeat_version": running})
        })
        .collect())
}

async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let r = newest_rollout(&s, &name)?.ok_or_else(|| unknown_pack(&name))?;
    let hosts = host_states(&s, &name, &r.version)?;
    ok(json!({"name": name, "version": r.version, "sha256": r.sha256, "size": r.size, "chunks": r.chunks, "halted": r.halted, "hosts": hosts}))
}

async fn list(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let rollouts: Vec<(String, String, bool, bool, i64)> = s.index.with_conn("list rollouts", |c| {
        let mut st = c.prepare("SELECT name, version, halted, rolled_back, published_at FROM pack_rollouts ORDER BY published_at DESC, rowid DESC")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        rows.collect()
    })?;
    let mut out = Vec::new();
    for (name, version, halted, rolled_back, at) in rollouts {
        let mut counts = serde_json::Map::new();
        for h in host_states(&s, &name, &version)? {
            let k = h["state"].as_str().unwrap_or("").to_string();
            let n = counts.get(&k).and_then(Value::as_u64).unwrap_or(0) + 1;
            counts.insert(k, n.into());
        }
        out.push(json!({"name": name, "version": version, "halted": halted, "rolled_back": rolled_back, "published_at": at, "states": counts}));
    }
    ok(json!({"packs": out}))
}

async fn halt(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let who = authorize(&s, &headers, Role::Responder)?;
    let r = newest_rollout(&s, &name)?.ok_or_else(|| unknown_pack(&name))?;
    s.bus.record(&s.index, &who.name, Change::PackHalted { name: name.clone(), version: r.version.clone(), rollback: false }).await?;
    ok(json!({"name": name, "version": r.version, "halted": true}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    commands: Vec<SignedCommand>,
}

async fn rollback(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Admin)?;
    let req: RollbackRequest = parse_body(&body)?;
    let r = newest_rollout(&s, &name)?.ok_or_else(|| unknown_pack(&name))?;
    let mut targets = Vec::new();
    for signed in &req.commands {
        let b: CommandBody = serde_json::from_str(&signed.body).map_err(|e| ApiError::bad(format!("a signed body is not a command this server knows: {e}")))?;
        match &b.command {
            Command::PackRollback { name: n, version } if *n == name && *version == r.version => targets.push(b.host_id),
            other => {
                return Err(ApiError::bad(format!("expected pack_rollback of {name} {} for each host, got `{}`", r.version, other.op())));
            }
        }
    }
    s.bus.record(&s.index, &who.name, Change::PackHalted { name: name.clone(), version: r.version.clone(), rollback: true }).await?;
    let answers =
        futures_util::future::join_all(targets.iter().zip(&req.commands).map(|(h, c)| reach_host(&s, &who.name, &name, &r.version, h, c, true))).await;
    ok(json!({"name": name, "version": r.version, "hosts": answers}))
}

/// Answers the hosts' chunk requests until the connection ends (a queue
/// group: several server processes share them).
pub(crate) fn serve_chunks(s: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match s.bus.client.queue_subscribe(subjects::PACK_GET_FILTER, "edr-server-packs".into()).await {
                Ok(mut sub) => {
                    while let Some(m) = sub.next().await {
                        tokio::spawn(answer_chunk(s.clone(), m));
                    }
                }
                Err(e) => tracing::warn!("cannot subscribe to pack chunk requests: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn answer_chunk(s: Arc<AppState>, m: async_nats::Message) {
    let Some(reply) = m.reply.clone() else { return };
    let answer = match chunk_for(&s, &m).await {
        Ok((data, chunks)) => {
            PackChunkReply { v: edr_fleet_proto::PROTO_VERSION, data: base64::engine::general_purpose::STANDARD.encode(data), chunks, error: None }
        }
        Err(e) => {
            tracing::warn!(subject = %m.subject, "pack chunk refused: {e}");
            PackChunkReply { v: edr_fleet_proto::PROTO_VERSION, data: String::new(), chunks: 0, error: Some(e) }
        }
    };
    if let Err(e) = s.bus.client.publish(reply, serde_json::to_vec(&answer).unwrap_or_default().into()).await {
        tracing::warn!("cannot answer a pack chunk request: {e}");
    }
}

/// The chunk a host asked for, when the host is a target of a rollout of that pack.
async fn chunk_for(s: &AppState, m: &async_nats::Message) -> Result<(Bytes, u64), String> {
    let host = m.subject.as_str().split('.').nth(2).filter(|h| subjects::valid_host_id(h)).ok_or("not a host's subject")?.to_string();
    let req: PackChunkRequest = msg::decode(&m.payload).map_err(|e| e.to_string())?;
    let chunks: Option<i64> = s
        .index
        .with_conn("read rollout", |c| {
            c.query_row(
                "SELECT r.chunks FROM pack_rollouts r JOIN pack_hosts h ON h.name = r.name AND h.version = r.version WHERE r.sha256 = ?1 AND h.host_id = ?2 LIMIT 1",
                params![req.sha256, host],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(|e| e.to_string())?;
    let chunks = chunks.ok_or_else(|| format!("host {host} is not a target of a rollout of pack {}", req.sha256.chars().take(64).collect::<String>()))? as u64;
    if req.index >= chunks {
        return Err(format!("pack {} has {chunks} chunks; {} asked for", req.sha256, req.index));
    }
    let stream = s.bus.js.get_stream(subjects::STREAM_PACKS).await.map_err(|e| format!("stream EDR_PACKS: {e}"))?;
    let msg = stream.get_last_raw_message_by_subject(&subjects::pack_chunk(&req.sha256, req.index)).await.map_err(|e| format!("chunk {}: {e}", req.index))?;
    Ok((msg.payload, chunks))
}
