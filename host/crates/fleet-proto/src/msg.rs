//! The messages on the bus. Every one carries `v` ([`crate::PROTO_VERSION`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the expected shape.
    #[error("not a valid {what} message: {source}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// Written by a newer version of the protocol.
    #[error("{what} message has protocol version {found}; this build understands up to {supported}: upgrade the management server")]
    TooNew {
        /// Which message.
        what: &'static str,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
}

/// Parses a versioned message, refusing newer versions.
///
/// # Errors
/// [`DecodeError`] when `bytes` is not a `T` or is from a newer protocol.
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let msg: T = serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed { what: T::WHAT, source })?;
    if msg.version() > crate::PROTO_VERSION {
        return Err(DecodeError::TooNew { what: T::WHAT, found: msg.version(), supported: crate::PROTO_VERSION });
    }
    Ok(msg)
}

/// A message with a protocol version.
pub trait Versioned {
    /// The message's name in errors.
    const WHAT: &'static str;
    /// Its `v` field.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($t:ty, $what:literal) => {
        impl Versioned for $t {
            const WHAT: &'static str = $what;
            fn version(&self) -> u32 {
                self.v
            }
        }
    };
}

/// A pack and the version active on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackVersion {
    /// Pack id.
    pub id: String,
    /// Active version.
    pub version: String,
}

/// A collector and the mode it runs in (`netlink`, `fanotify`, `poll`, `off`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorMode {
    /// Collector name.
    pub name: String,
    /// Its mode.
    pub mode: String,
}

/// What a host says about itself, every heartbeat interval, on `edr.host.<id>.hb`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Protocol version.
    pub v: u32,
    /// The sender's host id (the server checks it against the subject).
    pub host_id: String,
    /// When it was sent, seconds since the epoch (the host's clock).
    pub time: u64,
    /// Seconds until the next one: the server calls the host offline after three missed.
    pub interval_secs: u64,
    /// Host name.
    pub hostname: String,
    /// Operating system (`PRETTY_NAME` of os-release).
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Agent version.
    pub agent_version: String,
    /// Active packs.
    pub packs: Vec<PackVersion>,
    /// Collectors and their modes.
    pub collectors: Vec<CollectorMode>,
    /// Network isolation is in force.
    pub isolated: bool,
    /// Loss counters by where they happened (kernel, collector queue, plugins, record, ...).
    pub drops: BTreeMap<String, u64>,
    /// Alerts forwarded to the fleet since the link started, and the cursor.
    pub alerts_forwarded: u64,
    /// The highest alert id the fleet has acknowledged.
    pub alert_cursor: u64,
    /// Events the central record acknowledged since the link started.
    #[serde(default)]
    pub events_forwarded: u64,
    /// The highest event id the central record acknowledged.
    #[serde(default)]
    pub events_cursor: u64,
    /// Why the status snapshot is incomplete, when it is (the agent did not answer, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_error: Option<String>,
    /// The last time the host released itself from isolation because the
    /// fleet was unreachable, and why (the isolation fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_release: Option<SelfRelease>,
    /// Events the agent's pipeline received since the agent started (its
    /// status's `pipeline.events`), when the status says: two heartbeats
    /// give the host's events per second. Absent from older links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_events: Option<u64>,
}
versioned!(Heartbeat, "heartbeat");

/// A host's release of itself from isolation (the isolation fallback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfRelease {
    /// When, seconds since the epoch (the host's clock).
    pub time: u64,
    /// Why, in the host's words.
    pub reason: String,
}

/// One alert from a host's record, on `edr.host.<id>.alert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertMessage {
    /// Protocol version.
    pub v: u32,
    /// The sender's host id.
    pub host_id: String,
    /// The alert's id in the host's record (unique per host).
    pub alert_id: u64,
    /// When it fired, ns since the epoch.
    pub time: u64,
    /// Rule id.
    pub rule_id: String,
    /// Rule title.
    pub rule_name: String,
    /// Severity name (`low`, `medium`, `high`, `critical`, ...).
    pub severity: String,
    /// The alert's ECS document, as the host recorded it.
    pub ecs: serde_json::Value,
}
versioned!(AlertMessage, "alert");

/// Where an alert is in triage (kept on the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriageState {
    /// Nobody has looked at it.
    New,
    /// Someone is on it.
    Acknowledged,
    /// Done.
    Closed,
}

impl TriageState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriageState::New => "new",
            TriageState::Acknowledged => "acknowledged",
            TriageState::Closed => "closed",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "new" => Some(TriageState::New),
            "acknowledged" => Some(TriageState::Acknowledged),
            "closed" => Some(TriageState::Closed),
            _ => None,
        }
    }
}

/// A change made by the management server, on `edr.server.<kind>`: the
/// server's index is rebuilt from these (with the alert and heartbeat streams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEvent {
    /// Protocol version.
    pub v: u32,
    /// Unique id (applying the same event twice changes nothing).
    pub id: String,
    /// When, seconds since the epoch.
    pub time: u64,
    /// Who did it (the API token's name, or `enrollment`).
    pub actor: String,
    /// What changed.
    pub change: Change,
}
versioned!(ServerEvent, "server event");

