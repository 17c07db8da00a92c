//! The server's query index: SQLite, a cache of the streams.
//!
//! Every row comes from a stream message (enrollments, triage and tokens
//! from `EDR_SERVER`, heartbeats from `EDR_HEARTBEATS`, alerts from
//! `EDR_ALERTS`), and applying a message twice changes nothing, so the file
//! can be deleted and rebuilt by replaying the streams (`edr server run`
//! does so when the file is new). Several server processes may share one
//! file (WAL, busy timeout).

use crate::error::FleetError;
use edr_fleet_proto::msg::{AlertMessage, Change, Heartbeat, ServerEvent, TriageState};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS server_events (id TEXT PRIMARY KEY, time INTEGER NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (secret_sha256 TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, used_by TEXT);
CREATE TABLE IF NOT EXISTS hosts (host_id TEXT PRIMARY KEY, user_key TEXT NOT NULL, hostname TEXT NOT NULL, enrolled_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (host_id TEXT PRIMARY KEY, seen_at INTEGER NOT NULL, interval_secs INTEGER NOT NULL, isolated INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (host_id TEXT NOT NULL, alert_id INTEGER NOT NULL, time INTEGER NOT NULL, rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL, severity TEXT NOT NULL, ecs TEXT NOT NULL, received_at INTEGER NOT NULL, PRIMARY KEY (host_id, alert_id));
CREATE INDEX IF NOT EXISTS alerts_time ON alerts(time);
CREATE TABLE IF NOT EXISTS command_queue (command_id TEXT PRIMARY KEY, host_id TEXT NOT NULL, op TEXT NOT NULL, body TEXT NOT NULL, key TEXT NOT NULL,
  signature TEXT NOT NULL, actor TEXT NOT NULL, queued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, state TEXT NOT NULL, error TEXT, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS triage (host_id TEXT NOT NULL, alert_id INTEGER NOT NULL, state TEXT NOT NULL, actor TEXT NOT NULL, note TEXT NOT NULL,
    time INTEGER NOT NULL, PRIMARY KEY (host_id, alert_id));
";

/// SQLite integers are i64; ids and times here are u64 below 2^63.
fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// The index.
#[derive(Debug)]
pub struct Index {
    conn: Mutex<Connection>,
}

/// A host as `GET /api/v1/hosts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct HostRow {
    /// Host id.
    pub host_id: String,
    /// Name it enrolled with.
    pub hostname: String,
    /// `online`, `offline` (three heartbeats missed), `isolated` (online and isolated) or `never-seen`.
    pub state: String,
    /// When the last heartbeat was stored (NATS server time), seconds since the epoch.
    pub last_seen: Option<u64>,
    /// Enrollment time.
    pub enrolled_at: u64,
    /// The last heartbeat, as sent.
    pub heartbeat: Option<serde_json::Value>,
}

/// An alert as `GET /api/v1/alerts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AlertRow {
    /// Host.
    pub host_id: String,
    /// Alert id on the host.
    pub alert_id: u64,
    /// When it fired, ns.
    pub time: u64,
    /// Rule id.
    pub rule_id: String,
    /// Rule title.
    pub rule_name: String,
    /// Severity.
    pub severity: String,
    /// Triage state.
    pub state: String,
    /// Who set it.
    pub state_by: Option<String>,
    /// Their note.
    pub note: Option<String>,
    /// The ECS document (only when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<serde_json::Value>,
}

/// Filters of an alert listing.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AlertFilter {
    /// Only this host.
    pub host: Option<String>,
    /// Only this triage state.
    pub state: Option<String>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<usize>,
    /// Include the ECS documents.
    #[serde(default)]
    pub ecs: bool,
}

/// Is a token usable, and why not?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// Never made here.
    Unknown,
    /// Past its expiry.
    Expired(u64),
    /// Used by this host already.
    Used(String),
    /// Usable until this time.
    Valid(u64),
}

