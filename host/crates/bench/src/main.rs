//! `edr-bench`: what the plugin path costs.
//!
//! For each plugin, batches of events go through the real runtime (pooling
//! allocator, epoch deadline on every call) and, separately, through the same
//! detector code compiled natively and called directly. Both sides see the
//! same events, pre-filtered to the plugin's subscriptions. Figures are
//! medians over several runs; the Wasm/native ratio is the machine-independent
//! number.
//!
//! Usage: `cargo run --release -p edr-bench -- [--batches N] [--batch-size N] [--runs N]`
//! for the plugin path, and `edr-bench agent [--rates 50,200] [--secs 10]` (root)
//! for the live agent (CPU, memory, exec-to-alert latency), and
//! `edr-bench atomic` (root) for coverage of the Atomic Red Team Linux tests.

mod agent;
mod atomic;
mod fleet;
mod sigma;
mod workload;

use edr_event::wire::{EncodedBatch, WireEvent};
use edr_event::Event;
use edr_runtime::{MemoryServices, Plugin, PluginSpec, Runtime, RuntimeConfig};
use edr_sdk::{Detector, Findings};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

struct Args {
    batches: usize,
    batch_size: usize,
    runs: usize,
    /// Only rows whose plugin name contains this (for profiling one plugin).
    only: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args { batches: 400, batch_size: 256, runs: 5, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> { Ok(it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?.parse()?) };
        match flag.as_str() {
            "--batches" => a.batches = value()?,
            "--batch-size" => a.batch_size = value()?,
            "--runs" => a.runs = value()?,
            "--only" => a.only = Some(it.next().ok_or_else(|| anyhow::anyhow!("--only needs a value"))?),
            "-h" | "--help" => {
                println!("edr-bench [--batches N] [--batch-size N] [--runs N] [--only PLUGIN]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(a.batches > 0 && a.batch_size > 0 && a.runs > 0, "counts must be positive");
    Ok(a)
}

pub(crate) fn wasm(package: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("EDR_BENCH_PLUGIN_DIR")).join(format!("{package}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// ns/event of `plugin` over `batches` (encoded once, as the dispatcher
/// does, and filtered to the plugin's subscriptions outside the timing).
pub(crate) fn time_wasm(plugin: &mut Plugin, batches: &[EncodedBatch], runs: usize) -> (f64, usize) {
    let refs: Vec<Vec<&WireEvent>> = batches.iter().map(|b| b.events.iter().filter(|e| plugin.wants(e.kind())).collect()).collect();
    let n: usize = refs.iter().map(Vec::len).sum();
    let mut findings = 0;
    for (b, r) in batches.iter().zip(&refs).take(20) {
        plugin.call(b, r); // warm up
    }
    let samples = (0..runs)
        .map(|_| {
            findings = 0;
            let t = Instant::now();
            for (b, r) in batches.iter().zip(&refs) {
                let out = plugin.call(b, r);
                assert!(out.error.is_none(), "{}: {:?}", plugin.name(), out.error);
                findings += out.findings.len();
            }
            t.elapsed().as_nanos() as f64 / n.max(1) as f64
        })
        .collect();
    (median(samples), findings)
}

/// ns/event of the same detector compiled natively, called directly on the
/// SDK's views of the same batches (encoded by the same encoder into the SDK's
/// generated types and decoded outside the timing).
pub(crate) fn time_native<D: Detector>(batches: &[Vec<Event>], runs: usize) -> (f64, usize) {
    time_native_with::<D>(batches, runs, edr_sdk::Config { settings: vec![], files: vec![] })
}

/// [`time_native`] with a configuration.
pub(crate) fn time_native_with<D: Detector>(batches: &[Vec<Event>], runs: usize, config: edr_sdk::Config) -> (f64, usize) {
    let mut d = D::init(&config).unwrap();
    let wants = |k: edr_event::EventKind| D::SUBSCRIPTIONS.iter().any(|s| s.as_str() == k.as_str());
    let filtered: Vec<edr_sdk::testing::EncodedBatch> =
        batches.iter().map(|b| edr_sdk::testing::EncodedBatch::encode(b.iter().filter(|e| wants(e.kind())).collect::<Vec<_>>())).collect();
    let n: usize = filtered.iter().map(|b| b.events.len()).sum();
    let wire: Vec<_> = filtered.iter().map(edr_sdk::testing::wire_batch).collect();
    let views: Vec<Vec<edr_sdk::Event<'_>>> = wire.iter().map(|(t, l, e)| edr_sdk::testing::decode(t, l, e)).collect();
    let mut findings = 0;
    let samples = (0..runs)
        .map(|_| {
            findings = 0;
            let t = Instant::now();
            for b in &views {
                let mut f = Findings::new();
                d.on_events(black_box(b), &mut f);
                findings += black_box(f).len();
            }
            t.elapsed().as_nanos() as f64 / n.max(1) as f64
        })
        .collect();
    (median(samples), findings)
}

struct Row {
    name: &'static str,
    workload: &'static str,
    events: usize,
    wasm_ns: f64,
    native_ns: f64,
    findings: usize,
}

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("agent") => return agent::run(std::env::args().skip(2)),
        Some("atomic") => return atomic::run(std::env::args().skip(2)),
        Some("sigma") => return sigma::run(std::env::args().skip(2)),
        Some("fleet") => return fleet::run(std::env::args().skip(2)),
        _ => {}
    }
    let args = parse_args()?;
    let rt = Runtime::new(RuntimeConfig::default())?;
    let services = Arc::new(MemoryServices::default());
    let load = |package: &str, name: &str| rt.load(PluginSpec::new(name, wasm(package)), services.clone()).unwrap_or_else(|e| panic!("{e}"));

    let workloads: [(&str, Vec<Vec<Event>>); 2] = [
        ("exec", workload::batches(workload::Mix::ExecOnly, args.batches, args.batch_size)),
        ("mixed", workload::batches(workload::Mix::Realistic, args.batches, args.batch_size)),
    ];
    let mut encode_ns = Vec::new();
    let mut rows = Vec::new();
    for (wname, batches) in &workloads {
        let encoded: Vec<EncodedBatch> = batches.iter().map(EncodedBatch::encode).collect();
        let n_events = batches.iter().map(Vec::len).sum::<usize>() as f64;
        let samples = (0..args.runs)
            .map(|_| {
                let t = Instant::now();
                for b in batches {
                    black_box(EncodedBatch::encode(b));
                }
                t.elapsed().as_nanos() as f64 / n_events
            })
            .collect();
        encode_ns.push((*wname, median(samples)));
        macro_rules! bench {
            ($name:literal, $package:literal, $ty:ty) => {{
                if args.only.as_deref().is_some_and(|o| !$name.contains(o)) {
                    (0.0, 0.0)
                } else {
                    let mut p = load($package, $name);
                    let (wasm_ns, findings) = time_wasm(&mut p, &encoded, args.runs);
                    let (native_ns, native_findings) = time_native::<$ty>(batches, args.runs);
                    assert_eq!(findings, native_findings, "{}: Wasm and native must find the same", $name);
                    let events = batches.iter().flatten().filter(|e| p.wants(e.kind())).count();
                    if events == 0 {
                        // Nothing this plugin subscribes to in this workload.
                        (0.0, 0.0)
                    } else {
                        rows.push(Row { name: $name, workload: wname, events, wasm_ns, native_ns, findings });
                        (wasm_ns * events as f64, native_ns * events as f64)
                    }
                }
            }};
        }
        bench!("noop", "edr-test-noop", edr_test_noop::Noop);
        let parts = [
            bench!("lineage", "edr-plugin-lineage", edr_plugin_lineage::Lineage),
            bench!("reverse-shell", "edr-plugin-reverse-shell", edr_plugin_reverse_shell::ReverseShell),
            bench!("writable-exec", "edr-plugin-writable-exec", edr_plugin_writable_exec::WritableExec),
            bench!("persistence", "edr-plugin-persistence", edr_plugin_persistence::Persistence),
        ];
        if args.only.is_some() {
            continue;
        }
        let total_events: usize = batches.iter().map(Vec::len).sum();
        let (w, n): (f64, f64) = parts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let findings = rows.iter().filter(|r| r.workload == *wname && r.name != "noop").map(|r| r.findings).sum();
        rows.push(Row {
            name: "all built-ins",
            workload: wname,
            events: total_events,
            wasm_ns: w / total_events as f64,
            native_ns: n / total_events as f64,
            findings,
        });
    }

    println!("Batches of {} events, {} batches per run, median of {} runs; epoch deadline on every call.", args.batch_size, args.batches, args.runs);
    for (w, ns) in &encode_ns {
        println!("Encoding a batch into the wire form (once per batch, shared by all plugins), {w}: {ns:.0} ns/event.");
    }
    println!();
    println!("| plugin | workload | events/run | Wasm ns/event | native ns/event | Wasm/native | findings/run |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {} |",
            r.name,
            r.workload,
            r.events,
            r.wasm_ns,
            r.native_ns,
            r.wasm_ns / r.native_ns.max(0.001),
            r.findings
        );
    }
    Ok(())
}
