//! Audit records: one for every request, carried out, simulated or refused.
//!
//! The response engine does not store records itself: the agent registers
//! sinks ([`crate::Responder::audit_sink`]): an [`AuditJournal`] (one JSON
//! line a record, the agent's `actions.jsonl`), [`AuditCounts`] (the totals
//! `edr status` shows) and its event store. Every record is also logged
//! through `tracing` (target `edr::respond::audit`), so nothing is lost when
//! no sink is registered.

use crate::policy::{ActionKind, Requester};
use crate::{Detail, ResponseAction};
use edr_event::{Decision, Timestamp};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What happened when the action ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "message", rename_all = "kebab-case")]
pub enum Outcome {
    /// The action was carried out.
    Ok,
    /// The action was attempted and failed (or, when simulated, would fail).
    Error(String),
    /// Nothing was run: the request was refused or only simulated.
    NotRun,
}

impl Outcome {
    /// The outcome's status word: `ok`, `error` or `not-run` (as serialised).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::NotRun => "not-run",
        }
    }
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique id (32 hex characters).
    pub id: String,
    /// When the request was decided, ns since the epoch.
    pub time: Timestamp,
    /// When the record was completed (after the action ran), ns since the epoch.
    pub finished: Timestamp,
    /// Who asked.
    pub requester: Requester,
    /// The kind of action.
    pub action: ActionKind,
    /// The target in words ("pid 4242 and its tree", a path, "host", ...).
    pub target: String,
    /// The request exactly as made.
    pub request: ResponseAction,
    /// Enforced, simulated or refused.
    pub decision: Decision,
    /// The result.
    pub outcome: Outcome,
    /// The reason the requester gave.
    pub reason: String,
    /// Why the request was refused (policy or safety check), when it was.
    pub refusal: Option<String>,
    /// What was done or would be done: pids killed, quarantine id, sha256,
    /// size, owner, the nft script, ...
    pub detail: Detail,
}

impl AuditRecord {
    /// Who asked, in the short form the record's `action` table keeps
    /// (`operator uid 0`, `pack com.example plugin kill-revshell`).
    pub fn requester_label(&self) -> String {
        match &self.requester {
            Requester::Operator { uid } => format!("operator uid {uid}"),
            Requester::Pack { pack, plugin } => format!("pack {pack} plugin {plugin}"),
        }
    }
}

