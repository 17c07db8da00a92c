//! The fleet's commands in the agent: the read-only ones through the link's
//! [`BuiltIn`], the response commands through the agent's own response
//! engine ([`AgentHandle::respond`], what `edr respond` reaches over the
//! control socket), so the same policy, protections and audit apply
//! (`actions.jsonl`, the record's `action` table, status counters). The
//! engine's audit record is the command's output.
//!
//! * `kill`, `suspend`, `resume`, `quarantine`, `restore`, `delete`,
//!   `block`, `unblock`, `isolate`, `release`: one
//!   engine action each; a refusal or a failed action is the command's
//!   failure, with the engine's reason.
//! * `restore` takes a quarantine id or the original absolute path (the
//!   newest quarantine entry of that path).
//! * `fetch`: the engine copies the file into the evidence store (audited);
//!   the copy is read back, its sha256 checked against the engine's, and
//!   returned base64-encoded. Files over [`FETCH_MAX_BYTES`] are refused
//!   before anything is copied.
//! * `query`: one read-only SELECT over the record's views, through the
//!   same path as `edr query` ([`AgentHandle::query_limited`]: the store's
//!   read-only connection, authorizer and single-statement check), with the
//!   command's row limit (at most [`QUERY_MAX_ROWS`]) and a deadline of
//!   [`QUERY_DEADLINE`]. The output is `{columns, rows, truncated}`.
//! * `storyline`: an alert's storyline from the record (`edr storyline
//!   --json`'s document), with fewer events when it would not fit one reply.
//! * `isolate`: the fleet's NATS endpoints were added to the engine's
//!   management allowlist when the agent started
//!   ([`crate::fleet::management_endpoints`]); before isolating they are
//!   resolved again, and isolation is refused when one of the addresses is
//!   not in the allowlist (the host would lose its fleet).

use crate::{AgentError, AgentHandle, Caller};
use base64::Engine as _;
use edr_fleet_link::commands::{BuiltIn, CommandExecutor};
use edr_fleet_proto::command::{Command, CommandBody, FETCH_MAX_BYTES, QUERY_MAX_ROWS, QUERY_MAX_SQL_BYTES, STORYLINE_MAX_EVENTS};
use edr_respond::{AuditRecord, BlockTarget, Decision, Endpoint, Outcome, ResponseAction};
use serde_json::{json, Value};
use sha2::Digest;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How long a fleet `query` may run on this host (the server waits 30 s for an answer).
pub(crate) const QUERY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs verified fleet commands in this agent.
pub(crate) struct FleetExecutor {
    pub(crate) agent: AgentHandle,
    pub(crate) builtin: BuiltIn,
    /// The link's NATS URLs (from the host's fleet identity).
    pub(crate) nats_urls: Vec<String>,
}

impl CommandExecutor for FleetExecutor {
    fn execute(&self, body: &CommandBody) -> Result<Value, String> {
        let action = match &body.command {
            Command::Status | Command::Ls { .. } | Command::Processes | Command::Connections => return self.builtin.execute(body),
            Command::Kill { pid, tree } => ResponseAction::Kill { pid: *pid, tree: *tree, expect: None },
            Command::Suspend { pid } => ResponseAction::Suspend(*pid),
            Command::Resume { pid } => ResponseAction::Resume(*pid),
            Command::Block { target } => ResponseAction::BlockExec(block_target(target)?),
            Command::Unblock { target } => ResponseAction::Unblock(block_target(target)?),
            Command::Quarantine { path } => ResponseAction::Quarantine(absolute(path)?),
            Command::Restore { id, force } => ResponseAction::Restore { id: self.quarantine_id(id)?, force: *force },
            Command::Delete { path } => ResponseAction::Delete(absolute(path)?),
            Command::Fetch { path } => return self.fetch(body, &absolute(path)?),
            Command::Isolate => {
                self.check_fleet_allowed()?;
                ResponseAction::Isolate
            }
            Command::Release => ResponseAction::Release,
            Command::Query { sql, limit } => return self.query(sql, *limit),
            Command::Storyline { alert, max_events, ancestor_activity } => return self.storyline(*alert, *max_events, *ancestor_activity),
            Command::PackInstall { .. } => return Err("pack_install needs the pack's bytes from the link".into()),
            Command::PackRollback { name, version } => {
                return self.agent.rollback_pack(name.clone(), Some(version.clone())).map_err(|e| e.to_string());
            }
        };
        let record = self.respond(body, action)?;
        Ok(json!({"audit": record}))
    }

    /// The isolation fallback: the link could not reach the fleet while the host was isolated.
    fn release_stranded(&self, reason: &str) -> Result<Value, String> {
        let caller = Caller::via("fleet link (isolation fallback)", 0);
        let record = self.agent.respond(&caller, ResponseAction::Release, reason).map_err(|e: AgentError| e.to_string())?;
        match (&record.decision, &record.outcome) {
            (Decision::Refused, _) => Err(format!("refused by the host's response engine: {}", record.refusal.as_deref().unwrap_or("no reason given"))),
            (_, Outcome::Error(e)) => Err(format!("the host's response engine failed: {e}")),
            _ => Ok(json!({"audit": record})),
        }
    }

