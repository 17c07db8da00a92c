//! The operators' HTTP JSON API (and the hosts' enrollment endpoint).
//!
//! | method, path | role | what |
//! |---|---|---|
//! | `POST /api/v1/enroll` | none (the one-time token) | a host enrolls: `EnrollRequest` -> `EnrollResponse` |
//! | `GET /api/v1/whoami` | viewer | the token's name and role |
//! | `POST /api/v1/enroll-tokens` | admin | `{"ttl_secs": N}` -> `{"token", "expires_at"}` |
//! | `GET /api/v1/hosts` | viewer | hosts with state (online, offline, isolated, never-seen), last seen, inventory |
//! | `GET /api/v1/alerts?host=&state=&limit=&ecs=true` | viewer | alerts, newest first, with triage state |
//! | `POST /api/v1/alerts/{host}/{id}/triage` | responder | `{"state": "acknowledged"\|"closed"\|"new", "note": ".."}` |
//! | `POST /api/v1/hosts/{host}/commands` | responder | relays a `SignedCommand` (signed by the operator, not the server) to the host and returns its `CommandResult`; audited with its op, the operator's reason (required for commands that change the host) and the host's status |
//! | `POST /api/v1/query` | viewer | a fleet-wide hunt: `{"commands": [SignedCommand, ..], "timeout_secs": N}`, each a signed `query` for one host, relayed to every host concurrently (each waited for up to `timeout_secs`, default 30, at most 120); returns `{"hosts": [{"host", "status": "done"\|"failed"\|"refused"\|"no_answer", "output"}]}` in the order given; each is audited like a command. Any other op is refused (it needs the commands endpoint and its role) |
//! | `GET /api/v1/central`, `POST /api/v1/central/query` | viewer | the central record: every host's events ([`crate::central`]) |
//! | `GET /api/v1/hunts/{id}` | viewer | a hunt made with `until_secs` (in `POST /api/v1/query`): each host's answer, live or delivered later from the queue, or its queue state ([`crate::hunts`]) |
//! | `GET /api/v1/queries`, `POST /api/v1/queries`, `DELETE /api/v1/queries/{name}` | viewer lists; responder saves and deletes | saved hunt queries in the JetStream key-value bucket `EDR_SAVED_QUERIES` ([`crate::saved_queries`]) |
//! | `GET /api/v1/audit?limit=` | viewer | every change, newest first, with who made it |
//! | `GET /api/v1/evidence`, `GET /api/v1/evidence/{host}/{command}` | responder | fetched files kept in the JetStream object store ([`crate::evidence`]) |
//!
//! Tokens go in `Authorization: Bearer <token>` (`api-tokens.json` is read on each request); a request
//! without one may instead carry the web console's session cookie ([`crate::api_session`]). Every error is JSON,
//! `{"error": {"code": "...", "message": "..."}}`, and the message says what to do.

use crate::api_auth::{sha256_hex, ApiToken, Role};
use crate::bus::Bus;
use crate::error::FleetError;
use crate::fleet::Fleet;
use crate::index::{AlertFilter, Index, TokenState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use edr_fleet_proto::command::{Command, CommandBody, CommandResult, SignedCommand};
use edr_fleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollToken};
use edr_fleet_proto::msg::{Change, TriageState};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The fleet (keys and settings).
    pub fleet: Fleet,
    /// The index.
    pub index: Arc<Index>,
    /// NATS.
    pub bus: Bus,
    /// The server-side notification outputs (`[notify]`).
    pub notifier: Arc<crate::notify::Notifier>,
    /// The central record (every host's events).
    pub central: Arc<crate::central::Central>,
    /// Session authentication (the web console's cookie), when installed.
    pub sessions: std::sync::OnceLock<Arc<dyn crate::api_session::SessionAuth>>,
}

/// An API error: status, a stable code and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        tracing::error!("API request failed: {e}");
        let status = if matches!(e, FleetError::Nats(_)) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
        ApiError::new(status, "server_error", format!("{e} (see the server's log)"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/enroll-tokens", post(enroll_token))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{host}/{id}/triage", post(triage))
        .route("/api/v1/hosts/{host}/commands", post(command))
        .route("/api/v1/query", post(query))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/notify", get(notify_status))
        .route("/api/v1/commands", get(queued_commands))
        .merge(crate::packs::routes())
        .merge(crate::evidence::routes())
        .merge(crate::hunts::routes())
        .merge(crate::saved_queries::routes())
        .merge(crate::central::routes())
        .fallback(|uri: Uri| async move {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint {}: see GET /api/v1/hosts, /api/v1/alerts, /api/v1/audit", uri.path()))
        })
        .with_state(state)
}

