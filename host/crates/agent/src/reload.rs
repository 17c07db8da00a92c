//! Configuration reloads (SIGHUP, [`crate::AgentHandle::reload`]): what
//! can change while running is applied between two batches, everything else
//! is reported as needing a restart.

use crate::config::AgentConfig;
use crate::health::HealthLog;
use crate::metrics::MetricsServer;
use crate::packs::{BuiltinPack, PackRequest};
use crate::pipeline::Pipeline;
use crate::status::ConfigStatus;
use crate::AgentHandle;
use crossbeam_channel::Sender;
use serde_json::json;
use std::sync::Arc;

/// Where a reload reads the new configuration: `Ok(None)` when there is
/// none (the agent runs on built-in defaults).
pub type ConfigLoader = Box<dyn FnMut() -> anyhow::Result<Option<AgentConfig>> + Send>;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Sections applied while running.
    pub applied: Vec<String>,
    /// Sections changed that take effect at the next start.
    pub restart_needed: Vec<String>,
    /// A part that could not be applied (its old setting stays).
    pub error: Option<String>,
}

/// What a reload may change: owned by the run loop.
pub(crate) struct Live<'a> {
    pub(crate) pipeline: &'a Pipeline,
    pub(crate) metrics: &'a mut Option<MetricsServer>,
    pub(crate) handle: &'a AgentHandle,
    pub(crate) packs: &'a Sender<PackRequest>,
    pub(crate) health: &'a HealthLog,
    pub(crate) builtin: Option<&'a BuiltinPack>,
}

/// The running configuration and its reloads.
pub(crate) struct Reloads {
    loader: Option<ConfigLoader>,
    current: Arc<AgentConfig>,
    pub(crate) status: ConfigStatus,
}

impl Reloads {
    pub(crate) fn new(loader: Option<ConfigLoader>, current: Arc<AgentConfig>, status: ConfigStatus) -> Self {
        Reloads { loader, current, status }
    }

    /// Reads the configuration again and applies it; a refused one is
    /// reported (health event, status) and the running one stays.
    pub(crate) fn reload(&mut self, live: Live<'_>) -> Result<ReloadReport, String> {
        let loaded = match self.loader.as_mut() {
            Some(load) => load(),
            None => Ok(None),
        };
        let mut new = match loaded.and_then(|c| c.map(absolute_data_dir).transpose()) {
            Ok(Some(new)) => new,
            Ok(None) => {
                tracing::info!("reload: the agent runs on built-in defaults (no --config); nothing to reload");
                return Err("the agent runs on built-in defaults (no configuration file); nothing to reload".into());
            }
            Err(e) => {
                let message = format!("SIGHUP: the configuration was not reloaded, the running one stays: {e:#}");
                live.health.record("config-reload-failed", true, &message, json!({"error": e.to_string()}));
                self.status.reload_failures += 1;
                self.status.last_error = Some(e.to_string());
                return Err(message);
            }
        };
        new.runtime.user_cache = self.current.runtime.user_cache;
        let new = Arc::new(new);
        let report = apply(&self.current, &new, live);
        self.status.reloads += 1;
        self.status.loaded_at = edr_event::time::now();
        self.status.last_error.clone_from(&report.error);
        for s in &report.restart_needed {
            if !self.status.restart_needed.contains(s) {
                self.status.restart_needed.push(s.clone());
            }
        }
        self.current = new;
        Ok(report)
    }
}

/// The data dir made absolute, as the running one is (a relative path would
/// otherwise read as a change).
fn absolute_data_dir(mut cfg: AgentConfig) -> anyhow::Result<AgentConfig> {
    cfg.data_dir = std::path::absolute(&cfg.data_dir)?;
    Ok(cfg)
}

/// Applies what can change while running: `[output]` (between two alerts,
/// none lost or doubled), `[metrics]`, and `[[trust.keys]]` (for packs
/// offered from now on). Every other changed section is reported as needing
/// a restart. Events keep flowing throughout: this runs on the pipeline
/// thread between two batches.
fn apply(old: &AgentConfig, new: &Arc<AgentConfig>, live: Live<'_>) -> ReloadReport {
    let mut out = ReloadReport::default();
    let mut errors = Vec::new();
    for (section, changed) in changed_sections(old, new) {
        if !changed {
            continue;
        }
        match section {
            "output" => match crate::output::OutputSet::open(new) {
                Ok(set) => {
                    live.pipeline.change_outputs(Box::new(move |w| w.install(set)));
                    out.applied.push(section.into());
                }
                Err(e) => errors.push(format!("[output] not applied: {e:#}")),
            },
            "metrics" => {
                // Drop the old endpoint first: the new one may want its port.
                *live.metrics = None;
                *live.metrics = MetricsServer::start_configured(new, live.handle, live.health);
                out.applied.push(section.into());
            }
            "trust" => match crate::packs::trust_store(new, live.builtin) {
                Ok(t) => {
                    let _ = live.packs.send(PackRequest::Trust(t));
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
    live.health.record(
        "config-reloaded",
        out.error.is_some(),
        &message,
        json!({"applied": out.applied, "restart_needed": out.restart_needed, "error": out.error}),
    );
    out
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
        ("incidents", a.incidents != b.incidents),
    ]
}
