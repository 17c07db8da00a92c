//! The central record: every host's events, kept at the centre and
//! searchable with the same views as the host's own record, also when the
//! host is offline, wiped or compromised.
//!
//! * **Ingest.** A durable consumer (`<prefix>-central`) on `EDR_EVENTS`
//!   reads each host's event batches ([`edr_fleet_proto::central`]) and
//!   appends their events to that host's store, `DIR/central/<host>.db`: an
//!   `edr-store` record like the agent's (same tables, views, storyline and
//!   timeline), partitioned by host. A batch is acknowledged only after its
//!   events are committed there; a redelivery is recognised by its sequence
//!   and skipped, so nothing is lost and nothing is stored twice.
//! * **Alerts too.** A second consumer (`<prefix>-central-alerts`) on
//!   `EDR_ALERTS` records each host's alerts in its central store (rebuilt
//!   from their ECS documents: rule, severity, techniques, author, the event
//!   ids they name), so an alert's storyline is answered at the centre.
//! * **Tamper evidence.** Each host's chain (last sequence, hash, event id)
//!   is kept in `DIR/central/chain.db`, with every batch's hash. A batch
//!   that does not verify, skips sequences, names another previous hash,
//!   goes back in event ids, or repeats a sequence with other content (the
//!   host's record or cursor was reset) is a break: it is recorded on the host (`GET /api/v1/central`) and reported
//!   as an alert on that host (`edr.central.record-chain-broken`, through
//!   `EDR_ALERTS`, so it reaches the index, the console and the
//!   notifications like any alert). Its events are still kept (nothing the
//!   host sent is dropped), and the chain continues from it.
//! * **Never rewritten by a host.** `EDR_EVENTS` denies deletes and purges;
//!   hosts can only publish new batches on their own subject, and the
//!   centre only appends.
//! * **Rebuildable.** The stores derive from the stream: `edr server run
//!   --rebuild-index` deletes them and reads `EDR_EVENTS` again from its start.
//!
//! | method, path | role | what |
//! |---|---|---|
//! | `GET /api/v1/central` | viewer | per host: batches, events, last event id, chain `intact` or the break |
//! | `GET /api/v1/central/{host}/storyline/{alert}` | viewer | the alert's storyline from the central store (`edr storyline --json`'s document) |
//! | `POST /api/v1/central/query` | viewer | `{"sql", "hosts": [..] (default all), "limit"}`: one read-only SELECT over each host's central store; answers as `POST /api/v1/query` does, with `"source": "centre"` |

use crate::api::{authorize, ok, parse_body, ApiError, ApiResult, AppState};
use crate::api_auth::Role;
use crate::error::FleetError;
use crate::pull::Handled;
use async_nats::jetstream;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use edr_fleet_proto::central::{self, EventBatch, Link};
use edr_fleet_proto::msg::AlertMessage;
use edr_fleet_proto::subjects;
use edr_store::{Store, StoreConfig};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Alert ids the centre gives its own alerts on a host start here (hosts count from 1).
pub const CENTRAL_ALERT_ID_BASE: u64 = 1 << 62;
/// The rule of a chain break.
pub const CHAIN_RULE: &str = "edr.central.record-chain-broken";

