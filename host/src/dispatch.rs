//! Dispatch: every batch goes to every plugin, each on its own thread.
//!
//! A batch is encoded into the contract's wire form once and shared (`Arc`)
//! by every plugin. A plugin runs on a worker thread fed by a bounded queue;
//! the worker passes it only the event kinds it subscribed to, turns findings
//! into alerts, and sends them on. A slow or broken plugin therefore only delays itself: its deadline
//! bounds each call, strikes quarantine it, and in live mode a full queue
//! drops that plugin's batch (counted) instead of stalling the others.

use edr_event::wire::{EncodedBatch, WireEvent};
use edr_event::{time, Alert, Event};
use edr_runtime::{Health, MetricsSnapshot, Plugin, PluginMetrics};
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A batch of events shared by all plugins: the events, and their wire form.
pub struct Batch {
    pub events: Vec<Event>,
    pub wire: EncodedBatch,
}

impl Batch {
    /// Encodes the events for the plugins.
    pub fn new(events: Vec<Event>) -> Arc<Self> {
        let wire = EncodedBatch::encode(&events);
        Arc::new(Batch { events, wire })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
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
    /// Replies once everything queued before it is done.
    Flush(Sender<()>),
}

struct Worker {
    name: String,
    tx: Sender<Msg>,
    handle: JoinHandle<()>,
    metrics: Arc<PluginMetrics>,
    health: Arc<Mutex<Health>>,
    dropped_events: Arc<AtomicU64>,
    version: String,
}

/// Status of one plugin, for health lines and `edr status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub health: String,
    /// Events this plugin never saw because its queue was full.
    pub dropped_events: u64,
    pub queued_batches: usize,
    pub metrics: MetricsSnapshot,
}

/// Fans batches out to the plugin workers.
pub struct Dispatcher {
    workers: Vec<Worker>,
    backpressure: Backpressure,
}

impl Dispatcher {
    /// Starts one worker per plugin; alerts go to `alerts`.
    pub fn start(plugins: Vec<Plugin>, alerts: Sender<Alert>, queue_batches: usize, backpressure: Backpressure) -> Self {
        let next_alert_id = Arc::new(AtomicU64::new(1));
        let workers = plugins
            .into_iter()
            .map(|plugin| {
                let (tx, rx) = bounded(queue_batches);
                let name = plugin.name().to_string();
                let version = plugin.info().version.clone();
                let metrics = plugin.metrics();
                let health = Arc::new(Mutex::new(plugin.health().clone()));
                let h = health.clone();
                let alerts = alerts.clone();
                let ids = next_alert_id.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("plugin-{name}"))
                    .spawn(move || run_worker(plugin, rx, alerts, ids, h))
                    .expect("spawning a plugin worker thread");
                Worker { name, tx, handle, metrics, health, dropped_events: Arc::new(AtomicU64::new(0)), version }
            })
            .collect();
        Self { workers, backpressure }
    }

    /// Hands a batch to every plugin.
    pub fn dispatch(&self, batch: Arc<Batch>) {
        for w in &self.workers {
            let msg = Msg::Batch(batch.clone());
            let sent = match self.backpressure {
                Backpressure::Block => w.tx.send(msg).is_ok(),
                Backpressure::DropAfter(wait) => match w.tx.send_timeout(msg, wait) {
                    Ok(()) => true,
                    Err(SendTimeoutError::Timeout(_)) => {
                        w.dropped_events.fetch_add(batch.len() as u64, Relaxed);
                        tracing::warn!(plugin = %w.name, events = batch.len(), "plugin queue full: batch dropped for this plugin");
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
            .iter()
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
            .map(|w| PluginStatus {
                name: w.name.clone(),
                version: w.version.clone(),
                health: match &*w.health.lock().unwrap_or_else(|p| p.into_inner()) {
                    Health::Active => "active".into(),
                    Health::Quarantined { reason, strikes } => format!("quarantined after {strikes} failures: {reason}"),
                },
                dropped_events: w.dropped_events.load(Relaxed),
                queued_batches: w.tx.len(),
                metrics: w.metrics.snapshot(),
            })
            .collect()
    }

    /// Processes everything queued, then stops the workers.
    pub fn shutdown(self) {
        for w in self.workers {
            drop(w.tx);
            let _ = w.handle.join();
        }
    }
}

fn run_worker(mut plugin: Plugin, rx: Receiver<Msg>, alerts: Sender<Alert>, ids: Arc<AtomicU64>, health: Arc<Mutex<Health>>) {
    for msg in rx {
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Flush(ack) => {
                let _ = ack.send(());
                continue;
            }
        };
        let selection: Vec<&WireEvent> = batch.wire.events.iter().filter(|e| plugin.wants(e.kind())).collect();
        if selection.is_empty() {
            continue;
        }
        let outcome = plugin.call(&batch.wire, &selection);
        if outcome.error.is_some() {
            *health.lock().unwrap_or_else(|p| p.into_inner()) = plugin.health().clone();
        }
        for finding in outcome.findings {
            let event = finding.event_ids.first().and_then(|id| batch.events.iter().find(|e| e.id == *id)).cloned();
            let alert = Alert {
                id: ids.fetch_add(1, Relaxed),
                time: time::now(),
                plugin: plugin.name().to_string(),
                pack: plugin.pack().cloned(),
                finding,
                event,
            };
            if alerts.send(alert).is_err() {
                return;
            }
        }
    }
}
