//! The response engine in the agent: started from `[respond]`, its audit
//! records sent to `<data_dir>/actions.jsonl`, the counters status shows
//! and the record; plugin requests gated by their pack manifest; isolation
//! tampering raised as an alert. The engine and its audit logic are
//! `edr_respond`'s; this is the wiring.

use crate::config::AgentConfig;
use crate::dispatch::AgentAlerts;
use crate::health::HealthLog;
use crate::services::{ActionHandler, DeclaredActions};
use edr_respond::{AuditCounts, AuditJournal, AuditRecord, Requester, Responder, ResponseAction};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Starts the response engine with its audit sinks: the journal
/// `<data_dir>/actions.jsonl`, `counts`, and the record (`store`: its writer
/// and the first free action id). A failure to start disables response,
/// loudly (the log and a health event), not the agent.
pub fn start(
    cfg: &AgentConfig,
    config_file: Option<&Path>,
    health: &HealthLog,
    store: Option<(edr_store::StoreWriter, u64)>,
    counts: Arc<AuditCounts>,
) -> Option<Arc<Responder>> {
    let mut rc = cfg.respond_config();
    // The agent's own files: quarantine and delete refuse them (edr_respond::protect).
    rc.data_dir = Some(cfg.data_dir.clone());
    rc.config_file = config_file.map(Path::to_path_buf);
    rc.trust_keys = cfg.trust.keys.iter().filter_map(|k| k.public_key_file.clone()).collect();
    rc.agent_binary = std::env::current_exe().ok();
    // Isolation keeps the fleet's NATS reachable (the link answers commands and heartbeats while isolated).
    for ep in crate::fleet::management_endpoints(cfg) {
        if !rc.management.contains(&ep) {
            rc.management.push(ep);
        }
    }
    let mut responder = match Responder::new(rc) {
        Ok(r) => r,
        Err(e) => {
            health.record(
                "respond-disabled",
                true,
                &format!("the response engine did not start: {e}; response actions are disabled"),
                json!({"error": e.to_string()}),
            );
            return None;
        }
    };
    // Counted first: a record seen in the journal is in status too.
    responder.audit_sink(move |rec| counts.count(rec));
    match edr_datadir::open_append_path(&cfg.data_dir.join("actions.jsonl")) {
        Ok(file) => {
            let journal = AuditJournal::new(file);
            responder.audit_sink(move |rec| {
                if let Err(e) = journal.append(rec) {
                    tracing::error!("audit record {} not written to actions.jsonl: {e}", rec.id);
                }
            });
        }
        Err(e) => tracing::error!("{e}; response audit records go to the log and the store only"),
    }
    if let Some((writer, first)) = store {
        let next = AtomicU64::new(first);
        responder.audit_sink(move |rec| {
            if let Err(e) = writer.append_action(action_row(next.fetch_add(1, Ordering::Relaxed), rec)) {
                tracing::error!("action record not stored: {e}");
            }
        });
    }
    // An isolation in force before a reboot is applied again (the kernel forgot the table).
    if let Some(rec) = responder.restore_isolation() {
        let failed = rec.outcome != edr_respond::Outcome::Ok;
        let message = if failed {
            format!("the host was isolated before this start and re-isolating it failed: {:?} {}", rec.outcome, rec.refusal.as_deref().unwrap_or(""))
        } else {
            "the host was isolated before this start (a reboot flushed the table): isolation re-applied".to_string()
        };
        health.record("isolation-restored", failed, &message, json!({"audit_id": rec.id, "reason": rec.reason}));
    }
    Some(Arc::new(responder))
}

/// An audit record as a row of the record's `action` table.
fn action_row(id: u64, rec: &AuditRecord) -> edr_store::ActionRecord {
    edr_store::ActionRecord {
        id,
        time: rec.time,
        requester: rec.requester_label(),
        action: rec.action.as_str().to_string(),
        target: rec.target.clone(),
        decision: rec.decision,
        outcome: rec.outcome.status().to_string(),
        reason: rec.reason.clone(),
        alert_id: None,
        detail: serde_json::to_value(rec).unwrap_or_default(),
    }
}

/// What the plugins' `respond` import calls: a request from a pack plugin
/// goes to the engine's policy only if its manifest declares the action
/// (`declared`); otherwise it is refused, and audited all the same.
pub fn action_handler(responder: Arc<Responder>, declared: Arc<DeclaredActions>) -> ActionHandler {
    Arc::new(move |who, action, reason| {
        let kind = edr_pack::ActionKind::of(&action).as_str();
        let pack = who.pack.as_ref().map(|p| p.id.clone()).unwrap_or_else(|| who.plugin.clone());
        let requester = Requester::Pack { pack, plugin: who.plugin.clone() };
        responder.submit_declared(requester, ResponseAction::from(action), &reason, declared.declares(who, kind))
    })
}

/// Isolation removed or altered behind the agent's back (it re-applies it):
/// an alert `edr.tamper.isolation-removed` and a health event.
pub fn alert_on_isolation_tamper(r: &Responder, alerts: AgentAlerts, health: Arc<HealthLog>) {
    r.on_isolation_tamper(move |t| {
        let outcome = match &t.error {
            None => "re-applied".to_string(),
            Some(e) => format!("re-applying FAILED: {e}"),
        };
        let management = t.management.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ");
        let finding = edr_event::Finding {
            rule_id: "edr.tamper.isolation-removed".into(),
            title: "Host isolation removed or altered behind the agent's back".into(),
            severity: edr_event::Severity::High,
            techniques: vec!["T1562.004".into()],
            message: format!("{} while the host is isolated; {outcome} (tampering #{})", t.what, t.count),
            author: "edr".into(),
            event_ids: Vec::new(),
            evidence: vec![
                ("what".into(), t.what.clone()),
                ("reapplied".into(), t.reapplied.to_string()),
                ("management".into(), management),
                ("count".into(), t.count.to_string()),
            ],
        };
        if !alerts.raise(finding) {
            tracing::error!("the isolation tampering alert could not be queued (alert path full or closed)");
        }
        health.record("isolation-tampered", true, &format!("{}; {outcome}", t.what), json!({"tamper": t}));
    });
}
