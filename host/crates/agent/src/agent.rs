//! [`Agent`]: built by [`AgentBuilder`] in dependency order, then run.
//!
//! Threads: the event source (the collectors, or a reader of stdin or a
//! file); the run loop (the caller of [`Agent::run`]: batching, dispatch,
//! pack swaps, requests, reloads, health); one worker per plugin; the alert
//! writer; the pack thread (verification and staging off the event path)
//! with the drop-in directory watcher and the update-URL poller; the
//! response engine's worker; the control socket; one per extension.

use crate::config::AgentConfig;
use crate::dispatch::{Backpressure, Quarantined};
use crate::extension::{AgentExtension, Task};
use crate::handle::{AgentHandle, LoopRequest};
use crate::health::HealthLog;
use crate::metrics::MetricsServer;
use crate::output::{AlertWriter, RemoteOutputs};
use crate::packs::{self, Activation, BuiltinPack, Candidate, PackManager, PackRequest};
use crate::pipeline::Pipeline;
use crate::reload::{ConfigLoader, Live, Reloads};
use crate::services::{AgentServices, DeclaredActions};
use crate::source::Source;
use crate::status::{AgentInfo, AgentStatus, ConfigStatus, PackStatus, PipelineStatus, ResponseStatus};
use crate::{control, plugins, response, Shutdown};
use anyhow::Context;
use crossbeam_channel::{select, Receiver, Sender};
use edr_event::Event;
use edr_respond::{AuditCounts, Responder};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a stopping agent waits for its extensions.
const EXTENSION_GRACE: Duration = Duration::from_secs(5);

/// Builds an [`Agent`]: [`Agent::builder`], the options, [`AgentBuilder::build`].
pub struct AgentBuilder {
    config: AgentConfig,
    config_file: Option<PathBuf>,
    loader: Option<ConfigLoader>,
    reload_flag: Option<Arc<AtomicBool>>,
    health_interval: Duration,
    builtin: Option<BuiltinPack>,
    events: Option<Receiver<Event>>,
    extensions: Vec<Box<dyn AgentExtension>>,
    enroll_token: Option<String>,
}

impl AgentBuilder {
    /// The file `config` was read from: status shows it, the response
    /// engine protects it, and reloads read it again (through
    /// [`AgentConfig::load`], unless [`AgentBuilder::reload_from`] says otherwise).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Where reloads read the new configuration (`Ok(None)`: there is none).
    pub fn reload_from(mut self, loader: impl FnMut() -> anyhow::Result<Option<AgentConfig>> + Send + 'static) -> Self {
        self.loader = Some(Box::new(loader));
        self
    }

