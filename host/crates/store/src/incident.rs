//! Incidents in the record: one row per incident (`incidents`), kept up to
//! date with each of its alerts in the same transaction, and each alert's
//! `incident_id`. The grouping itself is `edr-incident`'s; the store only
//! keeps what the agent decided.

use crate::error::StoreError;
use crate::read::Pooled;
use edr_event::{Severity, Timestamp};
use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

/// One rule's alerts in an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRule {
    /// Rule id.
    pub id: String,
    /// Rule title.
    pub name: String,
    /// The highest severity it fired with.
    pub severity: Severity,
    /// Its alerts, repeats included.
    pub count: u64,
}

/// An incident as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// The incident id (its first alert's id).
    pub id: u64,
    /// Its first alert's time, ns since the Unix epoch.
    pub first_time: Timestamp,
    /// Its latest alert's time.
    pub last_time: Timestamp,
    /// The host it happened on.
    pub hostname: String,
    /// The top of its process tree, when it concerns processes.
    pub root_entity_id: Option<u64>,
    /// That process's pid.
    pub root_pid: Option<u32>,
    /// That process's executable ("" when unknown).
    pub root_exe: String,
    /// The highest severity of its rules.
    pub severity: Severity,
    /// 1-100 (see `edr_incident::Incident::score`).
    pub score: u8,
    /// Its alerts, repeats included.
    pub alert_count: u64,
    /// Repeats (same rule, same process) not sent to outputs again.
    pub suppressed: u64,
    /// Its rules, in the order first seen.
    pub rules: Vec<IncidentRule>,
    /// One line for people.
    pub summary: String,
}

const UPSERT: &str = "INSERT OR REPLACE INTO incidents (id, first_time, last_time, hostname, root_entity_id, root_pid, root_exe, severity, score, alert_count, suppressed, rules, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// Writes (or replaces) an incident's row.
pub(crate) fn upsert(conn: &Connection, i: &IncidentRecord) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(UPSERT)?;
    stmt.execute(params![
        i.id as i64,
        i.first_time as i64,
        i.last_time as i64,
        i.hostname,
        i.root_entity_id.map(|e| e as i64),
        i.root_pid,
        i.root_exe,
        i.severity.as_str(),
        i.score,
        i.alert_count.min(i64::MAX as u64) as i64,
        i.suppressed.min(i64::MAX as u64) as i64,
        serde_json::to_string(&i.rules).unwrap_or_else(|_| "[]".into()),
        i.summary,
    ])?;
    Ok(())
}

const COLS: &str = "id, first_time, last_time, hostname, root_entity_id, root_pid, root_exe, severity, score, alert_count, suppressed, rules, summary";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<IncidentRecord, StoreError>> {
    let id = row.get::<_, i64>(0)? as u64;
    let corrupt = |problem: String| StoreError::Corrupt { table: "incidents", id, problem };
    let severity = match row.get::<_, String>(7)?.parse::<Severity>() {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(e.to_string()))),
    };
    let rules = match serde_json::from_str::<Vec<IncidentRule>>(&row.get::<_, String>(11)?) {
        Ok(r) => r,
        Err(e) => return Ok(Err(corrupt(format!("rules is not a JSON list of rules: {e}")))),
    };
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Ok(IncidentRecord {
        id,
        first_time: count(1)?,
        last_time: count(2)?,
        hostname: row.get(3)?,
        root_entity_id: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        root_pid: row.get::<_, Option<i64>>(5)?.map(|v| v as u32),
        root_exe: row.get(6)?,
        severity,
        score: row.get::<_, i64>(8)?.clamp(0, 100) as u8,
        alert_count: count(9)?,
        suppressed: count(10)?,
        rules,
        summary: row.get(12)?,
    }))
}

fn collect(conn: &Pooled<'_>, sql: &str, params: impl rusqlite::Params) -> Result<Vec<IncidentRecord>, StoreError> {
    let what = "reading incidents";
    let mut stmt = conn.prepare_cached(sql).map_err(conn.err(what))?;
    let mut rows = stmt.query(params).map_err(conn.err(what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(conn.err(what))? {
        out.push(from_row(row).map_err(conn.err(what))??);
    }
    Ok(out)
}

/// Incidents active in `[since, until]` (their first..last span meets it),
/// latest first, at most `max`.
pub(crate) fn incidents(conn: &Pooled<'_>, since: Option<u64>, until: Option<u64>, max: usize) -> Result<Vec<IncidentRecord>, StoreError> {
    let lo = since.map_or(i64::MIN, |s| s.min(i64::MAX as u64) as i64);
    let hi = until.map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64);
    collect(
        conn,
        &format!("SELECT {COLS} FROM incidents WHERE last_time >= ?1 AND first_time <= ?2 ORDER BY last_time DESC, id DESC LIMIT ?3"),
        params![lo, hi, max.min(i64::MAX as usize) as i64],
    )
}

/// One incident.
pub(crate) fn incident(conn: &Pooled<'_>, id: u64) -> Result<Option<IncidentRecord>, StoreError> {
    Ok(collect(conn, &format!("SELECT {COLS} FROM incidents WHERE id = ?1"), [id as i64])?.pop())
}
