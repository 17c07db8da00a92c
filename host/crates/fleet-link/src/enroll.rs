//! Enrollment over the management server's HTTP API.
//!
//! Why HTTP and not a NATS enroll subject: a NATS route would need a
//! credential shared by every not-yet-enrolled host (its holders could
//! flood the subject or read each other's replies); the API is there
//! anyway, the one-time token already names it, and the answer (host id,
//! user JWT) holds nothing secret: the host's private key is generated here
//! and never sent.

use crate::identity::{self, Identity};
use crate::LinkError;
use edr_fleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollToken};
use std::path::Path;

/// This host's name (`/proc/sys/kernel/hostname`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "unknown-host".into())
}

/// The NATS CA from the enrollment answer, accepted only when it is the one
/// the token pins: the answer comes over the API, which the token's pin
/// makes unnecessary to trust.
fn pinned_ca(token: &EnrollToken, answered: Option<String>) -> Result<Option<String>, LinkError> {
    use sha2::Digest;
    match (&token.nats_ca_sha256, answered) {
        (None, None) => Ok(None),
        (Some(want), Some(pem)) => {
            let got = hex::encode(sha2::Sha256::digest(pem.as_bytes()));
            if &got == want {
                Ok(Some(pem))
            } else {
                Err(LinkError::Enroll(format!("the server sent a NATS CA with sha256 {got}, but the token pins {want}: refusing it (was the token made by another fleet, or is someone in between?)")))
            }
        }
        (Some(_), None) => Err(LinkError::Enroll("the token pins a NATS CA (the fleet's NATS runs TLS) but the server sent none".into())),
        (None, Some(_)) => Err(LinkError::Enroll(
            "the server sent a NATS CA that the token does not pin (NATS TLS was turned on after the token was made?): make a new token".into(),
        )),
    }
}

/// Enrolls this host with `token` unless it already has an identity (then
/// that is returned, and the token is not used).
///
/// # Errors
/// A bad token, an unreachable server, or the server's refusal (with its message).
pub fn enroll(data_dir: &Path, token: &str, hostname: &str) -> Result<Identity, LinkError> {
    let dir = identity::state_dir(data_dir)?;
    if let Some(id) = Identity::load(&dir)? {
        tracing::info!(host_id = %id.host_id, "already enrolled; the enrollment token was not used");
        return Ok(id);
    }
    let token = EnrollToken::decode(token).map_err(|e| LinkError::Enroll(e.to_string()))?;
    let kp = nkeys::KeyPair::new_user();
    Identity::save_seed(&dir, &kp)?;
    let req = EnrollRequest { v: edr_fleet_proto::PROTO_VERSION, secret: token.secret.clone(), user_key: kp.public_key(), hostname: hostname.to_string() };
    let url = format!("{}/api/v1/enroll", token.server.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(std::time::Duration::from_secs(30))).build().into();
    let mut resp = agent
        .post(&url)
        .header("content-type", "application/json")
        .send(serde_json::to_vec(&req).unwrap_or_default())
        .map_err(|e| LinkError::Enroll(format!("cannot reach the management server at {url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| LinkError::Enroll(format!("reading the answer from {url}: {e}")))?;
    if status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["error"]["message"].as_str().map(String::from)).unwrap_or(text);
        return Err(LinkError::Enroll(format!("the server refused ({status}): {msg}")));
    }
    let r: EnrollResponse = serde_json::from_str(&text).map_err(|e| LinkError::Enroll(format!("unexpected answer from {url}: {e}")))?;
    if !edr_fleet_proto::subjects::valid_host_id(&r.host_id) || r.nats_urls.is_empty() {
        return Err(LinkError::Enroll(format!("the server answered an invalid host id {:?} or no NATS URL", r.host_id)));
    }
    let nats_ca_pem = pinned_ca(&token, r.nats_ca_pem)?;
    let id = Identity {
        nats_ca_pem,
        host_id: r.host_id,
        user_jwt: r.user_jwt,
        nats_urls: r.nats_urls,
        heartbeat_secs: r.heartbeat_secs.clamp(1, 3600),
        command_keys: token.command_keys,
        server: token.server,
    };
    id.save(&dir)?;
    tracing::info!(host_id = %id.host_id, server = %id.server, "enrolled in the fleet");
    Ok(id)
}
