//! `edr-fleet-proto`: what the agents, the NATS server and the management
//! server agree on.
//!
//! * [`subjects`]: the subject and stream layout. Everything a host publishes
//!   is under `edr.host.<host id>.>`; its commands arrive on
//!   `edr.cmd.<host id>`; its request inbox is `_INBOX.<host id>.>`. The NATS
//!   server confines each host's credentials to exactly these.
//! * [`msg`]: the messages, each with a version field `v` ([`PROTO_VERSION`]).
//! * [`enroll`]: the one-time enrollment token and the enrollment exchange.
//! * [`command`]: the signed command envelope (Ed25519 over host id, issue
//!   time, expiry, nonce and the command) and its verification.

#![deny(missing_docs)]

pub mod central;
pub mod command;
pub mod enroll;
pub mod msg;
pub mod subjects;

/// The version of every message this crate defines. A receiver refuses a
/// message with a higher version (it cannot know what changed).
pub const PROTO_VERSION: u32 = 1;

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `n` random bytes from the operating system, as lowercase hex.
///
/// # Errors
/// When the OS random source cannot be read.
pub fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}