/// Response requests by what became of them, counted from the audit
/// records (register [`AuditCounts::count`] as a sink).
#[derive(Debug, Default)]
pub struct AuditCounts {
    done: AtomicU64,
    simulated: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of [`AuditCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTotals {
    /// Enforced and carried out.
    pub done: u64,
    /// Simulated (the policy's `simulate` mode).
    pub simulated: u64,
    /// Refused by the policy, a safety check or the manifest.
    pub refused: u64,
    /// Enforced and failed.
    pub failed: u64,
}

impl AuditCounts {
    /// Counts one record.
    pub fn count(&self, rec: &AuditRecord) {
        let c = match rec.decision {
            Decision::Refused => &self.refused,
            Decision::Simulated => &self.simulated,
            Decision::Enforced if matches!(rec.outcome, Outcome::Error(_)) => &self.failed,
            Decision::Enforced => &self.done,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn totals(&self) -> AuditTotals {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AuditTotals { done: l(&self.done), simulated: l(&self.simulated), refused: l(&self.refused), failed: l(&self.failed) }
    }
}

/// An append-only journal of audit records: one JSON document a line (the
/// agent's `<data_dir>/actions.jsonl`). The caller opens the file (the agent
/// opens it 0600 and never through a link).
#[derive(Debug)]
pub struct AuditJournal {
    file: Mutex<std::fs::File>,
}

impl AuditJournal {
    /// Appends to `file` from now on.
    pub fn new(file: std::fs::File) -> AuditJournal {
        AuditJournal { file: Mutex::new(file) }
    }

    /// Appends one record as a line.
    pub fn append(&self, rec: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.lock().unwrap_or_else(|p| p.into_inner()).write_all(&line)
    }
}

/// A registered consumer of audit records.
pub(crate) type Sink = Arc<dyn Fn(&AuditRecord) + Send + Sync + 'static>;

/// Delivers records to the sinks and to the log.
#[derive(Default)]
pub(crate) struct AuditLog {
    sinks: RwLock<Vec<Sink>>,
}

impl AuditLog {
    /// Adds a sink.
    pub(crate) fn add(&self, sink: Sink) {
        self.sinks.write().unwrap_or_else(|p| p.into_inner()).push(sink);
    }

    /// Logs the record and hands it to every sink. A panicking sink is
    /// caught and logged; the others still get the record.
    pub(crate) fn emit(&self, rec: &AuditRecord) {
        let outcome = match &rec.outcome {
            Outcome::Ok => "ok".to_string(),
            Outcome::Error(e) => format!("error: {e}"),
            Outcome::NotRun => "not run".to_string(),
        };
        match rec.decision {
            Decision::Refused => tracing::warn!(
                target: "edr::respond::audit",
                id = %rec.id, requester = %rec.requester, action = %rec.action, target = %rec.target,
                refusal = rec.refusal.as_deref().unwrap_or(""), reason = %rec.reason,
                "response request refused"
            ),
            d => tracing::info!(
                target: "edr::respond::audit",
                id = %rec.id, requester = %rec.requester, action = %rec.action, target = %rec.target,
                decision = %d, outcome = %outcome, reason = %rec.reason,
                "response action"
            ),
        }
        let sinks: Vec<Sink> = self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone();
        for sink in sinks {
            if catch_unwind(AssertUnwindSafe(|| sink(rec))).is_err() {
                tracing::error!(target: "edr::respond::audit", id = %rec.id, "an audit sink panicked; the record may be missing from that sink");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn records_serialise_and_a_panicking_sink_does_not_stop_the_others() {
        let log = AuditLog::default();
        let got = Arc::new(Mutex::new(Vec::new()));
        log.add(Arc::new(|_r: &AuditRecord| panic!("bad sink")));
        let g = got.clone();
        log.add(Arc::new(move |r: &AuditRecord| g.lock().unwrap().push(r.clone())));
        let rec = AuditRecord {
            id: "00".repeat(16),
            time: 1,
            finished: 2,
            requester: Requester::Operator { uid: 0 },
            action: ActionKind::IsolateHost,
            target: "host".into(),
            request: ResponseAction::Isolate,
            decision: Decision::Refused,
            outcome: Outcome::NotRun,
            reason: "test".into(),
            refusal: Some("because".into()),
            detail: Detail::new(),
        };
        log.emit(&rec);
        assert_eq!(got.lock().unwrap().as_slice(), std::slice::from_ref(&rec));
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["decision"], "refused");
        assert_eq!(json["outcome"]["status"], "not-run");
        assert_eq!(json["requester"]["kind"], "operator");
        assert_eq!(json["action"], "isolate-host");
        let back: AuditRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn counts_and_journal_follow_the_records() {
        let mut rec = AuditRecord {
            id: "01".repeat(16),
            time: 1,
            finished: 2,
            requester: Requester::pack("com.example", "p"),
            action: ActionKind::KillProcess,
            target: "pid 1".into(),
            request: ResponseAction::Isolate,
            decision: Decision::Enforced,
            outcome: Outcome::Error("gone".into()),
            reason: "test".into(),
            refusal: None,
            detail: Detail::new(),
        };
        let counts = AuditCounts::default();
        counts.count(&rec);
        rec.outcome = Outcome::Ok;
        counts.count(&rec);
        rec.decision = Decision::Refused;
        counts.count(&rec);
        assert_eq!(counts.totals(), AuditTotals { done: 1, simulated: 0, refused: 1, failed: 1 });
        assert_eq!(rec.requester_label(), "pack com.example plugin p");
        assert_eq!(Outcome::NotRun.status(), "not-run");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.jsonl");
        let journal = AuditJournal::new(std::fs::File::create(&path).unwrap());
        journal.append(&rec).unwrap();
        journal.append(&rec).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, vec![rec.clone(), rec]);
    }
}
