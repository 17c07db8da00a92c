//! [`AgentHandle`]: the running agent from inside the process. The control
//! socket is one transport over [`AgentHandle::execute`]; a fleet link or
//! an extension is another.

use crate::control::{Reply, Request};
use crate::packs::PackRequest;
use crate::reload::ReloadReport;
use crate::status::AgentStatus;
use crossbeam_channel::{bounded, Sender};
use edr_respond::{AuditRecord, Decision, Requester, Responder, ResponseAction};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a request waits for the agent's answer (a pack rollback stages
/// plugins; a status waits for the loop to finish its batch).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Who makes a request, for the audit record and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The uid the transport authenticated the caller as (response actions
    /// are audited as `operator uid N`).
    pub uid: u32,
    /// The transport: `control socket`, `fleet`, ...
    pub via: String,
}

impl Caller {
    /// A local user on the control socket (uid from SO_PEERCRED).
    pub fn local(uid: u32) -> Caller {
        Caller { uid, via: "control socket".into() }
    }

    /// A caller through another transport, acting as `uid`.
    pub fn via(transport: impl Into<String>, uid: u32) -> Caller {
        Caller { uid, via: transport.into() }
    }
}

/// Why a request to the agent did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent has stopped (or is stopping).
    #[error("the agent is shutting down")]
    Stopped,
    /// The agent did not answer in time.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The request was carried out and failed, or was refused.
    #[error("{0}")]
    Failed(String),
}

/// Requests the run loop answers between two batches (it owns the pipeline).
pub(crate) enum LoopRequest {
    Status(Sender<AgentStatus>),
    Reenable { plugin: String, reply: Sender<Reply> },
    Reload(Sender<Result<ReloadReport, String>>),
}

/// A cloneable, thread-safe handle on a built agent: what the control
/// socket serves, callable in the process. Valid while the agent runs;
/// afterwards every call fails with [`AgentError::Stopped`].
#[derive(Clone)]
pub struct AgentHandle {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Sender<LoopRequest>,
    packs: Sender<PackRequest>,
    responder: Option<Arc<Responder>>,
    /// The record's file, opened read-only per query (never the writer).
    store: Option<PathBuf>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle").field("store", &self.inner.store).field("response", &self.inner.responder.is_some()).finish()
    }
}

impl AgentHandle {
    pub(crate) fn new(requests: Sender<LoopRequest>, packs: Sender<PackRequest>, responder: Option<Arc<Responder>>, store: Option<PathBuf>) -> Self {
        AgentHandle { inner: Arc::new(Inner { requests, packs, responder, store }) }
    }