    /// Reloads whenever `flag` is found set (it is cleared): for
    /// `signal_hook::flag::register(SIGHUP, flag)`.
    pub fn reload_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.reload_flag = Some(flag);
        self
    }

    /// Time between two health lines in the log (default 60 s).
    pub fn health_interval(mut self, every: Duration) -> Self {
        self.health_interval = every.max(Duration::from_secs(1));
        self
    }

    /// The built-in pack to offer at start (when `plugins.builtin`) and
    /// whose key to trust (unless `packs.trust_builtin_key = false`).
    pub fn builtin_pack(mut self, pack: BuiltinPack) -> Self {
        self.builtin = Some(pack);
        self
    }

    /// Takes events from `events` instead of the `[collect]` source (tests,
    /// embedding); the agent stops when every sender is dropped.
    pub fn events(mut self, events: Receiver<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// Enrolls the host in a fleet with this one-time token (`edr fleet
    /// enroll-token`) before the agent starts, unless it is enrolled already.
    pub fn enroll(mut self, token: Option<String>) -> Self {
        self.enroll_token = token;
        self
    }

    /// Runs `extension` beside the agent (see [`AgentExtension`]).
    pub fn with_extension(mut self, extension: impl AgentExtension) -> Self {
        self.extensions.push(Box::new(extension));
        self
    }

    /// Runs `task` beside the agent on a thread named `name`, with the
    /// handle and the shutdown signal (an [`AgentExtension`] in a closure).
    pub fn with_task(self, name: impl Into<String>, task: impl FnOnce(AgentHandle, Shutdown) -> anyhow::Result<()> + Send + 'static) -> Self {
        self.with_extension(Task { name: name.into(), run: task })
    }

    /// Builds the agent in dependency order: data dir, health log, record,
    /// event source, response engine, host services, pipeline, packs. Live
    /// collectors start here (their events queue until [`Agent::run`]).
    pub fn build(mut self) -> anyhow::Result<Agent> {
        let cfg = Arc::new(prepare(self.config)?);
        crate::fleet::enroll_if_asked(&cfg, self.enroll_token.as_deref())?;
        let mut fleet = None;
        if let Some(link) = crate::fleet::extension(&cfg)? {
            fleet = Some(link.counters());
            self.extensions.push(Box::new(link));
        }
        let health = Arc::new(HealthLog::new(Some(&cfg.data_dir)));
        let store = open_store(&cfg)?;
        let first = match &store {
            Some(s) => (s.max_event_id()? + 1, s.max_alert_id()? + 1, s.max_action_id()? + 1),
            None => (1, 1, 1),
        };
        let source = match self.events {
            Some(rx) => Source::channel(rx),
            None => Source::start(&cfg)?,
        };
        let audit_counts = Arc::new(AuditCounts::default());
        let responder = response::start(&cfg, self.config_file.as_deref(), &health, store.as_ref().map(|s| (s.writer(), first.2)), audit_counts.clone());
        let services = Arc::new(host_services(&cfg, &source, responder.as_ref())?);
        let (mut pipeline, remote_outputs) = pipeline(&cfg, &services, store.as_ref(), first.0, first.1)?;
        let (quarantine_tx, quarantine_rx) = crossbeam_channel::unbounded::<Quarantined>();
        pipeline.notify_quarantines(quarantine_tx);
        let stop_sources = Arc::new(AtomicBool::new(false));
        let packs = start_packs(&cfg, &services, store.as_ref(), self.builtin, &health, &mut pipeline, quarantine_rx, &stop_sources)?;
        if let Some(r) = &responder {
            response::alert_on_isolation_tamper(r, pipeline.agent_alerts(), health.clone());
        }
        let (requests_tx, requests) = crossbeam_channel::unbounded::<LoopRequest>();
        let store_path = store.as_ref().map(|s| s.path().to_path_buf());
        let handle = AgentHandle::new(requests_tx, packs.requests.clone(), responder.clone(), store_path);
        let loader = self.loader.or_else(|| {
            let path = self.config_file.clone()?;
            Some(Box::new(move || Ok(Some(AgentConfig::load(&path)?))) as ConfigLoader)
        });
        let config_status = ConfigStatus { file: self.config_file, loaded_at: edr_event::time::now(), ..Default::default() };
        Ok(Agent {
            reloads: Reloads::new(loader, cfg.clone(), config_status),
            cfg,
            health,
            store,
            source,
            responder,
            audit_counts,
            services,
            pipeline,
            remote_outputs,
            packs,
            stop_sources,
            requests,
            handle,
            reload_flag: self.reload_flag.unwrap_or_default(),
            health_interval: self.health_interval,
            builtin: self.builtin,
            extensions: self.extensions,
            fleet,
            metrics: None,
            started: Instant::now(),
        })
    }
}

/// Validates the data dir (refused unless only the agent's user can change
/// it; created 0700) and makes it absolute: the response engine refuses
/// relative stores, and the default `./edr-data` would otherwise leave
/// response disabled.
fn prepare(mut cfg: AgentConfig) -> anyhow::Result<AgentConfig> {
    for w in cfg.exposure_warnings() {
        tracing::warn!("config: {w}");
    }
    edr_datadir::DataDir::open_or_create(&cfg.data_dir, edr_datadir::agent_uid()).context("the data directory (data_dir)")?;
    cfg.data_dir = std::path::absolute(&cfg.data_dir).with_context(|| format!("cannot resolve data_dir {}", cfg.data_dir.display()))?;
    Ok(cfg)
}

