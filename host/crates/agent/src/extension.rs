//! Code that runs beside the agent: the hook a fleet link plugs into.

use crate::{AgentHandle, Shutdown};

/// Something that runs for as long as the agent does, beside it: a fleet
/// link, a custom telemetry exporter. Added with
/// [`crate::AgentBuilder::with_extension`] (or, for a closure,
/// [`crate::AgentBuilder::with_task`]).
///
/// [`AgentExtension::run`] is called on a thread of its own once the agent
/// is fully up (the control socket answers), with a handle to the agent and
/// the agent's shutdown signal. It should return soon after the signal is
/// triggered: the agent waits up to 5 s for it when it stops (then logs it
/// and exits without it). An error it returns is logged; the agent runs on.
/// To stop the agent, an extension triggers the [`Shutdown`] it was given.
pub trait AgentExtension: Send + 'static {
    /// A short name, for the thread and the log.
    fn name(&self) -> &str;

    /// Runs until `shutdown` is triggered.
    fn run(self: Box<Self>, agent: AgentHandle, shutdown: Shutdown) -> anyhow::Result<()>;
}

/// A closure as an extension ([`crate::AgentBuilder::with_task`]).
pub(crate) struct Task<F> {
    pub(crate) name: String,
    pub(crate) run: F,
}

impl<F> AgentExtension for Task<F>
where
    F: FnOnce(AgentHandle, Shutdown) -> anyhow::Result<()> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, agent: AgentHandle, shutdown: Shutdown) -> anyhow::Result<()> {
        (self.run)(agent, shutdown)
    }
}