    /// Asks the run loop and waits for its answer.
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> LoopRequest, within: Duration) -> Result<T, AgentError> {
        let (tx, rx) = bounded(1);
        self.inner.requests.send(make(tx)).map_err(|_| AgentError::Stopped)?;
        rx.recv_timeout(within).map_err(|e| if e.is_timeout() { AgentError::Timeout(within) } else { AgentError::Stopped })
    }

    /// Everything `edr status` shows (answered by the run loop between two
    /// batches; waits up to 120 s).
    pub fn status(&self) -> Result<AgentStatus, AgentError> {
        self.status_within(ANSWER_WITHIN)
    }

    /// [`AgentHandle::status`], waiting at most `limit`.
    pub fn status_within(&self, limit: Duration) -> Result<AgentStatus, AgentError> {
        self.ask(LoopRequest::Status, limit)
    }

    /// Re-reads the configuration (what SIGHUP does) and applies what can
    /// change while running; the report says what was applied and what
    /// needs a restart. `Err` when the new configuration was refused (the
    /// running one stays) or the agent has no configuration source.
    pub fn reload(&self) -> Result<ReloadReport, AgentError> {
        self.ask(LoopRequest::Reload, ANSWER_WITHIN)?.map_err(AgentError::Failed)
    }

    /// Decides, carries out (or simulates) and audits a response action for
    /// `caller`, as `edr respond` does; the audit record says what happened
    /// (a refusal is a record, not an error). `Err` when response is off.
    pub fn respond(&self, caller: &Caller, action: ResponseAction, reason: &str) -> Result<AuditRecord, AgentError> {
        let r = self
            .inner
            .responder
            .as_ref()
            .ok_or_else(|| AgentError::Failed("the response engine is not running in this agent (see the agent's log for why)".into()))?;
        tracing::info!(uid = caller.uid, via = %caller.via, ?action, %reason, "operator response request");
        Ok(r.request(Requester::Operator { uid: caller.uid }, action, reason))
    }

    /// The response engine, when it runs.
    pub(crate) fn responder(&self) -> Option<&Arc<Responder>> {
        self.inner.responder.as_ref()
    }

    /// One read-only SELECT over the record's views (`edr query`).
    pub fn query(&self, sql: &str) -> Result<edr_store::QueryResult, AgentError> {
        self.store()?.query(sql).map_err(|e| AgentError::Failed(e.to_string()))
    }

    /// [`AgentHandle::query`] with its own row limit and time limit (the
    /// fleet's `query`): the same read-only path and SQL checks.
    pub fn query_limited(&self, sql: &str, max_rows: usize, timeout: std::time::Duration) -> Result<edr_store::QueryResult, AgentError> {
        self.store()?.with_query_limits(timeout, max_rows).query(sql).map_err(|e| AgentError::Failed(e.to_string()))
    }

    /// An alert's storyline (`edr storyline`).
    pub fn storyline(&self, alert: u64, opts: edr_store::StorylineOptions) -> Result<edr_store::Storyline, AgentError> {
        self.store()?.storyline(alert, opts).map_err(|e| AgentError::Failed(e.to_string()))
    }

    fn store(&self) -> Result<edr_store::Store, AgentError> {
        let path = self.inner.store.as_ref().ok_or_else(|| AgentError::Failed("the record is off in this agent ([store] enabled = false)".into()))?;
        edr_store::Store::open_read_only(path).map_err(|e| AgentError::Failed(e.to_string()))
    }

    /// Offers a pack archive and its minisign signature to the pack manager
    /// (verify against this host's trust store, anti-rollback, stage, canary,
    /// swap) and waits for its judgement: `{"state": "staged", ..}` when it
    /// was handed to the swap, `{"state": "active", ..}` when that version is
    /// already installed; `Err` with the manager's reason when refused.
    pub fn install_pack(&self, archive: Vec<u8>, signature: String, origin: String) -> Result<serde_json::Value, AgentError> {
        let (tx, rx) = bounded(1);
        self.inner.packs.send(PackRequest::Install { archive, signature, origin, reply: tx }).map_err(|_| AgentError::Stopped)?;
        rx.recv_timeout(ANSWER_WITHIN).map_err(|_| AgentError::Timeout(ANSWER_WITHIN))?.map_err(AgentError::Failed)
    }

    /// Rolls `pack` back to its previous good version when `expect` is the
    /// version active now (`edr pack rollback`, guarded).
    pub fn rollback_pack(&self, pack: String, expect: Option<String>) -> Result<serde_json::Value, AgentError> {
        let (tx, rx) = bounded(1);
        self.inner.packs.send(PackRequest::Rollback { pack, expect, reply: tx }).map_err(|_| AgentError::Stopped)?;
        let r = rx.recv_timeout(ANSWER_WITHIN).map_err(|_| AgentError::Timeout(ANSWER_WITHIN))?;
        if r.ok {
            Ok(r.result.unwrap_or_default())
        } else {
            Err(AgentError::Failed(r.error.unwrap_or_else(|| "rollback failed".into())))
        }
    }

    /// Carries out one control request for `caller`: the handler behind the
    /// control socket, for any transport. Never panics; failures are in the
    /// reply.
    pub fn execute(&self, caller: Caller, request: Request) -> Reply {
        tracing::debug!(uid = caller.uid, via = %caller.via, ?request, "control request");
        let failed = |e: AgentError| Reply::err(e.to_string());
        match request {
            Request::Status => self.status().map_or_else(failed, Reply::ok),
            Request::Reload => self.reload().map_or_else(failed, Reply::ok),
            Request::Reenable { plugin } => self.ask(|reply| LoopRequest::Reenable { plugin, reply }, ANSWER_WITHIN).unwrap_or_else(failed),
            Request::Rollback { pack } => {
                let (tx, rx) = bounded(1);
                if self.inner.packs.send(PackRequest::Rollback { pack, expect: None, reply: tx }).is_err() {
                    return failed(AgentError::Stopped);
                }
                rx.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| Reply::err("the agent did not answer in time"))
            }
            Request::Respond { action, reason } => match serde_json::from_value::<ResponseAction>(action) {
                Err(e) => Reply::err(format!("bad action: {e}")),
                Ok(action) => match self.respond(&caller, action, &reason) {
                    Ok(record) => Reply { ok: record.decision != Decision::Refused, result: serde_json::to_value(&record).ok(), error: record.refusal.clone() },
                    Err(e) => failed(e),
                },
            },
            Request::RespondList => match &self.inner.responder {
                None => Reply::err("the response engine is not running in this agent"),
                Some(r) => Reply::ok(json!({
                    "isolation": r.isolation_state(),
                    "quarantined": r.quarantined(),
                    "evidence": r.evidence(),
                    "blocks": r.blocks(),
                    "block_stats": r.block_stats(),
                })),
            },
            Request::Query { sql } => self.query(&sql).map_or_else(failed, Reply::ok),
            Request::Storyline { alert, ancestors } => {
                let opts = edr_store::StorylineOptions { ancestor_activity: ancestors, ..Default::default() };
                self.storyline(alert, opts).map_or_else(failed, Reply::ok)
            }
        }
    }
}
