//! The response policy: who may request which action, and in which mode.
//!
//! * The **operator** (the local control API, which authenticates the caller
//!   and passes its uid) may request every action, in
//!   [`crate::ResponseConfig::operator_mode`] (enforce by default).
//! * A **pack** (a plugin of a signed detection pack) may request only the
//!   actions its [`PackGrant`] lists, in the grant's mode. Undo actions
//!   (restore, release, unblock) are operator-only: a grant naming one is a
//!   configuration error.
//! * Whoever asks, protected targets are refused (see [`crate::process`] for
//!   processes, [`crate::block`] for executables): the policy decides who
//!   may act, the safety checks decide what may be acted on.

use crate::RespondError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The kinds of action, named as in policies and in the plugin contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Kill a process (optionally its tree).
    KillProcess,
    /// Stop a process (SIGSTOP).
    SuspendProcess,
    /// Continue a stopped process (SIGCONT).
    ResumeProcess,
    /// Move a file into the quarantine store.
    QuarantineFile,
    /// Put a quarantined file back (operator only).
    RestoreFile,
    /// Delete a file.
    DeleteFile,
    /// Cut the host off the network except management.
    IsolateHost,
    /// Undo isolation (operator only).
    ReleaseHost,
    /// Block execution of a file by path or sha256.
    BlockExec,
    /// Remove an execution block (operator only).
    UnblockExec,
    /// Copy a file into the evidence store.
    FetchFile,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [ActionKind; 11] = [
        ActionKind::KillProcess,
        ActionKind::SuspendProcess,
        ActionKind::ResumeProcess,
        ActionKind::QuarantineFile,
        ActionKind::RestoreFile,
        ActionKind::DeleteFile,
        ActionKind::IsolateHost,
        ActionKind::ReleaseHost,
        ActionKind::BlockExec,
        ActionKind::UnblockExec,
        ActionKind::FetchFile,
    ];

    /// The policy name (the plugin contract's name for the kinds plugins can request).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::KillProcess => "kill-process",
            ActionKind::SuspendProcess => "suspend-process",
            ActionKind::ResumeProcess => "resume-process",
            ActionKind::QuarantineFile => "quarantine-file",
            ActionKind::RestoreFile => "restore-file",
            ActionKind::DeleteFile => "delete-file",
            ActionKind::IsolateHost => "isolate-host",
            ActionKind::ReleaseHost => "release-host",
            ActionKind::BlockExec => "block-exec",
            ActionKind::UnblockExec => "unblock-exec",
            ActionKind::FetchFile => "fetch-file",
        }
    }

    /// Undo actions only the operator may request.
    pub fn operator_only(self) -> bool {
        matches!(self, ActionKind::RestoreFile | ActionKind::ReleaseHost | ActionKind::UnblockExec)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionKind {
    type Err = RespondError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ActionKind::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ActionKind::ALL.iter().map(|k| k.as_str()).collect();
            RespondError::Config(format!("unknown action `{s}`; expected one of: {}", names.join(", ")))
        })
    }
}

/// Whether granted actions are carried out or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record what would happen (the audit record lists it); change nothing.
    Simulate,
    /// Carry the action out.
    Enforce,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Simulate => "simulate",
            Mode::Enforce => "enforce",
        })
    }
}

fn default_pack_mode() -> Mode {
    Mode::Simulate
}

/// What one pack may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackGrant {
    /// The actions the pack's plugins may request.
    pub actions: Vec<ActionKind>,
    /// Simulate (the default: a new pack is observed first) or enforce.
    #[serde(default = "default_pack_mode")]
    pub mode: Mode,
}

/// Who asks for an action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Requester {
    /// A person through the local control API; `uid` is the caller's uid as
    /// the API authenticated it (SO_PEERCRED).
    Operator {
        /// The caller's uid.
        uid: u32,
    },
    /// A plugin of a detection pack.
    Pack {
        /// The pack id (built-in plugins use the id the agent gives the
        /// built-in pack, e.g. `builtin`).
        pack: String,
        /// The plugin's name.
        plugin: String,
    },
}

impl Requester {
    /// A plugin of a pack.
    pub fn pack(pack: impl Into<String>, plugin: impl Into<String>) -> Requester {
        Requester::Pack { pack: pack.into(), plugin: plugin.into() }
    }
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requester::Operator { uid } => write!(f, "operator (uid {uid})"),
            Requester::Pack { pack, plugin } => write!(f, "plugin `{plugin}` of pack `{pack}`"),
        }
    }
}

