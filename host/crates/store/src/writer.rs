//! The background writer: batches arrive over bounded channels, and each
//! group of them (at most one flush interval's worth) is written in one
//! transaction.
//!
//! Two queues feed the writer thread: one for event batches and one for
//! alerts and actions, so a flood of events that fills the first never costs
//! an alert or an audit record. Appends never block: a full queue returns
//! [`Backpressure`] at once and the loss is counted. `flush` is the one
//! call that waits.
//!
//! A transaction opens with the first message after a commit, takes every
//! message that arrives, and commits when it has been open for the flush
//! interval (default 1 s), on `flush`, on shutdown, and within 100 ms of an
//! alert or action (so they become searchable quickly). A kill -9 therefore
//! loses the open transaction and what is still queued: at most about one
//! flush interval of events. Grouping batches matters for speed: an index
//! page that many events touch (the time index's last page, a busy
//! process's entity page) is written to the WAL once a commit, not once a
//! batch. If a transaction fails (disk full, I/O error), it is rolled back
//! and retried once (after retention, when the disk is full); if it fails
//! again its messages are counted as lost.

use crate::action::ActionRecord;
use crate::codec;
use crate::error::{Backpressure, StoreError};
use crate::incident::IncidentRecord;
use crate::retention::{self, RetentionPolicy};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use edr_event::{Alert, Event, EventBody};
use rusqlite::{CachedStatement, Connection};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How soon after an alert or action the open transaction commits.
const URGENT_COMMIT: Duration = Duration::from_millis(100);

/// How long one round of retention inside the writer may take before the
/// writer goes back to ingesting (the rest waits for the next round).
const RETENTION_BUDGET: Duration = Duration::from_millis(250);

/// A message to the writer thread.
pub(crate) enum Msg {
    Events(Arc<Vec<Event>>),
    Alert(Box<(Alert, Option<IncidentRecord>)>),
    Action(Box<ActionRecord>),
    Flush(Sender<Result<(), String>>),
    Shutdown,
}

/// Counters shared by the writer thread, the handles and `Store::stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub batches_written: AtomicU64,
    pub events_written: AtomicU64,
    pub alerts_written: AtomicU64,
    pub actions_written: AtomicU64,
    pub commits: AtomicU64,
    pub events_dropped: AtomicU64,
    pub alerts_dropped: AtomicU64,
    pub actions_dropped: AtomicU64,
    pub write_errors: AtomicU64,
    pub events_lost: AtomicU64,
    pub duplicates: AtomicU64,
    pub retention_runs: AtomicU64,
    pub retention_deleted: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the handles share: the queues' senders and the writer thread.
pub(crate) struct Shared {
    events_tx: Sender<Msg>,
    control_tx: Sender<Msg>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) counters: Arc<Counters>,
}

impl Shared {
    /// Queued messages (event batches, alerts, actions) not yet taken by the writer.
    pub(crate) fn queued(&self) -> usize {
        self.events_tx.len() + self.control_tx.len()
    }

    /// Stops the writer after it has committed everything queued; idempotent.
    pub(crate) fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Blocks only until the writer takes it; the writer drains the queues first.
        let _ = self.events_tx.send(Msg::Shutdown);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the event store writer thread panicked");
            }
        }
    }
}

/// A cloneable handle to the store's background writer.
///
/// Appends return at once: `Err(Backpressure)` when the queue is full (the
/// caller counts it; the store counts it too). Dropping handles does not stop
/// the writer; [`StoreWriter::shutdown`] or dropping the [`crate::Store`] does.
#[derive(Clone)]
pub struct StoreWriter {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").field("queued", &self.shared.queued()).finish()
    }
}

