//! `edr-store`: the agent's always-on, searchable record of every event,
//! alert and response action.
//!
//! One SQLite file (bundled SQLite through rusqlite) in WAL mode. The agent
//! hands event batches, alerts and action records to a [`StoreWriter`]; a
//! background thread writes them in transactions of at most one flush
//! interval (1 s). Investigators read through [`Store`]: SQL over read-only
//! views ([`Store::query`]), an alert's [`Store::storyline`], timelines by
//! pid, process or path, command-line search, and ECS JSONL export that
//! `edr replay` reads back.
//!
//! ```no_run
//! use edr_store::{Store, StoreConfig, StorylineOptions};
//! use std::sync::Arc;
//! # fn main() -> Result<(), edr_store::StoreError> {
//! let store = Store::open(StoreConfig::new("/var/lib/edr/events.db"))?;
//! let mut next_id = store.max_event_id()? + 1; // ids continue after a restart
//! let writer = store.writer();
//! # let batch: Vec<edr_event::Event> = Vec::new();
//! if let Err(dropped) = writer.append_events(Arc::new(batch)) {
//!     eprintln!("{dropped}"); // counted by the store too; never blocks
//! }
//! writer.flush()?;
//! let story = store.storyline(7, StorylineOptions::default())?;
//! let rows = store.query("SELECT ts, exe, command_line FROM process WHERE name = 'curl' LIMIT 10")?;
//! # let _ = (&mut next_id, story, rows); Ok(()) }
//! ```
//!
//! # Schema
//!
//! (Every column is described in `SCHEMA.md` beside this crate's manifest.)
//!
//! * `events`: one row per event, keyed by the agent's event id: `time`
//!   (ns), `kind`, the columns investigations filter on (pid, ppid,
//!   entity_id, parent_entity_id, exe, command_line, cwd, uid, user, path,
//!   old_path, op, remote/local ip and port, transport, login_user,
//!   source_ip, success, service, method, exit_code, partial) and `body`,
//!   the whole event in a compact binary form ([`codec`]). Indexes: time;
//!   (entity_id, time); exec events by entity_id; (pid, time);
//!   parent_entity_id; (path, time); old_path.
//! * `alerts`: one row per alert with rule, severity, plugin, pack, event
//!   ids, message, the triggering process, and the alert's ECS document.
//!   Each carries its `incident_id`.
//! * `incidents`: alerts grouped by storyline ([`IncidentRecord`]): first
//!   and last time, host, process-tree root, severity, score, alert and
//!   repeat counts, rules, summary; replaced with each of its alerts.
//! * `actions`: the audit of response actions ([`ActionRecord`]).
//! * `meta`: row counts and id high-water marks, updated in the same
//!   transactions as the rows.
//! * `pack_floors`: the highest version of each pack ever activated, the
//!   agent's anti-rollback floor ([`PackFloors`]).
//! * Views, the operators' query surface: `process`, `file`, `network`,
//!   `login`, `alert`, `action`, `incident`, with friendly names, decoded enums, RFC
//!   3339 times (`ts`) and ECS-form entity ids.
//!
//! # Durability
//!
//! WAL with `synchronous = NORMAL` (see [`schema`] for why), checkpointed by
//! a thread of its own after each commit so the copy and its fsync stay off
//! the ingest path: a killed agent
//! loses only what was queued or in the open transaction, at most about one
//! flush interval; a power cut may also lose the transactions since the last
//! checkpoint; neither ever corrupts the file. The schema version is in
//! `PRAGMA user_version`; [`Store::open`] migrates older files and refuses
//! newer ones. One process writes a store at a time (a lock file beside it).
//!
//! # Retention
//!
//! By age and by size, oldest first, in chunks, with incremental vacuum:
//! see [`retention`]. The writer runs it every `retention_interval`;
//! [`Store::enforce_retention`] runs it now.
#![deny(missing_docs)]

pub mod action;
pub mod codec;
mod error;
mod incident;
mod investigate;
mod pack_floor;
mod read;
pub mod retention;
pub mod schema;
mod writer;

pub use action::ActionRecord;
pub use error::{Backpressure, StoreError};
pub use incident::{IncidentRecord, IncidentRule};
pub use investigate::{AlertRecord, Role, StoryEvent, StoryProcess, Storyline, StorylineOptions, TimelineKey};
pub use pack_floor::PackFloors;
pub use read::{parse_entity, QueryResult};
pub use retention::{RetentionPolicy, RetentionReport};
pub use writer::StoreWriter;

