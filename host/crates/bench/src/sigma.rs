//! `edr-bench sigma [--rules DIR]`: the Sigma plugin with every loadable
//! SigmaHQ Linux rule, on the realistic event mix, in Wasm and natively.

use crate::workload::{batches, Mix};
use edr_event::wire::EncodedBatch;
use edr_runtime::{Limits, MemoryServices, PluginSpec, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rule_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yml") {
                out.push((p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

pub fn run(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut rules = PathBuf::from("../shared/corpora/sigmahq-linux/rules/linux");
    let (mut n_batches, mut runs) = (400usize, 5usize);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--rules" => rules = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("--rules needs a directory"))?),
            "--batches" => n_batches = args.next().unwrap_or_default().parse()?,
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(rules.is_dir(), "no Sigma rules at {} (give --rules DIR)", rules.display());
    let files = rule_files(&rules);
    let stream = batches(Mix::Realistic, n_batches, 256);
    let encoded: Vec<EncodedBatch> = stream.iter().map(EncodedBatch::encode).collect();
    let events: usize = stream.iter().map(Vec::len).sum();

    // Wasm, as the agent runs it.
    let rt = Runtime::new(RuntimeConfig::default())?;
    let config = edr_event::PluginConfig {
        settings: Vec::new(),
        files: files.iter().map(|(n, c)| edr_event::DataFile { name: n.clone(), content: c.clone() }).collect(),
    };
    let t = Instant::now();
    let spec = PluginSpec {
        config,
        limits: Limits { init_deadline: Duration::from_secs(60), ..Limits::default() },
        ..PluginSpec::new("sigma", crate::wasm("edr-plugin-sigma"))
    };
    let mut plugin = rt.load(spec, Arc::new(MemoryServices::default())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let subscribed = stream.iter().flatten().filter(|e| plugin.wants(e.kind())).count();
    let (wasm_ns, wasm_findings) = crate::time_wasm(&mut plugin, &encoded, runs);

    // The same plugin code, natively.
    let native_config =
        edr_sdk::Config { settings: Vec::new(), files: files.iter().map(|(n, c)| edr_sdk::DataFile { name: n.clone(), content: c.clone() }).collect() };
    let (native_ns, native_findings) = crate::time_native_with::<edr_plugin_sigma::Sigma>(&stream, runs, native_config);
    anyhow::ensure!(wasm_findings == native_findings, "Wasm found {wasm_findings}, native {native_findings}");

    println!(
        "Sigma plugin, {} rule files from {}; realistic mix, {} events per run ({} of the kinds it subscribes to), median of {runs} runs.",
        files.len(),
        rules.display(),
        events,
        subscribed
    );
    println!("Wasm load (compile + init with every rule): {load_ms:.0} ms; memory after init {} KiB.\n", plugin.metrics().snapshot().peak_memory_bytes / 1024);
    println!("| path | ns/event | events/s per core | findings/run |");
    println!("|---|---:|---:|---:|");
    println!("| Wasm (agent runtime, epoch deadline) | {wasm_ns:.0} | {:.0} | {wasm_findings} |", 1e9 / wasm_ns);
    println!("| native (same code, called directly) | {native_ns:.0} | {:.0} | {native_findings} |", 1e9 / native_ns);
    println!("\nWasm/native: {:.2}", wasm_ns / native_ns);
    Ok(())
}
