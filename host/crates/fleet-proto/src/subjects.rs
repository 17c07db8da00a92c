//! Subjects and streams.
//!
//! | subject | who publishes | stream |
//! |---|---|---|
//! | `edr.host.<id>.hb` | the host: heartbeat with inventory | `EDR_HEARTBEATS` (last one per host kept) |
//! | `edr.host.<id>.alert` | the host: one alert, `Nats-Msg-Id` = `<id>.<alert id>` | `EDR_ALERTS` (duplicate window [`ALERT_DUPLICATE_WINDOW_SECS`]) |
//! | `edr.host.<id>.events` | the host: a batch of its record's events (the central record, [`crate::central`]), `Nats-Msg-Id` = `<id>.ev.<seq>.<hash prefix>` | `EDR_EVENTS` (no deletes, no purges) |
//! | `edr.host.<id>.result` | the host: a command's result | none yet |
//! | `edr.host.<id>.pack.get` | the host: a request for a chunk of a pack it was told to install | none (request/reply; the server answers) |
//! | `edr.pack.<sha256>.<chunk>` | the management server: a published pack's bytes | `EDR_PACKS` (last message per subject) |
//! | `edr.cmd.<id>` | the management server: a signed command | none (core NATS) |
//! | `edr.server.<kind>` | the management server: enrollments, triage, audit | `EDR_SERVER` |
//!
//! A host id is `h` and 16 lowercase hex digits ([`valid_host_id`]): one
//! subject token, never a wildcard.

/// Stream of alerts from every host.
pub const STREAM_ALERTS: &str = "EDR_ALERTS";
/// Subjects `STREAM_ALERTS` captures.
pub const ALERTS_FILTER: &str = "edr.host.*.alert";
/// Stream of every host's events (the central record).
pub const STREAM_EVENTS: &str = "EDR_EVENTS";
/// Subjects `STREAM_EVENTS` captures.
pub const EVENTS_FILTER: &str = "edr.host.*.events";
/// Stream of heartbeats (the last one per host is kept: the inventory).
pub const STREAM_HEARTBEATS: &str = "EDR_HEARTBEATS";
/// Subjects `STREAM_HEARTBEATS` captures.
pub const HEARTBEATS_FILTER: &str = "edr.host.*.hb";
/// Stream of the management server's own changes (enrollments, triage, audit).
pub const STREAM_SERVER: &str = "EDR_SERVER";
/// Subjects `STREAM_SERVER` captures.
pub const SERVER_FILTER: &str = "edr.server.>";
/// Stream of published packs' bytes, in chunks.
pub const STREAM_PACKS: &str = "EDR_PACKS";
/// Subjects `STREAM_PACKS` captures.
pub const PACKS_FILTER: &str = "edr.pack.>";
/// Subjects the server answers pack chunk requests on.
pub const PACK_GET_FILTER: &str = "edr.host.*.pack.get";
/// Bytes of a pack per chunk (a chunk's reply, base64 in JSON, stays well under
/// nats-server's default `max_payload` of 1 MiB).
pub const PACK_CHUNK_BYTES: usize = 256 << 10;

/// Where host `id` asks for pack chunks.
pub fn pack_get(id: &str) -> String {
    format!("edr.host.{id}.pack.get")
}

/// Chunk `index` of the pack whose archive has sha256 `sha256`.
pub fn pack_chunk(sha256: &str, index: u64) -> String {
    format!("edr.pack.{sha256}.{index}")
}

/// Duplicate window of the alerts stream: a resend of an alert within it is
/// dropped by JetStream (the agent's cursor makes later resends impossible).
pub const ALERT_DUPLICATE_WINDOW_SECS: u64 = 24 * 3600;

/// Is `id` a host id (`h` + 16 lowercase hex digits)?
pub fn valid_host_id(id: &str) -> bool {
    id.len() == 17 && id.starts_with('h') && id[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The host id in `edr.host.<id>.<kind>`, when the subject is one.
pub fn host_of(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("edr"), Some("host"), Some(id)) if valid_host_id(id) => Some(id),
        _ => None,
    }
}

/// Everything host `id` may publish: `edr.host.<id>.>`.
pub fn host_publish(id: &str) -> String {
    format!("edr.host.{id}.>")
}

/// Heartbeat subject of host `id`.
pub fn heartbeat(id: &str) -> String {
    format!("edr.host.{id}.hb")
}

/// Alert subject of host `id`.
pub fn alert(id: &str) -> String {
    format!("edr.host.{id}.alert")
}

/// Event-batch subject of host `id` (the central record).
pub fn events(id: &str) -> String {
    format!("edr.host.{id}.events")
}

/// The `Nats-Msg-Id` of alert `alert_id` of host `id`.
pub fn alert_msg_id(id: &str, alert_id: u64) -> String {
    format!("{id}.{alert_id}")
}

/// Command-result subject of host `id`.
pub fn result(id: &str) -> String {
    format!("edr.host.{id}.result")
}

/// Command subject of host `id` (the only subject it may subscribe to besides its inbox).
pub fn command(id: &str) -> String {
    format!("edr.cmd.{id}")
}

/// Reply-inbox prefix of host `id` (`async_nats::ConnectOptions::custom_inbox_prefix`).
pub fn inbox_prefix(id: &str) -> String {
    format!("_INBOX.{id}")
}

/// Subject of a management-server change of kind `kind` (`enrolled`, `triage`, `audit`).
pub fn server(kind: &str) -> String {
    format!("edr.server.{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_one_plain_token() {
        assert!(valid_host_id("h0123456789abcdef"));
        for bad in ["", "h", "h0123456789abcde", "h0123456789abcdeF", "x0123456789abcdef", "h01234567.9abcdef", "h01234567*9abcdef", "h0123456789abcdef0"] {
            assert!(!valid_host_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_hosts_subjects_are_under_its_prefix() {
        let id = "h0123456789abcdef";
        let prefix = host_publish(id);
        let stem = prefix.trim_end_matches('>');
        for s in [heartbeat(id), alert(id), result(id), pack_get(id)] {
            assert!(s.starts_with(stem), "{s} not under {prefix}");
        }
        assert_eq!(command(id), "edr.cmd.h0123456789abcdef");
        assert_eq!(alert_msg_id(id, 42), "h0123456789abcdef.42");
    }
}