pub(crate) fn authorize(state: &AppState, headers: &HeaderMap, need: Role) -> Result<ApiToken, ApiError> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        if let Some(session) = state.sessions.get().and_then(|s| s.authenticate(headers)) {
            return authorize_session(session, need);
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send an API token: Authorization: Bearer <token> (the first admin token is DIR/admin.token)",
        ));
    };
    let token = value.strip_prefix("Bearer ").unwrap_or("").trim();
    let hash = sha256_hex(token);
    // Read on each request: `edr server token` takes effect without a restart.
    let tokens = crate::api_auth::load_tokens(&state.fleet.dir)?;
    let Some(t) = tokens.into_iter().find(|t| t.sha256 == hash) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unknown API token: check it, or make one with `edr server token NAME --role ROLE`",
        ));
    };
    if t.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} has role {}; this needs {}: ask an admin for a token with that role", t.name, t.role.as_str(), need.as_str()),
        ));
    }
    Ok(t)
}

/// A console session's principal, held to the same roles as a token.
fn authorize_session(session: Result<crate::api_session::SessionPrincipal, String>, need: Role) -> Result<ApiToken, ApiError> {
    let p = session.map_err(|m| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m))?;
    if p.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} has role {}; this needs {}: ask an admin for that role", p.actor, p.role.as_str(), need.as_str()),
        ));
    }
    Ok(ApiToken { name: p.actor, role: p.role, sha256: String::new() })
}

pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the request body is not the expected JSON: {e}")))
}

pub(crate) fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok(Json(v).into_response())
}

async fn whoami(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    let t = authorize(&s, &headers, Role::Viewer)?;
    ok(json!({"name": t.name, "role": t.role}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    ttl_secs: u64,
}

async fn enroll_token(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Admin)?;
    let req: TokenRequest = parse_body(&body)?;
    if !(60..=30 * 86400).contains(&req.ttl_secs) {
        return Err(ApiError::bad(format!("ttl_secs {} is out of range: use 60 (1 minute) to 2592000 (30 days)", req.ttl_secs)));
    }
    let secret = edr_fleet_proto::random_hex(32).map_err(|e| FleetError::Nats(format!("random: {e}")))?;
    let expires_at = edr_fleet_proto::now_secs() + req.ttl_secs;
    s.bus.record(&s.index, &who.name, Change::TokenCreated { secret_sha256: sha256_hex(&secret), expires_at }).await?;
    let nats_ca_sha256 = s.fleet.nats_ca_pem()?.map(|pem| sha256_hex(&pem));
    let token = EnrollToken { server: s.fleet.config.http.public_url.clone(), secret, command_keys: vec![s.fleet.command_public_key()], nats_ca_sha256 };
    ok(json!({"token": token.encode(), "expires_at": expires_at}))
}

fn check_enroll_request(req: &EnrollRequest) -> Result<(), ApiError> {
    if req.v > edr_fleet_proto::PROTO_VERSION {
        return Err(ApiError::bad(format!("protocol version {} is newer than this server's: upgrade the server", req.v)));
    }
    if !req.user_key.starts_with('U') || nkeys::KeyPair::from_public_key(&req.user_key).is_err() {
        return Err(ApiError::bad("user_key is not an nkey user public key (U...)"));
    }
    if req.hostname.is_empty() || req.hostname.len() > 253 || req.hostname.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad("hostname must be 1-253 characters without spaces or control characters"));
    }
    if req.secret.len() != 64 || !req.secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad("secret is not an enrollment token's secret (64 hex digits)"));
    }
    Ok(())
}

