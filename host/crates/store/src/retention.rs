//! Retention: by age and by size, oldest first, in small steps.
//!
//! * Age: rows (events, alerts, actions) whose `time` is older than
//!   `max_age` are deleted, and incidents whose latest alert is.
//! * Size: when the pages in use (`page_count - freelist_count`, times the
//!   page size) exceed `max_bytes`, the oldest events are deleted until use
//!   is back under 90% of it (the margin keeps retention from running on
//!   every tick). Alerts and actions are small and worth more than events:
//!   size retention deletes them only when no events are left.
//!
//! Deletes run in chunks of [`CHUNK`] rows, oldest `time` first through the
//! time index, each chunk its own short transaction, so ingest (which waits
//! for the write lock) stalls for one chunk at most; the writer thread gives
//! a round a time budget and resumes the rest later. Freed pages go to the
//! freelist; the file is opened with `auto_vacuum = INCREMENTAL`, and each
//! round ends with `PRAGMA incremental_vacuum(N)` in steps, which moves pages
//! from the end of the file into the holes and truncates it. In steady state
//! new rows reuse freed pages and the file stops growing at about
//! `max_bytes` (plus the WAL, which `journal_size_limit` keeps to 64 MiB
//! after checkpoints).

use crate::error::StoreError;
use rusqlite::Connection;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Rows deleted per transaction.
pub const CHUNK: usize = 5_000;

/// Pages released per `incremental_vacuum` step (16 MiB at 4 KiB pages).
const VACUUM_STEP: u64 = 4_096;

/// Use is brought back under this fraction of `max_bytes`.
const SIZE_TARGET: f64 = 0.9;

/// What to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete rows older than this.
    pub max_age: Option<Duration>,
    /// Keep the database's pages in use under this many bytes.
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// No limit at all: keep everything.
    pub fn is_empty(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// What one retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Events deleted.
    pub events_deleted: u64,
    /// Alerts deleted.
    pub alerts_deleted: u64,
    /// Actions deleted.
    pub actions_deleted: u64,
    /// Pages returned to the file system by `incremental_vacuum`.
    pub pages_freed: u64,
    /// Bytes in use (pages not on the freelist) before the run.
    pub bytes_used_before: u64,
    /// Bytes in use after the run.
    pub bytes_used_after: u64,
    /// Database file size after the run.
    pub file_bytes_after: u64,
    /// Everything the policy asked for is done (false: the time budget ran
    /// out first; the writer continues in its next round).
    pub complete: bool,
}

/// Page size, pages, and free pages of the main database.
pub(crate) fn page_usage(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok((size as u64, count as u64, free as u64))
}

fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let (size, count, free) = page_usage(conn)?;
    Ok(count.saturating_sub(free) * size)
}