impl StoreWriter {
    fn send(&self, tx: &Sender<Msg>, msg: Msg, events: usize, alerts: usize, actions: usize) -> Result<(), Backpressure> {
        let c = &self.shared.counters;
        let count = || {
            Counters::add(&c.events_dropped, events as u64);
            Counters::add(&c.alerts_dropped, alerts as u64);
            Counters::add(&c.actions_dropped, actions as u64);
        };
        if self.shared.closed.load(Ordering::Relaxed) {
            count();
            return Err(Backpressure::Closed { events, alerts, actions });
        }
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                count();
                Err(Backpressure::Full { events, alerts, actions })
            }
            Err(TrySendError::Disconnected(_)) => {
                count();
                Err(Backpressure::Closed { events, alerts, actions })
            }
        }
    }

    /// Queues a batch of events (ids already assigned by the agent). The
    /// batch is shared, not copied: the agent can hand the same `Arc` to the
    /// plugins.
    pub fn append_events(&self, events: Arc<Vec<Event>>) -> Result<(), Backpressure> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        self.send(&self.shared.events_tx, Msg::Events(events), n, 0, 0)
    }

    /// Queues an alert (on the alerts-and-actions queue, which event floods do not fill).
    pub fn append_alert(&self, alert: &Alert) -> Result<(), Backpressure> {
        self.send(&self.shared.control_tx, Msg::Alert(Box::new((alert.clone(), None))), 0, 1, 0)
    }

    /// Queues an alert with its incident as it stands after the alert: the
    /// alert is recorded with `incident_id`, and the incident's row is
    /// written (or replaced) in the same transaction.
    pub fn append_alert_in(&self, alert: &Alert, incident: IncidentRecord) -> Result<(), Backpressure> {
        self.send(&self.shared.control_tx, Msg::Alert(Box::new((alert.clone(), Some(incident)))), 0, 1, 0)
    }

    /// Queues the audit record of a response action. A record whose id is
    /// already stored replaces it: append the decision first, then the same
    /// id again with its `outcome` once the action has run.
    pub fn append_action(&self, record: ActionRecord) -> Result<(), Backpressure> {
        self.send(&self.shared.control_tx, Msg::Action(Box::new(record)), 0, 0, 1)
    }

    /// Waits until everything appended before this call is committed. The
    /// only call that blocks: it waits for room in the queue and for the commit.
    pub fn flush(&self) -> Result<(), StoreError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(StoreError::WriterStopped(Some("shut down".into())));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared.events_tx.send(Msg::Flush(tx)).map_err(|_| StoreError::WriterStopped(Some("its queue is closed".into())))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::WriterStopped(Some(format!("the commit failed: {e}")))),
            Err(_) => Err(StoreError::WriterStopped(Some("it exited before committing".into()))),
        }
    }

    /// Commits everything queued and stops the writer (for every handle:
    /// later appends return `Backpressure::Closed`). Waits for the writer thread.
    pub fn shutdown(self) {
        self.shared.shutdown();
    }
}

/// Settings of the writer thread.
pub(crate) struct WriterConfig {
    pub flush_interval: Duration,
    pub queue_batches: usize,
    pub retention: RetentionPolicy,
    pub retention_interval: Duration,
}

/// WAL pages after which the writer checkpoints by itself, should the
/// checkpointer thread fall behind (256 MiB at 4 KiB pages). One second of
/// heavy ingest can write tens of MiB of WAL; below this the checkpointer
/// thread does all the copying.
const AUTOCHECKPOINT_PAGES: i64 = 65_536;

/// Starts the checkpointer: a thread with its own connection that copies
/// the WAL back into the database after each commit (`wal_checkpoint(PASSIVE)`,
/// which never blocks the writer or readers). Doing it here rather than in
/// the writer's commit (SQLite's default auto-checkpoint) keeps the copy and
/// its fsync off the ingest path.
fn spawn_checkpointer(path: &std::path::Path) -> Result<(Sender<()>, JoinHandle<()>), StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let handle = std::thread::Builder::new()
        .name("edr-store-checkpoint".into())
        .spawn(move || {
            for () in rx {
                let r: rusqlite::Result<(i64, i64, i64)> = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
                match r {
                    Ok((_, log, done)) => tracing::trace!(wal_pages = log, checkpointed = done, "event store checkpoint"),
                    Err(e) => tracing::warn!(error = %e, "event store checkpoint failed; the writer's auto-checkpoint takes over"),
                }
            }
        })
        .map_err(|source| StoreError::Io { what: "starting the event store checkpoint thread".into(), source })?;
    Ok((tx, handle))
}

