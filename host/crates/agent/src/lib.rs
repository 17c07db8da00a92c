//! The edr agent as a library: what `edr agent` runs, in a form other code
//! can build, drive and test without spawning the binary.
//!
//! ```no_run
//! use edr_agent::{Agent, AgentConfig, Shutdown};
//!
//! let shutdown = Shutdown::new();
//! let agent = Agent::builder(AgentConfig::default()).build()?;
//! let handle = agent.handle(); // status, response actions, queries, reload
//! agent.run(shutdown)?;        // until the source ends or `shutdown` is triggered
//! # anyhow::Ok(())
//! ```
//!
//! # What runs where
//!
//! [`Agent::builder`] builds everything in dependency order: the data dir,
//! the health log, the record ([`edr_store`]), the event source (the live
//! collectors, stdin, a JSONL file, or a channel given to
//! [`AgentBuilder::events`]), the response engine ([`edr_respond`]) with its
//! audit sinks, the plugins' host services, the pipeline, the pack manager
//! with its sources. [`Agent::run`] then serves the control socket and the
//! metrics endpoint, starts the extensions, and runs the loop on the calling
//! thread: batching, dispatch, pack swaps, requests, reloads, health lines.
//!
//! # Driving a running agent
//!
//! An [`AgentHandle`] (cloneable, `Send + Sync`) does what the control socket
//! does, from inside the process: [`AgentHandle::status`] (the typed
//! [`AgentStatus`], the document `edr status --json` prints),
//! [`AgentHandle::execute`] (any [`control::Request`]: response actions and
//! their undo, pack rollback, plugin re-enable, SQL over the record, an
//! alert's storyline), and [`AgentHandle::reload`]. The control socket is one
//! transport over [`AgentHandle::execute`]; a fleet link is another.
//!
//! # Extensions
//!
//! Code that runs beside the agent for as long as it runs (the fleet link)
//! implements [`AgentExtension`] (or is a closure given to
//! [`AgentBuilder::with_task`]). Each gets the handle and the [`Shutdown`]
//! signal on a thread of its own once the agent is up, and must return soon
//! after the signal; the run loop is not edited to add one.
#![deny(missing_docs)]

mod agent;
pub mod config;
pub mod control;
pub mod dispatch;
mod extension;
mod fleet;
mod fleet_exec;
mod handle;
pub mod health;
pub mod incidents;
pub mod metrics;
pub mod output;
pub mod packs;
pub mod pipeline;
pub mod plugins;
mod reload;
pub mod response;
pub mod services;
mod shutdown;
pub mod source;
pub mod status;

pub use agent::{Agent, AgentBuilder, RunSummary};
pub use config::{AgentConfig, ConfigError, EventSource};
pub use extension::AgentExtension;
pub use handle::{AgentError, AgentHandle, Caller};
pub use packs::BuiltinPack;
pub use shutdown::Shutdown;
pub use status::AgentStatus;

/// A one-line summary of each plugin that failed, was quarantined or lost
/// events, for the end of a run.
pub fn plugin_health_lines(plugins: &[dispatch::PluginStatus]) -> Vec<String> {
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

/// Compiling plugins (cranelift) allocates and frees tens of MB; glibc keeps
/// freed memory for reuse, so a resident set of ~130 MB after a cold start
/// would stay. Hand it back after compiling.
pub(crate) fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