/// The record: every event, alert and action; ids continue where it left off.
fn open_store(cfg: &AgentConfig) -> anyhow::Result<Option<edr_store::Store>> {
    if !cfg.store.enabled {
        return Ok(None);
    }
    let sc = cfg.store_config();
    let path = sc.path.clone();
    Ok(Some(edr_store::Store::open(sc).with_context(|| format!("cannot open the event store {}", path.display()))?))
}

/// The plugins' host services: state under `<data_dir>/state`, ancestry
/// from the live process tree when the collectors run, action requests to
/// the response engine (gated by the declared actions the services record).
fn host_services(cfg: &AgentConfig, source: &Source, responder: Option<&Arc<Responder>>) -> anyhow::Result<AgentServices> {
    let mut services = AgentServices::new(Some(cfg.data_dir.join("state")))?;
    if let Some(ancestry) = source.ancestry() {
        services = services.with_ancestry(ancestry);
    }
    if let Some(r) = responder {
        let declared = Arc::new(DeclaredActions::default());
        services = services.with_actions(declared.clone(), response::action_handler(r.clone(), declared));
    }
    Ok(services)
}

/// The pipeline with its outputs (stdout, alerts file, remote outputs, the
/// record) and taps (the record, the events file).
fn pipeline(
    cfg: &AgentConfig,
    services: &Arc<AgentServices>,
    store: Option<&edr_store::Store>,
    first_event: u64,
    first_alert: u64,
) -> anyhow::Result<(Pipeline, RemoteOutputs)> {
    let alerts_file = cfg.data_path(&cfg.output.alerts_file);
    let mut writer = AlertWriter::new(cfg.output.stdout, alerts_file.as_deref())?.with_remote(&cfg.output.remote(), &cfg.data_dir)?;
    let remote = writer.remote();
    if let Some(s) = store {
        writer = writer.with_store(s.writer());
    }
    if let Some(grouping) = cfg.incidents.grouping() {
        let services = services.clone();
        writer = writer.with_incidents(grouping, Arc::new(move |entity| services.lineage(entity)));
    }
    let wait = Duration::from_millis(cfg.runtime.call_deadline_ms * 2);
    let (size, queue) = (cfg.runtime.batch_size, cfg.runtime.plugin_queue);
    let mut pipeline = Pipeline::new(size, queue, Backpressure::DropAfter(wait), writer, services.clone(), first_event, first_alert)?;
    pipeline.renumber_all();
    if let Some(s) = store {
        let w = s.writer();
        pipeline.add_tap(Box::new(move |batch| {
            // Never blocks: a full store queue is counted by the store (status shows it).
            if let Err(e) = w.append_events(batch.events.clone()) {
                tracing::warn!(events = batch.len(), "events not recorded: {e}");
            }
        }));
    }
    if let Some(path) = cfg.data_path(&cfg.output.events_file) {
        pipeline.add_tap(crate::output::events_file_tap(&path)?);
    }
    Ok((pipeline, remote))
}

/// The packs' side of the running agent.
struct Packs {
    status: Arc<Mutex<PackStatus>>,
    activations: Receiver<Activation>,
    requests: Sender<PackRequest>,
    drop_dir: PathBuf,
}

