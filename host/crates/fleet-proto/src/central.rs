//! The central record on the wire: each host forwards the events of its
//! record to `edr.host.<id>.events` (stream `EDR_EVENTS`) in batches, in
//! event-id order, each batch zstd-compressed JSON (`edr_event::Event`s),
//! base64 in [`EventBatch::payload`].
//!
//! **Hash chain.** Batch `seq` (from 1) names the hash of batch `seq - 1`
//! ([`GENESIS`] for the first) and carries its own: sha256 over a domain
//! tag, the previous hash, the host, the sequence, the id range, the count
//! and the sha256 of the payload ([`batch_hash`]). The centre keeps the last
//! hash of every host: a batch whose `prev` is not that hash, whose
//! sequence skips, whose ids go backwards or whose own hash does not verify
//! is a break (events deleted or rewritten on the host before forwarding,
//! or a batch lost or forged) and is reported as an alert on that host.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of a host's first batch.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Bytes of compressed payload a batch carries at most (one NATS message; the default `max_payload` is 1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 512 << 10;
/// Bytes a batch may decompress to at most.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

const DOMAIN: &str = "edr-central-batch-v1";

/// One batch of a host's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Protocol version.
    pub v: u32,
    /// The sender's host id (the centre checks it against the subject).
    pub host_id: String,
    /// The batch's place in the host's chain, from 1.
    pub seq: u64,
    /// The lowest event id in it.
    pub first_id: u64,
    /// The highest event id in it.
    pub last_id: u64,
    /// Events in it.
    pub count: u32,
    /// The previous batch's hash ([`GENESIS`] for the first).
    pub prev: String,
    /// This batch's hash ([`batch_hash`]).
    pub hash: String,
    /// zstd-compressed JSON array of events, base64.
    pub payload: String,
}

/// The hash of a batch with these fields (lowercase hex sha256).
pub fn batch_hash(prev: &str, host_id: &str, seq: u64, first_id: u64, last_id: u64, count: u32, payload: &str) -> String {
    let body = hex::encode(Sha256::digest(payload.as_bytes()));
    let text = format!("{DOMAIN}\n{prev}\n{host_id}\n{seq}\n{first_id}\n{last_id}\n{count}\n{body}\n");
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl EventBatch {
    /// A batch following `prev`, with its hash filled in.
    pub fn new(host_id: &str, seq: u64, first_id: u64, last_id: u64, count: u32, prev: &str, payload: String) -> EventBatch {
        let hash = batch_hash(prev, host_id, seq, first_id, last_id, count, &payload);
        EventBatch { v: crate::PROTO_VERSION, host_id: host_id.into(), seq, first_id, last_id, count, prev: prev.into(), hash, payload }
    }

    /// Whether its own hash matches its fields.
    pub fn hash_verifies(&self) -> bool {
        batch_hash(&self.prev, &self.host_id, self.seq, self.first_id, self.last_id, self.count, &self.payload) == self.hash
    }

    /// The `Nats-Msg-Id`: a resend of the same batch is dropped by the
    /// stream; a batch with the same sequence but other content (a host
    /// whose record and cursor were reset) is not, so the centre sees it.
    pub fn msg_id(&self) -> String {
        format!("{}.ev.{}.{}", self.host_id, self.seq, &self.hash[..self.hash.len().min(16)])
    }
}

/// Events a batch carries at most.
pub const BATCH_EVENTS: usize = 2000;
const ZSTD_LEVEL: i32 = 3;

/// The next batch after batch `after` = (its sequence, its hash) from `events` (id order), fitting
/// [`MAX_PAYLOAD_BYTES`] compressed: fewer events are taken when they do not fit.
///
/// # Errors
/// When the events cannot be encoded, or one event alone does not fit.
pub fn next_batch(host_id: &str, after: (u64, &str), events: &[edr_event::Event]) -> Result<Option<EventBatch>, String> {
    use base64::Engine as _;
    let mut take = events.len().min(BATCH_EVENTS);
    while take > 0 {
        let json = serde_json::to_vec(&events[..take]).map_err(|e| format!("encoding events: {e}"))?;
        let packed = zstd::bulk::compress(&json, ZSTD_LEVEL).map_err(|e| format!("compressing events: {e}"))?;
        if packed.len() <= MAX_PAYLOAD_BYTES {
            let (first, last) = (events[0].id, events[take - 1].id);
            let payload = base64::engine::general_purpose::STANDARD.encode(&packed);
            return Ok(Some(EventBatch::new(host_id, after.0 + 1, first, last, take as u32, after.1, payload)));
        }
        if take == 1 {
            return Err(format!("event {} alone is {} bytes compressed, over {MAX_PAYLOAD_BYTES}", events[0].id, packed.len()));
        }
        take /= 2;
    }
    Ok(None)
}

/// The events of a batch (at most [`MAX_DECOMPRESSED_BYTES`] decompressed).
///
/// # Errors
/// A payload that is not base64, zstd, or JSON events, or that decompresses too large.
pub fn batch_events(b: &EventBatch) -> Result<Vec<edr_event::Event>, String> {
    use base64::Engine as _;
    let packed = base64::engine::general_purpose::STANDARD.decode(&b.payload).map_err(|e| format!("batch {}: payload is not base64: {e}", b.seq))?;
    let json = zstd::bulk::decompress(&packed, MAX_DECOMPRESSED_BYTES).map_err(|e| format!("batch {}: payload is not zstd within 64 MiB: {e}", b.seq))?;
    let events: Vec<edr_event::Event> = serde_json::from_slice(&json).map_err(|e| format!("batch {}: payload is not events: {e}", b.seq))?;
    if events.len() != b.count as usize || events.first().map(|e| e.id) != Some(b.first_id) || events.last().map(|e| e.id) != Some(b.last_id) {
        return Err(format!("batch {}: its events do not match its header ({} events {}..={})", b.seq, b.count, b.first_id, b.last_id));
    }
    Ok(events)
}

/// Where a batch stands against the chain the centre holds for its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The next batch: it extends the chain.
    Next,
    /// Already applied (a redelivery): nothing to do.
    Seen,
    /// A break, with what is wrong.
    Broken(String),
}

