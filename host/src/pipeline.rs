//! The detection pipeline: events in, batches to plugins, alerts out.

use crate::config::AgentConfig;
use crate::dispatch::{Backpressure, Batch, Dispatcher, PluginStatus};
use crate::output::AlertWriter;
use crate::plugins;
use anyhow::bail;
use edr_event::{Alert, Event, EventBody};
use edr_runtime::MemoryServices;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub events: u64,
    pub batches: u64,
    pub alerts: u64,
    pub plugins: Vec<PluginStatus>,
}

/// A running pipeline.
pub struct Pipeline {
    dispatcher: Dispatcher,
    services: Arc<MemoryServices>,
    batch: Vec<Event>,
    batch_size: usize,
    events: u64,
    batches: u64,
    alert_thread: JoinHandle<u64>,
}

impl Pipeline {
    /// Loads the configured plugins (plus `extra`) and starts the workers and
    /// the alert writer. Fails only when no plugin at all could be loaded.
    pub fn start(cfg: &AgentConfig, extra: Vec<plugins::Source>, backpressure: Backpressure, mut writer: AlertWriter) -> anyhow::Result<Self> {
        let rt = plugins::runtime(cfg)?;
        let services = Arc::new(MemoryServices::default());
        let mut sources = plugins::sources(cfg)?;
        sources.extend(extra);
        if sources.is_empty() {
            bail!("no plugins to load: the built-ins are disabled and no other plugin was given");
        }
        let (loaded, failures) = plugins::load_all(&rt, cfg, sources, services.clone());
        if loaded.is_empty() {
            bail!("no plugin could be loaded:\n  {}", failures.join("\n  "));
        }
        let (alert_tx, alert_rx) = crossbeam_channel::bounded::<Alert>(4096);
        let alert_thread = std::thread::Builder::new()
            .name("edr-alerts".into())
            .spawn(move || {
                for alert in alert_rx {
                    if let Err(e) = writer.write(&alert) {
                        // A closed stdout (e.g. `| head`) ends output, not the run.
                        if e.kind() != std::io::ErrorKind::BrokenPipe {
                            tracing::error!("cannot write alert {}: {e}", alert.id);
                        }
                    }
                }
                writer.written()
            })?;
        let dispatcher = Dispatcher::start(loaded, alert_tx, cfg.runtime.plugin_queue, backpressure);
        Ok(Self { dispatcher, services, batch: Vec::with_capacity(cfg.runtime.batch_size), batch_size: cfg.runtime.batch_size, events: 0, batches: 0, alert_thread })
    }

    /// Adds an event; dispatches when the batch is full.
    pub fn push(&mut self, event: Event) {
        if let EventBody::ProcessExec(x) = &event.body {
            self.services.remember_exec(x);
        }
        self.events += 1;
        self.batch.push(event);
        if self.batch.len() >= self.batch_size {
            self.dispatch_partial();
        }
    }

    /// Dispatches whatever is batched (called on the batch timeout).
    pub fn dispatch_partial(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        self.batches += 1;
        self.dispatcher.dispatch(Batch::new(batch));
    }

    /// Per-plugin status.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.dispatcher.status()
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