/// Activates what was active before and the built-in pack, loads
/// `plugins.dir`, then starts the pack thread and its sources.
#[allow(clippy::too_many_arguments)]
fn start_packs(
    cfg: &Arc<AgentConfig>,
    services: &Arc<AgentServices>,
    store: Option<&edr_store::Store>,
    builtin: Option<BuiltinPack>,
    health: &Arc<HealthLog>,
    pipeline: &mut Pipeline,
    quarantines: Receiver<Quarantined>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Packs> {
    let rt = plugins::runtime(cfg)?;
    let mut manager = PackManager::new(cfg.clone(), rt.clone(), services.clone(), builtin)?;
    if let Some(s) = store {
        manager = manager.with_record(s.pack_floors())?;
    }
    for a in manager.startup() {
        let message = format!("pack {} {} active (signed by {})", a.pack.id, a.pack.version, a.pack.signer);
        health.record("pack-activated", false, &message, json!({"pack": &a.pack}));
        pipeline.activate(a);
    }
    let (loaded, _) = plugins::load_all(&rt, cfg, plugins::sources(cfg)?, services.clone());
    for p in loaded {
        pipeline.install(p.name().to_string(), p);
    }
    if pipeline.plugin_count() == 0 {
        tracing::warn!("no detection plugin is active yet: the built-in pack is disabled or failed and no other pack or plugin loaded; events are still recorded, and packs dropped into the packs directory or published at the update URL will be activated");
    }
    let status = Arc::new(Mutex::new(PackStatus { active: manager.active(), ..Default::default() }));
    crate::release_freed_memory();
    let (candidate_tx, candidates) = crossbeam_channel::bounded::<Candidate>(16);
    let (activation_tx, activations) = crossbeam_channel::bounded::<Activation>(4);
    let (requests, requests_rx) = crossbeam_channel::unbounded::<PackRequest>();
    let drop_dir = cfg.data_path(&cfg.packs.dir).unwrap_or_else(|| cfg.data_dir.join("packs-incoming"));
    packs::watch_drop_dir(drop_dir.clone(), candidate_tx.clone(), stop.clone())?;
    let mut floors = None;
    if let Some(url) = &cfg.packs.update_url {
        let f = Arc::new(Mutex::new(manager.state().clone()));
        floors = Some(f.clone());
        let highest = Arc::new(move |id: &str| f.lock().unwrap_or_else(|p| p.into_inner()).highest(id));
        packs::poll_update_url(url.clone(), Duration::from_secs(cfg.packs.poll_interval_secs), candidate_tx, highest, stop.clone())?;
    }
    let thread = packs::PackThread {
        candidates,
        quarantines,
        requests: requests_rx,
        activations: activation_tx,
        status: status.clone(),
        health: health.clone(),
        floors,
    };
    packs::spawn_pack_thread(manager, thread).context("starting the pack thread")?;
    Ok(Packs { status, activations, requests, drop_dir })
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Events the pipeline received.
    pub events: u64,
    /// Alerts written.
    pub alerts: u64,
    /// True when the run ended because the source ended (not a shutdown).
    pub source_ended: bool,
}

/// A built agent: [`Agent::handle`] for in-process access, [`Agent::run`]
/// to run it.
pub struct Agent {
    cfg: Arc<AgentConfig>,
    health: Arc<HealthLog>,
    store: Option<edr_store::Store>,
    source: Source,
    responder: Option<Arc<Responder>>,
    audit_counts: Arc<AuditCounts>,
    services: Arc<AgentServices>,
    pipeline: Pipeline,
    remote_outputs: RemoteOutputs,
    packs: Packs,
    /// Stops the drop-in watcher and the update-URL poller.
    stop_sources: Arc<AtomicBool>,
    requests: Receiver<LoopRequest>,
    handle: AgentHandle,
    reloads: Reloads,
    reload_flag: Arc<AtomicBool>,
    health_interval: Duration,
    builtin: Option<BuiltinPack>,
    extensions: Vec<Box<dyn AgentExtension>>,
    /// The fleet link's counters, when the link runs.
    fleet: Option<crate::fleet::LinkCounters>,
    metrics: Option<MetricsServer>,
    started: Instant,
}

impl Agent {
    /// A builder for an agent running `config`.
    pub fn builder(config: AgentConfig) -> AgentBuilder {
        AgentBuilder {
            config,
            config_file: None,
            loader: None,
            reload_flag: None,
            health_interval: Duration::from_secs(60),
            builtin: None,
            events: None,
            extensions: Vec::new(),
            enroll_token: None,
        }
    }

    /// A handle on this agent (requests are answered once [`Agent::run`] runs).
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// The running configuration (its data dir made absolute).
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// Serves the control socket and the metrics endpoint, starts the
    /// extensions, and runs the loop on this thread until the source ends
    /// or `shutdown` is triggered; then finishes what is queued, flushes
    /// and stops. The control socket exists once the agent is fully up:
    /// it is what `edr status` and tests wait for.
    pub fn run(mut self, shutdown: Shutdown) -> anyhow::Result<RunSummary> {
        control::serve(&self.cfg.data_dir, self.handle.clone())?;
        self.metrics = MetricsServer::start_configured(&self.cfg, &self.handle, &self.health);
        tracing::info!(
            data_dir = %self.cfg.data_dir.display(),
            alerts = ?self.cfg.data_path(&self.cfg.output.alerts_file),
            packs_dir = %self.packs.drop_dir.display(),
            source = %self.cfg.collect.source,
            plugins = self.pipeline.plugin_count(),
            "agent started"
        );
        let extensions = start_extensions(std::mem::take(&mut self.extensions), &self.handle, &shutdown);
        let source_ended = self.run_loop(&shutdown);
        // The extensions stop with the agent, whatever ended the loop.
        shutdown.trigger();
        Ok(self.finish(source_ended, extensions))
    }

    /// The loop: events, activations and requests until the source ends
    /// (true) or the shutdown signal (false).
    fn run_loop(&mut self, shutdown: &Shutdown) -> bool {
        let batch_timeout = Duration::from_millis(self.cfg.runtime.batch_timeout_ms.max(1));
        let (events, activations, requests) = (self.source.events.clone(), self.packs.activations.clone(), self.requests.clone());
        let mut last_health = Instant::now();
        let mut last_flush = Instant::now();
        loop {
            if shutdown.is_triggered() {
                tracing::info!("termination requested; finishing queued work");
                return false;
            }
            if self.reload_flag.swap(false, Ordering::Relaxed) {
                let _ = self.reload();
            }
            // Wake when the pending batch is due; otherwise once a second for
            // housekeeping (an idle agent sleeps).
            let wait = self.pipeline.due_in(batch_timeout).unwrap_or(Duration::from_secs(1));
            select! {
                recv(events) -> e => match e {
                    Ok(e) => self.pipeline.push(e),
                    Err(_) => return true,
                },
                recv(activations) -> a => if let Ok(a) = a {
                    self.activate(a);
                },
                recv(requests) -> r => if let Ok(r) = r {
                    self.answer(r);
                },
                default(wait) => {}
            }
            if self.pipeline.due_in(batch_timeout) == Some(Duration::ZERO) {
                self.pipeline.dispatch_partial();
            }
            if last_flush.elapsed() >= Duration::from_secs(1) {
                last_flush = Instant::now();
                self.services.flush_state();
            }
            if last_health.elapsed() >= self.health_interval {
                last_health = Instant::now();
                self.log_health();
            }
        }
    }

    /// Swaps a pack version in; status says "active" only once the plugins really are.
    fn activate(&mut self, a: Activation) {
        let active = a.active_after.clone();
        self.pipeline.activate(a);
        crate::release_freed_memory();
        self.packs.status.lock().unwrap_or_else(|p| p.into_inner()).active = active;
    }

    /// Answers one request of a handle.
    fn answer(&mut self, request: LoopRequest) {
        match request {
            LoopRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            LoopRequest::Reenable { plugin, reply } => {
                let status = self.pipeline.status();
                let key = status.iter().find(|p| p.key == plugin).or_else(|| status.iter().find(|p| p.name == plugin)).map(|p| p.key.clone());
                let _ = reply.send(match key {
                    Some(k) if self.pipeline.reenable(&k) => control::Reply::ok(json!({"reenabled": k})),
                    _ => control::Reply::err(format!("no plugin `{plugin}`")),
                });
            }
            LoopRequest::Reload(reply) => {
                let _ = reply.send(self.reload());
            }
        }
    }

    fn reload(&mut self) -> Result<crate::reload::ReloadReport, String> {
        let live = Live {
            pipeline: &self.pipeline,
            metrics: &mut self.metrics,
            handle: &self.handle,
            packs: &self.packs.requests,
            health: &self.health,
            builtin: self.builtin.as_ref(),
        };
        self.reloads.reload(live)
    }

    /// Everything `edr status` shows.
    fn status(&self) -> AgentStatus {
        let response = self.responder.as_ref().map(|r| ResponseStatus {
            isolation: r.isolation_state(),
            quarantined: r.quarantined().len(),
            blocks: r.blocks().len(),
            block_stats: r.block_stats(),
        });
        AgentStatus {
            store: self.store.as_ref().map(|s| s.stats()),
            response,
            source: self.cfg.collect.source.clone(),
            collectors: self.source.collectors.iter().flat_map(|c| c.status()).collect(),
            agent: AgentInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs(),
                data_dir: self.cfg.data_dir.clone(),
            },
            pipeline: PipelineStatus { events: self.pipeline.events(), queued_events: self.source.events.len() },
            plugins: self.pipeline.status(),
            packs: self.packs.status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            config: self.reloads.status.clone(),
            actions: self.audit_counts.totals(),
            outputs: self.remote_outputs.status(),
            fleet: self.fleet.as_ref().map(|f| f.status()),
        }
    }

    /// One health line per collector and per plugin.
    fn log_health(&self) {
        for c in self.source.collectors.iter().flat_map(|c| c.status()) {
            tracing::info!(collector = c.name, mode = %c.mode, events = c.events, partial = c.partial, exe_recovered = c.exe_recovered, exe_missing = c.exe_missing, dropped = c.dropped, lost = c.lost, rate = format!("{:.1}/s", c.events_per_sec), "health");
        }
        for p in self.pipeline.status() {
            let m = &p.metrics;
            tracing::info!(plugin = %p.key, version = %p.version, health = %p.health, calls = m.calls, events = m.events, findings = m.findings, errors = m.errors, timeouts = m.timeouts, dropped = p.dropped_events, p50_us = m.p50_us, p99_us = m.p99_us, memory = m.memory_bytes, "health");
        }
    }

    /// Stops the sources, drains the pipeline, flushes state and the record,
    /// removes the control socket, waits for the extensions.
    fn finish(self, source_ended: bool, extensions: Vec<(String, JoinHandle<()>)>) -> RunSummary {
        let Agent { cfg, store, source, responder, services, pipeline, stop_sources, metrics, .. } = self;
        stop_sources.store(true, Ordering::Relaxed);
        drop(source);
        drop(metrics);
        if let Some(r) = &responder {
            // The tamper hook holds a sender of the alert channel: drop it, or finish() waits forever.
            r.on_isolation_tamper(|_| {});
        }
        let summary = pipeline.finish();
        services.flush_state();
        // Commits everything queued (events, alerts, actions) before returning.
        drop(store);
        let _ = std::fs::remove_file(control::socket_path(&cfg.data_dir));
        join_extensions(extensions);
        for l in crate::plugin_health_lines(&summary.plugins) {
            tracing::warn!("{l}");
        }
        tracing::info!(events = summary.events, alerts = summary.alerts, source_ended, "agent stopped");
        RunSummary { events: summary.events, alerts: summary.alerts, source_ended }
    }
}