/// Judges `b` against the host's chain so far: its last `(seq, hash, last event id)`, or none yet.
pub fn judge(b: &EventBatch, last: Option<(u64, &str, u64)>) -> Link {
    if !b.hash_verifies() {
        return Link::Broken(format!("batch {} does not verify: its hash does not match its content (altered or forged)", b.seq));
    }
    if b.count == 0 || b.first_id > b.last_id {
        return Link::Broken(format!("batch {} has an impossible id range {}..={} for {} events", b.seq, b.first_id, b.last_id, b.count));
    }
    let (seq, hash, last_id) = last.unwrap_or((0, GENESIS, 0));
    if b.seq <= seq {
        return Link::Seen;
    }
    if b.seq != seq + 1 {
        return Link::Broken(format!("batches {}..{} are missing (got {} after {seq})", seq + 1, b.seq - 1, b.seq));
    }
    if b.prev != hash {
        return Link::Broken(format!(
            "batch {} names previous hash {} but the chain's last is {hash} (the host's record was rewritten, or the batch is forged)",
            b.seq, b.prev
        ));
    }
    if b.first_id <= last_id {
        return Link::Broken(format!("batch {} starts at event {} but event {last_id} was already received (ids went backwards)", b.seq, b.first_id));
    }
    Link::Next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<EventBatch> {
        let b1 = EventBatch::new("h0123456789abcdef", 1, 1, 10, 10, GENESIS, "p1".into());
        let b2 = EventBatch::new("h0123456789abcdef", 2, 11, 20, 10, &b1.hash, "p2".into());
        vec![b1, b2]
    }

    #[test]
    fn a_chain_extends_and_redeliveries_are_seen() {
        let c = chain();
        assert_eq!(judge(&c[0], None), Link::Next);
        assert_eq!(judge(&c[1], Some((1, &c[0].hash, 10))), Link::Next);
        assert_eq!(judge(&c[0], Some((2, &c[1].hash, 20))), Link::Seen);
    }

    #[test]
    fn breaks_are_named() {
        let c = chain();
        let mut altered = c[1].clone();
        altered.payload = "p2-rewritten".into();
        assert!(matches!(judge(&altered, Some((1, &c[0].hash, 10))), Link::Broken(w) if w.contains("does not verify")));
        assert!(matches!(judge(&c[1], None), Link::Broken(w) if w.contains("batches 1..1 are missing")));
        let forged = EventBatch::new("h0123456789abcdef", 2, 11, 20, 10, GENESIS, "p2".into());
        assert!(matches!(judge(&forged, Some((1, &c[0].hash, 10))), Link::Broken(w) if w.contains("previous hash")));
        let back = EventBatch::new("h0123456789abcdef", 2, 5, 20, 10, &c[0].hash, "p2".into());
        assert!(matches!(judge(&back, Some((1, &c[0].hash, 10))), Link::Broken(w) if w.contains("backwards")));
        let empty = EventBatch::new("h0123456789abcdef", 2, 30, 20, 0, &c[0].hash, "p".into());
        assert!(matches!(judge(&empty, Some((1, &c[0].hash, 10))), Link::Broken(w) if w.contains("impossible")));
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;
    use edr_event::{Event, EventBody, FileEvent, FileOp};

    fn ev(id: u64) -> Event {
        let body = EventBody::File(FileEvent {
            op: FileOp::Create,
            path: format!("/tmp/f{id}"),
            old_path: None,
            mode: None,
            pid: Some(7),
            entity_id: None,
            exe: None,
            uid: None,
        });
        Event { id, time: 1_000 + id, partial: false, body }
    }

    #[test]
    fn batches_round_trip_and_chain() {
        let events: Vec<Event> = (1..=5).map(ev).collect();
        let b = next_batch("h0123456789abcdef", (0, GENESIS), &events).unwrap().unwrap();
        assert_eq!((b.seq, b.first_id, b.last_id, b.count, b.prev.as_str()), (1, 1, 5, 5, GENESIS));
        assert!(b.hash_verifies());
        assert_eq!(batch_events(&b).unwrap(), events);
        let mut lie = b.clone();
        lie.count = 4;
        assert!(batch_events(&lie).unwrap_err().contains("do not match"));
        lie.payload = "!!".into();
        assert!(batch_events(&lie).unwrap_err().contains("base64"));
        assert_eq!(next_batch("h0123456789abcdef", (0, GENESIS), &[]).unwrap(), None);
    }
}