/// Starts the writer thread on `conn`.
pub(crate) fn spawn(conn: Connection, cfg: WriterConfig) -> Result<StoreWriter, StoreError> {
    let path = conn.path().map(std::path::PathBuf::from).unwrap_or_default();
    let (checkpoint_tx, checkpointer) = spawn_checkpointer(&path)?;
    conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES).map_err(|source| StoreError::Open { path: path.clone(), source })?;
    let (events_tx, events_rx) = crossbeam_channel::bounded(cfg.queue_batches.max(1));
    // Alerts and actions are rare and small; their own queue keeps them safe from event floods.
    let (control_tx, control_rx) = crossbeam_channel::bounded(cfg.queue_batches.max(1024));
    let counters = Arc::new(Counters::default());
    let mut w = Writer {
        conn,
        events_rx,
        control_rx,
        counters: counters.clone(),
        flush_interval: cfg.flush_interval.max(Duration::from_millis(1)),
        retention: cfg.retention,
        retention_interval: cfg.retention_interval,
        next_maintenance: Instant::now(),
        txn: None,
        pending: Vec::new(),
        buf: Vec::with_capacity(1024),
        cmdline: String::with_capacity(256),
        checkpoint_tx: Some(checkpoint_tx),
        checkpointer: Some(checkpointer),
        commits_at_maintenance: u64::MAX,
    };
    let thread = std::thread::Builder::new()
        .name("edr-store-writer".into())
        .spawn(move || w.run())
        .map_err(|source| StoreError::Io { what: "starting the event store writer thread".into(), source })?;
    Ok(StoreWriter { shared: Arc::new(Shared { events_tx, control_tx, closed: AtomicBool::new(false), thread: Mutex::new(Some(thread)), counters }) })
}

/// A handle whose appends all fail with `Closed` (for a read-only store).
pub(crate) fn closed() -> StoreWriter {
    let (events_tx, _) = crossbeam_channel::bounded(1);
    let (control_tx, _) = crossbeam_channel::bounded(1);
    StoreWriter {
        shared: Arc::new(Shared { events_tx, control_tx, closed: AtomicBool::new(true), thread: Mutex::new(None), counters: Arc::new(Counters::default()) }),
    }
}

/// The open transaction's bookkeeping.
struct Txn {
    started: Instant,
    commit_by: Instant,
    events: u64,
    alerts: u64,
    actions: u64,
    batches: u64,
    duplicates: u64,
    max_event_id: Option<u64>,
    max_alert_id: Option<u64>,
    max_action_id: Option<u64>,
}

/// A message written in the open transaction, kept to retry it once.
enum Written {
    Events(Arc<Vec<Event>>),
    Alert(Box<(Alert, Option<IncidentRecord>)>),
    Action(Box<ActionRecord>),
}

struct Writer {
    conn: Connection,
    events_rx: Receiver<Msg>,
    control_rx: Receiver<Msg>,
    counters: Arc<Counters>,
    flush_interval: Duration,
    retention: RetentionPolicy,
    retention_interval: Duration,
    next_maintenance: Instant,
    txn: Option<Txn>,
    pending: Vec<Written>,
    buf: Vec<u8>,
    cmdline: String,
    checkpoint_tx: Option<Sender<()>>,
    checkpointer: Option<JoinHandle<()>>,
    commits_at_maintenance: u64,
}

const INSERT_EVENT: &str = "INSERT OR IGNORE INTO events (id, time, kind, pid, entity_id, parent_entity_id, ppid, exe, command_line, path, op, remote_ip, remote_port, local_ip, local_port, transport, uid, user, cwd, old_path, exit_code, login_user, source_ip, success, service, method, partial, body, gid, cgroup_id, netns, bytes_sent, bytes_received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33)";

const INSERT_ALERT: &str = "INSERT OR REPLACE INTO alerts (id, time, rule_id, rule_name, severity, score, plugin, pack_id, pack_version, signer, event_ids, techniques, message, entity_id, pid, ecs, incident_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

