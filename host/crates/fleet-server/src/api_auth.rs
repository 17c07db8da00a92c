//! API tokens and roles. A token is `edrapi-` and 32 random bytes in hex;
//! only its sha256 is kept (`api-tokens.json`), with a name (recorded as the
//! actor of every change) and a role.

use crate::error::FleetError;
use edr_datadir::DataDir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read hosts, alerts, audit.
    Viewer,
    /// Also triage alerts (and, later, send commands).
    Responder,
    /// Also make enrollment tokens and manage the fleet.
    Admin,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "responder" => Some(Role::Responder),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Admin => "admin",
        }
    }
}

/// One API token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Who holds it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// sha256 of the token, hex.
    pub sha256: String,
}

/// sha256 of `text`, hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl ApiToken {
    /// A new random token for `name`: the record to store and the token to hand out.
    pub fn generate(name: &str, role: Role) -> (ApiToken, String) {
        let token = format!("edrapi-{}", edr_fleet_proto::random_hex(32).unwrap_or_default());
        (ApiToken { name: name.to_string(), role, sha256: sha256_hex(&token) }, token)
    }
}

/// Replaces `api-tokens.json`.
///
/// # Errors
/// When it cannot be written.
pub fn save_tokens(dir: &DataDir, tokens: &[ApiToken]) -> Result<(), FleetError> {
    let text = serde_json::to_vec_pretty(tokens).unwrap_or_default();
    Ok(dir.write_atomically("api-tokens.json", &text)?)
}

/// Reads `api-tokens.json` (empty when missing).
///
/// # Errors
/// When it is unreadable or malformed.
pub fn load_tokens(dir: &DataDir) -> Result<Vec<ApiToken>, FleetError> {
    let Some(bytes) = dir.read_limited("api-tokens.json", 4 << 20)? else { return Ok(Vec::new()) };
    serde_json::from_slice(&bytes).map_err(|e| FleetError::File { path: dir.join("api-tokens.json"), problem: e.to_string() })
}

/// Adds a token for `name` with `role`; returns the token (shown once).
///
/// # Errors
/// When the name is taken or the file cannot be written.
pub fn add_token(dir: &DataDir, name: &str, role: Role) -> Result<String, FleetError> {
    let mut tokens = load_tokens(dir)?;
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(FleetError::File { path: dir.join("api-tokens.json"), problem: format!("token name {name:?}: use 1-64 letters, digits, - _ . @") });
    }
    if tokens.iter().any(|t| t.name == name) {
        return Err(FleetError::File { path: dir.join("api-tokens.json"), problem: format!("a token named {name:?} exists already") });
    }
    let (record, token) = ApiToken::generate(name, role);
    tokens.push(record);
    save_tokens(dir, &tokens)?;
    Ok(token)
}