    /// The pack manager judges it: this host's trust store, not the fleet, decides.
    fn install_pack(&self, body: &CommandBody, archive: Vec<u8>) -> Result<Value, String> {
        let Command::PackInstall { name, version, signature, .. } = &body.command else { return Err("not a pack_install".into()) };
        let origin = format!("fleet command {} ({name} {version})", body.command_id);
        self.agent.install_pack(archive, signature.clone(), origin).map_err(|e| e.to_string())
    }
}

/// A block target: 64 hex digits are a sha256, anything else must be an absolute path.
fn block_target(target: &str) -> Result<BlockTarget, String> {
    match BlockTarget::parse(target) {
        BlockTarget::Path(p) if !p.is_absolute() => Err(format!("{target:?}: give an absolute path or a sha256 (64 hex digits)")),
        t => Ok(t),
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(format!("{path:?}: give an absolute path"));
    }
    Ok(p)
}

/// Whether `ep` lets packets to `addr` through.
fn covers(ep: &Endpoint, addr: &SocketAddr) -> bool {
    let Ok(net) = Endpoint::new(addr.ip(), ep.prefix, None) else { return false };
    net.addr == ep.addr && ep.port.is_none_or(|p| p == addr.port())
}

impl FleetExecutor {
    /// The engine decides, acts and audits; a refusal or failure is the command's error.
    fn respond(&self, body: &CommandBody, action: ResponseAction) -> Result<AuditRecord, String> {
        let caller = Caller::via(format!("fleet command {}", body.command_id), 0);
        let reason =
            if body.reason.is_empty() { format!("fleet command {}", body.command_id) } else { format!("{} (fleet command {})", body.reason, body.command_id) };
        let record = self.agent.respond(&caller, action, &reason).map_err(|e: AgentError| e.to_string())?;
        if record.decision == Decision::Refused {
            return Err(format!("refused by the host's response engine: {}", record.refusal.as_deref().unwrap_or("no reason given")));
        }
        if let Outcome::Error(e) = &record.outcome {
            return Err(format!("the host's response engine failed: {e} (audit record {})", record.id));
        }
        Ok(record)
    }

    fn quarantine_id(&self, id_or_path: &str) -> Result<String, String> {
        if !id_or_path.starts_with('/') {
            return Ok(id_or_path.to_string());
        }
        let responder = self.agent.responder().ok_or("the response engine is not running in this agent")?;
        responder
            .quarantined()
            .into_iter()
            .filter(|e| e.original_path == Path::new(id_or_path))
            .max_by_key(|e| e.quarantined_at)
            .map(|e| e.id)
            .ok_or_else(|| format!("nothing from {id_or_path} is in this host's quarantine"))
    }