use edr_event::{Event, Timestamp};
use read::ReadPool;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file (created with its directory if missing). SQLite
    /// keeps `-wal` and `-shm` files beside it; the writer holds `<path>.lock`.
    pub path: PathBuf,
    /// Delete rows older than this.
    pub max_age: Option<Duration>,
    /// Keep the database's pages in use under this many bytes. The WAL
    /// beside it adds up to 64 MiB (up to 256 MiB during heavy ingest).
    pub max_bytes: Option<u64>,
    /// The longest a transaction stays open, and so the most a kill -9 loses. Default 1 s.
    pub flush_interval: Duration,
    /// Event batches the writer's queue holds before appends fail with
    /// [`Backpressure::Full`]. Default 256 (64k events in batches of 256).
    pub queue_batches: usize,
    /// How often the writer runs retention. Default 60 s.
    pub retention_interval: Duration,
    /// Statements run by the read API stop after this long. Default 30 s.
    pub query_timeout: Duration,
    /// Rows [`Store::query`] returns at most. Default 10,000.
    pub query_max_rows: usize,
    /// The writer's SQLite page cache, bytes. Index pages that recent events
    /// touch stay here; when the hot set outgrows it, every insert re-reads
    /// pages from the OS and ingest slows (see the figures in the crate's
    /// README). Memory is taken as the cache fills, not up front, and given
    /// back when a retention interval passes with nothing written. Default 64 MiB.
    pub writer_cache_bytes: u64,
    /// Bytes of the file each read connection maps into memory
    /// (`PRAGMA mmap_size`). Scans (command-line search, unindexed view
    /// filters) then read pages in place instead of copying each through a
    /// `pread`. The mapped pages are the OS page cache's, shared and
    /// reclaimable, but they count in the agent's resident size while
    /// mapped. 0 turns it off. Default 0.
    pub read_mmap_bytes: u64,
}

impl StoreConfig {
    /// Defaults for a store at `path`: no retention limit, 1 s flush
    /// interval, 256 queued batches.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            max_age: None,
            max_bytes: None,
            flush_interval: Duration::from_secs(1),
            queue_batches: 256,
            retention_interval: Duration::from_secs(60),
            query_timeout: Duration::from_secs(30),
            query_max_rows: 10_000,
            writer_cache_bytes: 64 << 20,
            read_mmap_bytes: 0,
        }
    }

    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy { max_age: self.max_age, max_bytes: self.max_bytes }
    }
}

/// The store's counters and sizes (for `edr status`, metrics and health events).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Events in the store.
    pub events: u64,
    /// Alerts in the store.
    pub alerts: u64,
    /// Actions in the store.
    pub actions: u64,
    /// The database file plus its WAL and shared-memory files.
    pub bytes_on_disk: u64,
    /// Bytes of the database's pages in use (what `max_bytes` limits).
    pub bytes_used: u64,
    /// The oldest event's time.
    pub oldest_time: Option<Timestamp>,
    /// The newest event's time.
    pub newest_time: Option<Timestamp>,
    /// Messages (event batches, alerts, actions) waiting in the writer's queues.
    pub writes_queued: usize,
    /// Event batches committed since open.
    pub batches_written: u64,
    /// Events committed since open.
    pub events_written: u64,
    /// Alerts committed since open.
    pub alerts_written: u64,
    /// Actions committed since open.
    pub actions_written: u64,
    /// Transactions committed since open.
    pub commits: u64,
    /// Events refused because the queue was full or the writer closed.
    pub events_dropped: u64,
    /// Alerts refused because the queue was full or the writer closed.
    pub alerts_dropped: u64,
    /// Actions refused because the queue was full or the writer closed.
    pub actions_dropped: u64,
    /// Failed writes (each rolled back; retried once).
    pub write_errors: u64,
    /// Events lost because their transaction failed twice.
    pub events_lost: u64,
    /// Events ignored because their id was already stored.
    pub duplicate_events: u64,
    /// Retention runs by the writer since open.
    pub retention_runs: u64,
    /// Events deleted by the writer's retention since open.
    pub retention_deleted_events: u64,
}