const INSERT_ACTION: &str = "INSERT OR REPLACE INTO actions (id, time, requester, action, target, decision, outcome, reason, alert_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Binds one event to the prepared insert and runs it; returns rows inserted (0: duplicate id).
fn insert_event(stmt: &mut CachedStatement<'_>, e: &Event, buf: &mut Vec<u8>, cmdline: &mut String) -> rusqlite::Result<usize> {
    use codec::{file_op_code, kind_code, network_op_code, transport_code};
    // Start from all-NULL, then fill the kind's columns.
    for i in (4..=26).chain(29..=33) {
        stmt.raw_bind_parameter(i, rusqlite::types::Null)?;
    }
    stmt.raw_bind_parameter(1, e.id as i64)?;
    stmt.raw_bind_parameter(2, e.time as i64)?;
    stmt.raw_bind_parameter(3, kind_code(e.kind()))?;
    match &e.body {
        EventBody::ProcessExec(x) => {
            stmt.raw_bind_parameter(4, x.pid)?;
            stmt.raw_bind_parameter(5, x.entity_id as i64)?;
            if x.parent_entity_id != 0 {
                stmt.raw_bind_parameter(6, x.parent_entity_id as i64)?;
            }
            stmt.raw_bind_parameter(7, x.ppid)?;
            stmt.raw_bind_parameter(8, x.exe.as_str())?;
            cmdline.clear();
            for (i, a) in x.argv.iter().enumerate() {
                if i > 0 {
                    cmdline.push(' ');
                }
                cmdline.push_str(a);
            }
            stmt.raw_bind_parameter(9, cmdline.as_str())?;
            stmt.raw_bind_parameter(17, x.uid)?;
            stmt.raw_bind_parameter(18, x.user.as_str())?;
            stmt.raw_bind_parameter(19, x.cwd.as_str())?;
            stmt.raw_bind_parameter(29, x.gid)?;
            stmt.raw_bind_parameter(30, x.cgroup_id as i64)?;
        }
        EventBody::ProcessExit(x) => {
            stmt.raw_bind_parameter(4, x.pid)?;
            if x.entity_id != 0 {
                stmt.raw_bind_parameter(5, x.entity_id as i64)?;
            }
            stmt.raw_bind_parameter(21, x.exit_code)?;
        }
        EventBody::File(f) => {
            stmt.raw_bind_parameter(4, f.pid)?;
            stmt.raw_bind_parameter(5, f.entity_id.map(|v| v as i64))?;
            stmt.raw_bind_parameter(8, f.exe.as_deref())?;
            stmt.raw_bind_parameter(10, f.path.as_str())?;
            stmt.raw_bind_parameter(11, file_op_code(f.op))?;
            stmt.raw_bind_parameter(17, f.uid)?;
            stmt.raw_bind_parameter(20, f.old_path.as_deref())?;
        }
        EventBody::Network(n) => {
            stmt.raw_bind_parameter(4, n.pid)?;
            stmt.raw_bind_parameter(5, n.entity_id.map(|v| v as i64))?;
            stmt.raw_bind_parameter(8, n.exe.as_deref())?;
            stmt.raw_bind_parameter(11, network_op_code(n.op))?;
            stmt.raw_bind_parameter(12, n.remote_ip.as_str())?;
            stmt.raw_bind_parameter(13, n.remote_port)?;
            stmt.raw_bind_parameter(14, n.local_ip.as_str())?;
            stmt.raw_bind_parameter(15, n.local_port)?;
            stmt.raw_bind_parameter(16, transport_code(n.transport))?;
            stmt.raw_bind_parameter(17, n.uid)?;
            stmt.raw_bind_parameter(31, n.netns.map(|v| v as i64))?;
            stmt.raw_bind_parameter(32, n.bytes_sent.map(|v| v as i64))?;
            stmt.raw_bind_parameter(33, n.bytes_received.map(|v| v as i64))?;
        }
        EventBody::Login(l) => {
            stmt.raw_bind_parameter(4, l.pid)?;
            stmt.raw_bind_parameter(22, l.user.as_str())?;
            stmt.raw_bind_parameter(23, l.source_ip.as_deref())?;
            stmt.raw_bind_parameter(24, l.success)?;
            stmt.raw_bind_parameter(25, l.service.as_str())?;
            stmt.raw_bind_parameter(26, l.method.as_str())?;
        }
    }
    stmt.raw_bind_parameter(27, e.partial)?;
    buf.clear();
    codec::encode_body(e, buf);
    stmt.raw_bind_parameter(28, buf.as_slice())?;
    stmt.raw_execute()
}