const CHAIN_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chain (
    host_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL, last_id INTEGER NOT NULL,
    batches INTEGER NOT NULL, events INTEGER NOT NULL, breaks INTEGER NOT NULL DEFAULT 0, last_break TEXT, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (host_id TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (host_id, seq)) WITHOUT ROWID";

/// The central stores and the chains.
pub struct Central {
    dir: PathBuf,
    max_age: Option<std::time::Duration>,
    chain: Mutex<Connection>,
    stores: Mutex<HashMap<String, Arc<Store>>>,
}

impl std::fmt::Debug for Central {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Central").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A host's chain as kept.
struct Chain {
    seq: u64,
    hash: String,
    last_id: u64,
}

impl Central {
    /// Opens (or, with `fresh`, first deletes) the central stores under `dir`;
    /// each host's store drops events older than `max_age` (by the event's
    /// time), as `EDR_EVENTS` drops its batches (`[streams]`).
    ///
    /// # Errors
    /// When the directory or the chain database cannot be made.
    pub fn open(dir: &Path, fresh: bool, max_age: Option<std::time::Duration>) -> Result<Central, FleetError> {
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| FleetError::Io { what: format!("removing {} to rebuild it", dir.display()), source: e })?;
        }
        std::fs::create_dir_all(dir).map_err(|e| FleetError::Io { what: format!("creating {}", dir.display()), source: e })?;
        let conn = Connection::open(dir.join("chain.db")).map_err(FleetError::index("open central/chain.db"))?;
        conn.execute_batch(CHAIN_SCHEMA).map_err(FleetError::index("create the chain table"))?;
        Ok(Central { dir: dir.to_path_buf(), max_age, chain: Mutex::new(conn), stores: Mutex::new(HashMap::new()) })
    }

    fn store(&self, host: &str) -> Result<Arc<Store>, String> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(host) {
            return Ok(s.clone());
        }
        // Small caches: one store per host, many hosts.
        let cfg = StoreConfig { writer_cache_bytes: 4 << 20, max_age: self.max_age, ..StoreConfig::new(self.dir.join(format!("{host}.db"))) };
        let s = Arc::new(Store::open(cfg).map_err(|e| format!("central store of {host}: {e}"))?);
        stores.insert(host.to_string(), s.clone());
        Ok(s)
    }

    fn chain_of(&self, host: &str) -> Result<Option<Chain>, String> {
        let conn = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT seq, hash, last_id FROM chain WHERE host_id = ?1", params![host], |r| {
            Ok(Chain { seq: r.get::<_, i64>(0)? as u64, hash: r.get(1)?, last_id: r.get::<_, i64>(2)? as u64 })
        })
        .optional()
        .map_err(|e| format!("reading the chain of {host}: {e}"))
    }

    fn hash_of(&self, host: &str, seq: u64) -> Result<Option<String>, String> {
        let conn = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT hash FROM batches WHERE host_id = ?1 AND seq = ?2", params![host, seq as i64], |r| r.get(0))
            .optional()
            .map_err(|e| format!("reading batch {seq} of {host}: {e}"))
    }

    fn advance(&self, b: &EventBatch, broken: Option<&str>) -> Result<(), String> {
        let conn = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("INSERT OR REPLACE INTO batches (host_id, seq, hash) VALUES (?1, ?2, ?3)", params![b.host_id, b.seq as i64, b.hash])
            .map_err(|e| format!("recording batch {} of {}: {e}", b.seq, b.host_id))?;
        conn.execute(
            "INSERT INTO chain (host_id, seq, hash, last_id, batches, events, breaks, last_break, updated_at) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8)
             ON CONFLICT(host_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, last_id = excluded.last_id, batches = batches + 1,
               events = events + excluded.events, breaks = breaks + excluded.breaks, last_break = COALESCE(excluded.last_break, last_break), updated_at = excluded.updated_at",
            params![b.host_id, b.seq as i64, b.hash, b.last_id as i64, i64::from(b.count), i64::from(broken.is_some()), broken, edr_fleet_proto::now_secs() as i64],
        )
        .map(|_| ())
        .map_err(|e| format!("recording batch {} of {}: {e}", b.seq, b.host_id))
    }

    /// Applies one batch from `subject`; `Ok(Some(why))` when it broke the chain.
    fn apply(&self, subject: &str, payload: &[u8]) -> Result<Option<(EventBatch, String)>, Apply> {
        let b: EventBatch = serde_json::from_slice(payload).map_err(|e| Apply::Refused(format!("not an event batch: {e}")))?;
        if subjects::host_of(subject) != Some(b.host_id.as_str()) {
            return Err(Apply::Refused(format!("batch names host {:?} but came on {subject}", b.host_id)));
        }
        let chain = self.chain_of(&b.host_id).map_err(Apply::Retry)?;
        let verdict = match &chain {
            // A sequence already received: a redelivery only if it is the same batch.
            Some(c) if b.seq <= c.seq => match self.hash_of(&b.host_id, b.seq).map_err(Apply::Retry)? {
                Some(h) if h == b.hash => Link::Seen,
                first => Link::Broken(format!(
                    "batch {} arrived again with other content (hash {}, first received as {}): the host's record or its cursor was reset or rewritten",
                    b.seq,
                    b.hash,
                    first.as_deref().unwrap_or("unknown")
                )),
            },
            _ => central::judge(&b, chain.as_ref().map(|c| (c.seq, c.hash.as_str(), c.last_id))),
        };
        let broken = match verdict {
            Link::Seen => return Ok(None),
            Link::Next => None,
            Link::Broken(why) => Some(why),
        };
        // A broken batch's events are kept too, when they can be read at all.
        match central::batch_events(&b) {
            Ok(events) => {
                let store = self.store(&b.host_id).map_err(Apply::Retry)?;
                store.writer().append_events(Arc::new(events)).map_err(|e| Apply::Retry(format!("central store of {}: {e:?}", b.host_id)))?;
                store.writer().flush().map_err(|e| Apply::Retry(format!("central store of {}: {e}", b.host_id)))?;
            }
            Err(e) if broken.is_some() => tracing::warn!(host = %b.host_id, "a broken batch's events cannot be read: {e}"),
            Err(e) => return Err(Apply::Refused(e)),
        }
        self.advance(&b, broken.as_deref()).map_err(Apply::Retry)?;
        Ok(broken.map(|why| (b, why)))
    }

    /// Records one alert (from `EDR_ALERTS`) in its host's central store.
    fn apply_alert(&self, subject: &str, payload: &[u8]) -> Result<(), Apply> {
        let m: AlertMessage = serde_json::from_slice(payload).map_err(|e| Apply::Refused(format!("not an alert: {e}")))?;
        if subjects::host_of(subject) != Some(m.host_id.as_str()) {
            return Err(Apply::Refused(format!("alert names host {:?} but came on {subject}", m.host_id)));
        }
        let store = self.store(&m.host_id).map_err(Apply::Retry)?;
        store.writer().append_alert(&alert_of(&m)).map_err(|e| Apply::Retry(format!("central store of {}: {e:?}", m.host_id)))?;
        store.writer().flush().map_err(|e| Apply::Retry(format!("central store of {}: {e}", m.host_id)))
    }

    /// Each host's chain and counts.
    fn status(&self) -> Result<Vec<Value>, String> {
        let conn = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare("SELECT host_id, seq, last_id, batches, events, breaks, last_break, updated_at FROM chain ORDER BY host_id")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                let breaks: i64 = r.get(5)?;
                let last: Option<String> = r.get(6)?;
                Ok(json!({
                    "host_id": r.get::<_, String>(0)?, "batches": r.get::<_, i64>(3)?, "events": r.get::<_, i64>(4)?,
                    "last_seq": r.get::<_, i64>(1)?, "last_event_id": r.get::<_, i64>(2)?, "updated_at": r.get::<_, i64>(7)?,
                    "chain": if breaks == 0 { "intact".to_string() } else { format!("broken {breaks} time(s); last: {}", last.unwrap_or_default()) },
                    "breaks": breaks,
                }))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    /// Hosts that have a central store.
    fn hosts(&self) -> Vec<String> {
        let conn = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(mut stmt) = conn.prepare("SELECT host_id FROM chain ORDER BY host_id") else { return Vec::new() };
        stmt.query_map([], |r| r.get(0)).map(|rows| rows.flatten().collect()).unwrap_or_default()
    }
}

enum Apply {
    Refused(String),
    Retry(String),
}

/// An alert as the host's record had it, rebuilt from its ECS document.
fn alert_of(m: &AlertMessage) -> edr_event::Alert {
    use edr_event::ecs::lookup;
    let text = |p: &str| lookup(&m.ecs, p).and_then(Value::as_str).unwrap_or("").to_string();
    let list = |p: &str| -> Vec<String> {
        lookup(&m.ecs, p).and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let evidence = lookup(&m.ecs, "edr.evidence")
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default();
    edr_event::Alert {
        id: m.alert_id,
        time: m.time,
        plugin: text("edr.plugin"),
        pack: None,
        finding: edr_event::Finding {
            rule_id: m.rule_id.clone(),
            title: m.rule_name.clone(),
            severity: m.severity.parse().unwrap_or(edr_event::Severity::Medium),
            techniques: list("threat.technique.id"),
            message: text("message"),
            author: list("rule.author").into_iter().next().unwrap_or_default(),
            event_ids: list("edr.event_ids").iter().filter_map(|s| s.parse().ok()).collect(),
            evidence,
        },
        event: None,
    }
}

/// Starts the ingest consumer.
///
/// # Errors
/// When the stream or the consumer cannot be reached or made.
pub async fn start(js: jetstream::Context, central: Arc<Central>, prefix: &str, fresh: bool) -> Result<tokio::task::JoinHandle<()>, FleetError> {
    let stream = js.get_stream(subjects::STREAM_EVENTS).await.map_err(|e| FleetError::nats("stream EDR_EVENTS", e))?;
    let name = format!("{prefix}-central");
    if fresh && stream.delete_consumer(&name).await.is_ok() {
        tracing::info!("central record: consumer reset, the stores are rebuilt from EDR_EVENTS");
    }
    let consumer = crate::pull::durable(&stream, &name, false).await?;
    let alerts_stream = js.get_stream(subjects::STREAM_ALERTS).await.map_err(|e| FleetError::nats("stream EDR_ALERTS", e))?;
    let alerts_name = format!("{prefix}-central-alerts");
    if fresh {
        let _ = alerts_stream.delete_consumer(&alerts_name).await;
    }
    let alerts = crate::pull::durable(&alerts_stream, &alerts_name, false).await?;
    let c = central.clone();
    let events = crate::pull::run(consumer, "central", move |m| {
        let (c, js, subject, payload) = (central.clone(), js.clone(), m.subject.to_string(), m.payload.to_vec());
        async move {
            match tokio::task::spawn_blocking(move || c.apply(&subject, &payload)).await.unwrap_or_else(|e| Err(Apply::Retry(e.to_string()))) {
                Ok(None) => Handled::Done,
                Ok(Some((batch, why))) => {
                    report_break(&js, &batch, &why).await;
                    Handled::Done
                }
                Err(e) => e.into(),
            }
        }
    });
    let alerts = crate::pull::run(alerts, "central-alerts", move |m| {
        let (c, subject, payload) = (c.clone(), m.subject.to_string(), m.payload.to_vec());
        async move {
            match tokio::task::spawn_blocking(move || c.apply_alert(&subject, &payload)).await.unwrap_or_else(|e| Err(Apply::Retry(e.to_string()))) {
                Ok(()) => Handled::Done,
                Err(e) => e.into(),
            }
        }
    });
    Ok(tokio::spawn(async move {
        tokio::join!(events, alerts);
    }))
}

impl From<Apply> for Handled {
    fn from(a: Apply) -> Handled {
        match a {
            Apply::Refused(why) => Handled::Dropped(why),
            Apply::Retry(e) => Handled::Retry(e),
        }
    }
}

/// A chain break, as an alert on the host (through `EDR_ALERTS`, so the index and notifications see it).
async fn report_break(js: &jetstream::Context, b: &EventBatch, why: &str) {
    tracing::error!(host = %b.host_id, seq = b.seq, "central record: chain broken: {why}");
    let now_ns = edr_fleet_proto::now_secs().saturating_mul(1_000_000_000);
    let message = format!("The central record of host {} broke at batch {}: {why}", b.host_id, b.seq);
    let ecs = json!({
        "@timestamp": now_ns / 1_000_000,
        "event": {"kind": "alert", "category": ["host"], "action": "central-record-chain-broken"},
        "rule": {"id": CHAIN_RULE, "name": "Central record chain broken", "description": "Events were deleted or rewritten on the host before forwarding, or a batch was lost or forged."},
        "message": message,
        "host": {"id": b.host_id},
        "edr": {"central": {"seq": b.seq, "first_id": b.first_id, "last_id": b.last_id, "reason": why}},
        "threat": {"technique": {"id": ["T1070"]}},
    });
    let alert = AlertMessage {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id: b.host_id.clone(),
        alert_id: CENTRAL_ALERT_ID_BASE + b.seq,
        time: now_ns,
        rule_id: CHAIN_RULE.into(),
        rule_name: "Central record chain broken".into(),
        severity: "high".into(),
        ecs,
    };
    let publish = jetstream::message::PublishMessage::build()
        .payload(serde_json::to_vec(&alert).unwrap_or_default().into())
        .message_id(subjects::alert_msg_id(&b.host_id, alert.alert_id));
    let sent = async { js.send_publish(subjects::alert(&b.host_id), publish).await?.await }.await;
    if let Err(e) = sent {
        tracing::error!(host = %b.host_id, "central record: the chain-break alert was not published: {e}");
    }
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/central", get(status))
        .route("/api/v1/central/query", post(query))
        .route("/api/v1/central/{host}/storyline/{alert}", get(storyline))
}

async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let c = s.central.clone();
    let hosts = tokio::task::spawn_blocking(move || c.status()).await.map_err(|e| ApiError::bad(e.to_string()))?.map_err(ApiError::bad)?;
    ok(json!({"hosts": hosts}))
}

async fn storyline(State(s): State<Arc<AppState>>, headers: HeaderMap, UrlPath((host, alert)): UrlPath<(String, u64)>) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let c = s.central.clone();
    if !c.hosts().contains(&host) {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "unknown_host", format!("the central record has nothing of host {host:?}")));
    }
    let story = tokio::task::spawn_blocking(move || {
        let store = c.store(&host)?;
        let st = store.storyline(alert, edr_store::StorylineOptions::default()).map_err(|e| e.to_string())?;
        serde_json::to_value(&st).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?
    .map_err(|e| ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", e))?;
    ok(story)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CentralQuery {
    sql: String,
    #[serde(default)]
    hosts: Vec<String>,
    limit: Option<usize>,
}

async fn query(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Viewer)?;
    let q: CentralQuery = parse_body(&body)?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad(format!("limit {limit}: give 1 to 10000 rows per host")));
    }
    if q.sql.len() > edr_fleet_proto::command::QUERY_MAX_SQL_BYTES {
        return Err(ApiError::bad("the query is too long (64 KiB at most)"));
    }
    let c = s.central.clone();
    let known = c.hosts();
    let hosts = if q.hosts.is_empty() { known.clone() } else { q.hosts.clone() };
    if let Some(h) = hosts.iter().find(|h| !known.contains(h)) {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_host",
            format!("the central record has nothing of host {h:?} (see GET /api/v1/central)"),
        ));
    }
    tracing::info!(actor = %who.name, hosts = hosts.len(), "central record query");
    let answers = tokio::task::spawn_blocking(move || {
        hosts
            .iter()
            .map(|h| match c.store(h).and_then(|st| st.query(&q.sql).map_err(|e| e.to_string())) {
                Ok(mut r) => {
                    let cut = r.rows.len() > limit;
                    r.rows.truncate(limit);
                    json!({"host": h, "status": "done", "output": {"columns": r.columns, "rows": r.rows, "truncated": r.truncated || cut}})
                }
                Err(e) => json!({"host": h, "status": "failed", "output": {"error": e}}),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?;
    ok(json!({"hosts": answers, "source": "centre"}))
}
