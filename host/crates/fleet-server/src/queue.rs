//! Commands that wait for an offline host.
//!
//! `POST /api/v1/hosts/{host}/commands?queue=true` for a host that is
//! offline (or does not answer) records the signed command as `queued` in
//! `EDR_SERVER` (with its signature, so any server process can send it);
//! the index keeps a queue table built from those events. The dispatcher
//! looks every second for queued commands whose host is online again and
//! whose signed body has not expired, sends each once, and records the
//! host's own result (`done`, `failed`, `refused`). A command whose expiry
//! passes while it waits is `expired` and never sent. Nothing is re-signed:
//! the host checks the operator's signature, expiry and nonce as always.
//!
//! Server processes sharing one index claim a command in it before sending
//! (`queued` -> `sending`, one SQLite update), so only one sends it. A
//! process that dies while sending leaves it `sending` until an index
//! rebuild puts it back to `queued`; should the host have run it, its nonce
//! check refuses the second copy (recorded as `refused`, replay).

use crate::api::{record_command, relay, AppState};
use crate::error::FleetError;
use crate::index::{liveness, Index};
use edr_fleet_proto::command::{CommandBody, SignedCommand};
use rusqlite::{params, OptionalExtension, Transaction};
use std::sync::Arc;
use std::time::Duration;

/// A command event as the index applies it.
pub(crate) struct Recorded<'a> {
    pub host_id: &'a str,
    pub command_id: &'a str,
    pub body: &'a str,
    pub key: &'a str,
    pub status: &'a str,
    pub op: &'a str,
    pub error: Option<&'a str>,
    pub signature: &'a str,
    pub actor: &'a str,
    pub time: u64,
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Applies one command event to the queue table: `queued` adds it, any
/// later status of the same command id moves it there.
pub(crate) fn apply(tx: &Transaction<'_>, r: Recorded<'_>) -> rusqlite::Result<usize> {
    if r.status == "queued" {
        let expires_at = serde_json::from_str::<CommandBody>(r.body).map(|b| b.expires_at).unwrap_or(0);
        return tx.execute(
            "INSERT OR IGNORE INTO command_queue (command_id, host_id, op, body, key, signature, actor, queued_at, expires_at, state, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?8)",
            params![r.command_id, r.host_id, r.op, r.body, r.key, r.signature, r.actor, i(r.time), i(expires_at)],
        );
    }
    tx.execute("UPDATE command_queue SET state = ?2, error = ?3, updated_at = ?4 WHERE command_id = ?1", params![r.command_id, r.status, r.error, i(r.time)])
}