/// Deletes up to `CHUNK` of the oldest rows of `table` (older than `cutoff`
/// when given) in one transaction; returns how many.
fn delete_chunk(conn: &Connection, table: &'static str, cutoff: Option<i64>) -> rusqlite::Result<u64> {
    let sql = format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE time < ?1 ORDER BY time LIMIT {CHUNK})");
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let n = conn.prepare_cached(&sql)?.execute([cutoff.unwrap_or(i64::MAX)])? as u64;
        if n > 0 {
            conn.prepare_cached("UPDATE meta SET value = max(0, value - ?2) WHERE key = ?1")?.execute(rusqlite::params![table, n as i64])?;
        }
        Ok(n)
    })();
    match result {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            Ok(n)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Runs the policy on a writable connection (not inside a transaction).
/// With a `budget`, stops between chunks once it is spent and reports
/// `complete: false`.
pub(crate) fn enforce(conn: &Connection, policy: &RetentionPolicy, budget: Option<Duration>) -> Result<RetentionReport, StoreError> {
    let started = Instant::now();
    let over_budget = || budget.is_some_and(|b| started.elapsed() >= b);
    let err = |what: &'static str| StoreError::sql(what);
    let mut report = RetentionReport { complete: true, ..Default::default() };
    report.bytes_used_before = used_bytes(conn).map_err(err("reading the store's page counts"))?;

    if let Some(age) = policy.max_age {
        let now = edr_event::time::now();
        let cutoff = now.saturating_sub(age.as_nanos().min(u64::MAX as u128) as u64) as i64;
        for (table, counter) in [("events", &mut report.events_deleted), ("alerts", &mut report.alerts_deleted), ("actions", &mut report.actions_deleted)] {
            loop {
                if over_budget() {
                    report.complete = false;
                    break;
                }
                let n = delete_chunk(conn, table, Some(cutoff)).map_err(err("deleting rows older than max_age"))?;
                *counter += n;
                if n < CHUNK as u64 {
                    break;
                }
            }
        }
        // Incidents whose latest alert is past the age limit (few rows: one statement).
        conn.execute("DELETE FROM incidents WHERE last_time < ?1", [cutoff]).map_err(err("deleting incidents older than max_age"))?;
    }

    if let Some(max) = policy.max_bytes {
        let target = (max as f64 * SIZE_TARGET) as u64;
        // A few rounds: estimate the rows to delete from the average row
        // size, delete them, vacuum, measure again.
        let mut used = used_bytes(conn).map_err(err("reading the store's page counts"))?;
        let mut rounds = 0;
        while used > max && report.complete {
            rounds += 1;
            let events: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'events'", [], |r| r.get(0)).map_err(err("reading the event count"))?;
            let table = if events > 0 { "events" } else { "alerts" };
            let rows: i64 = if events > 0 {
                events
            } else {
                conn.query_row("SELECT value FROM meta WHERE key = 'alerts'", [], |r| r.get(0)).map_err(err("reading the alert count"))?
            };
            if rows == 0 {
                tracing::warn!(used, max, "event store is over max_bytes with no events or alerts left to delete");
                break;
            }
            let per_row = (used / rows.max(1) as u64).max(1);
            let mut to_delete = ((used - target) / per_row).max(1);
            while to_delete > 0 {
                if over_budget() {
                    report.complete = false;
                    break;
                }
                let n = delete_chunk(conn, table, None).map_err(err("deleting the oldest rows for max_bytes"))?;
                if table == "events" {
                    report.events_deleted += n;
                } else {
                    report.alerts_deleted += n;
                }
                if n == 0 {
                    break;
                }
                to_delete = to_delete.saturating_sub(n);
            }
            report.pages_freed += vacuum(conn, budget.map(|b| b.saturating_sub(started.elapsed())))?;
            used = used_bytes(conn).map_err(err("reading the store's page counts"))?;
            if rounds >= 8 {
                // Deleting rows frees pages only once they are empty; if the
                // estimate keeps missing, the next run continues.
                report.complete = used <= max;
                break;
            }
        }
    }

    if report.events_deleted + report.alerts_deleted + report.actions_deleted > 0 {
        report.pages_freed += vacuum(conn, budget.map(|b| b.saturating_sub(started.elapsed())))?;
    }
    report.bytes_used_after = used_bytes(conn).map_err(err("reading the store's page counts"))?;
    let (size, count, _) = page_usage(conn).map_err(err("reading the store's page counts"))?;
    report.file_bytes_after = size * count;
    Ok(report)
}

/// Returns free pages to the file system in steps; returns how many.
fn vacuum(conn: &Connection, budget: Option<Duration>) -> Result<u64, StoreError> {
    let started = Instant::now();
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(StoreError::sql("reading the auto_vacuum mode"))?;
    if mode != 2 {
        // Not incremental (a file created elsewhere): pages are reused, never returned.
        return Ok(0);
    }
    let freelist = || -> Result<u64, StoreError> {
        let n: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).map_err(StoreError::sql("reading the freelist size"))?;
        Ok(n.max(0) as u64)
    };
    let mut freed = 0;
    let mut free = freelist()?;
    while free > 0 {
        let step = free.min(VACUUM_STEP);
        conn.execute_batch(&format!("PRAGMA incremental_vacuum({step})")).map_err(StoreError::sql("releasing free pages (incremental_vacuum)"))?;
        let now_free = freelist()?;
        if now_free >= free {
            tracing::warn!(free, "incremental_vacuum released no pages; leaving the freelist for reuse");
            break;
        }
        freed += free - now_free;
        free = now_free;
        if budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
    }
    Ok(freed)
}
