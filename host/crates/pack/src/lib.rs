//! `edr-pack`: the detection pack format, its signing and its fail-closed
//! verification.
//!
//! A vendor ships detection plugins (WebAssembly components) and their data
//! files as a signed *pack*. This crate is used on both sides:
//!
//! * publisher (the `edr pack` CLI): [`keygen`], [`build`], [`sign`],
//!   [`inspect`];
//! * agent: [`TrustStore`] (pinned publisher keys), [`VerifyPolicy`] and
//!   [`verify`] / [`verify_bytes`], which return a [`VerifiedPack`] whose
//!   [`PackPlugin`]s carry the component bytes, requested capabilities,
//!   actions, limits, settings and data files, or a [`Rejection`] with a
//!   reason an operator can act on and a stable [`Rejection::reason_code`].
//!
//! ```no_run
//! use edr_pack::{build, keygen, sign, signature_path, verify, PublicKey, SecretKey, TrustStore, VerifyPolicy};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Publisher.
//! let keys = keygen(Path::new("keys"), "vendor", None)?;
//! let built = build(Path::new("my-pack"), Path::new("dist"))?;
//! let key = SecretKey::from_file(&keys.secret, None)?;
//! sign(&built.path, &key, None)?;
//!
//! // Agent.
//! let trust = TrustStore::from_pinned([("vendor", std::fs::read_to_string(&keys.public)?)])?;
//! let policy = VerifyPolicy::new(semver::Version::new(0, 1, 0));
//! let pack = verify(&built.path, &signature_path(&built.path), &trust, &policy)?;
//! for plugin in &pack.plugins {
//!     println!("{} ({} bytes of wasm)", plugin.name, plugin.wasm.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! What follows is the format specification (also in `FORMAT.md`).
//!
#![doc = include_str!("../FORMAT.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod archive;
mod build;
mod error;
mod keys;
mod manifest;
mod verify;

pub use build::{build, sign, BuiltPack};
pub use error::{PackError, Rejection};
pub use keys::{keygen, KeyId, KeyPairPaths, PublicKey, SecretKey, TrustStore};
pub use manifest::{ActionKind, Capability, DataFile, DateTime, Limits, Manifest, PluginManifest, MANIFEST_FILE, MAX_MANIFEST_BYTES, MAX_PLUGINS};
pub use verify::{
    archive_file_name, inspect, signature_path, verify, verify_bytes, InspectedFile, PackPlugin, Signer, UnverifiedPack, VerifiedPack, VerifyPolicy,
    ARCHIVE_SUFFIX, CURRENT_CONTRACT, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_UNPACKED_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE_SUFFIX,
};

/// The event kinds plugins subscribe to (from `edr-event`).
pub use edr_event::EventKind;
/// The `semver` crate, whose `Version` appears in this API.
pub use semver;
