//! Errors of the store.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file (or its directory) could not be created or opened.
    #[error("cannot open the event store at {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Another process (or another `Store` in this one) already writes this store.
    #[error("the event store at {path} is already in use by another writer (lock file {lock} is held); stop the other agent or point this one at another data directory")]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file that is held.
        lock: PathBuf,
    },
    /// An I/O error outside SQLite (lock file, directory, export output).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is a SQLite database but not an edr store.
    #[error(
        "{path} is not an edr event store (application_id {found:#x}, expected {expected:#x}); refusing to touch it: move it aside or choose another path"
    )]
    NotAStore {
        /// The database file.
        path: PathBuf,
        /// The application id found in the file.
        found: i32,
        /// The application id of an edr store.
        expected: i32,
    },
    /// The store was written by a newer agent with a schema this one does not know.
    #[error("the event store at {path} has schema version {found}, newer than this agent understands ({supported}); upgrade the agent, or move the store aside to start a new one")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version in the file.
        found: i32,
        /// The newest schema version this build knows.
        supported: i32,
    },
    /// An edr store whose schema version no agent ever wrote (negative, or
    /// 0 with tables in it): damaged or tampered with, not migrated.
    #[error(
        "the event store at {path} has schema version {found}, which no agent writes (the file is damaged or was edited); move it aside to start a new one"
    )]
    BadVersion {
        /// The database file.
        path: PathBuf,
        /// The schema version in the file.
        found: i32,
    },
    /// A SQL statement failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// `Store::query` refused the statement: it is not a single read-only SELECT.
    #[error("query refused: {reason}")]
    QueryRefused {
        /// Why, in words an operator can act on.
        reason: String,
    },
    /// A query ran past its time limit and was interrupted.
    #[error("query interrupted after {seconds:.1} s (the limit is {limit_seconds:.1} s); narrow it with a time range (`time >= ...`) or an indexed column (id, time, pid, entity, parent_entity, path)")]
    QueryTimeout {
        /// How long it ran.
        seconds: f64,
        /// The configured limit.
        limit_seconds: f64,
    },
    /// A stored row could not be decoded.
    #[error("stored {table} row {id} is damaged: {problem}")]
    Corrupt {
        /// `events`, `alerts`, `actions` or `incidents`.
        table: &'static str,
        /// The row id.
        id: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// No alert has this id (it was never stored, or retention removed it).
    #[error("no alert with id {0} in the store (never stored, or removed by retention)")]
    NoSuchAlert(u64),
    /// The background writer has stopped (shut down, or it panicked).
    #[error("the store's writer has stopped{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    WriterStopped(Option<String>),
    /// This store was opened read-only and cannot write.
    #[error("the store was opened read-only; open it with Store::open to write or enforce retention")]
    ReadOnly,
}

impl StoreError {
    pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let what = what.into();
        move |source| StoreError::Sql { what, source }
    }
}

/// An append the writer could not take without blocking the caller.
///
/// The caller counts these (the agent reports them in its status and health
/// events); the store counts them too, in [`crate::StoreStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Backpressure {
    /// The writer's queue is full: the disk or the writer is slower than the event rate.
    #[error("event store queue full: dropped {events} events, {alerts} alerts, {actions} actions")]
    Full {
        /// Events in the dropped message.
        events: usize,
        /// Alerts in the dropped message.
        alerts: usize,
        /// Actions in the dropped message.
        actions: usize,
    },
    /// The writer has shut down (or the store was opened read-only).
    #[error("event store writer is closed: dropped {events} events, {alerts} alerts, {actions} actions")]
    Closed {
        /// Events in the dropped message.
        events: usize,
        /// Alerts in the dropped message.
        alerts: usize,
        /// Actions in the dropped message.
        actions: usize,
    },
}
