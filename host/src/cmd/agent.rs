//! `edr agent`: the long-running agent.

use crate::collect::jsonl::{JsonlReader, Line};
use crate::dispatch::Backpressure;
use crate::output::AlertWriter;
use crate::pipeline::Pipeline;
use anyhow::Context;
use crossbeam_channel::RecvTimeoutError;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut cfg = super::load_config(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let alerts_file = cfg.data_path(&cfg.output.alerts_file);
    let writer = AlertWriter::new(cfg.output.stdout, alerts_file.as_deref())?;
    let wait = Duration::from_millis(cfg.runtime.call_deadline_ms * 2);
    let mut pipeline = Pipeline::start(&cfg, Vec::new(), Backpressure::DropAfter(wait), writer)?;
    tracing::info!(data_dir = %cfg.data_dir.display(), alerts = ?alerts_file, source = %cfg.collect.source, "agent started");

    let (tx, rx) = crossbeam_channel::bounded(65_536);
    let source = cfg.collect.source.clone();
    std::thread::Builder::new().name("edr-source".into()).spawn(move || {
        let input: Box<dyn BufRead> = if source == "stdin" {
            Box::new(std::io::stdin().lock())
        } else {
            match std::fs::File::open(&source) {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(e) => {
                    tracing::error!("cannot open event source {source}: {e}");
                    return;
                }
            }
        };
        for line in JsonlReader::new(input) {
            match line {
                Ok(Line::Event(e)) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Ok(Line::Malformed { line, error }) => tracing::warn!(source = %source, "line {line}: skipped: {error}"),
                Err(e) => {
                    tracing::error!(source = %source, "read error: {e}");
                    return;
                }
            }
        }
    })?;

    let batch_timeout = Duration::from_millis(cfg.runtime.batch_timeout_ms.max(1));
    let health_every = Duration::from_secs(args.health_interval.max(1));
    let mut last_health = Instant::now();
    loop {
        match rx.recv_timeout(batch_timeout) {
            Ok(e) => pipeline.push(e),
            Err(RecvTimeoutError::Timeout) => pipeline.dispatch_partial(),
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_health.elapsed() >= health_every {
            last_health = Instant::now();
            for p in pipeline.status() {
                let m = &p.metrics;
                tracing::info!(plugin = %p.name, health = %p.health, calls = m.calls, events = m.events, findings = m.findings, errors = m.errors, timeouts = m.timeouts, dropped = p.dropped_events, p50_us = m.p50_us, p99_us = m.p99_us, memory = m.memory_bytes, "health");
            }
        }
    }
    let summary = pipeline.finish();
    for l in super::plugin_health_lines(&summary.plugins) {
        tracing::warn!("{l}");
    }
    tracing::info!(events = summary.events, alerts = summary.alerts, "event source ended; agent stopped");
    Ok(())
}
