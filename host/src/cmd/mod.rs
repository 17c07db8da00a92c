//! The `edr` subcommands.

pub mod agent;
pub mod config;
pub mod fleet;
pub mod investigate;
pub mod pack;
pub mod plugin;
pub mod replay;
pub mod respond;
pub mod server;
pub mod service;
pub mod sigma;
pub mod status;

use crate::config::AgentConfig;
use std::path::Path;

/// The config at `path`, or the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    Ok(match path {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    })
}

/// A one-line summary of plugin failures for the end of a run.
pub fn plugin_health_lines(plugins: &[crate::dispatch::PluginStatus]) -> Vec<String> {
    plugins
        .iter()
        .filter(|p| p.metrics.errors > 0 || p.dropped_events > 0 || p.health != "active")
        .map(|p| {
            format!(
                "plugin {}: {}; {} errors ({} timeouts, {} out-of-memory, {} traps), {} events skipped, {} dropped",
                p.key, p.health, p.metrics.errors, p.metrics.timeouts, p.metrics.out_of_memory, p.metrics.traps, p.metrics.skipped_events, p.dropped_events
            )
        })
        .collect()
}