/// An open store: the writer's handle, and the read API.
///
/// `Store` is `Send + Sync`: share it (in an `Arc`) between the agent's
/// pipeline and its API. Reads use their own read-only connections and
/// never wait for the writer. Dropping the store commits what is queued
/// and stops the writer.
pub struct Store {
    path: PathBuf,
    pool: ReadPool,
    writer: StoreWriter,
    policy: RetentionPolicy,
    /// A second writable connection for `enforce_retention`; None when read-only.
    maintenance: Option<Mutex<Option<Connection>>>,
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("read_only", &self.maintenance.is_none()).finish()
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// The database and its `-wal` / `-shm` files: 0600 (SQLite gives the
/// latter the database's mode), never links; the database is created here,
/// empty, so that it never exists with a wider mode.
fn prepare_files(path: &Path) -> Result<(), StoreError> {
    let refused = |source: edr_datadir::DataDirError| StoreError::Io { what: "preparing the event store's files".into(), source: source.into() };
    edr_datadir::open_private_path(path, edr_datadir::Access::ReadWrite).map_err(refused)?;
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        edr_datadir::open_private_path(Path::new(&p), edr_datadir::Access::Existing).map_err(refused)?;
    }
    Ok(())
}

fn open_writable(path: &Path) -> Result<Connection, StoreError> {
    prepare_files(path)?;
    // NOFOLLOW: SQLite itself refuses a link in place of the database.
    let flags = OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    schema::configure_writer(&conn, path)?;
    Ok(conn)
}

