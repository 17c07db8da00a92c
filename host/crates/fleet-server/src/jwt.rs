//! NATS JWTs (the v2 claims nats-server 2.9 reads): the operator, the
//! accounts and the users, each signed with an nkey.
//!
//! The format is small and fixed: a header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! the claims (`jti` = base32 of the sha256 of the claims without it, `iat`,
//! `iss`, `sub`, `name`, and the `nats` object), each base64url without
//! padding, and the Ed25519 signature of `header.claims` by the issuer's
//! nkey. No Rust crate for it is maintained alongside async-nats, so it is
//! written here, and the tests check it against a real nats-server.

use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A JWT could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign a NATS JWT: {0}")]
pub struct JwtError(String);

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes and signs claims; `nats` is the type-specific object.
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String, JwtError> {
    let mut claims = json!({
        "jti": "",
        "iat": edr_fleet_proto::now_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let digest = Sha256::digest(serde_json::to_vec(&claims).map_err(|e| JwtError(e.to_string()))?);
    claims["jti"] = Value::String(data_encoding::BASE32_NOPAD.encode(&digest));
    let body = serde_json::to_vec(&claims).map_err(|e| JwtError(e.to_string()))?;
    let signing_input = format!("{}.{}", b64(HEADER.as_bytes()), b64(&body));
    let sig = issuer.sign(signing_input.as_bytes()).map_err(|e| JwtError(e.to_string()))?;
    Ok(format!("{signing_input}.{}", b64(&sig)))
}

/// The operator's JWT, self-signed, naming its signing key and the system account.
///
/// # Errors
/// When signing fails.
pub fn operator(identity: &KeyPair, signing: &KeyPair, system_account: &str, name: &str) -> Result<String, JwtError> {
    let nats = json!({
        "signing_keys": [signing.public_key()],
        "system_account": system_account,
        "type": "operator",
        "version": 2,
    });
    encode(identity, &identity.public_key(), name, nats)
}

/// An account's JWT, signed by the operator's signing key; `jetstream`
/// turns JetStream on (no storage limit) for it.
///
/// # Errors
/// When signing fails.
pub fn account(operator_signing: &KeyPair, account: &str, signing_key: &str, name: &str, jetstream: bool) -> Result<String, JwtError> {
    let js = if jetstream { -1 } else { 0 };
    let nats = json!({
        "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
        },
        "signing_keys": [signing_key],
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    });
    encode(operator_signing, account, name, nats)
}

/// Publish and subscribe allow lists of a user; `None` allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the user may publish to.
    pub publish: Option<Vec<String>>,
    /// Subjects the user may subscribe to.
    pub subscribe: Option<Vec<String>>,
    /// May publish one reply to the reply subject of each message it received
    /// (nats `allow_responses`): how a host answers a command request.
    pub allow_responses: bool,
}

/// A user's JWT, signed by the account's signing key (`issuer_account` names the account).
///
/// # Errors
/// When signing fails.
pub fn user(account_signing: &KeyPair, account: &str, user_key: &str, name: &str, perms: &Permissions) -> Result<String, JwtError> {
    let mut nats = json!({
        "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1,
        "issuer_account": account,
        "type": "user",
        "version": 2,
    });
    if let Some(p) = &perms.publish {
        nats["pub"] = json!({"allow": p});
    }
    if let Some(s) = &perms.subscribe {
        nats["sub"] = json!({"allow": s});
    }
    if perms.allow_responses {
        nats["resp"] = json!({"max": 1, "ttl": 0});
    }
    encode(account_signing, user_key, name, nats)
}

/// The claims of a JWT, unverified (for tests and diagnostics).
pub fn claims(jwt: &str) -> Option<Value> {
    let part = jwt.split('.').nth(1)?;
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// The permissions a host's user gets: publish only under its own prefix,
/// subscribe only to its command subject and its reply inbox.
pub fn host_permissions(host_id: &str) -> Permissions {
    use edr_fleet_proto::subjects;
    Permissions {
        publish: Some(vec![subjects::host_publish(host_id)]),
        subscribe: Some(vec![subjects::command(host_id), format!("{}.>", subjects::inbox_prefix(host_id))]),
        allow_responses: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_jwt_carries_its_permissions_and_verifies() {
        let signing = KeyPair::new_account();
        let acct = KeyPair::new_account();
        let user_kp = KeyPair::new_user();
        let jwt = user(&signing, &acct.public_key(), &user_kp.public_key(), "h1", &host_permissions("h0123456789abcdef")).unwrap();
        let c = claims(&jwt).unwrap();
        assert_eq!(c["sub"], user_kp.public_key());
        assert_eq!(c["iss"], signing.public_key());
        assert_eq!(c["nats"]["issuer_account"], acct.public_key());
        assert_eq!(c["nats"]["pub"]["allow"], json!(["edr.host.h0123456789abcdef.>"]));
        let mut parts = jwt.rsplitn(2, '.');
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
        let input = parts.next().unwrap();
        KeyPair::from_public_key(&signing.public_key()).unwrap().verify(input.as_bytes(), &sig).unwrap();
    }
}
