//! The detection pipeline: events in, batches to plugins, alerts out.

use crate::dispatch::{Backpressure, Batch, Dispatcher, PluginStatus, Quarantined};
use crate::output::AlertWriter;
use crate::packs::Activation;
use crate::services::AgentServices;
use crossbeam_channel::Sender;
use edr_event::{Alert, Event, EventBody};
use edr_runtime::Plugin;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Events pushed.
    pub events: u64,
    /// Batches dispatched.
    pub batches: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Each plugin at the end.
    pub plugins: Vec<PluginStatus>,
}

/// A running pipeline.
pub struct Pipeline {
    dispatcher: Dispatcher,
    services: Arc<AgentServices>,
    batch: Vec<Event>,
    batch_size: usize,
    next_event_id: u64,
    events: u64,
    batches: u64,
    alert_thread: JoinHandle<u64>,
    /// Changes to the alert outputs (a config reload), run on the alert
    /// thread between two alerts: none is lost or written twice.
    writer_tx: crossbeam_channel::Sender<WriterChange>,
    /// Extra consumers of every batch (the event record).
    taps: Vec<crate::dispatch::BatchTap>,
    /// Number every event, ignoring ids it arrived with (the agent: its
    /// record's ids must never collide). Replay keeps given ids instead.
    renumber: bool,
    /// When the oldest event of the pending batch arrived.
    pending_since: Option<std::time::Instant>,
}

/// A change to the alert outputs, run on the alert thread.
pub type WriterChange = Box<dyn FnOnce(&mut AlertWriter) + Send>;

impl Pipeline {
    /// A pipeline with no plugins yet. Events without an id are numbered
    /// from `first_event_id`; alerts from `first_alert_id`.
    pub fn new(
        batch_size: usize,
        queue: usize,
        backpressure: Backpressure,
        mut writer: AlertWriter,
        services: Arc<AgentServices>,
        first_event_id: u64,
        first_alert_id: u64,
    ) -> anyhow::Result<Self> {
        let (alert_tx, alert_rx) = crossbeam_channel::bounded::<Alert>(4096);
        let (writer_tx, writer_rx) = crossbeam_channel::unbounded::<WriterChange>();
        let alert_thread = std::thread::Builder::new().name("edr-alerts".into()).spawn(move || {
            let mut changes_open = true;
            let never = crossbeam_channel::never::<WriterChange>();
            loop {
                crossbeam_channel::select! {
                    recv(alert_rx) -> alert => {
                        let Ok(alert) = alert else { break };
                        if let Err(e) = writer.write(&alert) {
                            // A closed stdout (e.g. `| head`) ends output, not the run.
                            if e.kind() != std::io::ErrorKind::BrokenPipe {
                                tracing::error!("cannot write alert {}: {e}", alert.id);
                            }
                        }
                    }
                    recv(if changes_open { &writer_rx } else { &never }) -> change => match change {
                        Ok(change) => change(&mut writer),
                        Err(_) => changes_open = false,
                    }
                }
            }
            writer.shutdown();
            writer.written()
        })?;
        Ok(Self {
            dispatcher: Dispatcher::new(alert_tx, queue, backpressure, first_alert_id),
            services,
            batch: Vec::with_capacity(batch_size),
            batch_size,
            next_event_id: first_event_id.max(1),
            events: 0,
            batches: 0,
            alert_thread,
            writer_tx,
            taps: Vec::new(),
            renumber: false,
            pending_since: None,
        })
    }

    /// A handle for alerts the agent raises itself.
    pub fn agent_alerts(&self) -> crate::dispatch::AgentAlerts {
        self.dispatcher.agent_alerts()
    }

    /// Runs `change` on the alert writer, between two alerts.
    pub fn change_outputs(&self, change: WriterChange) {
        let _ = self.writer_tx.send(change);
    }

    /// Numbers every event from now on, whatever id it carries.
    pub fn renumber_all(&mut self) {
        self.renumber = true;
    }

    /// Quarantine notices go to `tx` (for automatic rollback).
    pub fn notify_quarantines(&mut self, tx: Sender<Quarantined>) {
        self.dispatcher.notify_quarantines(tx);
    }

    /// Calls `tap` with every batch (after the plugins got it).
    pub fn add_tap(&mut self, tap: crate::dispatch::BatchTap) {
        self.taps.push(tap);
    }

    /// Installs (or swaps in) one plugin.
    pub fn install(&mut self, key: String, plugin: Plugin) {
        tracing::info!(plugin = %key, version = %plugin.info().version, "plugin active");
        self.dispatcher.install(key, plugin);
    }

    /// Swaps in a pack version: batches already dispatched finish on the old
    /// plugins, the next batch runs on the new ones.
    pub fn activate(&mut self, a: Activation) {
        // The batch being filled goes to the old version, like any dispatched batch.
        self.dispatch_partial();
        tracing::info!(pack = %a.pack.id, version = %a.pack.version, signer = %a.pack.signer, plugins = a.plugins.len(), "pack active");
        self.services.declare_actions(&a.pack.id, &a.declared_actions);
        for key in a.removed {
            self.dispatcher.remove(&key);
        }
        for (key, plugin) in a.plugins {
            self.dispatcher.install(key, plugin);
        }
    }

    /// Lifts a plugin's quarantine.
    pub fn reenable(&self, key: &str) -> bool {
        self.dispatcher.reenable(key)
    }

    /// Number of plugins installed.
    pub fn plugin_count(&self) -> usize {
        self.dispatcher.len()
    }

    /// Adds an event (numbering it if it has no id); dispatches a full batch.
    pub fn push(&mut self, mut event: Event) {
        if event.id == 0 || self.renumber {
            event.id = self.next_event_id;
        }
        if event.time == 0 {
            // No time given (an ECS line without @timestamp): the time it arrived.
            event.time = edr_event::time::now();
        }
        self.next_event_id = self.next_event_id.max(event.id + 1);
        if let EventBody::ProcessExec(x) = &event.body {
            self.services.remember_exec(x);
        }
        self.events += 1;
        if self.batch.is_empty() {
            self.pending_since = Some(std::time::Instant::now());
        }
        self.batch.push(event);
        if self.batch.len() >= self.batch_size {
            self.dispatch_partial();
        }
    }

    /// How long until the pending batch is due (`None`: nothing pending).
    /// A batch is dispatched when full or when its oldest event has waited
    /// `timeout`, however busy the source is.
    pub fn due_in(&self, timeout: std::time::Duration) -> Option<std::time::Duration> {
        self.pending_since.map(|t| timeout.saturating_sub(t.elapsed()))
    }

    /// Dispatches whatever is batched (called on the batch timeout).
    pub fn dispatch_partial(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.pending_since = None;
        let batch = Batch::new(std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size)));
        self.batches += 1;
        self.dispatcher.dispatch(batch.clone());
        for tap in &mut self.taps {
            tap(&batch);
        }
    }

    /// Per-plugin status.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.dispatcher.status()
    }

    /// Events pushed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Dispatches the last batch, waits for every plugin and every alert.
    pub fn finish(mut self) -> Summary {
        self.dispatch_partial();
        self.dispatcher.flush();
        let plugins = self.dispatcher.status();
        self.dispatcher.shutdown();
        let alerts = self.alert_thread.join().unwrap_or(0);
        Summary { events: self.events, batches: self.batches, alerts, plugins }
    }
}