impl Store {
    /// Opens the store at `cfg.path`, creating it (and its directory) or
    /// migrating an older schema, and starts the background writer.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let path = cfg.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Io { what: format!("creating the store directory {}", dir.display()), source })?;
        }
        let lock = lock_path(&path);
        // 0600, never through a link.
        let lock_file = edr_datadir::open_private_path(&lock, edr_datadir::Access::ReadWrite)
            .map_err(|e| StoreError::Io { what: "opening the store lock file".into(), source: e.into() })?
            .expect("ReadWrite creates the file");
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path, lock }),
            Err(std::fs::TryLockError::Error(source)) => return Err(StoreError::Io { what: format!("locking {}", lock.display()), source }),
        }
        let mut conn = open_writable(&path)?;
        schema::migrate(&mut conn, &path)?;
        let kib = (cfg.writer_cache_bytes / 1024).clamp(1024, i64::MAX as u64) as i64;
        conn.pragma_update(None, "cache_size", -kib).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        let writer = writer::spawn(
            conn,
            writer::WriterConfig {
                flush_interval: cfg.flush_interval,
                queue_batches: cfg.queue_batches,
                retention: cfg.policy(),
                retention_interval: cfg.retention_interval,
            },
        )?;
        tracing::info!(path = %path.display(), "event store open");
        Ok(Store {
            pool: ReadPool::new(&path, cfg.query_timeout, cfg.query_max_rows, cfg.read_mmap_bytes),
            path,
            writer,
            policy: cfg.policy(),
            maintenance: Some(Mutex::new(None)),
            _lock: Some(lock_file),
        })
    }

    /// Opens an existing store for reading only (for example from the CLI
    /// while the agent runs). Its writer refuses every append with
    /// [`Backpressure::Closed`]; `enforce_retention` returns [`StoreError::ReadOnly`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StoreError::Open { path: path.clone(), source };
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
        let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(open_err)?;
        let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(open_err)?;
        if app != schema::APPLICATION_ID {
            return Err(StoreError::NotAStore { path, found: app, expected: schema::APPLICATION_ID });
        }
        if version > schema::SCHEMA_VERSION {
            return Err(StoreError::TooNew { path, found: version, supported: schema::SCHEMA_VERSION });
        }
        let cfg = StoreConfig::new(&path);
        Ok(Store {
            pool: ReadPool::new(&path, cfg.query_timeout, cfg.query_max_rows, cfg.read_mmap_bytes),
            path,
            writer: writer::closed(),
            policy: RetentionPolicy::default(),
            maintenance: None,
            _lock: None,
        })
    }

    /// This handle with other limits for [`Store::query`]: a statement
    /// running past `timeout` is interrupted, and at most `max_rows` rows
    /// are returned (the result says `truncated` when more matched).
    /// Connections already pooled are not reused.
    pub fn with_query_limits(mut self, timeout: Duration, max_rows: usize) -> Store {
        let mmap = self.pool.mmap_bytes;
        self.pool = ReadPool::new(&self.path, timeout, max_rows, mmap);
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle to the background writer (cheap to clone).
    pub fn writer(&self) -> StoreWriter {
        self.writer.clone()
    }

    fn meta_max(&self, key: &str, table: &str) -> Result<u64, StoreError> {
        let conn = self.pool.get()?;
        let sql = format!("SELECT max(coalesce((SELECT value FROM meta WHERE key = '{key}'), 0), coalesce((SELECT max(id) FROM {table}), 0))");
        let v: i64 = conn.query_row(&sql, [], |r| r.get(0)).map_err(conn.err(format!("reading the highest {table} id")))?;
        Ok(v.max(0) as u64)
    }

    /// The highest event id ever committed (kept even after retention has
    /// deleted the row), 0 for a new store. Number new events from here + 1.
    pub fn max_event_id(&self) -> Result<u64, StoreError> {
        self.meta_max("max_event_id", "events")
    }

    /// The highest alert id ever committed, 0 for a new store.
    pub fn max_alert_id(&self) -> Result<u64, StoreError> {
        self.meta_max("max_alert_id", "alerts")
    }

    /// The highest action id ever committed, 0 for a new store.
    pub fn max_action_id(&self) -> Result<u64, StoreError> {
        self.meta_max("max_action_id", "actions")
    }

    /// Counters and sizes. Never fails: what cannot be read is left at zero (and logged).
    pub fn stats(&self) -> StoreStats {
        let c = &self.writer.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut s = StoreStats {
            writes_queued: self.writer.shared.queued(),
            batches_written: get(&c.batches_written),
            events_written: get(&c.events_written),
            alerts_written: get(&c.alerts_written),
            actions_written: get(&c.actions_written),
            commits: get(&c.commits),
            events_dropped: get(&c.events_dropped),
            alerts_dropped: get(&c.alerts_dropped),
            actions_dropped: get(&c.actions_dropped),
            write_errors: get(&c.write_errors),
            events_lost: get(&c.events_lost),
            duplicate_events: get(&c.duplicates),
            retention_runs: get(&c.retention_runs),
            retention_deleted_events: get(&c.retention_deleted),
            ..Default::default()
        };
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            s.bytes_on_disk += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        let mut read = || -> Result<(), StoreError> {
            let conn = self.pool.get()?;
            let what = "reading store statistics";
            let mut stmt = conn.prepare_cached("SELECT key, value FROM meta").map_err(conn.err(what))?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(conn.err(what))?;
            for row in rows {
                let (k, v) = row.map_err(conn.err(what))?;
                match k.as_str() {
                    "events" => s.events = v.max(0) as u64,
                    "alerts" => s.alerts = v.max(0) as u64,
                    "actions" => s.actions = v.max(0) as u64,
                    _ => {}
                }
            }
            let (oldest, newest): (Option<i64>, Option<i64>) = conn
                .query_row("SELECT (SELECT min(time) FROM events), (SELECT max(time) FROM events)", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(conn.err(what))?;
            s.oldest_time = oldest.map(|t| t as u64);
            s.newest_time = newest.map(|t| t as u64);
            let (size, count, free) = retention::page_usage(&conn).map_err(conn.err(what))?;
            s.bytes_used = count.saturating_sub(free) * size;
            Ok(())
        };
        if let Err(e) = read() {
            tracing::warn!(error = %e, "event store statistics incomplete");
        }
        s
    }

    /// Runs an operator's SQL: one read-only `SELECT` or `WITH` statement.
    /// Anything else (INSERT, DROP, ATTACH, PRAGMA writes, several
    /// statements) is refused with [`StoreError::QueryRefused`]; a statement
    /// running past `query_timeout` is interrupted ([`StoreError::QueryTimeout`]).
    /// Besides the views, queries may call `entity('<16 hex digits>')` (an
    /// ECS entity id as the stored integer) and `edr_ecs(id, time, partial, body)`
    /// (an event row as ECS JSON).
    pub fn query(&self, sql: &str) -> Result<QueryResult, StoreError> {
        read::run_query(&self.pool, sql)
    }

    /// One alert, or `None`.
    pub fn alert(&self, id: u64) -> Result<Option<AlertRecord>, StoreError> {
        investigate::alert(&self.pool.get()?, id)
    }

    /// Alerts in `[since, until]`, newest first, at most `limit`.
    pub fn alerts(&self, since: Option<u64>, until: Option<u64>, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        investigate::alerts(&self.pool.get()?, since, until, limit)
    }

    /// Incidents active in `[since, until]` (their first..last alert span
    /// meets it), the latest active first, at most `limit`.
    pub fn incidents(&self, since: Option<u64>, until: Option<u64>, limit: usize) -> Result<Vec<IncidentRecord>, StoreError> {
        incident::incidents(&self.pool.get()?, since, until, limit)
    }

    /// One incident, or `None`.
    pub fn incident(&self, id: u64) -> Result<Option<IncidentRecord>, StoreError> {
        incident::incident(&self.pool.get()?, id)
    }

    /// The alerts of one incident (repeats included), oldest first, at most `limit`.
    pub fn incident_alerts(&self, id: u64, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        investigate::incident_alerts(&self.pool.get()?, id, limit)
    }

    /// Action records in `[since, until]`, newest first, at most `limit`.
    pub fn actions(&self, since: Option<u64>, until: Option<u64>, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let lo = since.map_or(i64::MIN, |s| s.min(i64::MAX as u64) as i64);
        let hi = until.map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64);
        investigate::actions(
            &self.pool.get()?,
            "time BETWEEN ?1 AND ?2 ORDER BY time DESC, id DESC LIMIT ?3",
            rusqlite::params![lo, hi, limit.min(i64::MAX as usize) as i64],
        )
    }

    /// The story of an alert: the triggering process, its ancestors (a
    /// recursive walk up `parent_entity_id`), its descendants (a recursive
    /// CTE down it), their file, network and exit events, ordered by time,
    /// other alerts on those processes and the actions taken for this alert.
    pub fn storyline(&self, alert_id: u64, opts: StorylineOptions) -> Result<Storyline, StoreError> {
        investigate::storyline(&self.pool.get()?, alert_id, &opts)
    }

    /// Events with id greater than `after`, lowest id first, at most `limit`
    /// (what the fleet link forwards to the central record).
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        investigate::events_after(&self.pool.get()?, after, limit)
    }

    /// Events of a pid, a process (entity id) or a path in `[since, until]`
    /// (ns, inclusive), oldest first, at most `limit`.
    pub fn timeline(&self, key: TimelineKey, since: Option<u64>, until: Option<u64>, limit: usize) -> Result<Vec<Event>, StoreError> {
        investigate::timeline(&self.pool.get()?, &key, since, until, limit)
    }

    /// Exec events whose command line contains `needle` (ASCII
    /// case-insensitive; `%` and `_` match literally) in `[since, until]`,
    /// newest first, at most `limit`. This scans exec rows (no text index):
    /// give a time range on a large store.
    pub fn search_command_line(&self, needle: &str, since: Option<u64>, until: Option<u64>, limit: usize) -> Result<Vec<Event>, StoreError> {
        investigate::search_command_line(&self.pool.get()?, needle, since, until, limit)
    }

    /// Writes the events in `[since, until]` to `out` as ECS JSON lines
    /// (`edr_event::ecs::event_to_ecs`, event ids preserved), oldest first;
    /// `edr replay` reads the result back. Returns how many were written.
    pub fn export(&self, since: Option<u64>, until: Option<u64>, out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        investigate::export(&self.pool, since, until, out)
    }

    /// Runs retention now (the writer also runs it every
    /// `retention_interval`), to completion, in chunks that interleave with
    /// the writer's transactions.
    pub fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        let Some(slot) = &self.maintenance else { return Err(StoreError::ReadOnly) };
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(open_writable(&self.path)?);
        }
        let conn = guard.as_ref().expect("just opened");
        retention::enforce(conn, &self.policy, None)
    }

    /// Runs SQLite's `PRAGMA integrity_check` (reads the whole file: slow on
    /// a large store). Returns the problems found; empty when the file is sound.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let open_err = |source| StoreError::Open { path: self.path.clone(), source };
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(StoreError::sql("running integrity_check"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(StoreError::sql("running integrity_check"))?;
        let mut problems = Vec::new();
        for r in rows {
            let line = r.map_err(StoreError::sql("running integrity_check"))?;
            if line != "ok" {
                problems.push(line);
            }
        }
        Ok(problems)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.writer.shared.shutdown();
    }
}
