//! `edr fleet ...`: the operators' CLI over the management server's API.

use anyhow::Context;
use clap::{Args, Subcommand};
use edr_fleet_proto::command::Command;
use edr_fleet_server::client::{self, Client};
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The management server's API (default: $EDR_FLEET_SERVER, else the one of --dir's fleet).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// API token (default: $EDR_FLEET_TOKEN, else --dir's admin.token).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// A fleet directory on this machine (for its API address and admin token).
    #[arg(long, global = true, default_value = "/var/lib/edr-server")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Make a one-time enrollment token: `edr agent --enroll TOKEN` on the host.
    EnrollToken {
        /// How long it is valid (1m to 30d).
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Hosts: online / offline / isolated, last seen, inventory.
    Hosts {
        #[arg(long)]
        json: bool,
    },
    /// Alerts from every host, newest first.
    Alerts {
        #[arg(long)]
        host: Option<String>,
        /// new, acknowledged or closed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alert (HOST:ID, as `edr fleet alerts` prints it).
    Ack {
        alert: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Close an alert (HOST:ID).
    Close {
        alert: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List a directory on a host (sizes, modes, sha256): a command signed here with the operator key.
    Ls {
        host: String,
        path: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// A host's status document: a signed command.
    Status {
        host: String,
        #[command(flatten)]
        sign: SignArgs,
    },
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The operator's command-signing key (default: DIR/keys/command.ed25519).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// How long the command stays valid.
    #[arg(long, default_value = "5m")]
    pub ttl: humantime::Duration,
}

fn client(a: &FleetArgs) -> anyhow::Result<Client> {
    let server = a.server.clone().or_else(|| std::env::var("EDR_FLEET_SERVER").ok());
    let token = a.token.clone().or_else(|| std::env::var("EDR_FLEET_TOKEN").ok());
    Ok(match (&server, &token) {
        (Some(s), Some(t)) => Client::new(s, t),
        (s, t) => {
            let local = Client::for_fleet_dir(&a.dir).with_context(|| "no --server/--token given, and the local fleet directory cannot be used")?;
            local.with_overrides(s.as_deref(), t.as_deref())
        }
    })
}

pub fn run(a: FleetArgs) -> anyhow::Result<()> {
    let c = client(&a)?;
    match a.command {
        FleetCommand::EnrollToken { ttl } => {
            let v = c.post("/api/v1/enroll-tokens", &json!({"ttl_secs": ttl.as_secs()}))?;
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        FleetCommand::Hosts { json } => {
            let v = c.get("/api/v1/hosts")?;
            print!("{}", if json { format!("{:#}\n", v["hosts"]) } else { client::render_hosts(&v) });
        }
        FleetCommand::Alerts { host, state, limit, json } => {
            let v = c.get(&client::alerts_path(host.as_deref(), state.as_deref(), limit))?;
            print!("{}", if json { format!("{:#}\n", v["alerts"]) } else { client::render_alerts(&v) });
        }
        FleetCommand::Ack { alert, note } => triage(&c, &alert, "acknowledged", &note)?,
        FleetCommand::Close { alert, note } => triage(&c, &alert, "closed", &note)?,
        FleetCommand::Ls { host, path, sign } => command(&c, &a.dir, &host, Command::Ls { path }, &sign)?,
        FleetCommand::Status { host, sign } => command(&c, &a.dir, &host, Command::Status, &sign)?,
    }
    Ok(())
}

fn command(c: &Client, dir: &std::path::Path, host: &str, cmd: Command, sign: &SignArgs) -> anyhow::Result<()> {
    let key = sign.key.clone().unwrap_or_else(|| dir.join("keys/command.ed25519"));
    let signed = client::sign_command(&key, host, cmd, sign.ttl.as_secs())?;
    let result = c.post(&format!("/api/v1/hosts/{host}/commands"), &serde_json::to_value(&signed)?)?;
    println!("{result:#}");
    anyhow::ensure!(result["status"] == "done", "host {host}: command {}: {}", result["status"], result["output"]);
    Ok(())
}

fn triage(c: &Client, alert: &str, state: &str, note: &str) -> anyhow::Result<()> {
    let (host, id) = alert.split_once(':').with_context(|| format!("{alert:?}: give the alert as HOST:ID, as `edr fleet alerts` prints it"))?;
    c.post(&format!("/api/v1/alerts/{host}/{id}/triage"), &json!({"state": state, "note": note}))?;
    println!("{host}:{id} {state}");
    Ok(())
}
