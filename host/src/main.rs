//! `edr`: endpoint detection and response agent with WebAssembly detection plugins.

mod builtin;
mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "edr", version, about = "Endpoint detection and response agent with sandboxed WebAssembly detection plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: collect events, run the detection plugins, write alerts.
    Agent(cmd::agent::AgentArgs),
    /// Run recorded ECS JSONL events through the plugins and print alerts.
    Replay(cmd::replay::ReplayArgs),
    /// Show what the running agent is doing.
    Status(cmd::status::StatusArgs),
    /// Response actions (kill, quarantine, isolate, block, ...) and their undo, through the running agent.
    Respond(cmd::respond::RespondArgs),
    /// Run SQL over the event record (read-only views: process, file, network, login, alert, action, incident).
    Query(cmd::investigate::QueryArgs),
    /// The storyline of an alert: its process, ancestors, descendants and their activity.
    Storyline(cmd::investigate::StorylineArgs),
    /// Incidents: alerts grouped by process tree, with score, root, times, rules and counts.
    Incidents(cmd::incidents::IncidentsArgs),
    /// Everything recorded for a pid, an entity id or a path.
    Timeline(cmd::investigate::TimelineArgs),
    /// Find events by command-line text.
    Search(cmd::investigate::SearchArgs),
    /// Export recorded events as ECS JSONL (what `edr replay` reads: retro-hunting).
    Export(cmd::investigate::ExportArgs),
    /// Make, sign, verify and manage detection packs.
    #[command(subcommand)]
    Pack(cmd::pack::PackCommand),
    /// Generate a pack signing key pair (minisign-compatible).
    Keygen(cmd::pack::KeygenArgs),
    /// Build and inspect plugins.
    #[command(subcommand)]
    Plugin(cmd::plugin::PluginCommand),
    /// Install or remove the agent as a systemd service.
    #[command(subcommand)]
    Service(cmd::service::ServiceCommand),
    /// Check a configuration file; print the documented example.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Sigma rules: check which load.
    #[command(subcommand)]
    Sigma(cmd::sigma::SigmaCommand),
    /// The fleet's management server: create a fleet, run it, make API tokens.
    #[command(subcommand)]
    Server(cmd::server::ServerCommand),
    /// Operate the fleet through the management server: enrollment tokens, hosts, alerts.
    Fleet(cmd::fleet::FleetArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDR_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")),
        )
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent(_)) {
        restore_default_sigpipe();
    }
    let result = match cli.command {
        Command::Agent(a) => cmd::agent::run(a),
        Command::Replay(a) => cmd::replay::run(a),
        Command::Plugin(c) => cmd::plugin::run(c),
        Command::Status(a) => cmd::status::run(a),
        Command::Respond(a) => cmd::respond::run(a),
        Command::Query(a) => cmd::investigate::query(a),
        Command::Storyline(a) => cmd::investigate::storyline(a),
        Command::Incidents(a) => cmd::incidents::run(a),
        Command::Timeline(a) => cmd::investigate::timeline(a),
        Command::Search(a) => cmd::investigate::search(a),
        Command::Export(a) => cmd::investigate::export(a),
        Command::Pack(c) => cmd::pack::run(c),
        Command::Keygen(a) => cmd::pack::keygen(a),
        Command::Service(c) => cmd::service::run(c),
        Command::Server(c) => cmd::server::run(c),
        Command::Fleet(a) => cmd::fleet::run(a),
        Command::Config(c) => match cmd::config::run(c) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Sigma(c) => match cmd::sigma::run(c) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edr: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Every command but the agent dies quietly of SIGPIPE when its output is a
/// closed pipe (`edr config check F | head -1`), as `cat` does, instead of
/// panicking in `println!` on EPIPE (Rust ignores SIGPIPE by default).
///
/// The agent keeps SIGPIPE ignored: it must not be killed because a reader
/// of its stdout, a syslog or webhook peer, or a control-socket client went
/// away; there a write fails with EPIPE, which is handled and counted.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL at start, before
    // any thread that could be affected exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes, `: `-separated, each said once: a library
/// error that already puts its source in its message (`cannot read K: No
/// such file`) would otherwise print that source twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