/// Starts each extension on a thread of its own.
fn start_extensions(extensions: Vec<Box<dyn AgentExtension>>, handle: &AgentHandle, shutdown: &Shutdown) -> Vec<(String, JoinHandle<()>)> {
    let mut running = Vec::new();
    for ext in extensions {
        let name = ext.name().to_string();
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        let n = name.clone();
        let spawned = std::thread::Builder::new().name(format!("edr-ext-{name}")).spawn(move || {
            tracing::info!(extension = %n, "extension started");
            match ext.run(handle, shutdown) {
                Ok(()) => tracing::info!(extension = %n, "extension stopped"),
                Err(e) => tracing::error!(extension = %n, "extension failed: {e:#}"),
            }
        });
        match spawned {
            Ok(t) => running.push((name, t)),
            Err(e) => tracing::error!(extension = %name, "cannot start the extension's thread: {e}"),
        }
    }
    running
}

/// Waits up to [`EXTENSION_GRACE`] in all for the extensions to return.
fn join_extensions(extensions: Vec<(String, JoinHandle<()>)>) {
    let until = Instant::now() + EXTENSION_GRACE;
    for (name, t) in extensions {
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!(extension = %name, "extension still running {EXTENSION_GRACE:?} after the shutdown signal; the agent stops without it");
        }
    }
}