impl Index {
    /// Opens (creating) the index at `path`.
    ///
    /// # Errors
    /// When SQLite cannot open or set it up.
    pub fn open(path: &Path) -> Result<Index, FleetError> {
        if let Some(f) = edr_datadir::open_private_path(path, edr_datadir::Access::ReadWrite)? {
            drop(f);
        }
        let conn = Connection::open(path).map_err(FleetError::index("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(FleetError::index("set up"))?;
        conn.execute_batch(SCHEMA).map_err(FleetError::index("create schema"))?;
        conn.execute_batch(crate::packs::SCHEMA).map_err(FleetError::index("create pack schema"))?;
        Ok(Index { conn: Mutex::new(conn) })
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a server event once; `false` when it was applied before.
    ///
    /// # Errors
    /// On a database failure.
    pub fn apply(&self, ev: &ServerEvent) -> Result<bool, FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(FleetError::index("begin"))?;
        let body = serde_json::to_string(ev).unwrap_or_default();
        let new = tx
            .execute(
                "INSERT OR IGNORE INTO server_events (id, time, actor, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![ev.id, i(ev.time), ev.actor, ev.change.kind(), body],
            )
            .map_err(FleetError::index("record server event"))?
            == 1;
        if new {
            match &ev.change {
                Change::TokenCreated { secret_sha256, expires_at } => {
                    tx.execute("INSERT OR IGNORE INTO tokens (secret_sha256, expires_at) VALUES (?1, ?2)", params![secret_sha256, i(*expires_at)])
                }
                Change::Enrolled { host_id, user_key, hostname, secret_sha256 } => {
                    tx.execute("UPDATE tokens SET used_by = ?2 WHERE secret_sha256 = ?1", params![secret_sha256, host_id])
                        .map_err(FleetError::index("use token"))?;
                    tx.execute(
                        "INSERT OR REPLACE INTO hosts (host_id, user_key, hostname, enrolled_at) VALUES (?1, ?2, ?3, ?4)",
                        params![host_id, user_key, hostname, i(ev.time)],
                    )
                }
                // Commands live in the audit (server_events), queued ones also in the queue; logins in the audit only.
                Change::Login { .. } => Ok(0),
                // Saved queries live in their bucket; their changes in the audit only.
                Change::SavedQuery { .. } => Ok(0),
                Change::Command { host_id, command_id, body, key, status, op, error, signature, .. } => crate::queue::apply(
                    &tx,
                    crate::queue::Recorded { host_id, command_id, body, key, status, op, error: error.as_deref(), signature, actor: &ev.actor, time: ev.time },
                ),
                Change::PackPublished { .. } | Change::PackHost { .. } | Change::PackHalted { .. } => crate::packs::apply(&tx, ev.time, &ev.actor, &ev.change),
                Change::Triage { host_id, alert_id, state, note } => tx.execute(
                    "INSERT OR REPLACE INTO triage (host_id, alert_id, state, actor, note, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![host_id, i(*alert_id), state.as_str(), ev.actor, note, i(ev.time)],
                ),
            }
            .map_err(FleetError::index("apply server event"))?;
        }
        tx.commit().map_err(FleetError::index("commit"))?;
        Ok(new)
    }

    /// Runs `f` on the index's connection (the pack rollout's own tables).
    ///
    /// # Errors
    /// SQLite's error, with `what`.
    pub(crate) fn with_conn<T>(&self, what: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, FleetError> {
        f(&self.conn()).map_err(FleetError::index(what))
    }

    /// Stores a host's heartbeat seen at `seen_at` (keeps the newest).
    ///
    /// # Errors
    /// On a database failure.
    pub fn heartbeat(&self, hb: &Heartbeat, seen_at: u64) -> Result<(), FleetError> {
        let body = serde_json::to_string(hb).unwrap_or_default();
        self.conn()
            .execute(
                "INSERT INTO heartbeats (host_id, seen_at, interval_secs, isolated, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(host_id) DO UPDATE SET seen_at = excluded.seen_at, interval_secs = excluded.interval_secs,
                   isolated = excluded.isolated, body = excluded.body WHERE excluded.seen_at >= heartbeats.seen_at",
                params![hb.host_id, i(seen_at), i(hb.interval_secs), hb.isolated, body],
            )
            .map_err(FleetError::index("store heartbeat"))?;
        Ok(())
    }

    /// Stores an alert once; `false` when it was there already.
    ///
    /// # Errors
    /// On a database failure.
    pub fn alert(&self, a: &AlertMessage, received_at: u64) -> Result<bool, FleetError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO alerts (host_id, alert_id, time, rule_id, rule_name, severity, ecs, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![a.host_id, i(a.alert_id), i(a.time), a.rule_id, a.rule_name, a.severity, a.ecs.to_string(), i(received_at)],
            )
            .map_err(FleetError::index("store alert"))?;
        Ok(n == 1)
    }

    /// The name host `host_id` enrolled with, when it is enrolled.
    ///
    /// # Errors
    /// On a database failure.
    pub fn hostname(&self, host_id: &str) -> Result<Option<String>, FleetError> {
        self.conn().query_row("SELECT hostname FROM hosts WHERE host_id = ?1", [host_id], |r| r.get(0)).optional().map_err(FleetError::index("read host"))
    }

    /// Whether host `host_id` is enrolled.
    ///
    /// # Errors
    /// On a database failure.
    pub fn has_host(&self, host_id: &str) -> Result<bool, FleetError> {
        self.conn()
            .query_row("SELECT 1 FROM hosts WHERE host_id = ?1", [host_id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(FleetError::index("read host"))
    }

    /// Whether alert `alert_id` of `host_id` is in the index.
    ///
    /// # Errors
    /// On a database failure.
    pub fn has_alert(&self, host_id: &str, alert_id: u64) -> Result<bool, FleetError> {
        self.conn()
            .query_row("SELECT 1 FROM alerts WHERE host_id = ?1 AND alert_id = ?2", params![host_id, i(alert_id)], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(FleetError::index("read alert"))
    }

    /// Every host, with its liveness at `now`.
    ///
    /// # Errors
    /// On a database failure.
    pub fn hosts(&self, now: u64) -> Result<Vec<HostRow>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT h.host_id, h.hostname, h.enrolled_at, b.seen_at, b.interval_secs, b.isolated, b.body
                 FROM hosts h LEFT JOIN heartbeats b ON b.host_id = h.host_id ORDER BY h.hostname, h.host_id",
            )
            .map_err(FleetError::index("list hosts"))?;
        let rows = stmt
            .query_map([], |r| {
                let seen = r.get::<_, Option<i64>>(3)?.map(u);
                let interval = r.get::<_, Option<i64>>(4)?.map(u);
                let isolated: Option<bool> = r.get(5)?;
                let body: Option<String> = r.get(6)?;
                Ok(HostRow {
                    host_id: r.get(0)?,
                    hostname: r.get(1)?,
                    enrolled_at: u(r.get(2)?),
                    state: liveness(now, seen, interval, isolated.unwrap_or(false)).into(),
                    last_seen: seen,
                    heartbeat: body.and_then(|b| serde_json::from_str(&b).ok()),
                })
            })
            .map_err(FleetError::index("list hosts"))?;
        rows.collect::<Result<_, _>>().map_err(FleetError::index("list hosts"))
    }

    /// Alerts, newest first.
    ///
    /// # Errors
    /// On a database failure.
    pub fn alerts(&self, f: &AlertFilter) -> Result<Vec<AlertRow>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT a.host_id, a.alert_id, a.time, a.rule_id, a.rule_name, a.severity, coalesce(t.state, 'new'), t.actor, t.note, a.ecs
                 FROM alerts a LEFT JOIN triage t ON t.host_id = a.host_id AND t.alert_id = a.alert_id
                 WHERE (?1 IS NULL OR a.host_id = ?1) AND (?2 IS NULL OR coalesce(t.state, 'new') = ?2)
                 ORDER BY a.time DESC, a.host_id, a.alert_id DESC LIMIT ?3",
            )
            .map_err(FleetError::index("list alerts"))?;
        let limit = f.limit.unwrap_or(100).min(10_000) as i64;
        let rows = stmt
            .query_map(params![f.host, f.state, limit], |r| {
                let ecs: String = r.get(9)?;
                Ok(AlertRow {
                    host_id: r.get(0)?,
                    alert_id: u(r.get(1)?),
                    time: u(r.get(2)?),
                    rule_id: r.get(3)?,
                    rule_name: r.get(4)?,
                    severity: r.get(5)?,
                    state: r.get(6)?,
                    state_by: r.get(7)?,
                    note: r.get(8)?,
                    ecs: if f.ecs { serde_json::from_str(&ecs).ok() } else { None },
                })
            })
            .map_err(FleetError::index("list alerts"))?;
        rows.collect::<Result<_, _>>().map_err(FleetError::index("list alerts"))
    }

    /// The audit: every change, newest first.
    ///
    /// # Errors
    /// On a database failure.
    pub fn audit(&self, limit: usize) -> Result<Vec<serde_json::Value>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT body FROM server_events ORDER BY time DESC, rowid DESC LIMIT ?1").map_err(FleetError::index("read audit"))?;
        let rows = stmt.query_map([limit.min(10_000) as i64], |r| r.get::<_, String>(0)).map_err(FleetError::index("read audit"))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r.map_err(FleetError::index("read audit"))?).unwrap_or(serde_json::Value::Null));
        }
        Ok(out)
    }

    /// The triage state of an alert (`new` when never triaged).
    ///
    /// # Errors
    /// On a database failure.
    pub fn triage_state(&self, host_id: &str, alert_id: u64) -> Result<TriageState, FleetError> {
        let s: Option<String> = self
            .conn()
            .query_row("SELECT state FROM triage WHERE host_id = ?1 AND alert_id = ?2", params![host_id, i(alert_id)], |r| r.get(0))
            .optional()
            .map_err(FleetError::index("read triage"))?;
        Ok(s.as_deref().and_then(TriageState::parse).unwrap_or(TriageState::New))
    }
}

