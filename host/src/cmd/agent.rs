//! `edr agent`: the long-running agent.
//!
//! Threads: the event source(s); the pipeline (this thread: batching,
//! dispatch, pack swaps, control requests); one worker per plugin; the pack
//! manager (verification and staging off the event path); the drop-in
//! directory watcher and update-URL poller; the control socket.

use crate::collect::jsonl::{JsonlReader, Line};
use crate::config::AgentConfig;
use crate::control::{self, Incoming, Reply, Request};
use crate::dispatch::{Backpressure, Quarantined};
use crate::health::HealthLog;
use crate::output::AlertWriter;
use crate::packs::{self, Activation, ActivePack, Candidate, PackManager};
use crate::pipeline::Pipeline;
use crate::plugins;
use crate::services::AgentServices;
use anyhow::Context;
use crossbeam_channel::{select, Receiver, Sender};
use serde_json::json;
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `edr agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (TOML). Without it the agent runs on its defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// State directory (overrides `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds between health lines in the log.
    #[arg(long, default_value_t = 60)]
    pub health_interval: u64,
    /// Enroll this host in a fleet with a one-time token (`edr fleet enroll-token`), then report to it.
    #[arg(long)]
    pub enroll: Option<String>,
}

/// What the pack manager thread shares for status.
#[derive(Default, serde::Serialize)]
struct PackStatus {
    active: Vec<ActivePack>,
    /// The latest pack events (accepted, rejected, rolled back), newest last.
    recent: VecDeque<serde_json::Value>,
}

