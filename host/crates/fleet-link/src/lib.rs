//! `edr-fleet-link`: the agent's side of the fleet.
//!
//! What it needs from the agent is deliberately small, so it can sit behind
//! any agent builder hook:
//!
//! * the data directory (its state goes to `<data_dir>/fleet/`, 0700: the
//!   host's nkey seed `host.nk`, `identity.json` and the alert cursor, all 0600);
//! * an [`AlertSource`]: read access to the record (implemented for
//!   [`edr_store::Store`], e.g. one opened read-only beside the agent);
//! * a [`StatusProvider`]: the agent's status document (`edr status --json`'s form).
//!
//! [`enroll()`](enroll::enroll) turns a one-time token into an identity;
//! [`FleetLink::start`] runs the link on a runtime thread of its own:
//! heartbeats, and alert forwarding with a durable cursor that advances only
//! after JetStream has acknowledged the alert (its `Nats-Msg-Id` lets the
//! stream drop a resend). The record is the spool: a network cut, a NATS
//! restart or an agent restart loses nothing and sends nothing twice. It also
//! answers signed commands on `edr.cmd.<host id>` ([`commands`]).

#![deny(missing_docs)]

pub mod central;
pub mod commands;
pub mod connections;
pub mod endpoints;
pub mod enroll;
pub mod fallback;
pub mod heartbeat;
pub mod identity;
mod link;
mod packs;
pub mod policy;
pub mod processes;
pub mod source;

pub use identity::Identity;
pub use link::{FleetLink, LinkOptions, LinkStats, LinkStatus};
pub use source::AlertSource;

/// The agent's status document, on demand (`Err` with why, when the agent did not answer).
pub trait StatusProvider: Send + Sync {
    /// The current status.
    fn status(&self) -> Result<serde_json::Value, String>;
}

impl<F: Fn() -> Result<serde_json::Value, String> + Send + Sync> StatusProvider for F {
    fn status(&self) -> Result<serde_json::Value, String> {
        self()
    }
}

/// `[fleet]` in the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Enroll with this token at start when the host has no identity yet (`edr agent --enroll` does the same).
    pub enroll_token: Option<String>,
    /// Turn the link off even though the host is enrolled.
    pub disabled: bool,
    /// Classes of fleet command this host refuses, whoever signed them
    /// (ops such as `delete`, or the groups `respond`, `read`, `packs`; see [`policy`]).
    pub refuse: Vec<String>,
    /// An isolated host that has not reached the fleet for this long
    /// releases itself and says why (a host must never be stranded); 0 turns
    /// the fallback off. Default 600 s.
    pub isolation_fallback_secs: u64,
    /// Forward every event of the record to the central record (the
    /// management side keeps it searchable when this host is offline, wiped
    /// or compromised). Default on.
    pub forward_events: bool,
}

/// Seconds an isolated host waits for the fleet by default before it releases itself.
pub const DEFAULT_ISOLATION_FALLBACK_SECS: u64 = 600;

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { enroll_token: None, disabled: false, refuse: Vec::new(), isolation_fallback_secs: DEFAULT_ISOLATION_FALLBACK_SECS, forward_events: true }
    }
}

/// What can go wrong in the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The fleet state in the data directory is unusable.
    #[error("fleet state in the data directory: {0}")]
    Dir(#[from] edr_datadir::DataDirError),
    /// A state file is malformed.
    #[error("{path}: {problem}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Enrollment failed.
    #[error("enrollment failed: {0}")]
    Enroll(String),
    /// The host is not enrolled.
    #[error("this host is not enrolled in a fleet: run `edr agent --enroll TOKEN` (make a token with `edr fleet enroll-token`)")]
    NotEnrolled,
    /// The link's runtime could not start.
    #[error("cannot start the fleet link: {0}")]
    Start(String),
}