/// A host's state from its last heartbeat: offline once three intervals
/// (plus one more, at most 10 s, of slack) have passed without one.
pub fn liveness(now: u64, seen: Option<u64>, interval: Option<u64>, isolated: bool) -> &'static str {
    let Some(seen) = seen else { return "never-seen" };
    let interval = interval.unwrap_or(30).max(1);
    let deadline = seen + 3 * interval + interval.min(10);
    match (now <= deadline, isolated) {
        (false, _) => "offline",
        (true, true) => "isolated",
        (true, false) => "online",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_fleet_proto::msg::Change;

    fn ev(id: &str, change: Change) -> ServerEvent {
        ServerEvent { v: 1, id: id.into(), time: 100, actor: "alice".into(), change }
    }

    #[test]
    fn events_apply_once_and_triage_joins_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.db")).unwrap();
        let host = "h0123456789abcdef".to_string();
        let enrolled = ev("e1", Change::Enrolled { host_id: host.clone(), user_key: "U".into(), hostname: "web1".into(), secret_sha256: "s".into() });
        assert!(idx.apply(&enrolled).unwrap());
        assert!(!idx.apply(&enrolled).unwrap());
        let a = AlertMessage {
            v: 1,
            host_id: host.clone(),
            alert_id: 7,
            time: 5,
            rule_id: "r".into(),
            rule_name: "n".into(),
            severity: "high".into(),
            ecs: serde_json::json!({}),
        };
        assert!(idx.alert(&a, 1).unwrap());
        assert!(!idx.alert(&a, 2).unwrap());
        idx.apply(&ev("t1", Change::Triage { host_id: host.clone(), alert_id: 7, state: TriageState::Closed, note: "fp".into() })).unwrap();
        let rows = idx.alerts(&AlertFilter::default()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].state.as_str(), rows[0].state_by.as_deref(), rows[0].note.as_deref()), ("closed", Some("alice"), Some("fp")));
        assert_eq!(idx.alerts(&AlertFilter { state: Some("new".into()), ..Default::default() }).unwrap().len(), 0);
        assert_eq!(idx.hosts(1000).unwrap()[0].state, "never-seen");
        assert_eq!(idx.audit(10).unwrap().len(), 2);
    }

    #[test]
    fn liveness_follows_missed_heartbeats() {
        assert_eq!(liveness(100, Some(95), Some(10), false), "online");
        assert_eq!(liveness(100, Some(95), Some(10), true), "isolated");
        assert_eq!(liveness(135, Some(95), Some(10), false), "online");
        assert_eq!(liveness(136, Some(95), Some(10), false), "offline");
        assert_eq!(liveness(200, Some(95), Some(10), true), "offline");
        assert_eq!(liveness(200, None, None, false), "never-seen");
    }
}
