//! Where forwarded alerts and events come from: the host's record.

use edr_fleet_proto::msg::AlertMessage;
use serde_json::Value;

/// Read access to the host's record: alerts and events, in id order.
pub trait AlertSource: Send + Sync {
    /// Up to `limit` alerts with id greater than `after`, lowest id first,
    /// as messages for host `host_id`.
    ///
    /// # Errors
    /// Why the record cannot be read.
    fn alerts_after(&self, host_id: &str, after: u64, limit: usize) -> Result<Vec<AlertMessage>, String>;

    /// Up to `limit` events with id greater than `after`, lowest id first
    /// (for the central record). A source without events has none.
    ///
    /// # Errors
    /// Why the record cannot be read.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<edr_event::Event>, String> {
        let _ = (after, limit);
        Ok(Vec::new())
    }
}

impl AlertSource for edr_store::Store {
    fn alerts_after(&self, host_id: &str, after: u64, limit: usize) -> Result<Vec<AlertMessage>, String> {
        // Integers only in the text: nothing to inject. The query API is read-only.
        let sql = format!("SELECT id, time, rule_id, rule_name, severity, ecs FROM alert WHERE id > {after} ORDER BY id LIMIT {}", limit.clamp(1, 10_000));
        let res = self.query(&sql).map_err(|e| format!("reading alerts after {after} from the record: {e}"))?;
        res.rows.into_iter().map(|row| row_to_message(host_id, &row)).collect()
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<edr_event::Event>, String> {
        edr_store::Store::events_after(self, after, limit).map_err(|e| format!("reading events after {after} from the record: {e}"))
    }
}

fn row_to_message(host_id: &str, row: &[Value]) -> Result<AlertMessage, String> {
    let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default().to_string();
    let id = row.first().and_then(Value::as_u64).ok_or("alert row without an id")?;
    let ecs = serde_json::from_str(&text(5)).map_err(|e| format!("alert {id}: its ECS document is not JSON: {e}"))?;
    Ok(AlertMessage {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id: host_id.to_string(),
        alert_id: id,
        time: row.get(1).and_then(Value::as_u64).unwrap_or(0),
        rule_id: text(2),
        rule_name: text(3),
        severity: text(4),
        ecs,
    })
}
