//! `edr replay`: run recorded ECS events through the plugins.

use crate::collect::jsonl::{JsonlReader, Line};
use crate::dispatch::Backpressure;
use crate::output::AlertWriter;
use crate::pipeline::Pipeline;
use crate::plugins::Source;
use anyhow::Context;
use std::io::BufRead;
use std::path::PathBuf;

/// Arguments of `edr replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Agent configuration (plugins, limits, batch size). Defaults apply without it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Extra plugin component to load (repeatable).
    #[arg(long = "plugin", value_name = "FILE.wasm")]
    pub plugins: Vec<PathBuf>,
    /// Do not load the built-in plugins.
    #[arg(long)]
    pub no_builtin: bool,
    /// Events per batch (overrides the config).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// ECS JSONL events, one per line, or `-` for standard input.
    pub events: PathBuf,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let mut cfg = super::load_config(args.config.as_deref())?;
    if args.config.is_none() {
        // Without a config, replay leaves no files behind (no compile cache in the cwd).
        cfg.runtime.compile_cache = false;
    }
    if args.no_builtin {
        cfg.plugins.builtin = false;
    }
    if let Some(b) = args.batch_size {
        anyhow::ensure!((1..=65_536).contains(&b), "--batch-size {b} is out of range 1..=65536");
        cfg.runtime.batch_size = b;
    }
    let extra = args
        .plugins
        .iter()
        .map(|p| {
            let wasm = std::fs::read(p).with_context(|| format!("cannot read plugin {}", p.display()))?;
            let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            Ok(Source { name, wasm, origin: p.display().to_string() })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let input: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.events).with_context(|| format!("cannot open {}", args.events.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    // Replay writes alerts to stdout only; it is a query, not the agent.
    let writer = AlertWriter::new(true, None)?;
    let mut pipeline = Pipeline::start(&cfg, extra, Backpressure::Block, writer)?;
    let mut malformed = 0u64;
    for line in JsonlReader::new(input) {
        match line.with_context(|| format!("reading {}", args.events.display()))? {
            Line::Event(e) => pipeline.push(e),
            Line::Malformed { line, error } => {
                malformed += 1;
                eprintln!("edr replay: line {line}: skipped: {error}");
            }
        }
    }
    let summary = pipeline.finish();
    for l in super::plugin_health_lines(&summary.plugins) {
        eprintln!("edr replay: {l}");
    }
    eprintln!(
        "edr replay: {} events in {} batches through {} plugins, {} alerts, {} malformed lines skipped",
        summary.events,
        summary.batches,
        summary.plugins.len(),
        summary.alerts,
        malformed
    );
    Ok(())
}
