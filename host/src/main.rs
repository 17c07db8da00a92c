//! `edr`: endpoint detection and response agent with WebAssembly detection plugins.

mod cmd;
mod collect;
mod config;
mod dispatch;
mod output;
mod pipeline;
mod plugins;

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
    /// Build and inspect plugins.
    #[command(subcommand)]
    Plugin(cmd::plugin::PluginCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDR_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(a) => cmd::agent::run(a),
        Command::Replay(a) => cmd::replay::run(a),
        Command::Plugin(c) => cmd::plugin::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edr: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
