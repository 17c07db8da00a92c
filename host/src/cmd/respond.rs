//! `edr respond`: response actions through the running agent.

use edr_agent::control::{self, Request};
use serde_json::json;
use std::path::PathBuf;

/// Arguments of `edr respond`.
#[derive(Debug, clap::Args)]
pub struct RespondArgs {
    #[command(subcommand)]
    pub action: RespondAction,
    /// Why (recorded in the audit log).
    #[arg(long, short, global = true, default_value = "operator request")]
    pub reason: String,
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print the audit record as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The actions, each with its undo.
#[derive(Debug, clap::Subcommand)]
pub enum RespondAction {
    /// Kill a process (SIGKILL); --tree kills its descendants too. No undo.
    Kill {
        pid: u32,
        #[arg(long)]
        tree: bool,
    },
    /// Stop a process (SIGSTOP). Undo: resume.
    Suspend { pid: u32 },
    /// Continue a suspended process (SIGCONT).
    Resume { pid: u32 },
    /// Move a file into the quarantine store. Undo: restore.
    Quarantine {
        path: PathBuf,
        /// Quarantine it even if it is a protected path (the agent's files, account files, the
        /// loader, libc, system shells, `[respond] protected_paths`); audited as an override.
        #[arg(long)]
        override_protection: bool,
    },
    /// Put a quarantined file back, byte-exact, with its owner, mode and times.
    Restore {
        id: String,
        /// Overwrite whatever now exists at the original path.
        #[arg(long)]
        force: bool,
    },
    /// Delete a file (its hash and metadata are recorded first). No undo.
    Delete {
        path: PathBuf,
        /// Delete it even if it is a protected path; audited as an override.
        #[arg(long)]
        override_protection: bool,
    },
    /// Cut the host off the network except loopback and the management endpoints. Undo: release.
    Isolate,
    /// Remove exactly what isolation added.
    Release,
    /// Block execution of a file, by path or by `sha256:<hex>`. Undo: unblock.
    Block { target: String },
    /// Remove an execution block.
    Unblock { target: String },
    /// Copy a file into the evidence store, with its hash.
    Fetch { path: PathBuf },
    /// Show quarantined files, evidence, execution blocks and isolation state.
    List,
}

pub fn run(a: RespondArgs) -> anyhow::Result<()> {
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => super::load_config(a.config.as_deref())?.data_dir,
    };
    let target = |t: &str| match t.strip_prefix("sha256:") {
        Some(h) => json!({"sha256": h}),
        None => json!({"path": t}),
    };
    let action = match &a.action {
        RespondAction::List => {
            let reply = control::call(&data_dir, &Request::RespondList)?;
            anyhow::ensure!(reply.ok, "{}", reply.error.unwrap_or_default());
            println!("{}", serde_json::to_string_pretty(&reply.result.unwrap_or_default())?);
            return Ok(());
        }
        RespondAction::Kill { pid, tree } => json!({"action": "kill", "target": {"pid": pid, "tree": tree, "expect": null}}),
        RespondAction::Suspend { pid } => json!({"action": "suspend", "target": pid}),
        RespondAction::Resume { pid } => json!({"action": "resume", "target": pid}),
        RespondAction::Quarantine { path, override_protection } => overriding(json!({"action": "quarantine", "target": path}), *override_protection),
        RespondAction::Restore { id, force } => json!({"action": "restore", "target": {"id": id, "force": force}}),
        RespondAction::Delete { path, override_protection } => overriding(json!({"action": "delete", "target": path}), *override_protection),
        RespondAction::Isolate => json!({"action": "isolate"}),
        RespondAction::Release => json!({"action": "release"}),
        RespondAction::Block { target: t } => json!({"action": "block-exec", "target": target(t)}),
        RespondAction::Unblock { target: t } => json!({"action": "unblock", "target": target(t)}),
        RespondAction::Fetch { path } => json!({"action": "fetch", "target": path}),
    };
    let reply = control::call(&data_dir, &Request::Respond { action, reason: a.reason.clone() })?;
    let record = reply.result.clone().unwrap_or_default();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else if !record.is_null() {
        println!(
            "{} {}: {} ({})",
            record["decision"].as_str().unwrap_or("?"),
            record["action"].as_str().unwrap_or("?"),
            record["target"].as_str().unwrap_or("?"),
            describe(&record["outcome"])
        );
        if let Some(d) = record["detail"].as_object().filter(|d| !d.is_empty()) {
            for (k, v) in d {
                println!("  {k}: {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
    }
    if !reply.ok {
        anyhow::bail!("{}", reply.error.or_else(|| record["refusal"].as_str().map(str::to_string)).unwrap_or_else(|| "refused".into()));
    }
    if record["outcome"]["status"] == "error" {
        anyhow::bail!("the action failed: {}", record["outcome"]["message"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// The action wrapped in `override-protection` (`edr_respond::ResponseAction::OverrideProtection`) when asked.
fn overriding(action: serde_json::Value, override_protection: bool) -> serde_json::Value {
    if override_protection {
        json!({"action": "override-protection", "target": action})
    } else {
        action
    }
}

/// `{"status": "error", "message": "..."}` as `error: ...`.
fn describe(outcome: &serde_json::Value) -> String {
    let status = outcome["status"].as_str().unwrap_or("?");
    match outcome["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        respond: RespondArgs,
    }

    #[test]
    fn override_protection_wraps_quarantine_and_delete() {
        let cli = Cli::try_parse_from(["edr", "quarantine", "/etc/edr/old.toml", "--override-protection"]).unwrap();
        let RespondAction::Quarantine { path, override_protection } = cli.respond.action else { panic!("parsed as quarantine") };
        assert!(override_protection);
        let action: edr_respond::ResponseAction = serde_json::from_value(overriding(json!({"action": "quarantine", "target": path}), true)).unwrap();
        assert_eq!(action, edr_respond::ResponseAction::OverrideProtection(Box::new(edr_respond::ResponseAction::Quarantine("/etc/edr/old.toml".into()))));
        let plain: edr_respond::ResponseAction = serde_json::from_value(overriding(json!({"action": "delete", "target": "/tmp/x"}), false)).unwrap();
        assert_eq!(plain, edr_respond::ResponseAction::Delete("/tmp/x".into()), "no flag, no override");
        assert!(Cli::try_parse_from(["edr", "kill", "5", "--override-protection"]).is_err(), "only quarantine and delete take the flag");
    }
}
