//! `edr fleet ...`: the operators' CLI over the management server's API.

use anyhow::Context;
use clap::{Args, Subcommand};
use edr_fleet_proto::command::{Command, QUERY_DEFAULT_ROWS};
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
    /// Queued commands (`--queue`) and what became of them: queued, sending, expired, done, failed, refused.
    Commands {
        /// Only this host's.
        #[arg(long)]
        host: Option<String>,
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
    /// A host's processes (pid, parent, user, executable, argv, lineage).
    Ps {
        host: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// A host's TCP and UDP sockets: state, local and remote address, owning pid and executable.
    Connections {
        host: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Kill a process on a host (through its response engine: policy, protections, audit).
    Kill {
        host: String,
        pid: u32,
        /// Its descendants too.
        #[arg(long)]
        tree: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Suspend (SIGSTOP) a process on a host; `resume` continues it.
    Suspend {
        host: String,
        pid: u32,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Resume (SIGCONT) a suspended process on a host.
    Resume {
        host: String,
        pid: u32,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Block execution on a host of a file, by absolute path or sha256 (64 hex digits); undo: unblock.
    Block {
        host: String,
        target: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Lift an execution block on a host (the path or sha256 it was made with).
    Unblock {
        host: String,
        target: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// An alert's storyline from the host's record (HOST:ID as `edr fleet alerts` prints it, or HOST ID):
    /// the process tree and its file and network activity, as JSON.
    Storyline {
        /// HOST:ID, or the host when ALERT is given.
        alert: String,
        /// The alert id in the host's record (when the first argument is only the host).
        id: Option<u64>,
        /// Events at most (1 to 5000).
        #[arg(long, default_value_t = edr_fleet_proto::command::STORYLINE_DEFAULT_EVENTS)]
        max_events: u32,
        /// Include the ancestors' file and network activity too.
        #[arg(long)]
        ancestors: bool,
        /// Answer from the central record (the server's copy of the host's events and alerts),
        /// also for an offline or wiped host; nothing is sent to the host.
        #[arg(long)]
        central: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Move a file on a host into its quarantine (undo: restore).
    Quarantine {
        host: String,
        path: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Put a quarantined file back: its quarantine id, or its original path (the newest entry).
    Restore {
        host: String,
        id_or_path: String,
        /// Replace a file now at the original path.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Delete a file on a host (its sha256 and metadata are audited first).
    Delete {
        host: String,
        path: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Fetch a file from a host (at most 512 KiB; a copy stays in the host's evidence store).
    Fetch {
        host: String,
        path: String,
        /// Write it here (default: standard output). Its sha256 is checked first.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Isolate a host: only the fleet's NATS (and its configured management endpoints) stay reachable.
    Isolate {
        host: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Release a host from isolation.
    Release {
        host: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// A fleet-wide hunt: one read-only SELECT over each host's record views (process, file,
    /// network, login, alert, action, incident), printed as one table with a `host` column first.
    Query {
        /// One SELECT (or WITH) statement, as `edr query` takes it.
        sql: String,
        /// Only these hosts (comma-separated host ids; default: every online or isolated host).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Rows per host at most (1 to 10000).
        #[arg(long, default_value_t = QUERY_DEFAULT_ROWS)]
        limit: u32,
        /// How long the server waits for each host (1s to 120s).
        #[arg(long, default_value = "30s")]
        timeout: humantime::Duration,
        /// Answer from the central record (every host's events kept at the server) instead of the
        /// hosts: offline, wiped or compromised hosts included; nothing is sent to a host.
        #[arg(long, conflicts_with = "until")]
        central: bool,
        /// Also wait this long (up to 14d) for hosts that do not answer now, offline ones
        /// included: their queries are queued and run when they return; follow with `edr fleet hunt ID`.
        #[arg(long)]
        until: Option<humantime::Duration>,
        /// The merged result and each host's status as JSON.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// The rows as CSV (host statuses go to standard error).
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Fetched files kept at the server (the JetStream object store): list them, download one.
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
    },
    /// Saved hunt queries (kept at the server, shared by the team): list, save, delete.
    Queries {
        #[command(subcommand)]
        command: QueriesCommand,
    },
    /// The central record: per host, the events kept at the server and whether its hash chain is intact.
    Central {
        #[arg(long)]
        json: bool,
    },
    /// A hunt made with `query --until`: every host's answer so far, and which still wait.
    Hunt {
        /// The hunt id `query --until` printed.
        id: String,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// Pack rollout: publish a signed pack to hosts, follow it, halt it, roll it back.
    Pack {
        #[command(subcommand)]
        command: PackCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Every kept file: object, host, command, path, size, sha256.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download one (HOST COMMAND_ID, as `list` shows), its sha256 checked.
    Get {
        host: String,
        command_id: String,
        /// Write it here (default: standard output).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueriesCommand {
    /// Every saved query: name, who saved it and when, description, SQL.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Save SQL under NAME (a name in use is refused unless --replace); needs the responder role.
    Save {
        name: String,
        sql: String,
        /// What it finds.
        #[arg(long, default_value = "")]
        description: String,
        /// Replace a query saved under the same name.
        #[arg(long)]
        replace: bool,
    },
    /// Delete the query saved under NAME; needs the responder role.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Publish a signed pack (X.edrpack with X.edrpack.minisig beside it): each host
    /// verifies it against its own trust store, stages, canaries and swaps it.
    Publish {
        archive: PathBuf,
        /// Only these hosts (comma-separated host ids).
        #[arg(long, value_delimiter = ',', conflicts_with = "percent")]
        hosts: Vec<String>,
        /// This share of the enrolled hosts, chosen by a hash of pack name and host id (the same hosts every time).
        #[arg(long)]
        percent: Option<u8>,
        #[command(flatten)]
        sign: PackSignArgs,
    },
    /// A rollout's per-host state (without NAME: every rollout).
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop sending the pack to hosts not yet reached.
    Halt { name: String },
    /// Roll every host that took the pack back to its previous version (halts the rollout).
    Rollback {
        name: String,
        #[command(flatten)]
        sign: PackSignArgs,
    },
}

#[derive(Debug, Args)]
pub struct PackSignArgs {
    /// The operator's command-signing key (default: DIR/keys/command.ed25519).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// How long each signed command stays valid (an offline host can take it until then).
    #[arg(long, default_value = "1d")]
    pub ttl: humantime::Duration,
    /// Why (signed; kept in the server's and the hosts' audit).
    #[arg(long, default_value = "pack rollout")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The operator's command-signing key (default: DIR/keys/command.ed25519).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// How long the command stays valid.
    #[arg(long, default_value = "5m")]
    pub ttl: humantime::Duration,
    /// Why (signed with the command; kept in the server's and the host's audit). Required for commands that change the host.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// If the host is offline (or does not answer), queue the command: the server sends it when the host is back, until --ttl runs out (`edr fleet commands` shows its state).
    #[arg(long)]
    pub queue: bool,
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
        FleetCommand::Commands { host } => {
            print(&c.get(&format!("/api/v1/commands{}", host.map(|h| format!("?host={h}")).unwrap_or_default()))?["commands"]);
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
        FleetCommand::Ls { host, path, sign } => print(&command(&c, &a.dir, &host, Command::Ls { path }, &sign)?),
        FleetCommand::Status { host, sign } => print(&command(&c, &a.dir, &host, Command::Status, &sign)?),
        FleetCommand::Ps { host, json, sign } => {
            let r = command(&c, &a.dir, &host, Command::Processes, &sign)?;
            if json || r["status"] == "queued" {
                print(&r)
            } else {
                print!("{}", client::render_processes(&r))
            }
        }
        FleetCommand::Kill { host, pid, tree, sign } => print(&command(&c, &a.dir, &host, Command::Kill { pid, tree }, &sign)?),
        FleetCommand::Connections { host, json, sign } => {
            let r = command(&c, &a.dir, &host, Command::Connections, &sign)?;
            if json {
                print(&r["output"]);
            } else {
                print!("{}", render_connections(&r["output"]));
            }
        }
        FleetCommand::Suspend { host, pid, sign } => print(&command(&c, &a.dir, &host, Command::Suspend { pid }, &sign)?),
        FleetCommand::Resume { host, pid, sign } => print(&command(&c, &a.dir, &host, Command::Resume { pid }, &sign)?),
        FleetCommand::Block { host, target, sign } => print(&command(&c, &a.dir, &host, Command::Block { target }, &sign)?),
        FleetCommand::Unblock { host, target, sign } => print(&command(&c, &a.dir, &host, Command::Unblock { target }, &sign)?),
        FleetCommand::Storyline { alert, id, central: true, .. } => {
            let (host, alert) = alert_ref(&alert, id)?;
            print(&c.get(&format!("/api/v1/central/{host}/storyline/{alert}"))?);
            eprintln!("answered by the central record, not by the host");
        }
        FleetCommand::Storyline { alert, id, max_events, ancestors, sign, .. } => {
            let (host, alert) = alert_ref(&alert, id)?;
            let r = command(&c, &a.dir, &host, Command::Storyline { alert, max_events, ancestor_activity: ancestors }, &sign)?;
            print(&r["output"]);
        }
        FleetCommand::Quarantine { host, path, sign } => print(&command(&c, &a.dir, &host, Command::Quarantine { path }, &sign)?),
        FleetCommand::Restore { host, id_or_path, force, sign } => print(&command(&c, &a.dir, &host, Command::Restore { id: id_or_path, force }, &sign)?),
        FleetCommand::Delete { host, path, sign } => print(&command(&c, &a.dir, &host, Command::Delete { path }, &sign)?),
        FleetCommand::Fetch { host, path, output, sign } => fetch(&c, &a.dir, &host, path, output, &sign)?,
        FleetCommand::Isolate { host, sign } => print(&command(&c, &a.dir, &host, Command::Isolate, &sign)?),
        FleetCommand::Release { host, sign } => print(&command(&c, &a.dir, &host, Command::Release, &sign)?),
        FleetCommand::Pack { command } => pack(&c, &a.dir, command)?,
        FleetCommand::Evidence { command } => evidence(&c, command)?,
        FleetCommand::Queries { command } => queries(&c, command)?,
        FleetCommand::Central { json } => {
            let v = c.get("/api/v1/central")?;
            if json {
                print(&v["hosts"]);
            } else {
                println!("{:<18} {:>9} {:>10} {:>14}  CHAIN", "HOST", "BATCHES", "EVENTS", "LAST EVENT");
                for h in v["hosts"].as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:>9} {:>10} {:>14}  {}",
                        h["host_id"].as_str().unwrap_or(""),
                        h["batches"],
                        h["events"],
                        h["last_event_id"],
                        h["chain"].as_str().unwrap_or("")
                    );
                }
            }
        }
        FleetCommand::Hunt { id, json, csv } => print_hunt(&c.get(&format!("/api/v1/hunts/{id}"))?, output_format(json, csv)),
        FleetCommand::Query { sql, hosts, limit, central: true, json, csv, .. } => {
            let answer = c.post("/api/v1/central/query", &json!({"sql": sql, "hosts": hosts, "limit": limit}))?;
            print_hunt(&answer, output_format(json, csv));
            eprintln!("answered by the central record (the server's copy of each host's events), not by the hosts");
        }
        FleetCommand::Query { sql, hosts, limit, timeout, until, json, csv, sign, .. } => {
            let until_secs = until.map(|u| u.as_secs());
            // A query queued for an offline host must stay valid for as long as the hunt waits.
            let ttl_secs = sign.ttl.as_secs().max(until_secs.unwrap_or(0));
            let q = client::HuntRequest { sql: &sql, limit, reason: &sign.reason, ttl_secs, timeout_secs: timeout.as_secs(), until_secs };
            hunt(&c, &a.dir, hosts, &q, &sign, output_format(json, csv))?
        }
    }
    Ok(())
}

/// `edr fleet queries ...`.
fn queries(c: &Client, command: QueriesCommand) -> anyhow::Result<()> {
    match command {
        QueriesCommand::List { json: true } => print(&c.get("/api/v1/queries")?["queries"]),
        QueriesCommand::List { json: false } => print!("{}", client::render_saved_queries(&c.get("/api/v1/queries")?)),
        QueriesCommand::Save { name, sql, description, replace } => {
            let v = c.post("/api/v1/queries", &json!({"name": name, "sql": sql, "description": description, "replace": replace}))?;
            println!("{name:?} {}", v["action"].as_str().unwrap_or("saved"));
        }
        QueriesCommand::Delete { name } => {
            c.delete(&client::saved_query_path(&name))?;
            println!("{name:?} deleted");
        }
    }
    Ok(())
}

/// `edr fleet evidence ...`.
fn evidence(c: &Client, command: EvidenceCommand) -> anyhow::Result<()> {
    use sha2::Digest;
    use std::io::Write;
    match command {
        EvidenceCommand::List { json } => {
            let v = c.get("/api/v1/evidence")?;
            if json {
                print(&v["evidence"]);
                return Ok(());
            }
            println!("{:<18} {:<18} {:>9} {:<64} PATH", "HOST", "COMMAND", "SIZE", "SHA256");
            for e in v["evidence"].as_array().into_iter().flatten() {
                let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                println!("{:<18} {:<18} {:>9} {:<64} {}", s("host"), s("command_id"), e["size"], s("sha256"), s("path"));
            }
        }
        EvidenceCommand::Get { host, command_id, output } => {
            let (bytes, claimed) = c.get_bytes(&format!("/api/v1/evidence/{host}/{command_id}"))?;
            let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
            anyhow::ensure!(claimed.as_deref().is_none_or(|c| c == sha256), "the download hashes to {sha256}, the server said {claimed:?}: not written");
            match output {
                Some(file) => {
                    std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
                    eprintln!("{} bytes, sha256 {sha256}, written to {}", bytes.len(), file.display());
                }
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
    }
    Ok(())
}

/// `edr fleet connections` as a table.
fn render_connections(v: &serde_json::Value) -> String {
    let mut out = format!("{:<5} {:<12} {:<40} {:<40} {:>7} {}\n", "PROTO", "STATE", "LOCAL", "REMOTE", "PID", "EXE");
    for c in v["connections"].as_array().into_iter().flatten() {
        let pid = c["pid"].as_u64().map_or_else(|| "-".to_string(), |p| p.to_string());
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        out.push_str(&format!("{:<5} {:<12} {:<40} {:<40} {:>7} {}\n", s("proto"), s("state"), s("local"), s("remote"), pid, s("exe")));
    }
    if v["truncated"] == true {
        out.push_str("(truncated)\n");
    }
    out
}

/// `HOST:ID`, or `HOST` with the id given apart.
fn alert_ref(alert: &str, id: Option<u64>) -> anyhow::Result<(String, u64)> {
    match (alert.rsplit_once(':'), id) {
        (None, Some(id)) => Ok((alert.to_string(), id)),
        (Some((host, n)), None) => Ok((host.to_string(), n.parse().with_context(|| format!("{alert:?}: the alert id after ':' is not a number"))?)),
        _ => anyhow::bail!("name the alert as HOST:ID (as `edr fleet alerts` prints it) or as HOST ID"),
    }
}

fn print(v: &serde_json::Value) {
    println!("{v:#}");
}

/// Signs `cmd` here, has the server relay it, and returns the host's result when it is `done`.
fn command(c: &Client, dir: &std::path::Path, host: &str, cmd: Command, sign: &SignArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(!cmd.changes_host() || !sign.reason.trim().is_empty(), "`{}` changes the host: say why with --reason", cmd.op());
    let key = sign.key.clone().unwrap_or_else(|| dir.join("keys/command.ed25519"));
    let signed = client::sign_command_with_reason(&key, host, cmd, &sign.reason, sign.ttl.as_secs())?;
    let path = format!("/api/v1/hosts/{host}/commands{}", if sign.queue { "?queue=true" } else { "" });
    let result = c.post(&path, &serde_json::to_value(&signed)?)?;
    if result["status"] == "queued" {
        eprintln!(
            "host {host} is not reachable now: command {} queued until {} (see `edr fleet commands --host {host}`)",
            result["command_id"], result["expires_at"]
        );
        return Ok(result);
    }
    if result["status"] != "done" {
        print(&result);
        anyhow::bail!("host {host}: command {}: {}", result["status"], result["output"]);
    }
    Ok(result)
}

/// `edr fleet query`: signs a query for each host, has the server fan them out, prints one result.
fn hunt(c: &Client, dir: &std::path::Path, hosts: Vec<String>, q: &client::HuntRequest<'_>, sign: &SignArgs, format: &str) -> anyhow::Result<()> {
    let hosts = if hosts.is_empty() {
        let v = c.get("/api/v1/hosts")?;
        let live: Vec<String> = v["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            // A hunt that waits (--until) goes to offline hosts too.
            .filter(|h| q.until_secs.is_some() || matches!(h["state"].as_str(), Some("online" | "isolated")))
            .filter_map(|h| h["host_id"].as_str().map(String::from))
            .collect();
        anyhow::ensure!(!live.is_empty(), "no host is online (see `edr fleet hosts`); name hosts with --hosts, or wait for them with --until");
        live
    } else {
        hosts
    };
    let key = sign.key.clone().unwrap_or_else(|| dir.join("keys/command.ed25519"));
    let answer = c.post("/api/v1/query", &client::query_request(&key, &hosts, q)?)?;
    print_hunt(&answer, format);
    if let Some(id) = answer["hunt_id"].as_str() {
        let waiting = answer["hosts"].as_array().into_iter().flatten().filter(|h| h["status"] == "queued").count();
        eprintln!("hunt {id}: {waiting} host(s) queued until {}; follow it with `edr fleet hunt {id}`", answer["until"]);
    }
    Ok(())
}

fn output_format(json: bool, csv: bool) -> &'static str {
    if json {
        "json"
    } else if csv {
        "csv"
    } else {
        "table"
    }
}

/// Prints a hunt's answer (`POST /api/v1/query` or `GET /api/v1/hunts/ID`) merged, as a table, CSV or JSON.
fn print_hunt(answer: &serde_json::Value, format: &str) {
    let merged = client::merge_hunt(answer);
    match format {
        "json" => print(&merged),
        "csv" => {
            print!("{}", client::render_hunt_csv(&merged));
            for h in merged["hosts"].as_array().into_iter().flatten().filter(|h| h["status"] != "done" || h["truncated"] == true) {
                eprintln!(
                    "host {}: {}{}",
                    h["host"].as_str().unwrap_or(""),
                    h["status"].as_str().unwrap_or(""),
                    if h["truncated"] == true { " (truncated)" } else { "" }
                );
            }
        }
        _ => print!("{}", client::render_hunt_table(&merged)),
    }
}

/// `edr fleet fetch`: the content, its sha256 checked, to a file or standard output.
fn fetch(c: &Client, dir: &std::path::Path, host: &str, path: String, output: Option<PathBuf>, sign: &SignArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let r = command(c, dir, host, Command::Fetch { path: path.clone() }, sign)?;
    let bytes = client::fetched_bytes(&r).map_err(|e| anyhow::anyhow!("host {host}: {path}: {e}"))?;
    match output {
        Some(file) => {
            std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("{host}:{path} -> {} ({} bytes, sha256 {})", file.display(), bytes.len(), r["output"]["sha256"].as_str().unwrap_or(""));
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    match (r["output"]["evidence"]["object"].as_str(), r["output"]["evidence_error"].as_str()) {
        (Some(object), _) => eprintln!("kept at the server as evidence {object} (`edr fleet evidence get {host} {}`)", r["command_id"].as_str().unwrap_or("")),
        (None, Some(e)) => eprintln!("warning: the server did not keep it as evidence: {e}"),
        (None, None) => {}
    }
    Ok(())
}

fn triage(c: &Client, alert: &str, state: &str, note: &str) -> anyhow::Result<()> {
    let (host, id) = alert.split_once(':').with_context(|| format!("{alert:?}: give the alert as HOST:ID, as `edr fleet alerts` prints it"))?;
    c.post(&format!("/api/v1/alerts/{host}/{id}/triage"), &json!({"state": state, "note": note}))?;
    println!("{host}:{id} {state}");
    Ok(())
}

/// `edr fleet pack ...`.
fn pack(c: &Client, dir: &std::path::Path, cmd: PackCommand) -> anyhow::Result<()> {
    use edr_fleet_server::pack_client;
    let key = |k: &Option<PathBuf>| k.clone().unwrap_or_else(|| dir.join("keys/command.ed25519"));
    match cmd {
        PackCommand::Publish { archive, hosts, percent, sign } => {
            let file = pack_client::PackFile::read(&archive).map_err(anyhow::Error::msg)?;
            let targets = pack_client::targets(&c.get("/api/v1/hosts")?, &file.name, &hosts, percent).map_err(anyhow::Error::msg)?;
            let body = pack_client::publish_request(&key(&sign.key), &file, &targets, &sign.reason, sign.ttl.as_secs())?;
            print(&c.post("/api/v1/packs", &body)?);
        }
        PackCommand::Status { name: Some(name), json } => {
            let v = c.get(&format!("/api/v1/packs/{name}"))?;
            print!("{}", if json { format!("{v:#}\n") } else { pack_client::render_status(&v) });
        }
        PackCommand::Status { name: None, json } => {
            let v = c.get("/api/v1/packs")?;
            print!("{}", if json { format!("{v:#}\n") } else { pack_client::render_list(&v) });
        }
        PackCommand::Halt { name } => print(&c.post(&format!("/api/v1/packs/{name}/halt"), &json!({}))?),
        PackCommand::Rollback { name, sign } => {
            let status = c.get(&format!("/api/v1/packs/{name}"))?;
            let body = pack_client::rollback_request(&key(&sign.key), &status, &sign.reason, sign.ttl.as_secs()).map_err(anyhow::Error::msg)?;
            print(&c.post(&format!("/api/v1/packs/{name}/rollback"), &body)?);
        }
    }
    Ok(())
}
