//! `edr replay`: run recorded ECS events through the plugins.

use anyhow::Context;
use edr_agent::dispatch::Backpressure;
use edr_agent::output::AlertWriter;
use edr_agent::packs::PackManager;
use edr_agent::pipeline::Pipeline;
use edr_agent::plugins::{self, Source};
use edr_agent::services::AgentServices;
use edr_agent::source::jsonl::{JsonlReader, Line};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `edr replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Agent configuration (plugins, limits, trusted keys). Defaults apply without it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Extra plugin component to load (repeatable).
    #[arg(long = "plugin", value_name = "FILE.wasm")]
    pub plugins: Vec<PathBuf>,
    /// A signed pack to load (repeatable); its `.minisig` must sit beside it
    /// and its key must be trusted by the configuration.
    #[arg(long = "pack", value_name = "FILE.edrpack")]
    pub packs: Vec<PathBuf>,
    /// Do not load the built-in pack.
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
        // Without a config, replay writes nothing to the current directory;
        // compiled plugins are cached per user (~/.cache/edr), as a compiler would.
        cfg.runtime.compile_cache = false;
        cfg.runtime.user_cache = true;
    }
    if args.no_builtin {
        cfg.plugins.builtin = false;
    }
    if let Some(b) = args.batch_size {
        anyhow::ensure!((1..=65_536).contains(&b), "--batch-size {b} is out of range 1..=65536");
        cfg.runtime.batch_size = b;
    }
    let cfg = Arc::new(cfg);
    let rt = plugins::runtime(&cfg)?;
    let services = Arc::new(AgentServices::new(None)?);
    // Replay writes alerts to stdout only; it is a query, not the agent.
    let mut pipeline =
        Pipeline::new(cfg.runtime.batch_size, cfg.runtime.plugin_queue, Backpressure::Block, AlertWriter::new(true, None)?, services.clone(), 1, 1)?;

    let mut packs = PackManager::ephemeral(cfg.clone(), rt.clone(), services.clone(), Some(crate::builtin::PACK))?;
    for a in packs.startup() {
        pipeline.activate(a);
    }
    for path in &args.packs {
        let archive = std::fs::read(path).with_context(|| format!("cannot read pack {}", path.display()))?;
        let sig_path = edr_pack::signature_path(path);
        let signature = std::fs::read_to_string(&sig_path).with_context(|| format!("cannot read the pack's signature {}", sig_path.display()))?;
        let a = packs.offer(&archive, &signature, &path.display().to_string()).with_context(|| format!("pack {}", path.display()))?;
        pipeline.activate(a);
    }
    let mut sources = plugins::sources(&cfg)?;
    for p in &args.plugins {
        let wasm = std::fs::read(p).with_context(|| format!("cannot read plugin {}", p.display()))?;
        let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        sources.push(Source { name, wasm, origin: p.display().to_string() });
    }
    let (loaded, _failures) = plugins::load_all(&rt, &cfg, sources, services);
    for p in loaded {
        pipeline.install(p.name().to_string(), p);
    }
    anyhow::ensure!(pipeline.plugin_count() > 0, "no plugin could be loaded (see the errors above)");

    let input: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.events).with_context(|| format!("cannot open {}", args.events.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
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
    for l in edr_agent::plugin_health_lines(&summary.plugins) {
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
