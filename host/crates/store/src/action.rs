//! The audit record of a response action, taken or refused.

use edr_event::{Action, Decision, Timestamp};
use serde::{Deserialize, Serialize};

/// One response action as the response engine decided it: every request is
/// recorded, whether it was enforced, only simulated, or refused by policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Unique action id within this agent's record (the response engine
    /// assigns it; continue from [`crate::Store::max_action_id`] after a restart).
    pub id: u64,
    /// When the decision was taken, ns since the Unix epoch.
    pub time: Timestamp,
    /// Who asked: a plugin (`plugin:reverse-shell`), a pack, or an operator (`operator:alice`).
    pub requester: String,
    /// The action's name, as [`Action::name`] gives it (`kill-process`, `isolate-host`, ...),
    /// or an undo (`restore-file`, `release-host`, ...).
    pub action: String,
    /// What it acts on, in words: `pid 4242 (entity 00000000deadbeef)`, a path, `host`.
    pub target: String,
    /// What the policy decided.
    pub decision: Decision,
    /// What happened when it ran: `ok`, or the error; empty when it did not run.
    pub outcome: String,
    /// Why the policy decided so (the grant, the protected-process rule, simulate mode, ...).
    pub reason: String,
    /// The alert that prompted it, if any.
    pub alert_id: Option<u64>,
    /// Anything else worth keeping (the request as the plugin sent it, the
    /// quarantine location, ...), as JSON.
    pub detail: serde_json::Value,
}

impl ActionRecord {
    /// A record for a plugin's [`Action`] request: fills `action`, `target`
    /// and `detail` (the request as JSON) from it; `outcome`, `reason` and
    /// `alert_id` start empty.
    pub fn for_request(id: u64, time: Timestamp, requester: impl Into<String>, request: &Action, decision: Decision) -> Self {
        ActionRecord {
            id,
            time,
            requester: requester.into(),
            action: request.name().to_string(),
            target: describe_target(request),
            decision,
            outcome: String::new(),
            reason: String::new(),
            alert_id: None,
            detail: serde_json::to_value(request).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The target of an action request, in words.
pub fn describe_target(request: &Action) -> String {
    match request {
        Action::KillProcess(k) => {
            let mut s = format!("pid {}", k.pid);
            if let Some(e) = k.entity_id {
                s.push_str(&format!(" (entity {})", edr_event::ecs::entity_id_string(e)));
            }
            if k.tree {
                s.push_str(" and its descendants");
            }
            s
        }
        Action::SuspendProcess(pid) | Action::ResumeProcess(pid) => format!("pid {pid}"),
        Action::QuarantineFile(p) | Action::DeleteFile(p) | Action::FetchFile(p) | Action::BlockExec(p) => p.clone(),
        Action::IsolateHost => "host".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_event::KillTarget;

    #[test]
    fn request_fills_name_target_and_detail() {
        let r = ActionRecord::for_request(
            3,
            10,
            "plugin:reverse-shell",
            &Action::KillProcess(KillTarget { pid: 42, entity_id: Some(0xbeef), tree: true }),
            Decision::Simulated,
        );
        assert_eq!(r.action, "kill-process");
        assert_eq!(r.target, "pid 42 (entity 000000000000beef) and its descendants");
        assert_eq!(r.detail["action"], "kill-process");
        assert_eq!(r.detail["target"]["pid"], 42);
        assert_eq!(describe_target(&Action::IsolateHost), "host");
    }
}
