//! The host's fleet identity, kept in `<data_dir>/fleet/` (0700, files 0600).

use crate::LinkError;
use edr_datadir::DataDir;
use serde::{Deserialize, Serialize};
use std::path::Path;

const IDENTITY: &str = "identity.json";
const SEED: &str = "host.nk";
const CURSOR: &str = "alert-cursor";

/// Who this host is in its fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The host id the server assigned.
    pub host_id: String,
    /// The host's NATS user JWT (public; the seed is in `host.nk`).
    pub user_jwt: String,
    /// NATS servers.
    pub nats_urls: Vec<String>,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// Operator command-signing keys pinned from the enrollment token (hex Ed25519).
    pub command_keys: Vec<String>,
    /// The management server's API, for re-enrollment messages.
    pub server: String,
    /// The CA (PEM) the NATS servers' certificates must chain to, when the
    /// fleet's NATS runs TLS (pinned by sha256 in the enrollment token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca_pem: Option<String>,
}

/// The `fleet/` directory under `data_dir`.
///
/// # Errors
/// When the data directory or the subdirectory is unsafe.
pub fn state_dir(data_dir: &Path) -> Result<DataDir, LinkError> {
    Ok(DataDir::open_or_create(data_dir, edr_datadir::agent_uid())?.subdir("fleet")?)
}

fn read_text(dir: &DataDir, name: &str) -> Result<Option<String>, LinkError> {
    match dir.read_limited(name, 1 << 20)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b).map(Some).map_err(|_| LinkError::State { path: dir.join(name), problem: "not UTF-8".into() }),
    }
}

impl Identity {
    /// The identity in `dir`, or `None` when the host has not enrolled.
    ///
    /// # Errors
    /// When the files are unreadable or malformed.
    pub fn load(dir: &DataDir) -> Result<Option<Identity>, LinkError> {
        let Some(text) = read_text(dir, IDENTITY)? else { return Ok(None) };
        let id: Identity = serde_json::from_str(&text).map_err(|e| LinkError::State { path: dir.join(IDENTITY), problem: e.to_string() })?;
        if !edr_fleet_proto::subjects::valid_host_id(&id.host_id) {
            return Err(LinkError::State { path: dir.join(IDENTITY), problem: format!("host id {:?} is not valid", id.host_id) });
        }
        Ok(Some(id))
    }

    /// Stores the identity.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn save(&self, dir: &DataDir) -> Result<(), LinkError> {
        Ok(dir.write_atomically(IDENTITY, &serde_json::to_vec_pretty(self).unwrap_or_default())?)
    }

    /// The host's nkey seed.
    ///
    /// # Errors
    /// When it is missing or not a seed.
    pub fn key_pair(dir: &DataDir) -> Result<nkeys::KeyPair, LinkError> {
        let seed = read_text(dir, SEED)?.ok_or(LinkError::NotEnrolled)?;
        nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| LinkError::State { path: dir.join(SEED), problem: format!("not an nkey seed: {e}") })
    }

    /// Writes a new seed (before enrolling, so the private key exists only here).
    ///
    /// # Errors
    /// When it cannot be written.
    pub(crate) fn save_seed(dir: &DataDir, kp: &nkeys::KeyPair) -> Result<(), LinkError> {
        let seed = kp.seed().map_err(|e| LinkError::Enroll(format!("cannot encode the host key: {e}")))?;
        Ok(dir.write_atomically(SEED, seed.as_bytes())?)
    }
}

/// The alert cursor: the highest alert id the fleet has acknowledged.
///
/// # Errors
/// When the file is unreadable or malformed.
pub fn load_cursor(dir: &DataDir) -> Result<u64, LinkError> {
    match read_text(dir, CURSOR)? {
        None => Ok(0),
        Some(t) => t.trim().parse().map_err(|_| LinkError::State { path: dir.join(CURSOR), problem: format!("{:?} is not an alert id", t.trim()) }),
    }
}

/// Stores the alert cursor durably (write, fsync, rename).
///
/// # Errors
/// When it cannot be written.
pub fn save_cursor(dir: &DataDir, id: u64) -> Result<(), LinkError> {
    Ok(dir.write_atomically(CURSOR, id.to_string().as_bytes())?)
}