/// Requests for the pack manager thread.
enum PackRequest {
    Rollback {
        pack: String,
        reply: Sender<Reply>,
    },
    /// A reloaded `[[trust.keys]]`: packs offered from now on are checked against it.
    Trust(edr_pack::TrustStore),
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut cfg = super::load_config(args.config.as_deref())?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    for w in cfg.exposure_warnings() {
        tracing::warn!("config: {w}");
    }
    let mut config_status = ConfigStatus { file: args.config.clone(), loaded_at: edr_event::time::now(), ..Default::default() };
    // Refused unless only the agent's user can change it; created 0700 (issue 14, items 2 and 8).
    edr_datadir::DataDir::open_or_create(&cfg.data_dir, edr_datadir::agent_uid()).context("the data directory (data_dir)")?;
    // Absolute from here on: the response engine refuses relative stores, and
    // the default `./edr-data` would otherwise leave response disabled.
    cfg.data_dir = std::path::absolute(&cfg.data_dir).with_context(|| format!("cannot resolve data_dir {}", cfg.data_dir.display()))?;
    let cfg = Arc::new(cfg);
    let health = Arc::new(HealthLog::new(Some(&cfg.data_dir)));
    let rt = plugins::runtime(&cfg)?;
    let services = Arc::new(AgentServices::new(Some(cfg.data_dir.join("state")))?);
    // The record: every event, alert and action; ids continue where it left off.
    let store = if cfg.store.enabled {
        let sc = cfg.store_config();
        Some(edr_store::Store::open(sc.clone()).with_context(|| format!("cannot open the event store {}", sc.path.display()))?)
    } else {
        None
    };
    let (first_event, first_alert, first_action) = match &store {
        Some(s) => (s.max_event_id()? + 1, s.max_alert_id()? + 1, s.max_action_id()? + 1),
        None => (1, 1, 1),
    };
    let alerts_file = cfg.data_path(&cfg.output.alerts_file);
    let mut writer = AlertWriter::new(cfg.output.stdout, alerts_file.as_deref())?.with_remote(&cfg.output.remote(), &cfg.data_dir)?;
    let remote_outputs = writer.remote();
    if let Some(s) = &store {
        writer = writer.with_store(s.writer());
    }
    let wait = Duration::from_millis(cfg.runtime.call_deadline_ms * 2);
    let mut pipeline =
        Pipeline::new(cfg.runtime.batch_size, cfg.runtime.plugin_queue, Backpressure::DropAfter(wait), writer, services.clone(), first_event, first_alert)?;
    pipeline.renumber_all();
    if let Some(s) = &store {
        let w = s.writer();
        pipeline.add_tap(Box::new(move |batch| {
            // Never blocks: a full store queue is counted by the store (status shows it).
            if let Err(e) = w.append_events(batch.events.clone()) {
                tracing::warn!(events = batch.len(), "events not recorded: {e}");
            }
        }));
    }
    let (quarantine_tx, quarantine_rx) = crossbeam_channel::unbounded::<Quarantined>();
    pipeline.notify_quarantines(quarantine_tx);
    if let Some(path) = cfg.data_path(&cfg.output.events_file) {
        pipeline.add_tap(crate::output::events_file_tap(&path)?);
    }
    // SIGTERM / SIGINT: stop reading, finish what is queued, flush, exit.
    let terminate = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, terminate.clone()).context("installing signal handlers")?;
    }
    // SIGHUP: re-read the config file between two batches (see `reload`).
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone()).context("installing the SIGHUP handler")?;

    // Packs: what was active before, then the built-in pack.
    let mut manager = PackManager::new(cfg.clone(), rt.clone(), services.clone())?;
    if let Some(s) = &store {
        manager = manager.with_record(s.pack_floors())?;
    }
    for a in manager.startup() {
        health.record(
            "pack-activated",
            false,
            &format!("pack {} {} active (signed by {})", a.pack.id, a.pack.version, a.pack.signer),
            json!({"pack": &a.pack}),
        );
        pipeline.activate(a);
    }
    let (loaded, _) = plugins::load_all(&rt, &cfg, plugins::sources(&cfg)?, services.clone());
    for p in loaded {
        pipeline.install(p.name().to_string(), p);
    }
    if pipeline.plugin_count() == 0 {
        tracing::warn!("no detection plugin is active yet: the built-in pack is disabled or failed and no other pack or plugin loaded; events are still recorded, and packs dropped into the packs directory or published at the update URL will be activated");
    }
    let pack_status = Arc::new(Mutex::new(PackStatus { active: manager.active(), recent: VecDeque::new() }));
    release_freed_memory();

    // The pack manager thread and its sources.
    let stop = Arc::new(AtomicBool::new(false));
    let (candidate_tx, candidate_rx) = crossbeam_channel::bounded::<Candidate>(16);
    let (activation_tx, activation_rx) = crossbeam_channel::bounded::<Activation>(4);
    let (pack_req_tx, pack_req_rx) = crossbeam_channel::unbounded::<PackRequest>();
    let drop_dir = cfg.data_path(&cfg.packs.dir).unwrap_or_else(|| cfg.data_dir.join("packs-incoming"));
    packs::watch_drop_dir(drop_dir.clone(), candidate_tx.clone(), stop.clone())?;
    if let Some(url) = &cfg.packs.update_url {
        let floors = Arc::new(Mutex::new(manager.state().clone()));
        let f = floors.clone();
        packs::poll_update_url(
            url.clone(),
            Duration::from_secs(cfg.packs.poll_interval_secs),
            candidate_tx.clone(),
            Arc::new(move |id: &str| f.lock().unwrap().highest(id)),
            stop.clone(),
        )?;
        spawn_pack_thread(manager, candidate_rx, quarantine_rx, pack_req_rx, activation_tx, pack_status.clone(), health.clone(), Some(floors));
    } else {
        spawn_pack_thread(manager, candidate_rx, quarantine_rx, pack_req_rx, activation_tx, pack_status.clone(), health.clone(), None);
    }

    // The response engine: operator requests over the control socket, plugin
    // requests through the `respond` import (pack grant and manifest both needed).
    let action_counts = Arc::new(ActionCounts::default());
    let responder =
        start_responder(&cfg, args.config.as_deref(), &services, health.clone(), store.as_ref().map(|s| (s.writer(), first_action)), action_counts.clone());
    if let Some(r) = &responder {
        alert_on_isolation_tamper(r, pipeline.agent_alerts(), health.clone());
    }

    let (events_rx, collectors) = start_source(&cfg, &services)?;

    // The control socket, last: once it exists the agent is fully up (the
    // collectors are subscribed), which is what `edr status` and tests wait for.
    let (control_tx, control_rx) = crossbeam_channel::unbounded::<Incoming>();
    control::serve(&cfg.data_dir, control_tx.clone(), responder.clone())?;
    let mut metrics = start_metrics(&cfg, &control_tx, &health);
    // Fleet link (issue 15): isolated here so it can move to the agent builder's hook.
    let fleet_link = start_fleet_link(&cfg, args.enroll.as_deref(), &control_tx)?;
    let mut current = cfg.clone();
    tracing::info!(data_dir = %cfg.data_dir.display(), alerts = ?alerts_file, packs_dir = %drop_dir.display(), source = %cfg.collect.source, plugins = pipeline.plugin_count(), "agent started");

    let started = Instant::now();
    let batch_timeout = Duration::from_millis(cfg.runtime.batch_timeout_ms.max(1));
    let health_every = Duration::from_secs(args.health_interval.max(1));
    let mut last_health = Instant::now();
    let mut last_flush = Instant::now();
    let mut source_open = true;
    loop {
        if terminate.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("termination requested; finishing queued work");
            break;
        }
        if hangup.swap(false, std::sync::atomic::Ordering::Relaxed) {
            match reload(&args) {
                Ok(Some(new)) => {
                    let new = Arc::new(new);
                    let applied = apply_reload(&current, &new, &pipeline, &mut metrics, &control_tx, &pack_req_tx, &health);
                    config_status.record_reload(applied);
                    current = new;
                }
                Ok(None) => tracing::info!("SIGHUP: the agent runs on built-in defaults (no --config); nothing to reload"),
                Err(e) => {
                    health.record(
                        "config-reload-failed",
                        true,
                        &format!("SIGHUP: the configuration was not reloaded, the running one stays: {e}"),
                        json!({"error": e.to_string()}),
                    );
                    config_status.reload_failures += 1;
                    config_status.last_error = Some(e.to_string());
                }
            }
        }
        select! {
            recv(events_rx) -> e => match e {
                Ok(e) => pipeline.push(e),
                Err(_) => {
                    source_open = false;
                    break;
                }
            },
            recv(activation_rx) -> a => if let Ok(a) = a {
                let active = a.active_after.clone();
                pipeline.activate(a);
                release_freed_memory();
                // Status says "active" only once the plugins really are.
                pack_status.lock().unwrap_or_else(|p| p.into_inner()).active = active;
            },
            recv(control_rx) -> req => if let Ok(req) = req {
                tracing::debug!(uid = req.uid, request = ?req.request, "control request");
                let reply = match req.request {
                    Request::Status => {
                        let mut s = status(&cfg, &pipeline, &pack_status, collectors.as_ref(), store.as_ref(), responder.as_deref(), &config_status, started);
                        s["actions"] = action_counts.snapshot();
                        s["pipeline"]["queued_events"] = json!(events_rx.len());
                        s["outputs"] = json!(remote_outputs.status());
                        Reply::ok(s)
                    }
                    Request::Reenable { plugin } => {
                        let key = resolve_key(&pipeline, &plugin);
                        match key {
                            Some(k) if pipeline.reenable(&k) => Reply::ok(json!({"reenabled": k})),
                            _ => Reply::err(format!("no plugin `{plugin}`")),
                        }
                    }
                    Request::Rollback { pack } => {
                        let _ = pack_req_tx.send(PackRequest::Rollback { pack, reply: req.reply.clone() });
                        continue;
                    }
                    Request::Respond { .. } | Request::RespondList => Reply::err("handled by the control thread"),
                };
                let _ = req.reply.send(reply);
            },
            // Wake when the pending batch is due; otherwise once a second for
            // housekeeping (an idle agent sleeps).
            default(pipeline.due_in(batch_timeout).unwrap_or(Duration::from_secs(1))) => {}
        }
        if pipeline.due_in(batch_timeout) == Some(Duration::ZERO) {
            pipeline.dispatch_partial();
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            last_flush = Instant::now();
            services.flush_state();
        }
        if last_health.elapsed() >= health_every {
            last_health = Instant::now();
            for c in collectors.iter().flat_map(|c| c.status()) {
                tracing::info!(collector = c.name, mode = %c.mode, events = c.events, partial = c.partial, exe_recovered = c.exe_recovered, exe_missing = c.exe_missing, dropped = c.dropped, lost = c.lost, rate = format!("{:.1}/s", c.events_per_sec), "health");
            }
            for p in pipeline.status() {
                let m = &p.metrics;
                tracing::info!(plugin = %p.key, version = %p.version, health = %p.health, calls = m.calls, events = m.events, findings = m.findings, errors = m.errors, timeouts = m.timeouts, dropped = p.dropped_events, p50_us = m.p50_us, p99_us = m.p99_us, memory = m.memory_bytes, "health");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(fleet_link);
    if let Some(c) = collectors {
        c.stop();
    }
    if let Some(r) = &responder {
        // The tamper hook holds a sender of the alert channel: drop it, or finish() waits forever.
        r.on_isolation_tamper(|_| {});
    }
    let summary = pipeline.finish();
    services.flush_state();
    if let Some(s) = store {
        // Commits everything queued (events, alerts, actions) before exiting.
        drop(s);
    }
    let _ = std::fs::remove_file(control::socket_path(&cfg.data_dir));
    for l in super::plugin_health_lines(&summary.plugins) {
        tracing::warn!("{l}");
    }
    tracing::info!(events = summary.events, alerts = summary.alerts, source_ended = !source_open, "agent stopped");
    Ok(())
}

/// Response requests since the agent started, by what became of them.
#[derive(Debug, Default)]
struct ActionCounts {
    done: std::sync::atomic::AtomicU64,
    simulated: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl ActionCounts {
    fn count(&self, decision: edr_event::Decision, failed: bool) {
        let c = match decision {
            edr_event::Decision::Refused => &self.refused,
            edr_event::Decision::Simulated => &self.simulated,
            edr_event::Decision::Enforced if failed => &self.failed,
            edr_event::Decision::Enforced => &self.done,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn snapshot(&self) -> serde_json::Value {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        json!({"done": l(&self.done), "simulated": l(&self.simulated), "refused": l(&self.refused), "failed": l(&self.failed)})
    }
}

/// The configuration's provenance and reloads, for status.
#[derive(Debug, Default, serde::Serialize)]
struct ConfigStatus {
    /// The file, or none (built-in defaults).
    file: Option<PathBuf>,
    /// When the running configuration was loaded, ns since the epoch.
    loaded_at: u64,
    reloads: u64,
    reload_failures: u64,
    /// Why the last reload was refused.
    last_error: Option<String>,
    /// Sections changed by reloads that only take effect at the next start.
    restart_needed: Vec<String>,
}

impl ConfigStatus {
    fn record_reload(&mut self, applied: ReloadOutcome) {
        self.reloads += 1;
        self.loaded_at = edr_event::time::now();
        self.last_error = applied.error;
        for s in applied.restart_needed {
            if !self.restart_needed.contains(&s) {
                self.restart_needed.push(s);
            }
        }
    }
}

/// What a reload did.
#[derive(Debug, Default)]
struct ReloadOutcome {
    applied: Vec<String>,
    restart_needed: Vec<String>,
    /// A part that could not be applied (its old setting stays).
    error: Option<String>,
}

/// Re-reads the config file (SIGHUP). `Ok(None)`: there is no file.
fn reload(args: &AgentArgs) -> anyhow::Result<Option<AgentConfig>> {
    let Some(path) = &args.config else { return Ok(None) };
    let mut cfg = AgentConfig::load(path)?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(Some(cfg))
}

/// Applies what can change while running: `[output]` (between two alerts,
/// none lost or doubled), `[metrics]`, and `[[trust.keys]]` (for packs
/// offered from now on). Every other changed section is reported as needing
/// a restart. Events keep flowing throughout: this runs on the pipeline
/// thread between two batches.
#[allow(clippy::too_many_arguments)]
fn apply_reload(
    old: &AgentConfig,
    new: &Arc<AgentConfig>,
    pipeline: &Pipeline,
    metrics: &mut Option<crate::metrics::MetricsServer>,
    control_tx: &Sender<Incoming>,
    packs: &Sender<PackRequest>,
    health: &HealthLog,
) -> ReloadOutcome {
    let mut out = ReloadOutcome::default();
    let mut errors = Vec::new();
    for (section, changed) in changed_sections(old, new) {
        if !changed {
            continue;
        }
        match section {
            "output" => match crate::output::OutputSet::open(new) {
                Ok(set) => {
                    pipeline.change_outputs(Box::new(move |w| w.install(set)));
                    out.applied.push(section.into());
                }
                Err(e) => errors.push(format!("[output] not applied: {e:#}")),
            },
            "metrics" => {
                // Drop the old endpoint first: the new one may want its port.
                *metrics = None;
                *metrics = start_metrics(new, control_tx, health);
                out.applied.push(section.into());
            }
            "trust" => match packs::trust_store(new) {
                Ok(t) => {
                    let _ = packs.send(PackRequest::Trust(t));
                    out.applied.push(section.into());
                }
                Err(e) => errors.push(format!("[trust] not applied: {e:#}")),
            },
            other => out.restart_needed.push(other.into()),
        }
    }
    out.error = (!errors.is_empty()).then(|| errors.join("; "));
    let message = format!(
        "SIGHUP: configuration reloaded; applied: {}; takes effect at the next start: {}{}",
        if out.applied.is_empty() { "nothing changed".to_string() } else { out.applied.join(", ") },
        if out.restart_needed.is_empty() { "-".to_string() } else { out.restart_needed.join(", ") },
        out.error.as_deref().map(|e| format!("; {e}")).unwrap_or_default()
    );
    health.record("config-reloaded", out.error.is_some(), &message, json!({"applied": out.applied, "restart_needed": out.restart_needed, "error": out.error}));
    out
}

/// The fleet link, when this host is (or, with a token, becomes) enrolled
/// and `[fleet] disabled` is not set. It reads alerts from the record
/// (opened read-only beside the writer) and status through the control channel.
fn start_fleet_link(cfg: &AgentConfig, enroll: Option<&str>, control_tx: &Sender<Incoming>) -> anyhow::Result<Option<edr_fleet_link::FleetLink>> {
    if let Some(token) = enroll.or(cfg.fleet.enroll_token.as_deref()) {
        edr_fleet_link::enroll::enroll(&cfg.data_dir, token, &edr_fleet_link::enroll::hostname())?;
    }
    let enrolled = edr_fleet_link::identity::state_dir(&cfg.data_dir).and_then(|d| edr_fleet_link::Identity::load(&d))?.is_some();
    if !enrolled || cfg.fleet.disabled || !cfg.store.enabled {
        if enrolled && !cfg.store.enabled {
            tracing::warn!("fleet link off: alerts are forwarded from the record, and [store] enabled = false");
        }
        return Ok(None);
    }
    let store = edr_store::Store::open_read_only(cfg.store_config().path).context("the fleet link reads alerts from the record")?;
    let control = control_tx.clone();
    let status = move || {
        let (tx, rx) = crossbeam_channel::bounded::<Reply>(1);
        control.send(Incoming { uid: 0, request: Request::Status, reply: tx }).map_err(|_| "the agent is stopping".to_string())?;
        rx.recv_timeout(Duration::from_secs(2)).ok().and_then(|r| r.result).ok_or_else(|| "the agent did not answer within 2 s".to_string())
    };
    let opts = edr_fleet_link::LinkOptions { agent_version: env!("CARGO_PKG_VERSION").into(), ..Default::default() };
    Ok(Some(edr_fleet_link::FleetLink::start(&cfg.data_dir, opts, Arc::new(store), Arc::new(status))?))
}

/// Which top-level sections differ between two configurations.
fn changed_sections(a: &AgentConfig, b: &AgentConfig) -> Vec<(&'static str, bool)> {
    vec![
        ("data_dir", a.data_dir != b.data_dir),
        ("runtime", a.runtime != b.runtime),
        ("plugins", a.plugins != b.plugins),
        ("output", a.output != b.output),
        ("collect", a.collect != b.collect),
        ("packs", a.packs != b.packs),
        ("trust", a.trust != b.trust),
        ("respond", a.respond != b.respond),
        ("store", a.store != b.store),
        ("metrics", a.metrics != b.metrics),
        ("fleet", a.fleet != b.fleet),
    ]
}

/// Starts the Prometheus endpoint when `[metrics] listen` is set; a failure
/// (port taken) is reported and leaves the agent running without it.
fn start_metrics(cfg: &AgentConfig, control_tx: &Sender<Incoming>, health: &HealthLog) -> Option<crate::metrics::MetricsServer> {
    let addr = cfg.metrics.address().ok().flatten()?;
    match crate::metrics::MetricsServer::start(addr, control_tx.clone()) {
        Ok(m) => Some(m),
        Err(e) => {
            health.record("metrics-failed", true, &format!("the metrics endpoint did not start: {e:#}"), json!({"listen": addr.to_string()}));
            None
        }
    }
}

/// Starts the response engine; its audit records go to `<data_dir>/actions.jsonl`
/// and the log. A failure to start disables response, loudly, not the agent.
fn start_responder(
    cfg: &AgentConfig,
    config_file: Option<&std::path::Path>,
    services: &Arc<AgentServices>,
    health: Arc<HealthLog>,
    store: Option<(edr_store::StoreWriter, u64)>,
    counts: Arc<ActionCounts>,
) -> Option<Arc<edr_respond::Responder>> {
    let mut rc = match cfg.respond_config() {
        Ok(rc) => rc,
        Err(e) => {
            tracing::error!("[respond]: {e}; response actions are disabled");
            return None;
        }
    };
    // The agent's own files: quarantine and delete refuse them (edr_respond::protect).
    rc.data_dir = Some(cfg.data_dir.clone());
    rc.config_file = config_file.map(std::path::Path::to_path_buf);
    rc.trust_keys = cfg.trust.keys.iter().filter_map(|k| k.public_key_file.clone()).collect();
    rc.agent_binary = std::env::current_exe().ok();
    let mut responder = match edr_respond::Responder::new(rc) {
        Ok(r) => r,
        Err(e) => {
            health.record(
                "respond-disabled",
                true,
                &format!("the response engine did not start: {e}; response actions are disabled"),
                json!({"error": e.to_string()}),
            );
            return None;
        }
    };
    let audit = edr_datadir::open_append_path(&cfg.data_dir.join("actions.jsonl"))
        .map_err(|e| tracing::error!("{e}; response audit records go to the log and the store only"))
        .ok();
    let audit = Arc::new(Mutex::new(audit));
    let write_audit = {
        let audit = audit.clone();
        move |line: String| {
            if let Some(f) = audit.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
        }
    };
    let sink = write_audit.clone();
    let next_action = Arc::new(std::sync::atomic::AtomicU64::new(store.as_ref().map(|(_, first)| *first).unwrap_or(1)));
    let refused_counts = counts.clone();
    responder.audit_sink(move |record| {
        counts.count(record.decision, matches!(record.outcome, edr_respond::Outcome::Error(_)));
        let line = serde_json::to_string(record).unwrap_or_default();
        tracing::info!(target: "edr::respond::audit", decision = ?record.decision, action = record.action.as_str(), target = %record.target, "{line}");
        sink(line);
        if let Some((w, _)) = &store {
            let requester = match &record.requester {
                edr_respond::Requester::Operator { uid } => format!("operator uid {uid}"),
                edr_respond::Requester::Pack { pack, plugin } => format!("pack {pack} plugin {plugin}"),
            };
            let outcome = serde_json::to_value(&record.outcome).ok().and_then(|o| o["status"].as_str().map(str::to_string)).unwrap_or_default();
            let row = edr_store::ActionRecord {
                id: next_action.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                time: record.time,
                requester,
                action: record.action.as_str().to_string(),
                target: record.target.clone(),
                decision: record.decision,
                outcome,
                reason: record.reason.clone(),
                alert_id: None,
                detail: serde_json::to_value(record).unwrap_or_default(),
            };
            if let Err(e) = w.append_action(row) {
                tracing::error!("action record not stored: {e}");
            }
        }
    });
    let responder = Arc::new(responder);
    let r = responder.clone();
    let s = services.clone();
    services.set_action_handler(Arc::new(move |who, action, reason| {
        let kind = edr_pack::ActionKind::of(&action).as_str();
        let pack = who.pack.as_ref().map(|p| p.id.clone()).unwrap_or_else(|| who.plugin.clone());
        let requester = edr_respond::Requester::Pack { pack, plugin: who.plugin.clone() };
        if !s.declares(who, kind) {
            // Refused before the engine sees it; audited all the same.
            let refusal = format!("`{kind}` is not declared in the plugin's pack manifest");
            tracing::warn!(target: "edr::respond::audit", plugin = %who.plugin, action = kind, "refused: {refusal}");
            refused_counts.count(edr_event::Decision::Refused, false);
            write_audit(
                json!({
                    "time": edr_event::time::now(),
                    "requester": requester,
                    "action": kind,
                    "request": edr_respond::ResponseAction::from(action),
                    "decision": "refused",
                    "outcome": "not-run",
                    "reason": reason,
                    "refusal": refusal,
                })
                .to_string(),
            );
            return edr_event::Decision::Refused;
        }
        r.submit(requester, edr_respond::ResponseAction::from(action), &reason)
    }));
    Some(responder)
}

/// Isolation removed or altered behind the agent's back (it re-applies it):
/// an alert `edr.tamper.isolation-removed` and a health event.
fn alert_on_isolation_tamper(r: &edr_respond::Responder, alerts: crate::dispatch::AgentAlerts, health: Arc<HealthLog>) {
    r.on_isolation_tamper(move |t| {
        let outcome = match &t.error {
            None => "re-applied".to_string(),
            Some(e) => format!("re-applying FAILED: {e}"),
        };
        let management = t.management.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ");
        let finding = edr_event::Finding {
            rule_id: "edr.tamper.isolation-removed".into(),
            title: "Host isolation removed or altered behind the agent's back".into(),
            severity: edr_event::Severity::High,
            techniques: vec!["T1562.004".into()],
            message: format!("{} while the host is isolated; {outcome} (tampering #{})", t.what, t.count),
            author: "edr".into(),
            event_ids: Vec::new(),
            evidence: vec![
                ("what".into(), t.what.clone()),
                ("reapplied".into(), t.reapplied.to_string()),
                ("management".into(), management),
                ("count".into(), t.count.to_string()),
            ],
        };
        if !alerts.raise(finding) {
            tracing::error!("the isolation tampering alert could not be queued (alert path full or closed)");
        }
        health.record("isolation-tampered", true, &format!("{}; {outcome}", t.what), json!({"tamper": t}));
    });
}

/// Compiling plugins (cranelift) allocates and frees tens of MB; glibc keeps
/// freed memory for reuse, so a resident set of ~130 MB after a cold start
/// would stay. Hand it back after compiling.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Finds a plugin's key from its key or bare name.
fn resolve_key(pipeline: &Pipeline, plugin: &str) -> Option<String> {
    let status = pipeline.status();
    status.iter().find(|p| p.key == plugin).or_else(|| status.iter().find(|p| p.name == plugin)).map(|p| p.key.clone())
}

#[allow(clippy::too_many_arguments)]
fn status(
    cfg: &AgentConfig,
    pipeline: &Pipeline,
    packs: &Mutex<PackStatus>,
    collectors: Option<&edr_collect::Collectors>,
    store: Option<&edr_store::Store>,
    responder: Option<&edr_respond::Responder>,
    config: &ConfigStatus,
    started: Instant,
) -> serde_json::Value {
    let packs = packs.lock().unwrap_or_else(|p| p.into_inner());
    let collectors: Vec<serde_json::Value> = collectors
        .map(|c| c.status())
        .unwrap_or_default()
        .into_iter()
        .map(|c| json!({"name": c.name, "mode": c.mode, "events": c.events, "partial": c.partial, "dropped": c.dropped, "lost": c.lost, "overflows": c.overflows, "unresolved": c.unresolved, "exe_recovered": c.exe_recovered, "exe_missing": c.exe_missing, "events_per_sec": c.events_per_sec}))
        .collect();
    let response = responder
        .map(|r| json!({"isolation": r.isolation_state(), "quarantined": r.quarantined().len(), "blocks": r.blocks().len(), "block_stats": r.block_stats()}));
    json!({
        "store": store.map(|s| s.stats()),
        "response": response,
        "source": cfg.collect.source,
        "collectors": collectors,
        "agent": {
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_secs": started.elapsed().as_secs(),
            "data_dir": cfg.data_dir,
        },
        "pipeline": { "events": pipeline.events() },
        "plugins": pipeline.status(),
        "packs": &*packs,
        "config": config,
    })
}

#[allow(clippy::too_many_arguments)]
fn spawn_pack_thread(
    mut manager: PackManager,
    candidates: Receiver<Candidate>,
    quarantines: Receiver<Quarantined>,
    requests: Receiver<PackRequest>,
    activations: Sender<Activation>,
    status: Arc<Mutex<PackStatus>>,
    health: Arc<HealthLog>,
    floors: Option<Arc<Mutex<packs::PackState>>>,
) {
    let record = move |status: &Mutex<PackStatus>, health: &HealthLog, action: &str, error: bool, message: String, details: serde_json::Value| {
        health.record(action, error, &message, details.clone());
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        s.recent.push_back(json!({"time": edr_event::time::to_rfc3339(edr_event::time::now()), "action": action, "message": message, "details": details}));
        while s.recent.len() > 50 {
            s.recent.pop_front();
        }
    };
    std::thread::Builder::new()
        .name("edr-packs".into())
        .spawn(move || loop {
            let outcome: Option<(Result<Activation, packs::OfferError>, String)> = select! {
                recv(candidates) -> c => match c {
                    Ok(c) => {
                        let origin = c.origin.clone();
                        let result = match (&c.refused, &c.signature) {
                            (Some(r), _) => Err(packs::OfferError::Rejected(r.clone())),
                            (None, Some(sig)) => manager.offer(&c.archive, sig, &c.origin),
                            (None, None) => Err(packs::OfferError::Rejected(edr_pack::Rejection::MissingSignature { path: edr_pack::signature_path(std::path::Path::new(&c.origin)) })),
                        };
                        if let Some(file) = &c.dropped {
                            let refused = result.as_ref().err().filter(|e| !e.is_benign()).map(|e| e.to_string());
                            packs::retire_dropped(file, refused.as_deref());
                        }
                        Some((result, origin))
                    }
                    Err(_) => return,
                },
                recv(quarantines) -> q => match q {
                    Ok(q) => match &q.pack {
                        Some(p) => {
                            let reason = format!("plugin {} quarantined: {}", q.key, q.reason);
                            Some((manager.rollback(&p.id, &reason), format!("automatic rollback of {} {}", p.id, p.version)))
                        }
                        None => None,
                    },
                    Err(_) => return,
                },
                recv(requests) -> r => match r {
                    Ok(PackRequest::Trust(trust)) => {
                        manager.set_trust(trust);
                        None
                    }
                    Ok(PackRequest::Rollback { pack, reply }) => {
                        let result = manager.rollback(&pack, "rolled back by the operator");
                        let _ = reply.send(match &result {
                            Ok(a) => Reply::ok(json!({"pack": a.pack.id, "version": a.pack.version})),
                            Err(e) => Reply::err(e.to_string()),
                        });
                        Some((result, "operator rollback".into()))
                    }
                    Err(_) => return,
                },
            };
            let Some((result, origin)) = outcome else { continue };
            match result {
                Ok(a) => {
                    record(&status, &health, "pack-activated", false, format!("pack {} {} activated from {origin} (signed by {})", a.pack.id, a.pack.version, a.pack.signer), json!({"pack": &a.pack, "origin": origin}));
                    if let Some(f) = &floors {
                        *f.lock().unwrap_or_else(|p| p.into_inner()) = manager.state().clone();
                    }
                    if activations.send(a).is_err() {
                        return;
                    }
                }
                Err(e) if e.is_benign() => tracing::debug!(%origin, "{e}"),
                Err(e) => record(&status, &health, "pack-rejected", true, format!("pack from {origin} not activated: {e}"), json!({"origin": origin, "reason": e.reason_code(), "error": e.to_string()})),
            }
        })
        .expect("spawning the pack thread");
}

/// The event source: the live collectors, stdin, or an ECS JSONL file.
fn start_source(cfg: &AgentConfig, services: &Arc<AgentServices>) -> anyhow::Result<(Receiver<edr_event::Event>, Option<edr_collect::Collectors>)> {
    let (tx, rx) = crossbeam_channel::bounded(cfg.collect.queue);
    if cfg.collect.source == "live" {
        let c = cfg.collect.collect_config(&cfg.data_dir).map_err(|e| anyhow::anyhow!("[collect]: {e}"))?;
        let collectors = edr_collect::Collectors::start(c, tx).context("starting the collectors")?;
        let tree = collectors.process_tree();
        services.set_ancestry_source(Arc::new(move |entity| tree.ancestry(entity)));
        for s in collectors.status() {
            tracing::info!(collector = s.name, mode = %s.mode, "collector started");
        }
        return Ok((rx, Some(collectors)));
    }
    let source = cfg.collect.source.clone();
    std::thread::Builder::new().name("edr-source".into()).spawn(move || {
        let input: Box<dyn BufRead> = if source == "stdin" {
            Box::new(std::io::stdin().lock())
        } else {
            match std::fs::File::open(&source) {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(e) => {
                    tracing::error!("cannot open event source {source}: {e}");
                    return;
                }
            }
        };
        for line in JsonlReader::new(input) {
            match line {
                Ok(Line::Event(e)) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Ok(Line::Malformed { line, error }) => tracing::warn!(source = %source, "line {line}: skipped: {error}"),
                Err(e) => {
                    tracing::error!(source = %source, "read error: {e}");
                    return;
                }
            }
        }
    })?;
    Ok((rx, None))
}
