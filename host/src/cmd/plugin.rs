//! `edr plugin`: tools for plugin authors.

use anyhow::Context;
use std::path::PathBuf;

/// `edr plugin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Build a plugin crate into a WebAssembly component.
    Build(BuildArgs),
    /// Show what a component imports and exports, and whether it loads.
    Inspect(InspectArgs),
    /// Put a quarantined plugin back to work in the running agent (its
    /// strikes are forgotten; `edr status` shows why it was quarantined).
    Reenable(ReenableArgs),
}

/// Arguments of `edr plugin reenable`.
#[derive(Debug, clap::Args)]
pub struct ReenableArgs {
    /// The plugin: its key (`pack-id/plugin`) or bare name, as `edr status` shows it.
    pub plugin: String,
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `edr plugin build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The plugin crate (a directory with Cargo.toml).
    pub dir: PathBuf,
    /// Where to write the component (default: `<dir>/<package>.wasm`).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Arguments of `edr plugin inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A plugin component.
    pub wasm: PathBuf,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Build(a) => build(a),
        PluginCommand::Inspect(a) => inspect(a),
        PluginCommand::Reenable(a) => reenable(a),
    }
}

fn reenable(a: ReenableArgs) -> anyhow::Result<()> {
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => super::load_config(a.config.as_deref())?.data_dir,
    };
    let reply = edr_agent::control::call(&data_dir, &edr_agent::control::Request::Reenable { plugin: a.plugin.clone() })?;
    if !reply.ok {
        anyhow::bail!("{}", reply.error.unwrap_or_default());
    }
    println!("re-enabled {}", reply.result.as_ref().and_then(|r| r["reenabled"].as_str()).unwrap_or(&a.plugin));
    Ok(())
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let manifest = args.dir.join("Cargo.toml");
    anyhow::ensure!(manifest.exists(), "{} has no Cargo.toml: give the directory of a plugin crate", args.dir.display());
    let package = edr_wasm_build::package_name(&manifest)?;
    let spec = edr_wasm_build::GuestBuild { manifest_path: manifest, packages: Vec::new(), target_dir: args.dir.join("target"), profile: "release".into() };
    let staging = args.dir.join("target").join("edr-component");
    eprintln!("edr plugin build: compiling {package} for {}", edr_wasm_build::TARGET);
    let built = edr_wasm_build::build(&spec, &staging)?;
    let component = &built.first().context("cargo built nothing")?.component;
    let out = args.output.unwrap_or_else(|| args.dir.join(format!("{package}.wasm")));
    std::fs::copy(component, &out).with_context(|| format!("cannot write {}", out.display()))?;
    let size = std::fs::metadata(&out)?.len();
    eprintln!("edr plugin build: wrote {} ({} KB)", out.display(), size / 1024);
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.wasm).with_context(|| format!("cannot read {}", args.wasm.display()))?;
    let rt = edr_runtime::Runtime::new(edr_runtime::RuntimeConfig::default())?;
    let name = args.wasm.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let component = rt.compile(&name, &wasm)?;
    println!("component: {} ({} KB)", args.wasm.display(), wasm.len() / 1024);
    println!("imports:");
    for i in rt.imports(&component) {
        println!("  {i}");
    }
    let services = std::sync::Arc::new(edr_runtime::MemoryServices::default());
    let spec = edr_runtime::PluginSpec { grants: edr_runtime::Grants::all(), ..edr_runtime::PluginSpec::new(name, wasm) };
    match rt.load(spec, services) {
        Ok(p) => {
            let info = p.info();
            println!("name: {}\nversion: {}\ndescription: {}", info.name, info.version, info.description);
            let subs: Vec<&str> = info.subscriptions.iter().map(|k| k.as_str()).collect();
            println!("subscribes to: {}", subs.join(", "));
        }
        Err(e) => println!("does not load: {e}"),
    }
    Ok(())
}