async fn enroll(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let req: EnrollRequest = parse_body(&body)?;
    check_enroll_request(&req)?;
    let sha = sha256_hex(&req.secret.to_ascii_lowercase());
    let now = edr_fleet_proto::now_secs();
    let denied = |m: String| ApiError::new(StatusCode::FORBIDDEN, "enrollment_refused", m);
    let (state, seq) = s.bus.token_state(&sha, now).await?;
    match state {
        TokenState::Valid(_) => {}
        TokenState::Unknown => return Err(denied("unknown enrollment token (not made by this fleet): make one with `edr fleet enroll-token`".into())),
        TokenState::Expired(at) => {
            return Err(denied(format!("the enrollment token expired at {at} (now {now}): make a new one with `edr fleet enroll-token`")))
        }
        TokenState::Used(host) => return Err(denied(format!("the enrollment token was already used (by host {host}); tokens are one-time: make a new one"))),
    }
    let host_id = format!("h{}", edr_fleet_proto::random_hex(8).map_err(|e| FleetError::Nats(format!("random: {e}")))?);
    let user_jwt = s.fleet.host_jwt(&host_id, &req.user_key)?;
    let change = Change::Enrolled { host_id: host_id.clone(), user_key: req.user_key.clone(), hostname: req.hostname.clone(), secret_sha256: sha };
    match s.bus.record_enrollment(&s.index, change, seq).await {
        Ok(_) => {}
        Err(FleetError::Nats(m)) if m.starts_with("conflict") => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "enrollment_refused",
                "the enrollment token was used by another enrollment a moment ago: make a new one",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(host_id, hostname = %req.hostname, "host enrolled");
    ok(EnrollResponse {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id,
        user_jwt,
        nats_urls: s.fleet.config.nats.public_urls.clone(),
        heartbeat_secs: s.fleet.config.heartbeat_secs,
        nats_ca_pem: s.fleet.nats_ca_pem()?,
    })
}

async fn queued_commands(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    #[derive(Deserialize)]
    struct Q {
        host: Option<String>,
        limit: Option<usize>,
    }
    let q = axum::extract::Query::<Q>::try_from_uri(&uri).map_err(|e| ApiError::bad(format!("query: {e}; use host=, limit=")))?.0;
    ok(json!({"commands": crate::queue::list(&s.index, q.host.as_deref(), q.limit.unwrap_or(100), edr_fleet_proto::now_secs())?}))
}

async fn notify_status(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    ok(json!({"outputs": s.notifier.status()}))
}

async fn hosts(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    ok(json!({"hosts": s.index.hosts(edr_fleet_proto::now_secs())?}))
}

async fn alerts(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let f = axum::extract::Query::<AlertFilter>::try_from_uri(&uri).map_err(|e| ApiError::bad(format!("query: {e}; use host=, state=, limit=, ecs=true")))?.0;
    if let Some(st) = &f.state {
        TriageState::parse(st).ok_or_else(|| ApiError::bad(format!("state {st:?}: use new, acknowledged or closed")))?;
    }
    ok(json!({"alerts": s.index.alerts(&f)?}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriageRequest {
    state: String,
    #[serde(default)]
    note: String,
}

async fn triage(State(s): State<Arc<AppState>>, headers: HeaderMap, Path((host, id)): Path<(String, String)>, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Responder)?;
    let req: TriageRequest = parse_body(&body)?;
    let state = TriageState::parse(&req.state).ok_or_else(|| ApiError::bad(format!("state {:?}: use new, acknowledged or closed", req.state)))?;
    if req.note.chars().count() > 4096 {
        return Err(ApiError::bad("note is longer than 4096 characters"));
    }
    let alert_id: u64 = id.parse().map_err(|_| ApiError::bad(format!("alert id {id:?} is not a number")))?;
    if !s.index.has_alert(&host, alert_id)? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no alert {host}:{alert_id} on this server: list them with `edr fleet alerts`")));
    }
    let ev = s.bus.record(&s.index, &who.name, Change::Triage { host_id: host, alert_id, state, note: req.note }).await?;
    ok(ev)
}

/// Relays an operator-signed command. The server does not sign: a
/// compromised server can refuse to relay, never invent a command. A
/// command that changes the host (kill, quarantine, isolate, ...) must say
/// why (`reason` in the signed body); the reason is in the audit.
///
/// With `?queue=true` a command for a host that is offline (or does not
/// answer) is queued instead: `202` with `status: queued`; it is sent when
/// the host is back, until the signed body expires (see [`crate::queue`]).
async fn command(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(host): Path<String>, uri: Uri, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct Q {
        queue: Option<bool>,
    }
    let queue = axum::extract::Query::<Q>::try_from_uri(&uri).map_err(|e| ApiError::bad(format!("query: {e}; use queue=true")))?.0.queue.unwrap_or(false);
    let who = authorize(&s, &headers, Role::Responder)?;
    let signed: edr_fleet_proto::command::SignedCommand = parse_body(&body)?;
    if !s.index.has_host(&host)? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no host {host} in this fleet: see `edr fleet hosts`")));
    }
    let parsed: edr_fleet_proto::command::CommandBody =
        serde_json::from_str(&signed.body).map_err(|e| ApiError::bad(format!("the signed body is not a command this server knows: {e}")))?;
    if parsed.command.changes_host() && parsed.reason.trim().is_empty() {
        return Err(ApiError::bad(format!("`{}` changes the host: give a reason (`--reason`), it is kept in the audit", parsed.command.op())));
    }
    // Expiry is the host's to judge (and refuse, audited); the queue never sends an expired command.
    let reachable = crate::queue::host_reachable(&s.index, &host, edr_fleet_proto::now_secs())?;
    let (status, mut result) = if reachable || !queue { relay(&s, &host, &signed, RELAY_TIMEOUT).await } else { ("no-answer".to_string(), None) };
    if let Some(r) = result.as_mut() {
        crate::evidence::keep(&s, &who.name, &host, &parsed, r).await;
    }
    if result.is_none() && queue {
        record_command(&s, &who.name, &host, &parsed, &signed, "queued".into(), None).await?;
        let body = json!({"status": "queued", "command_id": parsed.command_id, "host_id": host, "expires_at": parsed.expires_at});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    record_command(&s, &who.name, &host, &parsed, &signed, status, result.as_ref()).await?;
    match result {
        Some(r) => ok(r),
        None => {
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "no_answer", format!("host {host} did not answer within 30 s: is it online (`edr fleet hosts`)?")))
        }
    }
}

