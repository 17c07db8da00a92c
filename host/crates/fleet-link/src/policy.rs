//! The host's own policy over fleet commands: `[fleet] refuse` names the
//! classes of command this host never runs, whoever signed them. A refused
//! command is answered `refused` with the policy as its reason, logged and
//! audited like every other refusal; the operator sees why at once.
//!
//! A class is a command's `op` (`kill`, `delete`, `fetch`, ...) or a group:
//!
//! * `respond`: every command that changes the host (kill, suspend, resume,
//!   quarantine, restore, delete, block, unblock, fetch, isolate, release,
//!   pack_install, pack_rollback);
//! * `read`: the listings and record reads (ls, processes, connections, query, storyline);
//! * `packs`: pack_install and pack_rollback.
//!
//! `status` cannot be refused (the fleet needs it to see the host), and
//! refusing `release` while `isolate` is allowed is a configuration error:
//! it could strand the host.

use edr_fleet_proto::command::{Command, KNOWN_OPS};

/// The groups a class may name besides single ops.
pub const GROUPS: &[&str] = &["respond", "read", "packs"];

/// The classes of fleet command this host refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandPolicy {
    refused: Vec<String>,
}

impl CommandPolicy {
    /// Runs every command the signature checks let through.
    pub fn allow_all() -> CommandPolicy {
        CommandPolicy::default()
    }

    /// The policy refusing `classes` (ops or [`GROUPS`]).
    ///
    /// # Errors
    /// An unknown class, `status`, or `release` refused while `isolate` is not.
    pub fn new(classes: &[String]) -> Result<CommandPolicy, String> {
        for c in classes {
            if c == "status" {
                return Err("`status` cannot be refused: the fleet needs it to see this host".into());
            }
            if !GROUPS.contains(&c.as_str()) && !KNOWN_OPS.contains(&c.as_str()) {
                return Err(format!("unknown command class `{c}`; use a group ({}) or a command ({})", GROUPS.join(", "), KNOWN_OPS[1..].join(", ")));
            }
        }
        let policy = CommandPolicy { refused: classes.to_vec() };
        if policy.refuses(&Command::Release) && !policy.refuses(&Command::Isolate) {
            return Err("refusing `release` while `isolate` is allowed could leave this host isolated for good; refuse `isolate` too".into());
        }
        Ok(policy)
    }

    /// The configured classes, as given.
    pub fn classes(&self) -> &[String] {
        &self.refused
    }

    /// Whether `command` falls in a refused class.
    pub fn refuses(&self, command: &Command) -> bool {
        self.refused.iter().any(|class| in_class(command, class))
    }
}

fn in_class(command: &Command, class: &str) -> bool {
    match class {
        "respond" => command.changes_host(),
        "read" => !command.changes_host() && !matches!(command, Command::Status),
        "packs" => matches!(command, Command::PackInstall { .. } | Command::PackRollback { .. }),
        op => command.op() == op,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(classes: &[&str]) -> Result<CommandPolicy, String> {
        CommandPolicy::new(&classes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn classes_cover_their_commands_and_nothing_else() {
        let kill = Command::Kill { pid: 1, tree: false };
        let query = Command::Query { sql: "SELECT 1".into(), limit: 1 };
        let rollback = Command::PackRollback { name: "p".into(), version: "1".into() };
        let p = policy(&["delete", "fetch"]).unwrap();
        assert!(p.refuses(&Command::Delete { path: "/x".into() }) && p.refuses(&Command::Fetch { path: "/x".into() }));
        assert!(!p.refuses(&kill) && !p.refuses(&query) && !p.refuses(&Command::Status));
        let respond = policy(&["respond"]).unwrap();
        assert!(respond.refuses(&kill) && respond.refuses(&Command::Isolate) && respond.refuses(&rollback));
        assert!(!respond.refuses(&query) && !respond.refuses(&Command::Processes) && !respond.refuses(&Command::Status));
        let read = policy(&["read"]).unwrap();
        assert!(read.refuses(&query) && read.refuses(&Command::Ls { path: "/".into() }) && !read.refuses(&kill) && !read.refuses(&Command::Status));
        let packs = policy(&["packs"]).unwrap();
        assert!(packs.refuses(&rollback) && !packs.refuses(&kill));
        assert!(!CommandPolicy::allow_all().refuses(&kill));
    }

    #[test]
    fn a_policy_that_cannot_work_is_refused_with_why() {
        assert!(policy(&["format_disk"]).unwrap_err().contains("unknown command class `format_disk`"));
        assert!(policy(&["status"]).unwrap_err().contains("cannot be refused"));
        assert!(policy(&["release"]).unwrap_err().contains("refuse `isolate` too"));
        assert!(policy(&["release", "isolate"]).is_ok());
    }
}