    /// Refuses isolation when a current address of the fleet's NATS is not in the allowlist.
    fn check_fleet_allowed(&self) -> Result<(), String> {
        let responder = self.agent.responder().ok_or("the response engine is not running in this agent")?;
        let addrs = edr_fleet_link::endpoints::resolve(&self.nats_urls)
            .map_err(|e| format!("isolation refused: the fleet's NATS cannot be resolved now ({e}), so it could not be kept reachable"))?;
        let allowed = &responder.config().management;
        let missing: Vec<String> = addrs.iter().filter(|a| !a.ip().is_loopback() && !allowed.iter().any(|ep| covers(ep, a))).map(ToString::to_string).collect();
        if !missing.is_empty() {
            return Err(format!(
                "isolation refused: the fleet's NATS now resolves to {} which the isolation allowlist (set when the agent started) lacks; restart the agent or add them to [respond] management",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    /// A read-only query over the record, bounded in rows and time.
    fn query(&self, sql: &str, limit: u32) -> Result<Value, String> {
        check_query(sql, limit)?;
        let r = self.agent.query_limited(sql, limit as usize, QUERY_DEADLINE).map_err(|e| e.to_string())?;
        let (rows, cut) = fit_reply(r.rows);
        Ok(json!({"columns": r.columns, "rows": rows, "truncated": r.truncated || cut}))
    }

    /// An alert's storyline, as `edr storyline --json` gives it, cut to fit
    /// one reply: when the story is too large, fewer events (those nearest
    /// the alert's time) are kept and `fitted_max_events` says how many.
    fn storyline(&self, alert: u64, max_events: u32, ancestor_activity: bool) -> Result<Value, String> {
        if max_events == 0 || max_events > STORYLINE_MAX_EVENTS {
            return Err(format!("storyline max_events {max_events}: give 1 to {STORYLINE_MAX_EVENTS}"));
        }
        let mut events = max_events as usize;
        loop {
            let opts = edr_store::StorylineOptions { max_events: events, ancestor_activity, ..Default::default() };
            let story = self.agent.storyline(alert, opts).map_err(|e| e.to_string())?;
            let mut v = serde_json::to_value(&story).map_err(|e| e.to_string())?;
            let size = serde_json::to_string(&v).map_or(usize::MAX, |t| t.len());
            if size <= QUERY_MAX_REPLY_BYTES {
                if events < max_events as usize {
                    v["fitted_max_events"] = json!(events);
                }
                return Ok(v);
            }
            if events <= 1 {
                return Err(format!("alert {alert}'s storyline is {size} bytes even with one event: too large for one fleet reply"));
            }
            events /= 2;
        }
    }

    /// Fetch through the engine (evidence store, audited), then the copy's bytes.
    fn fetch(&self, body: &CommandBody, path: &Path) -> Result<Value, String> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot fetch {}: {e}", path.display()))?;
        if meta.is_file() && meta.len() > FETCH_MAX_BYTES {
            return Err(format!("{} is {} bytes; the fleet returns at most {FETCH_MAX_BYTES} bytes (512 KiB) per fetch", path.display(), meta.len()));
        }
        let record = self.respond(body, ResponseAction::Fetch(path.to_path_buf()))?;
        if record.decision != Decision::Enforced {
            return Ok(json!({"audit": record, "content_base64": null, "note": "simulated: nothing was copied"}));
        }
        let stored = record.detail.get("stored_path").ok_or("the engine did not say where the copy is")?;
        let want = record.detail.get("sha256").cloned().unwrap_or_default();
        let mut bytes = Vec::new();
        std::fs::File::open(stored)
            .and_then(|f| f.take(FETCH_MAX_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read the evidence copy {stored}: {e}"))?;
        if bytes.len() as u64 > FETCH_MAX_BYTES {
            return Err(format!("{} grew past {FETCH_MAX_BYTES} bytes while being fetched; the copy stays in the evidence store ({stored})", path.display()));
        }
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        if sha256 != want {
            return Err(format!("the evidence copy's sha256 {sha256} differs from the engine's {want}: the copy was changed"));
        }
        Ok(json!({
            "audit": record,
            "path": path,
            "size": bytes.len(),
            "sha256": sha256,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }))
    }
}

/// The most bytes of rows one query answer carries (it travels in one NATS
/// reply; nats-server's default `max_payload` is 1 MiB).
const QUERY_MAX_REPLY_BYTES: usize = 768 << 10;

/// The leading rows that fit in [`QUERY_MAX_REPLY_BYTES`], and whether some were cut.
fn fit_reply(mut rows: Vec<Vec<Value>>) -> (Vec<Vec<Value>>, bool) {
    let mut total = 0usize;
    for (i, row) in rows.iter().enumerate() {
        total += serde_json::to_string(row).map_or(0, |t| t.len() + 1);
        if total > QUERY_MAX_REPLY_BYTES {
            rows.truncate(i);
            return (rows, true);
        }
    }
    (rows, false)
}

/// The limits of a fleet query, checked before the store sees it.
fn check_query(sql: &str, limit: u32) -> Result<(), String> {
    if limit == 0 || limit > QUERY_MAX_ROWS {
        return Err(format!("query limit {limit}: give 1 to {QUERY_MAX_ROWS} rows"));
    }
    if sql.len() > QUERY_MAX_SQL_BYTES {
        return Err(format!("the query is {} bytes; at most {QUERY_MAX_SQL_BYTES}", sql.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_coverage_respects_prefix_and_port() {
        let a: SocketAddr = "10.1.2.3:4222".parse().unwrap();
        let net = |s: &str, prefix, port| Endpoint::new(s.parse().unwrap(), prefix, port).unwrap();
        assert!(covers(&net("10.1.2.3", 32, Some(4222)), &a));
        assert!(covers(&net("10.1.0.0", 16, None), &a));
        assert!(!covers(&net("10.1.2.3", 32, Some(4223)), &a));
        assert!(!covers(&net("10.1.2.4", 32, None), &a));
        assert!(!covers(&net("::1", 128, None), &a), "another family");
        assert!(absolute("relative/x").is_err() && absolute("/x").is_ok());
        assert!(block_target("tmp/x").unwrap_err().contains("absolute path or a sha256"));
        assert_eq!(block_target(&"AB".repeat(32)).unwrap(), BlockTarget::Sha256("ab".repeat(32)));
        assert_eq!(block_target("/usr/bin/nc").unwrap(), BlockTarget::Path("/usr/bin/nc".into()));
    }

    #[test]
    fn query_limits_are_checked() {
        assert!(check_query("SELECT 1", 1).is_ok() && check_query("SELECT 1", QUERY_MAX_ROWS).is_ok());
        assert!(check_query("SELECT 1", 0).unwrap_err().contains("1 to 10000"));
        assert!(check_query("SELECT 1", QUERY_MAX_ROWS + 1).is_err());
        assert!(check_query(&"x".repeat(QUERY_MAX_SQL_BYTES + 1), 5).unwrap_err().contains("bytes"));
        let small = vec![vec![json!(1), json!("a")]; 10];
        assert_eq!(fit_reply(small.clone()), (small, false));
        let big = vec![vec![json!("x".repeat(100 << 10))]; 20];
        let (kept, cut) = fit_reply(big);
        assert!(cut && kept.len() == 7, "{} rows kept", kept.len());
    }
}
