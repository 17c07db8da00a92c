//! The pack thread: verification and staging off the event path. It takes
//! candidates from the drop-in directory and the update URL, quarantine
//! notices (automatic rollback) and requests (operator rollback, a reloaded
//! trust store), and hands activations to the run loop.

use super::{Activation, Candidate, OfferError, PackManager, PackState};
use crate::control::Reply;
use crate::dispatch::Quarantined;
use crate::health::HealthLog;
use crate::status::{PackEvent, PackStatus};
use crossbeam_channel::{select, Receiver, Sender};
use serde_json::json;
use std::sync::{Arc, Mutex};

/// Requests for the pack thread.
pub(crate) enum PackRequest {
    /// Roll `pack` back to its previous good version (only when `expect`,
    /// if given, is the version active now).
    Rollback { pack: String, expect: Option<String>, reply: Sender<Reply> },
    /// A pack from the fleet: judged as a candidate, with the outcome answered.
    Install { archive: Vec<u8>, signature: String, origin: String, reply: Sender<Result<serde_json::Value, String>> },
    /// A reloaded `[[trust.keys]]`: packs offered from now on are checked against it.
    Trust(edr_pack::TrustStore),
}

/// What the pack thread reads and reports to.
pub(crate) struct PackThread {
    pub(crate) candidates: Receiver<Candidate>,
    pub(crate) quarantines: Receiver<Quarantined>,
    pub(crate) requests: Receiver<PackRequest>,
    pub(crate) activations: Sender<Activation>,
    pub(crate) status: Arc<Mutex<PackStatus>>,
    pub(crate) health: Arc<HealthLog>,
    /// The anti-rollback floors the update-URL poller reads, kept current.
    pub(crate) floors: Option<Arc<Mutex<PackState>>>,
}

/// What judging one candidate gave.
type Judged = Result<Activation, OfferError>;

impl PackThread {
    /// A health event, also kept in the status's recent pack events.
    fn record(&self, action: &str, error: bool, message: String, details: serde_json::Value) {
        self.health.record(action, error, &message, details.clone());
        let event = PackEvent { time: edr_event::time::to_rfc3339(edr_event::time::now()), action: action.into(), message, details };
        self.status.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    /// The next thing to judge, and where it came from; `Err` once a channel closed.
    fn next(&self, manager: &mut PackManager) -> Result<Option<(Judged, String)>, ()> {
        Ok(select! {
            recv(self.candidates) -> c => {
                let c = c.map_err(drop)?;
                let result = match (&c.refused, &c.signature) {
                    (Some(r), _) => Err(OfferError::Rejected(r.clone())),
                    (None, Some(sig)) => manager.offer(&c.archive, sig, &c.origin),
                    (None, None) => Err(OfferError::Rejected(edr_pack::Rejection::MissingSignature { path: edr_pack::signature_path(std::path::Path::new(&c.origin)) })),
                };
                if let Some(file) = &c.dropped {
                    let refused = result.as_ref().err().filter(|e| !e.is_benign()).map(|e| e.to_string());
                    super::retire_dropped(file, refused.as_deref());
                }
                Some((result, c.origin))
            },
            recv(self.quarantines) -> q => {
                let q = q.map_err(drop)?;
                q.pack.as_ref().map(|p| {
                    let reason = format!("plugin {} quarantined: {}", q.key, q.reason);
                    (manager.rollback(&p.id, &reason), format!("automatic rollback of {} {}", p.id, p.version))
                })
            },
            recv(self.requests) -> r => match r.map_err(drop)? {
                PackRequest::Trust(trust) => {
                    manager.set_trust(trust);
                    None
                }
                PackRequest::Install { archive, signature, origin, reply } => {
                    let result = manager.offer(&archive, &signature, &origin);
                    let _ = reply.send(match &result {
                        Ok(a) => Ok(json!({"state": "staged", "pack": a.pack.id, "version": a.pack.version, "signer": a.pack.signer})),
                        Err(e) if e.is_benign() => Ok(json!({"state": "active", "note": e.to_string()})),
                        Err(e) => Err(format!("{e} ({})", e.reason_code())),
                    });
                    Some((result, origin))
                }
                PackRequest::Rollback { pack, expect, reply } => {
                    let active = manager.active().into_iter().find(|p| p.id == pack).map(|p| p.version);
                    if let Some(want) = expect.filter(|w| active.as_ref() != Some(w)) {
                        let now = active.unwrap_or_else(|| "none".into());
                        let _ = reply.send(Reply::err(format!("pack `{pack}` is at version {now} here, not {want}: nothing rolled back")));
                        return Ok(None);
                    }
                    let result = manager.rollback(&pack, "rolled back by the operator");
                    let _ = reply.send(match &result {
                        Ok(a) => Reply::ok(json!({"pack": a.pack.id, "version": a.pack.version})),
                        Err(e) => Reply::err(e.to_string()),
                    });
                    Some((result, "operator rollback".into()))
                }
            },
        })
    }

    fn run(self, mut manager: PackManager) {
        while let Ok(outcome) = self.next(&mut manager) {
            let Some((result, origin)) = outcome else { continue };
            match result {
                Ok(a) => {
                    let message = format!("pack {} {} activated from {origin} (signed by {})", a.pack.id, a.pack.version, a.pack.signer);
                    self.record("pack-activated", false, message, json!({"pack": &a.pack, "origin": origin}));
                    if let Some(f) = &self.floors {
                        *f.lock().unwrap_or_else(|p| p.into_inner()) = manager.state().clone();
                    }
                    if self.activations.send(a).is_err() {
                        return;
                    }
                }
                Err(e) if e.is_benign() => tracing::debug!(%origin, "{e}"),
                Err(e) => self.record(
                    "pack-rejected",
                    true,
                    format!("pack from {origin} not activated: {e}"),
                    json!({"origin": origin, "reason": e.reason_code(), "error": e.to_string()}),
                ),
            }
        }
    }
}

/// Runs the pack thread until one of its channels closes.
pub(crate) fn spawn_pack_thread(manager: PackManager, thread: PackThread) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("edr-packs".into()).spawn(move || thread.run(manager))
}
