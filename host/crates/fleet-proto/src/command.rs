//! Signed remote commands.
//!
//! The operator's Ed25519 key signs the exact bytes of a [`CommandBody`]
//! (host id, command id, issue time, expiry, nonce, the command), prefixed
//! with a domain tag so the signature cannot be replayed as anything else.
//! The agent verifies against the keys it pinned at enrollment, refuses a
//! body for another host, one not yet valid or expired, or one living longer
//! than [`MAX_LIFETIME_SECS`], and (with its own nonce record) a replay. The
//! bus and the management server carry the envelope but cannot forge one.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Prefix of every signed message.
const DOMAIN: &[u8] = b"edr-fleet-command-v1\n";
/// The longest a command may be valid for (queued commands for offline hosts included).
pub const MAX_LIFETIME_SECS: u64 = 14 * 24 * 3600;
/// Clock skew tolerated between the operator and the host.
pub const MAX_SKEW_SECS: u64 = 300;

/// A command a host can be asked to run. Read-only ones only, so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// The agent's status snapshot.
    Status,
    /// A directory listing with sizes and sha256 of regular files.
    Ls {
        /// Absolute path.
        path: String,
    },
}

/// What the operator signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBody {
    /// Protocol version.
    pub v: u32,
    /// Unique id, echoed in the result.
    pub command_id: String,
    /// The only host that may run it.
    pub host_id: String,
    /// Issue time, seconds since the epoch.
    pub issued_at: u64,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// Random, hex; a host runs a nonce once.
    pub nonce: String,
    /// What to do.
    pub command: Command,
}

/// The envelope on `edr.cmd.<host id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The [`CommandBody`] as JSON text: the signed bytes, verbatim.
    pub body: String,
    /// The signer's public key, hex.
    pub key: String,
    /// Ed25519 signature over the domain tag and `body`, hex.
    pub signature: String,
}

/// A host's answer to a command (the reply to the request on `edr.cmd.<host id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Protocol version.
    pub v: u32,
    /// The host that answered.
    pub host_id: String,
    /// The command's id (empty when the envelope could not be read).
    pub command_id: String,
    /// `done`, `failed` (it ran and failed) or `refused` (it did not run).
    pub status: String,
    /// What it produced (`done`), or why not.
    pub output: serde_json::Value,
}

/// Why a host refused a command (logged and sent back as the result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an envelope, or the body is not a command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// Signed by a key this host does not pin.
    #[error("signed by key {0}, which this host does not trust (pinned at enrollment)")]
    UnknownKey(String),
    /// The signature does not match the body.
    #[error("the signature does not verify: forged or altered in transit")]
    BadSignature,
    /// Meant for another host.
    #[error("the command is for host {found}, this is {expected}")]
    WrongHost {
        /// This host.
        expected: String,
        /// The body's.
        found: String,
    },
    /// Past its expiry.
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry.
        expires_at: u64,
        /// The host's clock.
        now: u64,
    },
    /// Issued in the future beyond the tolerated skew, or valid for too long.
    #[error("validity window refused: {0}")]
    BadWindow(String),
    /// This nonce has been run already.
    #[error("replayed: nonce {0} was already used")]
    Replayed(String),
    /// From a newer protocol.
    #[error("protocol version {0} is newer than this agent understands")]
    TooNew(u32),
}

fn message(body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body.as_bytes());
    m
}

/// Signs `body` with `key`.
pub fn sign(body: &CommandBody, key: &SigningKey) -> SignedCommand {
    let text = serde_json::to_string(body).unwrap_or_default();
    let sig = key.sign(&message(&text));
    SignedCommand { signature: hex::encode(sig.to_bytes()), key: hex::encode(key.verifying_key().to_bytes()), body: text }
}

