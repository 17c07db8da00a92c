//! Dispatch: every batch goes to every plugin, each on its own thread.
//!
//! A batch is encoded into the contract's wire form once and shared (`Arc`)
//! by every plugin. A plugin runs on a worker thread fed by a bounded queue;
//! the worker passes it only the event kinds it subscribed to, turns findings
//! into alerts, and sends them on. A slow or broken plugin therefore only
//! delays itself: its deadline bounds each call, strikes quarantine it, and in
//! live mode a full queue drops that plugin's batch (counted) instead of
//! stalling the others.
//!
//! Hot swap: a new version of a plugin travels down the same queue as the
//! batches. Batches queued before it finish on the old version, batches after
//! it run on the new one, and none is skipped or seen twice.

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use edr_event::wire::{EncodedBatch, WireEvent};
use edr_event::{time, Alert, Event, PackRef};
use edr_runtime::{Health, MetricsSnapshot, Plugin, PluginMetrics};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
/// Something that sees every batch as it leaves the pipeline (the events
/// file, the record, tests).
pub type BatchTap = Box<dyn FnMut(&std::sync::Arc<Batch>) + Send>;

/// A batch of events shared by all plugins and the record: the events
/// (shared, never copied), and their wire form.
pub struct Batch {
    /// The events.
    pub events: Arc<Vec<Event>>,
    /// Their wire form (encoded once).
    pub wire: EncodedBatch,
}

impl Batch {
    /// Encodes the events for the plugins.
    pub fn new(events: Vec<Event>) -> Arc<Self> {
        let wire = EncodedBatch::encode(&events);
        Arc::new(Batch { events: Arc::new(events), wire })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// How the dispatcher treats a full plugin queue.
#[derive(Debug, Clone, Copy)]
pub enum Backpressure {
    /// Wait as long as it takes (replay: nothing may be skipped).
    Block,
    /// Wait this long, then drop the batch for that plugin and count it.
    DropAfter(Duration),
}

enum Msg {
    Batch(Arc<Batch>),
    /// Replace the plugin (a new version); batches before this message ran on the old one.
    Swap(Box<Plugin>),
    /// Lift a quarantine (operator decision).
    Reenable,
    /// Replies once everything queued before it is done.
    Flush(Sender<()>),
}

/// What the status reporter can see of a worker's current plugin.
struct Shared {
    version: String,
    pack: Option<PackRef>,
    metrics: Arc<PluginMetrics>,
    health: Health,
}

struct Worker {
    tx: Sender<Msg>,
    handle: JoinHandle<()>,
    shared: Arc<Mutex<Shared>>,
    dropped_events: Arc<AtomicU64>,
}

/// A plugin was quarantined: the pack manager may roll its pack back.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// The plugin's key.
    pub key: String,
    /// Its pack.
    pub pack: Option<PackRef>,
    /// Why.
    pub reason: String,
}

/// Status of one plugin, for health lines and `edr status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    /// `pack-id/plugin` for pack plugins, the plugin name otherwise.
    pub key: String,
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its pack.
    pub pack: Option<PackRef>,
    /// `active`, or why it is quarantined.
    pub health: String,
    /// Events this plugin never saw because its queue was full.
    pub dropped_events: u64,
    /// Batches waiting in its queue.
    pub queued_batches: usize,
    /// Its runtime metrics.
    pub metrics: MetricsSnapshot,
}

/// Raises alerts of the agent itself (not of a plugin, e.g. isolation
/// tampering) on the same path as findings: stdout, alerts file, store,
/// remote outputs. Plugin name `edr-agent`.
#[derive(Clone)]
pub struct AgentAlerts {
    alerts: Sender<Alert>,
    ids: Arc<AtomicU64>,
}

impl AgentAlerts {
    /// Sends `finding` as an alert; false when the alert path is full or closed.
    pub fn raise(&self, finding: edr_event::Finding) -> bool {
        let alert = Alert { id: self.ids.fetch_add(1, Relaxed), time: time::now(), plugin: "edr-agent".into(), pack: None, finding, event: None };
        self.alerts.try_send(alert).is_ok()
    }
}