/// True when `id` is already a row of `table` (alerts or actions).
fn exists(conn: &Connection, table: &str, id: u64) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(&format!("SELECT 1 FROM {table} WHERE id = ?1"))?;
    stmt.exists([id as i64])
}

/// Inserts (or, for an id already stored, replaces) an alert; true when it is new.
fn insert_alert(conn: &Connection, a: &Alert, incident: Option<u64>) -> rusqlite::Result<bool> {
    let new = !exists(conn, "alerts", a.id)?;
    let f = &a.finding;
    let ecs = edr_event::ecs::alert_to_ecs(a, &Default::default());
    let (entity, pid) = match &a.event {
        Some(ev) => (ev.entity_id().filter(|&e| e != 0).map(|e| e as i64), ev.pid()),
        None => (None, None),
    };
    let mut stmt = conn.prepare_cached(INSERT_ALERT)?;
    stmt.execute(rusqlite::params![
        a.id as i64,
        a.time as i64,
        f.rule_id,
        f.title,
        f.severity.as_str(),
        f.severity.ecs_score(),
        a.plugin,
        a.pack.as_ref().map(|p| p.id.as_str()),
        a.pack.as_ref().map(|p| p.version.as_str()),
        a.pack.as_ref().map(|p| p.signer.as_str()),
        serde_json::to_string(&f.event_ids).unwrap_or_else(|_| "[]".into()),
        serde_json::to_string(&f.techniques).unwrap_or_else(|_| "[]".into()),
        f.message,
        entity,
        pid,
        ecs.to_string(),
        incident.map(|i| i as i64),
    ])?;
    Ok(new)
}

/// Inserts (or, for an id already stored, replaces: the response engine
/// records the outcome under the decision's id) an action; true when it is new.
fn insert_action(conn: &Connection, r: &ActionRecord) -> rusqlite::Result<bool> {
    let new = !exists(conn, "actions", r.id)?;
    let mut stmt = conn.prepare_cached(INSERT_ACTION)?;
    stmt.execute(rusqlite::params![
        r.id as i64,
        r.time as i64,
        r.requester,
        r.action,
        r.target,
        r.decision.as_str(),
        r.outcome,
        r.reason,
        r.alert_id.map(|v| v as i64),
        r.detail.to_string(),
    ])?;
    Ok(new)
}

