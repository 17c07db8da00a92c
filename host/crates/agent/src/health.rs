//! Health events: what happened to the agent itself (packs accepted,
//! rejected, rolled back; periodic counters). Each is logged and appended as
//! one JSON line to `<data_dir>/health.jsonl` (ECS `event.kind: state` or
//! `pipeline_error`), so an operator or a log shipper can follow it.

use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Appends health events.
pub struct HealthLog {
    file: Mutex<Option<File>>,
}

impl HealthLog {
    /// Appends to `<data_dir>/health.jsonl`; `None` logs only.
    pub fn new(data_dir: Option<&Path>) -> Self {
        // Never through a link, created 0600 (issue 14).
        let file =
            data_dir.and_then(|d| edr_datadir::open_append_path(&d.join("health.jsonl")).map_err(|e| tracing::error!("cannot open health.jsonl: {e}")).ok());
        Self { file: Mutex::new(file) }
    }

    /// Records one event: `action` (e.g. `pack-rejected`), whether it is an
    /// error, and details under `edr.*`.
    pub fn record(&self, action: &str, error: bool, message: &str, details: Value) {
        if error {
            tracing::warn!(action, "{message}");
        } else {
            tracing::info!(action, "{message}");
        }
        let doc = json!({
            "@timestamp": edr_event::time::to_rfc3339(edr_event::time::now()),
            "event": { "kind": if error { "pipeline_error" } else { "state" }, "action": action, "dataset": "edr.health" },
            "message": message,
            "edr": details,
        });
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = writeln!(f, "{doc}");
        }
    }
}