/// Fans batches out to the plugin workers.
pub struct Dispatcher {
    workers: BTreeMap<String, Worker>,
    backpressure: Backpressure,
    queue_batches: usize,
    alerts: Sender<Alert>,
    next_alert_id: Arc<AtomicU64>,
    quarantines: Option<Sender<Quarantined>>,
}

impl Dispatcher {
    /// A dispatcher with no plugins yet; alerts go to `alerts`, numbered from `first_alert_id`.
    pub fn new(alerts: Sender<Alert>, queue_batches: usize, backpressure: Backpressure, first_alert_id: u64) -> Self {
        Self {
            workers: BTreeMap::new(),
            backpressure,
            queue_batches,
            alerts,
            next_alert_id: Arc::new(AtomicU64::new(first_alert_id.max(1))),
            quarantines: None,
        }
    }

    /// A handle for alerts the agent raises itself, numbered with the plugins' alerts.
    pub fn agent_alerts(&self) -> AgentAlerts {
        AgentAlerts { alerts: self.alerts.clone(), ids: self.next_alert_id.clone() }
    }

    /// Where quarantine notices go.
    pub fn notify_quarantines(&mut self, tx: Sender<Quarantined>) {
        self.quarantines = Some(tx);
    }

    /// Installs a plugin under `key`: a new worker, or a swap on the existing one.
    pub fn install(&mut self, key: String, plugin: Plugin) {
        if let Some(w) = self.workers.get(&key) {
            if w.tx.send(Msg::Swap(Box::new(plugin))).is_ok() {
                return;
            }
            // The old worker is gone (it cannot be, short of a panic): start anew.
            tracing::error!(plugin = %key, "plugin worker had stopped; starting a new one");
            self.workers.remove(&key);
            return;
        }
        let (tx, rx) = bounded(self.queue_batches);
        let shared = Arc::new(Mutex::new(Shared {
            version: plugin.info().version.clone(),
            pack: plugin.pack().cloned(),
            metrics: plugin.metrics(),
            health: plugin.health().clone(),
        }));
        let ctx = WorkerContext {
            key: key.clone(),
            alerts: self.alerts.clone(),
            ids: self.next_alert_id.clone(),
            shared: shared.clone(),
            quarantines: self.quarantines.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("plugin-{}", plugin.name()))
            .spawn(move || run_worker(plugin, rx, ctx))
            .expect("spawning a plugin worker thread");
        self.workers.insert(key, Worker { tx, handle, shared, dropped_events: Arc::new(AtomicU64::new(0)) });
    }

    /// Removes a plugin once it has finished what is queued for it.
    pub fn remove(&mut self, key: &str) {
        if let Some(w) = self.workers.remove(key) {
            drop(w.tx);
            let _ = w.handle.join();
        }
    }

    /// Lifts a plugin's quarantine; false if there is no such plugin.
    pub fn reenable(&self, key: &str) -> bool {
        self.workers.get(key).is_some_and(|w| w.tx.send(Msg::Reenable).is_ok())
    }

    /// Number of plugins.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no plugin is loaded.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Hands a batch to every plugin.
    pub fn dispatch(&self, batch: Arc<Batch>) {
        for (key, w) in &self.workers {
            let msg = Msg::Batch(batch.clone());
            let sent = match self.backpressure {
                Backpressure::Block => w.tx.send(msg).is_ok(),
                Backpressure::DropAfter(wait) => match w.tx.send_timeout(msg, wait) {
                    Ok(()) => true,
                    Err(SendTimeoutError::Timeout(_)) => {
                        w.dropped_events.fetch_add(batch.len() as u64, Relaxed);
                        tracing::warn!(plugin = %key, events = batch.len(), "plugin queue full: batch dropped for this plugin");
                        true
                    }
                    Err(SendTimeoutError::Disconnected(_)) => false,
                },
            };
            if !sent {
                w.dropped_events.fetch_add(batch.len() as u64, Relaxed);
            }
        }
    }