/// What a [`ServerEvent`] changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// An enrollment token was made (only its hash is kept).
    TokenCreated {
        /// sha256 of the token's secret, hex.
        secret_sha256: String,
        /// Expiry, seconds since the epoch.
        expires_at: u64,
    },
    /// A host enrolled (using up a token).
    Enrolled {
        /// The new host id.
        host_id: String,
        /// The host's NATS user public key (`U...`).
        user_key: String,
        /// Host name it gave.
        hostname: String,
        /// The token's hash.
        secret_sha256: String,
    },
    /// An alert's triage state changed.
    Triage {
        /// Host.
        host_id: String,
        /// Alert id on that host.
        alert_id: u64,
        /// New state.
        state: TriageState,
        /// Why.
        note: String,
    },
    /// A signed command was relayed to a host, and what the host answered.
    Command {
        /// Host.
        host_id: String,
        /// The command's id.
        command_id: String,
        /// The signed body, verbatim.
        body: String,
        /// The signer's key, hex.
        key: String,
        /// `done`, `failed`, `refused` (by the host) or `no-answer`.
        status: String,
        /// The command's op (`kill`, `ls`, ...; empty in events from before it was recorded).
        #[serde(default)]
        op: String,
        /// The operator's reason, from the signed body.
        #[serde(default)]
        reason: String,
        /// The host's error or refusal reason, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The operator's signature, kept for a `queued` command so that
        /// any server process can send it when the host returns.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        signature: String,
    },
    /// A web console login, failed login or logout (the actor is the user).
    Login {
        /// The user name given.
        user: String,
        /// `ok`, `failed` (wrong name or password), `rate_limited` or `logout`.
        outcome: String,
        /// The client's address.
        from: String,
    },
    /// A pack was published to the fleet (its bytes are in `EDR_PACKS`).
    PackPublished {
        /// Pack id.
        name: String,
        /// Version.
        version: String,
        /// sha256 of the archive.
        sha256: String,
        /// Archive size.
        size: u64,
        /// Chunks in `EDR_PACKS`.
        chunks: u64,
        /// The hosts it goes to, in the order they are reached.
        targets: Vec<String>,
    },
    /// What one host did with a pack version (or its rollback).
    PackHost {
        /// Pack id.
        name: String,
        /// Version.
        version: String,
        /// Host.
        host_id: String,
        /// `staged`, `active`, `refused`, `no_answer`, `rolled_back` or `rollback_failed`.
        state: String,
        /// The host's reason, when it refused or failed.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// A rollout was halted (hosts not yet reached get nothing), or rolled back.
    PackHalted {
        /// Pack id.
        name: String,
        /// Version.
        version: String,
        /// Halted for a rollback.
        #[serde(default)]
        rollback: bool,
    },
    /// A saved hunt query was saved, replaced or deleted (kept in the `EDR_SAVED_QUERIES` bucket).
    SavedQuery {
        /// The query's name.
        name: String,
        /// `saved`, `replaced` or `deleted`.
        action: String,
        /// The SQL saved (or, for `deleted`, the SQL that was deleted).
        sql: String,
    },
}

/// A host's request for one chunk of a pack, on `edr.host.<id>.pack.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackChunkRequest {
    /// Protocol version.
    pub v: u32,
    /// The archive's sha256 (from the signed `pack_install`).
    pub sha256: String,
    /// Chunk number, from 0.
    pub index: u64,
}
versioned!(PackChunkRequest, "pack chunk request");

/// The server's answer to a [`PackChunkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackChunkReply {
    /// Protocol version.
    pub v: u32,
    /// The chunk, base64 (empty on error).
    #[serde(default)]
    pub data: String,
    /// Chunks of the whole archive.
    #[serde(default)]
    pub chunks: u64,
    /// Why there is no chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
versioned!(PackChunkReply, "pack chunk reply");

impl Change {
    /// The subject kind ([`crate::subjects::server`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::TokenCreated { .. } => "token",
            Change::Enrolled { .. } => "enrolled",
            Change::Triage { .. } => "triage",
            Change::Command { .. } => "command",
            Change::Login { .. } => "login",
            Change::PackPublished { .. } => "pack_published",
            Change::PackHost { .. } => "pack_host",
            Change::PackHalted { .. } => "pack_halted",
            Change::SavedQuery { .. } => "saved_query",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_message_is_refused_with_what_to_do() {
        let raw = br#"{"v":99,"host_id":"h0123456789abcdef","alert_id":1,"time":1,"rule_id":"r","rule_name":"n","severity":"high","ecs":{}}"#;
        let err = decode::<AlertMessage>(raw).unwrap_err().to_string();
        assert!(err.contains("version 99") && err.contains("upgrade"), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = decode::<Heartbeat>(b"{\"v\":1}").unwrap_err().to_string();
        assert!(err.starts_with("not a valid heartbeat message"), "{err}");
    }

    #[test]
    fn server_events_round_trip() {
        let e = ServerEvent {
            v: 1,
            id: "x".into(),
            time: 5,
            actor: "alice".into(),
            change: Change::Triage { host_id: "h0123456789abcdef".into(), alert_id: 3, state: TriageState::Closed, note: "fp".into() },
        };
        let back: ServerEvent = decode(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.change.kind(), "triage");
    }
}
