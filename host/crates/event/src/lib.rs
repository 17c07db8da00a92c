//! The `edr` event model and its Elastic Common Schema (ECS) mapping.
//!
//! * [`model`] holds the agent's owned form of the plugin contract's types
//!   (`wit/edr-plugin.wit`): the agent's collectors produce them, the store
//!   keeps them. With the `wasmtime` feature, `contract` holds the types
//!   wasmtime's `bindgen!` generates from the WIT (one module per linked
//!   contract version) and the exhaustive conversions between the two.
//! * [`wire`] packs a batch of events into the generated wire records.
//! * [`ecs`] turns events and alerts into ECS JSON documents (what SIEMs
//!   ingest, what `edr replay` reads and `edr export` writes) and back.
//!
//! ```
//! use edr_event::{ecs, EventBody};
//! let line = r#"{"event":{"category":["process"],"type":["start"]},
//!   "process":{"pid":4242,"executable":"/usr/bin/bash","args":["bash","-i"],
//!   "parent":{"pid":1,"executable":"/usr/sbin/nginx"}}}"#;
//! let event = ecs::event_from_json(line).unwrap();
//! let EventBody::ProcessExec(exec) = &event.body else { panic!() };
//! assert_eq!(exec.parent_exe, "/usr/sbin/nginx");
//! assert_eq!(exec.ancestry, vec!["/usr/sbin/nginx".to_string()]);
//! ```
#![deny(missing_docs)]

pub mod capability;
#[cfg(feature = "wasmtime")]
pub mod contract;
pub mod ecs;
pub mod model;
pub mod time;
pub mod wire;

pub use capability::Capability;

/// The plugin contract versions (`edr:plugin@…`) this agent links, the only
/// place they are written in Rust (a test checks them against the WIT files).
pub mod versions {
    /// `edr:plugin@0.2.0`, `wit/edr-plugin.wit`: what the SDK builds today.
    pub const V0_2: &str = "0.2.0";
    /// `edr:plugin@0.1.0`, frozen in `wit/versions/0.1.0`.
    pub const V0_1: &str = "0.1.0";
    /// The version plugins are built against today.
    pub const CURRENT: &str = V0_2;
    /// Every linked version, newest first.
    pub const ALL: &[&str] = &[V0_2, V0_1];

    /// `major.minor` of a version (`0.2` for `0.2.0`), as pack manifests name it.
    pub const fn major_minor(v: &'static str) -> &'static str {
        let b = v.as_bytes();
        let (mut i, mut dots) = (0, 0);
        while i < b.len() {
            if b[i] == b'.' {
                dots += 1;
                if dots == 2 {
                    break;
                }
            }
            i += 1;
        }
        v.split_at(i).0
    }
}
pub use model::*;

/// A name that is not one of an enum's contract names (for example an unknown
/// event kind in a config file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{given}`; expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    /// The enum's Rust name.
    pub kind: &'static str,
    /// What was given.
    pub given: String,
    /// The accepted names.
    pub expected: &'static [&'static str],
}

/// A reference to the detection pack a plugin came from, carried by alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackRef {
    /// The pack id (`vendor.name`).
    pub id: String,
    /// The pack version.
    pub version: String,
    /// The key id (or name) of the publisher key that signed the pack.
    pub signer: String,
}

/// A finding, attributed to its plugin and pack, with the event that triggered it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// Unique alert id within this agent's record.
    pub id: u64,
    /// When the finding was made.
    pub time: Timestamp,
    /// The plugin that made it.
    pub plugin: String,
    /// The pack the plugin came from (none for a plugin loaded on its own).
    pub pack: Option<PackRef>,
    /// What the plugin reported.
    pub finding: Finding,
    /// The first event named by `finding.event_ids`, when the agent still had it.
    pub event: Option<Event>,
}
