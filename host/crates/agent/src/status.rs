//! [`AgentStatus`]: everything `edr status` shows, typed. Its JSON form is
//! the document the control socket returns and `edr status --json` prints;
//! the metrics endpoint renders the same document.

use crate::config::EventSource;
use crate::dispatch::PluginStatus;
use crate::packs::ActivePack;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;

/// The running agent's status.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// The record's counters and sizes (`None`: `[store] enabled = false`).
    pub store: Option<edr_store::StoreStats>,
    /// The response engine (`None`: it is not running; the log says why).
    pub response: Option<ResponseStatus>,
    /// Where events come from.
    pub source: EventSource,
    /// One entry per collector (empty unless the source is `live`).
    pub collectors: Vec<CollectorStatus>,
    /// The agent process.
    pub agent: AgentInfo,
    /// The pipeline's counters.
    pub pipeline: PipelineStatus,
    /// One entry per installed plugin.
    pub plugins: Vec<PluginStatus>,
    /// The active packs and the latest pack events.
    pub packs: PackStatus,
    /// The configuration's provenance and reloads.
    pub config: ConfigStatus,
    /// Response requests since the start, by what became of them.
    pub actions: edr_respond::AuditTotals,
    /// What each remote output (syslog, webhook, NATS) did.
    pub outputs: Vec<edr_output::OutputStatus>,
    /// The fleet link (`None`: this host is not enrolled, or the link is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<edr_fleet_link::LinkStatus>,
}

/// The agent process.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    /// The agent's version.
    pub version: String,
    /// Its pid.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Its data dir (absolute).
    pub data_dir: PathBuf,
}

/// The pipeline's counters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PipelineStatus {
    /// Events the pipeline received.
    pub events: u64,
    /// Events waiting between the source and the pipeline.
    pub queued_events: usize,
}

/// What the response engine holds.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseStatus {
    /// Whether the host is isolated, read back from the kernel.
    pub isolation: edr_respond::IsolationState,
    /// Files in quarantine.
    pub quarantined: usize,
    /// Active execution blocks.
    pub blocks: usize,
    /// The exec-permission engine's counters.
    pub block_stats: edr_respond::BlockStats,
}

/// One collector, as `edr status` shows it.
pub use edr_collect::CollectorStatus;

/// The packs: what is active, and what happened lately.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PackStatus {
    /// The active version of each pack.
    pub active: Vec<ActivePack>,
    /// The latest pack events (accepted, rejected, rolled back), newest last.
    pub recent: VecDeque<PackEvent>,
}

/// How many pack events [`PackStatus::recent`] keeps.
const RECENT_PACK_EVENTS: usize = 50;

impl PackStatus {
    /// Adds an event, dropping the oldest beyond the last 50.
    pub fn push(&mut self, event: PackEvent) {
        self.recent.push_back(event);
        while self.recent.len() > RECENT_PACK_EVENTS {
            self.recent.pop_front();
        }
    }
}

/// A pack accepted, rejected or rolled back.
#[derive(Debug, Clone, Serialize)]
pub struct PackEvent {
    /// RFC 3339.
    pub time: String,
    /// `pack-activated`, `pack-rejected`.
    pub action: String,
    /// In words.
    pub message: String,
    /// The health event's details.
    pub details: serde_json::Value,
}

/// The configuration's provenance and reloads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// The file, or none (built-in defaults).
    pub file: Option<PathBuf>,
    /// When the running configuration was loaded, ns since the epoch.
    pub loaded_at: u64,
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads refused (the running configuration stayed).
    pub reload_failures: u64,
    /// Why the last reload was refused, or what part of it was not applied.
    pub last_error: Option<String>,
    /// Sections changed by reloads that only take effect at the next start.
    pub restart_needed: Vec<String>,
}
