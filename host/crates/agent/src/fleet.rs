//! The fleet link (`edr-fleet-link`) as an [`AgentExtension`]: when the
//! host is enrolled (with `edr agent --enroll TOKEN`, `[fleet]
//! enroll_token`, or earlier), the link forwards alerts from the record,
//! sends heartbeats with the agent's status and answers signed commands.

use crate::{AgentConfig, AgentExtension, AgentHandle, Shutdown};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Enrolls this host with `token` (the argument, or `[fleet] enroll_token`)
/// when one is given; a host already enrolled keeps its identity (the token
/// is not used).
pub(crate) fn enroll_if_asked(cfg: &AgentConfig, token: Option<&str>) -> anyhow::Result<()> {
    if let Some(token) = token.or(cfg.fleet.enroll_token.as_deref()) {
        edr_fleet_link::enroll::enroll(&cfg.data_dir, token, &edr_fleet_link::enroll::hostname()).context("enrolling this host in the fleet")?;
    }
    Ok(())
}

/// The link, when this host is enrolled and `[fleet] disabled` is not set.
pub(crate) fn extension(cfg: &AgentConfig) -> anyhow::Result<Option<FleetExtension>> {
    let dir = edr_fleet_link::identity::state_dir(&cfg.data_dir)?;
    let Some(identity) = edr_fleet_link::Identity::load(&dir)? else { return Ok(None) };
    if cfg.fleet.disabled {
        return Ok(None);
    }
    if !cfg.store.enabled {
        tracing::warn!("fleet link off: alerts are forwarded from the record, and [store] enabled = false");
        return Ok(None);
    }
    let policy = edr_fleet_link::policy::CommandPolicy::new(&cfg.fleet.refuse).map_err(|e| anyhow::anyhow!("[fleet] refuse: {e}"))?;
    let fallback = (cfg.fleet.isolation_fallback_secs > 0).then(|| Duration::from_secs(cfg.fleet.isolation_fallback_secs));
    if !policy.classes().is_empty() {
        tracing::info!(refused = ?policy.classes(), "fleet: this host refuses these classes of fleet command ([fleet] refuse)");
    }
    let counters = LinkCounters { host_id: identity.host_id, stats: Arc::default() };
    Ok(Some(FleetExtension {
        data_dir: cfg.data_dir.clone(),
        record: cfg.store_config().path,
        policy,
        fallback,
        forward_events: cfg.fleet.forward_events,
        counters,
    }))
}

/// Runs the fleet link for as long as the agent runs.
pub(crate) struct FleetExtension {
    data_dir: PathBuf,
    record: PathBuf,
    policy: edr_fleet_link::policy::CommandPolicy,
    fallback: Option<Duration>,
    forward_events: bool,
    counters: LinkCounters,
}

/// The link's counters, shared with the agent's status (`edr status`).
#[derive(Clone)]
pub(crate) struct LinkCounters {
    host_id: String,
    stats: Arc<edr_fleet_link::LinkStats>,
}

impl LinkCounters {
    /// What the link has done so far.
    pub(crate) fn status(&self) -> edr_fleet_link::LinkStatus {
        self.stats.snapshot(&self.host_id)
    }
}

impl FleetExtension {
    /// The counters this extension's link will keep.
    pub(crate) fn counters(&self) -> LinkCounters {
        self.counters.clone()
    }
}

impl AgentExtension for FleetExtension {
    fn name(&self) -> &str {
        "fleet"
    }

    fn run(self: Box<Self>, agent: AgentHandle, shutdown: Shutdown) -> anyhow::Result<()> {
        let store = edr_store::Store::open_read_only(&self.record).context("the fleet link reads alerts from the record")?;
        let handle = agent.clone();
        let status = move || {
            let status = handle.status_within(Duration::from_secs(2)).map_err(|e| e.to_string())?;
            serde_json::to_value(status).map_err(|e| e.to_string())
        };
        let status: Arc<dyn edr_fleet_link::StatusProvider> = Arc::new(status);
        let nats_urls = load_identity(&self.data_dir).map(|id| id.nats_urls).unwrap_or_default();
        let exec = crate::fleet_exec::FleetExecutor { agent, builtin: edr_fleet_link::commands::BuiltIn(status.clone()), nats_urls };
        let opts = edr_fleet_link::LinkOptions {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            policy: self.policy.clone(),
            isolation_fallback: self.fallback,
            forward_events: self.forward_events,
            stats: self.counters.stats.clone(),
            ..Default::default()
        };
        let link = edr_fleet_link::FleetLink::start_with(&self.data_dir, opts, Arc::new(store), status, Arc::new(exec))?;
        while !shutdown.wait_timeout(Duration::from_millis(500)) {}
        drop(link);
        Ok(())
    }
}

fn load_identity(data_dir: &Path) -> Option<edr_fleet_link::Identity> {
    let dir = edr_fleet_link::identity::state_dir(data_dir).map_err(|e| tracing::warn!("fleet state: {e}")).ok()?;
    edr_fleet_link::Identity::load(&dir).map_err(|e| tracing::warn!("fleet identity: {e}")).ok().flatten()
}

/// The fleet's NATS endpoints (every address its URLs resolve to, with the
/// port) when this host is enrolled and the link is on: the response engine
/// adds them to the isolation allowlist, so an isolated host still reaches
/// its fleet. A URL that does not resolve is logged; the executor then
/// refuses a fleet isolation (see [`crate::fleet_exec`]).
pub(crate) fn management_endpoints(cfg: &AgentConfig) -> Vec<edr_respond::Endpoint> {
    if cfg.fleet.disabled {
        return Vec::new();
    }
    let Some(id) = load_identity(&cfg.data_dir) else { return Vec::new() };
    match edr_fleet_link::endpoints::resolve(&id.nats_urls) {
        Ok(addrs) => {
            let eps: Vec<_> = addrs.iter().map(|a| edr_respond::Endpoint::host_port(a.ip(), a.port())).collect();
            tracing::info!(endpoints = ?addrs, "isolation keeps the fleet's NATS reachable");
            eps
        }
        Err(e) => {
            tracing::error!(
                "the fleet's NATS endpoints are not in the isolation allowlist: {e}; isolating from the fleet is refused until they resolve at agent start"
            );
            Vec::new()
        }
    }
}
