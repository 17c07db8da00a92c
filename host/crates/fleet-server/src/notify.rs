//! Server-side notifications: every alert that reaches the fleet goes to
//! the operator's outputs (`[notify]` in `fleet.toml`: syslog, webhook,
//! NATS, the same outputs and settings as the agent's `[output]`).
//!
//! The alerts come from their own durable consumer (`<prefix>-notify`) on
//! `EDR_ALERTS`, so the stream is the notifier's spool: an alert is acked
//! only once every output has taken it (queued for syslog, durably spooled
//! for webhook and NATS). The consumer starts at the alerts that arrive
//! after it is made (turning notifications on does not replay the past),
//! is never reset by an index rebuild (a rebuild does not notify twice),
//! and server processes sharing `consumer_prefix` share it, so each alert is
//! notified by one of them.
//!
//! Each notification is the host's ECS document with `edr.fleet.host_id`
//! added; its output id is the alert's `EDR_ALERTS` sequence number, unique
//! and increasing across the fleet, so webhook idempotency keys and NATS
//! message ids stay stable across redeliveries.

use crate::error::FleetError;
use crate::index::Index;
use async_nats::jetstream;
use edr_fleet_proto::msg::{self, AlertMessage};
use edr_fleet_proto::subjects;
use edr_output::{AlertOutput, OutgoingAlert, OutputStatus, OutputsConfig};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The running outputs, shared with the API for their status.
#[derive(Default)]
pub struct Notifier {
    outputs: Mutex<Vec<Box<dyn AlertOutput>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("outputs", &self.status().len()).finish()
    }
}

impl Notifier {
    /// Starts the outputs of `cfg`; their spools live under `dir/spool/`.
    ///
    /// # Errors
    /// When an output's settings are wrong (the message names the key).
    pub fn start(cfg: &OutputsConfig, dir: &Path, fleet_name: &str) -> Result<Notifier, FleetError> {
        let outputs = edr_output::build(cfg, dir, &format!("edr-server-{fleet_name}"))
            .map_err(|e| FleetError::File { path: dir.join("fleet.toml"), problem: format!("[notify]: {e}") })?;
        Ok(Notifier { outputs: Mutex::new(outputs) })
    }

    /// True when no output is configured.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Each output's counters and last error.
    pub fn status(&self) -> Vec<OutputStatus> {
        self.lock().iter().map(|o| o.status()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn AlertOutput>>> {
        self.outputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands one alert to every output; the names of those that refused it.
    fn send(&self, a: &OutgoingAlert<'_>) -> Vec<String> {
        let mut refused = Vec::new();
        for o in self.lock().iter_mut() {
            if let Err(e) = o.send(a) {
                refused.push(format!("{}: {e}", o.name()));
            }
        }
        refused
    }

    /// Stops the outputs, delivering what they can within `deadline`.
    pub fn shutdown(&self, deadline: Duration) {
        for o in self.lock().iter_mut() {
            o.shutdown(deadline);
        }
    }
}

/// ECS `event.severity` of the document, else from the severity's name.
fn ecs_severity(a: &AlertMessage) -> u8 {
    if let Some(n) = a.ecs["event"]["severity"].as_u64() {
        return n.min(100) as u8;
    }
    match a.severity.as_str() {
        "critical" => 99,
        "high" => 73,
        "medium" => 47,
        "low" => 21,
        _ => 0,
    }
}

/// The notification document: the host's ECS with the fleet's host id.
fn document(a: &AlertMessage) -> String {
    let mut ecs = a.ecs.clone();
    if !ecs.is_object() {
        ecs = serde_json::json!({ "message": a.rule_name });
    }
    ecs["edr"]["fleet"]["host_id"] = serde_json::Value::String(a.host_id.clone());
    ecs.to_string()
}

/// Makes (or finds) the notify consumer and runs it until the task is aborted.
///
/// # Errors
/// When the consumer cannot be made.
pub async fn run(js: jetstream::Context, notifier: Arc<Notifier>, index: Arc<Index>, prefix: &str) -> Result<tokio::task::JoinHandle<()>, FleetError> {
    let stream = js.get_stream(subjects::STREAM_ALERTS).await.map_err(|e| FleetError::nats("stream EDR_ALERTS", e))?;
    let consumer = crate::pull::durable(&stream, &format!("{prefix}-notify"), true).await?;
    Ok(tokio::spawn(crate::pull::run(consumer, "notify", move |m| {
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let handled = match notify_one(&notifier, &index, &m.subject, &m.payload, seq) {
            Ok(()) => crate::pull::Handled::Done,
            // Not acked: JetStream redelivers it after the ack wait.
            Err(Some(refused)) => crate::pull::Handled::Retry(format!("outputs refused alert {seq}, it will be tried again: {refused}")),
            Err(None) => crate::pull::Handled::Dropped("not an alert of the host it came from".into()),
        };
        std::future::ready(handled)
    })))
}

/// `Err(Some(why))`: try again later; `Err(None)`: a message that is not an
/// alert of the host whose subject it came on, dropped with a log line.
fn notify_one(notifier: &Notifier, index: &Index, subject: &str, payload: &[u8], seq: u64) -> Result<(), Option<String>> {
    let a: AlertMessage = match msg::decode(payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(subject, "notify: not an alert, skipped: {e}");
            return Err(None);
        }
    };
    if subjects::host_of(subject) != Some(a.host_id.as_str()) {
        tracing::warn!(subject, host = %a.host_id, "notify: alert names another host than its subject, skipped");
        return Err(None);
    }
    let hostname = index.hostname(&a.host_id).ok().flatten().unwrap_or_else(|| a.host_id.clone());
    let json = document(&a);
    let out = OutgoingAlert { id: seq, json: &json, severity: ecs_severity(&a), rule_id: &a.rule_id, hostname: &hostname };
    let refused = notifier.send(&out);
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Some(refused.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(ecs: serde_json::Value, severity: &str) -> AlertMessage {
        AlertMessage {
            v: 1,
            host_id: "h0123456789abcdef".into(),
            alert_id: 7,
            time: 1,
            rule_id: "r".into(),
            rule_name: "Rule".into(),
            severity: severity.into(),
            ecs,
        }
    }

    #[test]
    fn the_document_carries_the_host_id_and_the_ecs_severity_wins() {
        let a = alert(serde_json::json!({"event": {"severity": 73}, "rule": {"id": "r"}}), "low");
        let doc: serde_json::Value = serde_json::from_str(&document(&a)).unwrap();
        assert_eq!(doc["edr"]["fleet"]["host_id"], "h0123456789abcdef");
        assert_eq!(doc["rule"]["id"], "r");
        assert_eq!(ecs_severity(&a), 73);
        assert_eq!(ecs_severity(&alert(serde_json::json!({}), "critical")), 99);
        assert_eq!(ecs_severity(&alert(serde_json::json!({"event": {"severity": 5000}}), "x")), 100);
        // A host that sent something that is not an object still gets a document.
        let odd: serde_json::Value = serde_json::from_str(&document(&alert(serde_json::json!("text"), "low"))).unwrap();
        assert_eq!(odd["edr"]["fleet"]["host_id"], "h0123456789abcdef");
    }
}