/// How long the commands endpoint waits for a host.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest per-host wait a fleet query may ask for.
const QUERY_MAX_TIMEOUT_SECS: u64 = 120;
/// The most hosts one fleet query reaches.
const QUERY_MAX_HOSTS: usize = 10_000;

/// Audits one relayed command (its op, the operator's reason, the host's status).
pub(crate) async fn record_command(
    s: &AppState,
    who: &str,
    host: &str,
    parsed: &CommandBody,
    signed: &SignedCommand,
    status: String,
    result: Option<&CommandResult>,
) -> Result<(), ApiError> {
    let error = result.and_then(|r| r.output.get("error").or_else(|| r.output.get("reason"))).and_then(|v| v.as_str()).map(String::from);
    let signature = if status == "queued" { signed.signature.clone() } else { String::new() };
    let change = Change::Command {
        host_id: host.to_string(),
        command_id: parsed.command_id.clone(),
        body: signed.body.clone(),
        key: signed.key.clone(),
        status,
        op: parsed.command.op().into(),
        reason: parsed.reason.clone(),
        error,
        signature,
    };
    s.bus.record(&s.index, who, change).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    commands: Vec<SignedCommand>,
    timeout_secs: Option<u64>,
    /// Wait this long for hosts that do not answer now: their queries are
    /// queued and the hunt is kept ([`crate::hunts`]).
    until_secs: Option<u64>,
}

/// Checks a fleet query's envelopes before anything is sent: each is a
/// `query` for a host of this fleet, each host at most once.
fn check_query_request(s: &AppState, req: &QueryRequest) -> Result<Vec<(String, CommandBody)>, ApiError> {
    if req.commands.is_empty() || req.commands.len() > QUERY_MAX_HOSTS {
        return Err(ApiError::bad(format!("give 1 to {QUERY_MAX_HOSTS} signed query commands, one per host")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(req.commands.len());
    for signed in &req.commands {
        let parsed: CommandBody =
            serde_json::from_str(&signed.body).map_err(|e| ApiError::bad(format!("a signed body is not a command this server knows: {e}")))?;
        if !matches!(parsed.command, Command::Query { .. }) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("`{}` is not a query: this endpoint relays only `query`; other commands go to /api/v1/hosts/HOST/commands", parsed.command.op()),
            ));
        }
        let host = parsed.host_id.clone();
        if !s.index.has_host(&host)? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_host", format!("no host {host:?} in this fleet: see `edr fleet hosts`")));
        }
        if !seen.insert(host.clone()) {
            return Err(ApiError::bad(format!("host {host} is given twice")));
        }
        out.push((host, parsed));
    }
    Ok(out)
}