fn max_opt(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl Writer {
    fn run(&mut self) {
        tracing::debug!("event store writer started");
        loop {
            let now = Instant::now();
            if let Some(t) = &self.txn {
                if now >= t.commit_by {
                    let _ = self.commit();
                    continue;
                }
            } else if now >= self.next_maintenance {
                self.maintenance();
                continue;
            }
            let deadline = self.txn.as_ref().map_or(self.next_maintenance, |t| t.commit_by);
            let timeout = deadline.saturating_duration_since(now);
            let msg = crossbeam_channel::select! {
                recv(self.control_rx) -> m => match m { Ok(m) => Some(m), Err(_) => Some(Msg::Shutdown) },
                recv(self.events_rx) -> m => match m { Ok(m) => Some(m), Err(_) => Some(Msg::Shutdown) },
                default(timeout) => None,
            };
            let Some(msg) = msg else { continue };
            if !self.handle(msg) {
                break;
            }
        }
        // Stop the checkpointer; closing the last connection then checkpoints
        // and removes the WAL.
        self.checkpoint_tx = None;
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA optimize;") {
            tracing::debug!(error = %e, "PRAGMA optimize at shutdown failed");
        }
        tracing::debug!("event store writer stopped");
    }

    /// Handles one message; false when the writer must stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Events(b) => self.write(Written::Events(b)),
            Msg::Alert(a) => self.write(Written::Alert(a)),
            Msg::Action(r) => self.write(Written::Action(r)),
            Msg::Flush(ack) => {
                // Alerts and actions sent before the flush are already in their queue.
                self.drain_control();
                let result = self.commit();
                let _ = ack.send(result);
            }
            Msg::Shutdown => {
                self.drain_control();
                while let Ok(m) = self.events_rx.try_recv() {
                    match m {
                        Msg::Flush(ack) => {
                            let _ = ack.send(self.commit());
                        }
                        Msg::Shutdown => {}
                        other => {
                            self.handle(other);
                        }
                    }
                }
                let _ = self.commit();
                return false;
            }
        }
        true
    }

    fn drain_control(&mut self) {
        while let Ok(m) = self.control_rx.try_recv() {
            self.handle(m);
        }
    }

    fn begin(&mut self) -> rusqlite::Result<()> {
        if self.txn.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let now = Instant::now();
            self.txn = Some(Txn {
                started: now,
                commit_by: now + self.flush_interval,
                events: 0,
                alerts: 0,
                actions: 0,
                batches: 0,
                duplicates: 0,
                max_event_id: None,
                max_alert_id: None,
                max_action_id: None,
            });
        }
        Ok(())
    }

    /// Writes one message into the open transaction (opening one if needed).
    fn write(&mut self, w: Written) {
        if let Err(e) = self.begin().and_then(|()| self.apply(&w)) {
            self.pending.push(w);
            self.fail_and_retry(e);
            return;
        }
        self.pending.push(w);
    }

    fn apply(&mut self, w: &Written) -> rusqlite::Result<()> {
        let t = self.txn.as_mut().expect("begin() opened a transaction");
        match w {
            Written::Events(batch) => {
                let mut stmt = self.conn.prepare_cached(INSERT_EVENT)?;
                for e in batch.iter() {
                    if insert_event(&mut stmt, e, &mut self.buf, &mut self.cmdline)? == 1 {
                        t.events += 1;
                    } else {
                        t.duplicates += 1;
                    }
                    t.max_event_id = max_opt(t.max_event_id, e.id);
                }
                t.batches += 1;
            }
            Written::Alert(w) => {
                let (a, incident) = &**w;
                if insert_alert(&self.conn, a, incident.as_ref().map(|i| i.id))? {
                    t.alerts += 1;
                }
                if let Some(i) = incident {
                    crate::incident::upsert(&self.conn, i)?;
                }
                t.max_alert_id = max_opt(t.max_alert_id, a.id);
                t.commit_by = t.commit_by.min(Instant::now() + URGENT_COMMIT);
            }
            Written::Action(r) => {
                if insert_action(&self.conn, r)? {
                    t.actions += 1;
                }
                t.max_action_id = max_opt(t.max_action_id, r.id);
                t.commit_by = t.commit_by.min(Instant::now() + URGENT_COMMIT);
            }
        }
        Ok(())
    }

    /// Updates the counters in `meta` and commits; on failure retries once.
    fn commit(&mut self) -> Result<(), String> {
        let Some(t) = &self.txn else { return Ok(()) };
        let result = self.finish(t.events, t.alerts, t.actions, [t.max_event_id, t.max_alert_id, t.max_action_id]);
        match result {
            Ok(()) => {
                let t = self.txn.take().expect("checked above");
                let c = &self.counters;
                Counters::add(&c.commits, 1);
                Counters::add(&c.batches_written, t.batches);
                Counters::add(&c.events_written, t.events);
                Counters::add(&c.alerts_written, t.alerts);
                Counters::add(&c.actions_written, t.actions);
                if t.duplicates > 0 {
                    Counters::add(&c.duplicates, t.duplicates);
                    tracing::warn!(duplicates = t.duplicates, "event ids already in the store were ignored; is the agent reusing ids?");
                }
                tracing::trace!(events = t.events, ms = t.started.elapsed().as_millis() as u64, "event store commit");
                self.pending.clear();
                if let Some(tx) = &self.checkpoint_tx {
                    // One pending request is enough: it checkpoints everything committed by then.
                    let _ = tx.try_send(());
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                // The retry's outcome decides what flush() reports.
                if self.fail_and_retry(e) {
                    Ok(())
                } else {
                    Err(msg)
                }
            }
        }
    }

    fn finish(&self, events: u64, alerts: u64, actions: u64, maxima: [Option<u64>; 3]) -> rusqlite::Result<()> {
        let mut add = self.conn.prepare_cached("UPDATE meta SET value = value + ?2 WHERE key = ?1")?;
        for (key, n) in [("events", events), ("alerts", alerts), ("actions", actions)] {
            if n > 0 {
                add.execute(rusqlite::params![key, n as i64])?;
            }
        }
        let mut hw = self.conn.prepare_cached("UPDATE meta SET value = max(value, ?2) WHERE key = ?1")?;
        for (key, m) in ["max_event_id", "max_alert_id", "max_action_id"].into_iter().zip(maxima) {
            if let Some(m) = m {
                hw.execute(rusqlite::params![key, m as i64])?;
            }
        }
        self.conn.execute_batch("COMMIT")
    }

    /// Rolls back after `e`; replays the transaction's messages once in a new
    /// one (after retention when the disk is full); counts them lost if that fails too.
    fn fail_and_retry(&mut self, e: rusqlite::Error) -> bool {
        Counters::add(&self.counters.write_errors, 1);
        let _ = self.conn.execute_batch("ROLLBACK");
        self.txn = None;
        let pending = std::mem::take(&mut self.pending);
        let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
        tracing::error!(error = %e, messages = pending.len(), disk_full = full, "event store write failed; retrying once");
        if full {
            self.run_retention(None);
        }
        let retry = (|| -> rusqlite::Result<()> {
            self.begin()?;
            for w in &pending {
                self.apply(w)?;
            }
            let t = self.txn.as_ref().expect("opened");
            self.finish(t.events, t.alerts, t.actions, [t.max_event_id, t.max_alert_id, t.max_action_id])
        })();
        match retry {
            Ok(()) => {
                let t = self.txn.take().expect("opened");
                let c = &self.counters;
                Counters::add(&c.commits, 1);
                Counters::add(&c.batches_written, t.batches);
                Counters::add(&c.events_written, t.events);
                Counters::add(&c.alerts_written, t.alerts);
                Counters::add(&c.actions_written, t.actions);
                tracing::info!(messages = pending.len(), "event store write succeeded on retry");
                true
            }
            Err(e2) => {
                Counters::add(&self.counters.write_errors, 1);
                let _ = self.conn.execute_batch("ROLLBACK");
                self.txn = None;
                let lost: usize = pending.iter().map(|w| if let Written::Events(b) = w { b.len() } else { 0 }).sum();
                let alerts = pending.iter().filter(|w| matches!(w, Written::Alert(_))).count();
                let actions = pending.iter().filter(|w| matches!(w, Written::Action(_))).count();
                Counters::add(&self.counters.events_lost, lost as u64);
                tracing::error!(error = %e2, events = lost, alerts, actions, "event store write failed again; these records are lost");
                false
            }
        }
    }

    fn run_retention(&mut self, budget: Option<Duration>) -> bool {
        if self.retention.is_empty() {
            return true;
        }
        match retention::enforce(&self.conn, &self.retention, budget) {
            Ok(r) => {
                Counters::add(&self.counters.retention_runs, 1);
                Counters::add(&self.counters.retention_deleted, r.events_deleted);
                if r.events_deleted > 0 || r.alerts_deleted > 0 || r.actions_deleted > 0 {
                    tracing::info!(
                        events = r.events_deleted,
                        alerts = r.alerts_deleted,
                        actions = r.actions_deleted,
                        pages_freed = r.pages_freed,
                        complete = r.complete,
                        "event store retention"
                    );
                }
                r.complete
            }
            Err(e) => {
                Counters::add(&self.counters.write_errors, 1);
                tracing::error!(error = %e, "event store retention failed");
                true
            }
        }
    }

    /// Periodic work between transactions: retention in bounded steps, and
    /// giving the page cache back when nothing was written since last time
    /// (an idle agent should not keep a full cache resident).
    fn maintenance(&mut self) {
        let commits = self.counters.commits.load(Ordering::Relaxed);
        if commits == self.commits_at_maintenance {
            if let Err(e) = self.conn.release_memory() {
                tracing::debug!(error = %e, "releasing the writer's page cache failed");
            }
        }
        self.commits_at_maintenance = commits;
        let complete = self.run_retention(Some(RETENTION_BUDGET));
        // Unfinished retention continues soon, between ingest transactions.
        let next = if complete { self.retention_interval } else { Duration::from_millis(200) };
        self.next_maintenance = Instant::now() + next;
    }
}
