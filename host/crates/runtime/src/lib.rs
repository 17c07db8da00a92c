//! The `edr` plugin runtime: loads detection plugins (WebAssembly components
//! built against `wit/edr-plugin.wit`) into wasmtime and calls them with
//! batches of events, under limits a hostile plugin cannot escape.
//!
//! * [`Runtime`]: one wasmtime engine (pooling allocator, epoch interruption,
//!   no async), one epoch ticker thread, a compile cache.
//! * [`Plugin`]: one loaded plugin: compiled once, instantiated from an
//!   `InstancePre`, called with a deadline on every call and a memory cap per
//!   instance. A trap or a timeout drops the instance and counts a strike; the
//!   next call rebuilds it. Too many strikes in a window quarantine it.
//! * [`HostServices`]: what the embedding agent supplies behind the host
//!   imports (process tree, persistent state, response policy).
//!
//! ```no_run
//! use edr_runtime::{Runtime, RuntimeConfig, PluginSpec, MemoryServices};
//! use std::sync::Arc;
//! let rt = Runtime::new(RuntimeConfig::default())?;
//! let wasm = std::fs::read("plugin.wasm")?;
//! let mut plugin = rt.load(PluginSpec::new("my-plugin", wasm), Arc::new(MemoryServices::default()))?;
//! let events: Vec<edr_event::Event> = Vec::new();
//! // One plugin: encode and filter in one go.
//! let outcome = plugin.run(&events);
//! // Many plugins: encode the batch once, pass each plugin its subset.
//! let batch = edr_event::wire::EncodedBatch::encode(&events);
//! let mine: Vec<_> = batch.events.iter().filter(|e| plugin.wants(e.kind())).collect();
//! let outcome = plugin.call(&batch, &mine);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod capability;
mod engine;
mod error;
mod host;
mod limits;
mod metrics;
mod plugin;

pub use capability::{Capability, Grants};
pub use engine::{Runtime, RuntimeConfig};
pub use error::{LoadError, PluginError};
pub use host::{HostServices, MemoryServices, PluginIdentity};
pub use limits::Limits;
pub use metrics::{MetricsSnapshot, PluginMetrics};
pub use plugin::{CallOutcome, Health, Plugin, PluginSpec};

/// The contract version plugins are built against today (`edr:plugin@…`);
/// the runtime links every version in [`CONTRACT_VERSIONS`].
pub const CONTRACT_VERSION: &str = edr_event::contract::current::VERSION;

/// Every contract version this runtime links, newest first.
pub const CONTRACT_VERSIONS: &[&str] = edr_event::contract::VERSIONS;