/// A public key from its hex form.
///
/// # Errors
/// A description of what is wrong with it.
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key).map_err(|e| format!("not hex: {e}"))?.try_into().map_err(|_| "not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

impl SignedCommand {
    /// Checks signature, host and validity window; the caller then checks the nonce.
    ///
    /// # Errors
    /// The [`Refusal`] that applies first.
    pub fn verify(&self, pinned: &[VerifyingKey], host_id: &str, now: u64) -> Result<CommandBody, Refusal> {
        let key = parse_key(&self.key).map_err(|e| Refusal::Malformed(format!("key: {e}")))?;
        if !pinned.contains(&key) {
            return Err(Refusal::UnknownKey(self.key.clone()));
        }
        let sig: [u8; 64] = hex::decode(&self.signature).ok().and_then(|b| b.try_into().ok()).ok_or(Refusal::BadSignature)?;
        key.verify(&message(&self.body), &Signature::from_bytes(&sig)).map_err(|_| Refusal::BadSignature)?;
        let body: CommandBody = serde_json::from_str(&self.body).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if body.v > crate::PROTO_VERSION {
            return Err(Refusal::TooNew(body.v));
        }
        if body.host_id != host_id {
            return Err(Refusal::WrongHost { expected: host_id.to_string(), found: body.host_id });
        }
        if body.issued_at > now + MAX_SKEW_SECS {
            return Err(Refusal::BadWindow(format!("issued at {} is in the future (now {now})", body.issued_at)));
        }
        if body.expires_at <= body.issued_at || body.expires_at - body.issued_at > MAX_LIFETIME_SECS {
            return Err(Refusal::BadWindow(format!("valid from {} to {}: at most {MAX_LIFETIME_SECS} s", body.issued_at, body.expires_at)));
        }
        if now >= body.expires_at {
            return Err(Refusal::Expired { expires_at: body.expires_at, now });
        }
        if body.nonce.len() < 16 {
            return Err(Refusal::Malformed("nonce shorter than 8 bytes".into()));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "h0123456789abcdef";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body(now: u64) -> CommandBody {
        CommandBody {
            v: 1,
            command_id: "c1".into(),
            host_id: HOST.into(),
            issued_at: now,
            expires_at: now + 60,
            nonce: "0123456789abcdef".into(),
            command: Command::Ls { path: "/tmp".into() },
        }
    }

    #[test]
    fn a_good_command_verifies() {
        let k = key(1);
        let c = sign(&body(1000), &k);
        assert_eq!(c.verify(&[k.verifying_key()], HOST, 1010).unwrap(), body(1000));
    }

    #[test]
    fn hostile_commands_are_refused_with_their_reason() {
        let (k, other) = (key(1), key(2));
        let pinned = [k.verifying_key()];
        let good = sign(&body(1000), &k);
        assert!(matches!(sign(&body(1000), &other).verify(&pinned, HOST, 1010), Err(Refusal::UnknownKey(_))));
        let mut forged = good.clone();
        forged.body = forged.body.replace("/tmp", "/etc");
        assert_eq!(forged.verify(&pinned, HOST, 1010), Err(Refusal::BadSignature));
        let mut resigned = sign(&body(1000), &other);
        resigned.key = good.key.clone();
        assert_eq!(resigned.verify(&pinned, HOST, 1010), Err(Refusal::BadSignature));
        assert!(matches!(good.verify(&pinned, "hffffffffffffffff", 1010), Err(Refusal::WrongHost { .. })));
        assert!(matches!(good.verify(&pinned, HOST, 1060), Err(Refusal::Expired { .. })));
        assert!(matches!(good.verify(&pinned, HOST, 100), Err(Refusal::BadWindow(_))));
        let long = CommandBody { expires_at: 1000 + MAX_LIFETIME_SECS + 1, ..body(1000) };
        assert!(matches!(sign(&long, &k).verify(&pinned, HOST, 1010), Err(Refusal::BadWindow(_))));
        let unsigned = SignedCommand { signature: String::new(), ..good.clone() };
        assert_eq!(unsigned.verify(&pinned, HOST, 1010), Err(Refusal::BadSignature));
        let garbage = SignedCommand { key: "zz".into(), ..good };
        assert!(matches!(garbage.verify(&pinned, HOST, 1010), Err(Refusal::Malformed(_))));
    }
}