/// Checks the pack grants of a configuration: undo actions are operator-only.
pub(crate) fn validate(packs: &BTreeMap<String, PackGrant>) -> Result<(), RespondError> {
    for (pack, grant) in packs {
        if let Some(k) = grant.actions.iter().find(|k| k.operator_only()) {
            return Err(RespondError::Config(format!("pack `{pack}` is granted `{k}`, an undo action only the operator may take; remove it from the grant")));
        }
    }
    Ok(())
}

/// The policy decision before any target check: the mode to act in, or why not.
pub(crate) fn decide(packs: &BTreeMap<String, PackGrant>, operator_mode: Mode, who: &Requester, kind: ActionKind) -> Result<Mode, RespondError> {
    match who {
        Requester::Operator { .. } => Ok(operator_mode),
        Requester::Pack { pack, .. } => {
            if kind.operator_only() {
                return Err(RespondError::OperatorOnly { action: kind.as_str() });
            }
            let Some(grant) = packs.get(pack) else {
                return Err(RespondError::NotGranted { requester: who.to_string(), action: kind.as_str(), granted: "nothing".into() });
            };
            if grant.actions.contains(&kind) {
                Ok(grant.mode)
            } else {
                let granted =
                    if grant.actions.is_empty() { "nothing".to_string() } else { grant.actions.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ") };
                Err(RespondError::NotGranted { requester: who.to_string(), action: kind.as_str(), granted })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs() -> BTreeMap<String, PackGrant> {
        let mut m = BTreeMap::new();
        m.insert("acme".to_string(), PackGrant { actions: vec![ActionKind::KillProcess], mode: Mode::Enforce });
        m.insert("watch".to_string(), PackGrant { actions: vec![ActionKind::QuarantineFile], mode: Mode::Simulate });
        m
    }

    #[test]
    fn grants_and_modes() {
        let p = packs();
        let acme = Requester::pack("acme", "x");
        assert_eq!(decide(&p, Mode::Enforce, &acme, ActionKind::KillProcess).unwrap(), Mode::Enforce);
        let err = decide(&p, Mode::Enforce, &acme, ActionKind::DeleteFile).unwrap_err();
        assert!(matches!(err, RespondError::NotGranted { .. }));
        assert!(err.to_string().contains("granted: kill-process"), "{err}");
        assert_eq!(decide(&p, Mode::Enforce, &Requester::pack("watch", "y"), ActionKind::QuarantineFile).unwrap(), Mode::Simulate);
        assert!(matches!(decide(&p, Mode::Enforce, &Requester::pack("unknown", "z"), ActionKind::KillProcess), Err(RespondError::NotGranted { .. })));
        assert!(matches!(decide(&p, Mode::Enforce, &acme, ActionKind::RestoreFile), Err(RespondError::OperatorOnly { .. })));
        let op = Requester::Operator { uid: 0 };
        assert_eq!(decide(&p, Mode::Simulate, &op, ActionKind::ReleaseHost).unwrap(), Mode::Simulate);
        assert_eq!(decide(&p, Mode::Enforce, &op, ActionKind::RestoreFile).unwrap(), Mode::Enforce);
    }

    #[test]
    fn undo_actions_cannot_be_granted() {
        let mut p = packs();
        p.insert("bad".into(), PackGrant { actions: vec![ActionKind::UnblockExec], mode: Mode::Enforce });
        let err = validate(&p).unwrap_err();
        assert!(err.to_string().contains("unblock-exec"), "{err}");
        assert!(validate(&packs()).is_ok());
    }

    #[test]
    fn names_round_trip_and_match_the_contract() {
        for k in ActionKind::ALL {
            assert_eq!(k.as_str().parse::<ActionKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        let a = edr_event::Action::KillProcess(edr_event::KillTarget { pid: 1, entity_id: None, tree: false });
        assert_eq!(a.name(), ActionKind::KillProcess.as_str());
        assert_eq!(edr_event::Action::IsolateHost.name(), ActionKind::IsolateHost.as_str());
        assert!("nuke".parse::<ActionKind>().is_err());
        let g: PackGrant = serde_json::from_str(r#"{"actions":["kill-process"]}"#).unwrap();
        assert_eq!(g.mode, Mode::Simulate, "a grant without a mode only simulates");
    }
}