    /// Waits until every batch dispatched so far has been processed.
    pub fn flush(&self) {
        let acks: Vec<Receiver<()>> = self
            .workers
            .values()
            .filter_map(|w| {
                let (tx, rx) = bounded(1);
                w.tx.send(Msg::Flush(tx)).ok().map(|_| rx)
            })
            .collect();
        for rx in acks {
            let _ = rx.recv();
        }
    }

    /// Per-plugin status.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.workers
            .iter()
            .map(|(key, w)| {
                let s = w.shared.lock().unwrap_or_else(|p| p.into_inner());
                PluginStatus {
                    key: key.clone(),
                    name: key.rsplit('/').next().unwrap_or(key).to_string(),
                    version: s.version.clone(),
                    pack: s.pack.clone(),
                    health: match &s.health {
                        Health::Active => "active".into(),
                        Health::Quarantined { reason, strikes } => format!("quarantined after {strikes} failures: {reason}"),
                    },
                    dropped_events: w.dropped_events.load(Relaxed),
                    queued_batches: w.tx.len(),
                    metrics: s.metrics.snapshot(),
                }
            })
            .collect()
    }

    /// Processes everything queued, then stops the workers.
    pub fn shutdown(self) {
        for (_, w) in self.workers {
            drop(w.tx);
            let _ = w.handle.join();
        }
    }
}

struct WorkerContext {
    key: String,
    alerts: Sender<Alert>,
    ids: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
    quarantines: Option<Sender<Quarantined>>,
}

fn run_worker(mut plugin: Plugin, rx: Receiver<Msg>, ctx: WorkerContext) {
    for msg in rx {
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Flush(ack) => {
                let _ = ack.send(());
                continue;
            }
            Msg::Swap(next) => {
                tracing::info!(plugin = %ctx.key, from = %plugin.info().version, to = %next.info().version, "plugin version swapped");
                plugin = *next;
                let mut s = ctx.shared.lock().unwrap_or_else(|p| p.into_inner());
                *s =
                    Shared { version: plugin.info().version.clone(), pack: plugin.pack().cloned(), metrics: plugin.metrics(), health: plugin.health().clone() };
                continue;
            }
            Msg::Reenable => {
                plugin.reenable();
                ctx.shared.lock().unwrap_or_else(|p| p.into_inner()).health = Health::Active;
                tracing::info!(plugin = %ctx.key, "quarantine lifted by the operator");
                continue;
            }
        };
        let selection: Vec<&WireEvent> = batch.wire.events.iter().filter(|e| plugin.wants(e.kind())).collect();
        if selection.is_empty() {
            continue;
        }
        let outcome = plugin.call(&batch.wire, &selection);
        if outcome.error.is_some() {
            let health = plugin.health().clone();
            let newly_quarantined = {
                let mut s = ctx.shared.lock().unwrap_or_else(|p| p.into_inner());
                let was = matches!(s.health, Health::Quarantined { .. });
                s.health = health.clone();
                !was && matches!(health, Health::Quarantined { .. })
            };
            if let (true, Some(tx), Health::Quarantined { reason, .. }) = (newly_quarantined, &ctx.quarantines, &health) {
                let _ = tx.send(Quarantined { key: ctx.key.clone(), pack: plugin.pack().cloned(), reason: reason.clone() });
            }
        }
        for finding in outcome.findings {
            let event = finding.event_ids.first().and_then(|id| batch.events.iter().find(|e| e.id == *id)).cloned();
            let alert =
                Alert { id: ctx.ids.fetch_add(1, Relaxed), time: time::now(), plugin: plugin.name().to_string(), pack: plugin.pack().cloned(), finding, event };
            if ctx.alerts.send(alert).is_err() {
                return;
            }
        }
    }
}
