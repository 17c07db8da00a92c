//! The `edr` subcommands.

pub mod agent;
pub mod config;
pub mod fleet;
pub mod incidents;
pub mod investigate;
pub mod pack;
pub mod plugin;
pub mod replay;
pub mod respond;
pub mod server;
pub mod service;
pub mod sigma;
pub mod status;

use edr_agent::AgentConfig;
use std::path::Path;

/// The config at `path`, or the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    Ok(match path {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    })
}
