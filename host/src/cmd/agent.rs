//! `edr agent`: the long-running agent (the `edr-agent` library does the work).

use anyhow::Context;
use edr_agent::{Agent, AgentConfig, Shutdown};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `edr agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (TOML). Without it the agent runs on its defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// State directory (overrides `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds between health lines in the log.
    #[arg(long, default_value_t = 60)]
    pub health_interval: u64,
    /// Enroll this host in a fleet with a one-time token (`edr fleet enroll-token`), then report to it.
    #[arg(long)]
    pub enroll: Option<String>,
}

/// The config file (or the defaults), with `--data-dir` applied.
fn load(args_config: Option<&std::path::Path>, data_dir: Option<&PathBuf>) -> anyhow::Result<AgentConfig> {
    let mut cfg = super::load_config(args_config)?;
    if let Some(d) = data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = load(args.config.as_deref(), args.data_dir.as_ref())?;
    // SIGTERM / SIGINT: stop reading, finish what is queued, flush, exit.
    let shutdown = Shutdown::new();
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, shutdown.flag()).context("installing signal handlers")?;
    }
    // SIGHUP: re-read the config file between two batches.
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGHUP, hangup.clone()).context("installing the SIGHUP handler")?;
    let mut builder = Agent::builder(cfg)
        .builtin_pack(crate::builtin::PACK)
        .health_interval(Duration::from_secs(args.health_interval))
        .reload_on(hangup)
        .enroll(args.enroll.clone());
    if let Some(file) = args.config.clone() {
        let data_dir = args.data_dir.clone();
        builder = builder.config_file(&file).reload_from(move || load(Some(&file), data_dir.as_ref()).map(Some));
    }
    builder.build()?.run(shutdown)?;
    Ok(())
}