/// A fleet-wide hunt: relays each host's signed `query` concurrently and
/// answers with every host's status, the ones that did not answer included.
async fn query(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Viewer)?;
    let req: QueryRequest = parse_body(&body)?;
    let secs = req.timeout_secs.unwrap_or(RELAY_TIMEOUT.as_secs());
    if secs == 0 || secs > QUERY_MAX_TIMEOUT_SECS {
        return Err(ApiError::bad(format!("timeout_secs {secs}: give 1 to {QUERY_MAX_TIMEOUT_SECS}")));
    }
    if let Some(until) = req.until_secs {
        if until == 0 || until > crate::hunts::UNTIL_MAX_SECS {
            return Err(ApiError::bad(format!("until_secs {until}: give 1 to {} (14 days)", crate::hunts::UNTIL_MAX_SECS)));
        }
    }
    let targets = check_query_request(&s, &req)?;
    let timeout = Duration::from_secs(secs);
    let answers = futures_util::future::join_all(targets.iter().zip(&req.commands).map(|((host, _), signed)| relay(&s, host, signed, timeout))).await;
    let mut hosts = Vec::with_capacity(answers.len());
    for (((host, parsed), signed), (status, result)) in targets.iter().zip(&req.commands).zip(answers) {
        let waits = result.is_none() && req.until_secs.is_some();
        record_command(&s, &who.name, host, parsed, signed, if waits { "queued".into() } else { status }, result.as_ref()).await?;
        hosts.push(match result {
            Some(r) => {
                if req.until_secs.is_some() {
                    crate::hunts::keep_answer(&s, &r).await;
                }
                json!({"host": host, "status": r.status, "output": r.output})
            }
            None if waits => json!({"host": host, "status": "queued", "output": {"reason": format!("no answer within {secs} s: queued until the command expires at {}", parsed.expires_at)}}),
            None => json!({"host": host, "status": "no_answer", "output": {"reason": format!("no answer within {secs} s")}}),
        });
    }
    let Some(until) = req.until_secs else { return ok(json!({"hosts": hosts})) };
    let now = edr_fleet_proto::now_secs();
    let hunt = crate::hunts::Hunt {
        id: edr_fleet_proto::random_hex(8).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "random", e.to_string()))?,
        created: now,
        until: now + until,
        actor: who.name.clone(),
        hosts: targets.iter().map(|(h, p)| (h.clone(), p.command_id.clone())).collect(),
    };
    crate::hunts::record(&s, &hunt).await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "nats", e))?;
    ok(json!({"hosts": hosts, "hunt_id": hunt.id, "until": hunt.until}))
}

/// Sends the command to the host and waits up to `timeout` for its answer.
pub(crate) async fn relay(s: &AppState, host: &str, signed: &SignedCommand, timeout: Duration) -> (String, Option<CommandResult>) {
    let payload = serde_json::to_vec(signed).unwrap_or_default();
    let answer = tokio::time::timeout(timeout, s.bus.client.request(edr_fleet_proto::subjects::command(host), payload.into())).await;
    match answer {
        Ok(Ok(m)) => match serde_json::from_slice::<CommandResult>(&m.payload) {
            Ok(r) => (r.status.clone(), Some(r)),
            Err(e) => {
                tracing::warn!(host, "the host's answer is not a command result: {e}");
                ("no-answer".to_string(), None)
            }
        },
        Ok(Err(e)) => {
            tracing::warn!(host, "command not answered: {e}");
            ("no-answer".to_string(), None)
        }
        Err(_) => ("no-answer".to_string(), None),
    }
}

async fn audit(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    #[derive(Deserialize)]
    struct Q {
        limit: Option<usize>,
    }
    let q = axum::extract::Query::<Q>::try_from_uri(&uri).map_err(|e| ApiError::bad(format!("query: {e}; use limit=")))?.0;
    ok(json!({"audit": s.index.audit(q.limit.unwrap_or(100))?}))
}