/// Whether `host` is online or isolated (so a command can reach it now).
///
/// # Errors
/// On a database failure.
pub fn host_reachable(index: &Index, host: &str, now: u64) -> Result<bool, FleetError> {
    let row: Option<(i64, i64, bool)> = index
        .conn()
        .query_row("SELECT seen_at, interval_secs, isolated FROM heartbeats WHERE host_id = ?1", [host], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(FleetError::index("read heartbeat"))?;
    Ok(row.is_some_and(|(seen, interval, isolated)| liveness(now, Some(seen.max(0) as u64), Some(interval.max(0) as u64), isolated) != "offline"))
}

/// A queued command ready to send.
struct Due {
    host_id: String,
    actor: String,
    signed: SignedCommand,
}

/// Queued, unexpired commands of hosts that are reachable now, oldest first.
fn due(index: &Index, now: u64) -> Result<Vec<Due>, FleetError> {
    let rows: Vec<(String, String, SignedCommand)> = {
        let conn = index.conn();
        let mut stmt = conn
            .prepare("SELECT host_id, actor, body, key, signature FROM command_queue WHERE state = 'queued' AND expires_at > ?1 ORDER BY queued_at, command_id LIMIT 1000")
            .map_err(FleetError::index("read queue"))?;
        let rows = stmt
            .query_map([i(now)], |r| Ok((r.get(0)?, r.get(1)?, SignedCommand { body: r.get(2)?, key: r.get(3)?, signature: r.get(4)? })))
            .map_err(FleetError::index("read queue"))?;
        rows.collect::<Result<_, _>>().map_err(FleetError::index("read queue"))?
    };
    let mut out = Vec::new();
    for (host_id, actor, signed) in rows {
        if host_reachable(index, &host_id, now)? {
            out.push(Due { host_id, actor, signed });
        }
    }
    Ok(out)
}

/// Moves a command between local states; true when it was in `from`.
fn transition(index: &Index, command_id: &str, from: &str, to: &str) -> Result<bool, FleetError> {
    let n = index
        .conn()
        .execute("UPDATE command_queue SET state = ?3 WHERE command_id = ?1 AND state = ?2", params![command_id, from, to])
        .map_err(FleetError::index("claim command"))?;
    Ok(n == 1)
}

/// The queue, newest first, with each command's state (`queued`, `sending`,
/// `expired`, or the host's `done` / `failed` / `refused`).
///
/// # Errors
/// On a database failure.
pub fn list(index: &Index, host: Option<&str>, limit: usize, now: u64) -> Result<Vec<serde_json::Value>, FleetError> {
    let conn = index.conn();
    let mut stmt = conn
        .prepare(
            "SELECT command_id, host_id, op, actor, queued_at, expires_at, state, error, updated_at FROM command_queue
             WHERE (?1 IS NULL OR host_id = ?1) ORDER BY queued_at DESC, command_id LIMIT ?2",
        )
        .map_err(FleetError::index("list queue"))?;
    let rows = stmt
        .query_map(params![host, limit.min(10_000) as i64], |r| {
            let (expires_at, state): (i64, String) = (r.get(5)?, r.get(6)?);
            let state = if state == "queued" && expires_at <= i(now) { "expired".to_string() } else { state };
            Ok(serde_json::json!({
                "command_id": r.get::<_, String>(0)?, "host_id": r.get::<_, String>(1)?, "op": r.get::<_, String>(2)?,
                "actor": r.get::<_, String>(3)?, "queued_at": r.get::<_, i64>(4)?, "expires_at": expires_at, "state": state,
                "error": r.get::<_, Option<String>>(7)?, "updated_at": r.get::<_, i64>(8)?,
            }))
        })
        .map_err(FleetError::index("list queue"))?;
    rows.collect::<Result<_, _>>().map_err(FleetError::index("list queue"))
}

/// Sends one claimed command and records the host's answer; an unanswered
/// one goes back to the queue.
async fn send(s: &AppState, d: Due) -> Result<(), FleetError> {
    let Ok(parsed) = serde_json::from_str::<CommandBody>(&d.signed.body) else {
        return Ok(());
    };
    if !transition(&s.index, &parsed.command_id, "queued", "sending")? {
        return Ok(()); // another server process has it
    }
    let (status, mut result) = relay(s, &d.host_id, &d.signed, Duration::from_secs(30)).await;
    if let Some(r) = result.as_mut() {
        // A queued fetch's content has no one waiting for it: the evidence bucket keeps it.
        crate::evidence::keep(s, &d.actor, &d.host_id, &parsed, r).await;
        // A queued query belongs to a hunt that waits for this host (`--until`): its answer is kept for the hunt.
        if matches!(parsed.command, edr_fleet_proto::command::Command::Query { .. }) {
            crate::hunts::keep_answer(s, r).await;
        }
    }
    if result.is_none() {
        transition(&s.index, &parsed.command_id, "sending", "queued")?;
        return Ok(());
    }
    tracing::info!(host = %d.host_id, command = %parsed.command_id, op = parsed.command.op(), %status, "queued command delivered");
    record_command(s, &d.actor, &d.host_id, &parsed, &d.signed, status, result.as_ref()).await.map_err(|e| FleetError::Nats(format!("{e:?}")))
}

/// The dispatcher: every second, sends what is due, one command at a time,
/// oldest first (a host that does not answer holds the others up to the
/// 30 s relay timeout).
pub fn spawn(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let due = match due(&state.index, edr_fleet_proto::now_secs()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("queued commands: {e}");
                    continue;
                }
            };
            for d in due {
                if let Err(e) = send(&state, d).await {
                    tracing::error!("queued command: {e}");
                }
            }
        }
    })
}
