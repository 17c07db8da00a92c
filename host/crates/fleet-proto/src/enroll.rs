//! Enrollment: the one-time token an operator hands to a host, and the
//! exchange that turns it into a host id and NATS credentials.
//!
//! The token carries the management server's URL, a random secret (the
//! server keeps only its sha256, with an expiry, and accepts it once) and
//! the operator's command-signing public keys, so the agent pins those from
//! the token rather than trusting whatever the server answers.

use base64::Engine;
use serde::{Deserialize, Serialize};

const TOKEN_PREFIX: &str = "edr1-";

/// What an enrollment token holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollToken {
    /// The management server's HTTP API (`http://host:port`).
    pub server: String,
    /// The one-time secret, hex.
    pub secret: String,
    /// Operator command-signing public keys (hex Ed25519) the agent pins.
    #[serde(default)]
    pub command_keys: Vec<String>,
    /// sha256 (hex) of the CA the fleet's NATS server presents a certificate
    /// from, when NATS runs TLS: the host accepts only that CA from the
    /// enrollment answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca_sha256: Option<String>,
}

/// A token that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("not an edr enrollment token ({0}); copy the whole line `edr fleet enroll-token` printed, starting with {TOKEN_PREFIX}")]
pub struct BadToken(String);

impl EnrollToken {
    /// The printable form: `edr1-` and base64url of the JSON.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses the printable form.
    ///
    /// # Errors
    /// [`BadToken`] when it is not one.
    pub fn decode(s: &str) -> Result<Self, BadToken> {
        let body = s.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(|| BadToken("wrong prefix".into()))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).map_err(|e| BadToken(format!("base64: {e}")))?;
        let t: EnrollToken = serde_json::from_slice(&json).map_err(|e| BadToken(format!("content: {e}")))?;
        if !(t.server.starts_with("http://") || t.server.starts_with("https://")) {
            return Err(BadToken(format!("server {:?} is not an http(s) URL", t.server)));
        }
        if t.secret.len() != 64 || !t.secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadToken("the secret is not 32 hex-encoded bytes".into()));
        }
        Ok(t)
    }
}

/// `POST /api/v1/enroll`: what the host sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Protocol version.
    pub v: u32,
    /// The token's secret.
    pub secret: String,
    /// The NATS user public key the host generated (`U...`); its seed never leaves the host.
    pub user_key: String,
    /// The host's name.
    pub hostname: String,
}

/// The server's answer to an enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// Protocol version.
    pub v: u32,
    /// The host's id from now on.
    pub host_id: String,
    /// The host's NATS user JWT, confined to its own subjects.
    pub user_jwt: String,
    /// NATS servers to connect to.
    pub nats_urls: Vec<String>,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// The CA (PEM) to verify the NATS servers' certificates against, when
    /// NATS runs TLS; its sha256 must be the one the token pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca_pem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = EnrollToken {
            server: "http://127.0.0.1:1".into(),
            secret: "ab".repeat(32),
            command_keys: vec!["00".repeat(32)],
            nats_ca_sha256: Some("cd".repeat(32)),
        };
        assert_eq!(EnrollToken::decode(&t.encode()).unwrap(), t);
        for bad in ["", "edr1-", "edr1-!!!", "xyz", &t.encode()[..20]] {
            let e = EnrollToken::decode(bad).unwrap_err().to_string();
            assert!(e.contains("enroll-token"), "{e}");
        }
        let short = EnrollToken { secret: "ab".into(), ..t.clone() };
        assert!(EnrollToken::decode(&short.encode()).is_err());
        let ftp = EnrollToken { server: "ftp://x".into(), ..t };
        assert!(EnrollToken::decode(&ftp.encode()).is_err());
    }
}
