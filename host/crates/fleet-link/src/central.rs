//! Forwarding the host's record to the central record ([`edr_fleet_proto::central`]):
//! events after the link's durable cursor, in id order, in batches
//! ([`edr_fleet_proto::central::next_batch`]), each naming the hash of the one before. The cursor (`fleet/central.json`:
//! the last batch's sequence and hash, the last event id sent) advances only
//! after JetStream acknowledged the batch; its `Nats-Msg-Id` lets the stream
//! drop a resend. So the record is the spool: a cut, a NATS restart or an
//! agent restart loses nothing and sends nothing twice.

use edr_datadir::DataDir;
use edr_fleet_proto::central::GENESIS;
use serde::{Deserialize, Serialize};

const CURSOR: &str = "central.json";

/// Where the forwarding stands (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralCursor {
    /// The last batch sent and acknowledged (0: none yet).
    pub seq: u64,
    /// Its hash ([`GENESIS`] before the first).
    pub hash: String,
    /// The highest event id sent.
    pub last_id: u64,
}

impl Default for CentralCursor {
    fn default() -> Self {
        CentralCursor { seq: 0, hash: GENESIS.into(), last_id: 0 }
    }
}

/// Reads the cursor (none yet: the start).
///
/// # Errors
/// A cursor file that is not one (forwarding stops rather than restart the chain).
pub fn load_cursor(dir: &DataDir) -> Result<CentralCursor, String> {
    match dir.read_limited(CURSOR, 1 << 16) {
        Ok(None) => Ok(CentralCursor::default()),
        Ok(Some(b)) => serde_json::from_slice(&b)
            .map_err(|e| format!("{} is damaged ({e}); move it away to restart the central record's chain", dir.join(CURSOR).display())),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores the cursor durably.
///
/// # Errors
/// When it cannot be written.
pub fn save_cursor(dir: &DataDir, c: &CentralCursor) -> Result<(), String> {
    dir.write_atomically(CURSOR, &serde_json::to_vec(c).unwrap_or_default()).map_err(|e| e.to_string())
}
