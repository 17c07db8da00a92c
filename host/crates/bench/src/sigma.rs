//! `edr-bench sigma [--rules DIR]`: the Sigma plugin with every loadable
//! SigmaHQ Linux rule, on the realistic event mix, in Wasm and natively,
//! compiled (the default `engine`) and interpreted (before), side by side
//! with rsigma's own `Engine::evaluate` natively on the same rules and events;
//! the compiled and interpreted findings are checked to agree event by event.

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

    // Wasm, as the agent runs it: compiled (the default) and interpreted.
    let rt = Runtime::new(RuntimeConfig::default())?;
    let mut wasm_rows = Vec::new();
    let mut load_ms = Vec::new();
    let mut subscribed = 0;
    for engine in ["compiled", "interpreted"] {
        let config = edr_event::PluginConfig {
            settings: vec![("engine".to_string(), engine.to_string())],
            files: files.iter().map(|(n, c)| edr_event::DataFile { name: n.clone(), content: c.clone() }).collect(),
        };
        let t = Instant::now();
        let spec = PluginSpec {
            config,
            limits: Limits { init_deadline: Duration::from_secs(60), ..Limits::default() },
            ..PluginSpec::new("sigma", crate::wasm("edr-plugin-sigma"))
        };
        let mut plugin = rt.load(spec, Arc::new(MemoryServices::default())).map_err(|e| anyhow::anyhow!("{e}"))?;
        load_ms.push((engine, t.elapsed().as_secs_f64() * 1000.0, plugin.metrics().snapshot().peak_memory_bytes / 1024));
        subscribed = stream.iter().flatten().filter(|e| plugin.wants(e.kind())).count();
        wasm_rows.push(crate::time_wasm(&mut plugin, &encoded, runs));
    }

    // The same plugin code, natively, both ways.
    let native_config = |engine: &str| edr_sdk::Config {
        settings: vec![("engine".to_string(), engine.to_string())],
        files: files.iter().map(|(n, c)| edr_sdk::DataFile { name: n.clone(), content: c.clone() }).collect(),
    };
    let native_compiled = crate::time_native_with::<edr_plugin_sigma::Sigma>(&stream, runs, native_config("compiled"));
    let native_interpreted = crate::time_native_with::<edr_plugin_sigma::Sigma>(&stream, runs, native_config("interpreted"));
    let (rsigma_ns, rsigma_matches) = time_rsigma(&stream, &files, runs, edr_sigma_core::rules::EvalMode::Interpreted);
    let (rules_only_ns, rules_only_matches) = time_rsigma(&stream, &files, runs, edr_sigma_core::rules::EvalMode::Compiled);
    let (events_checked, fired) = same_findings(&stream, &native_config("compiled"), &native_config("interpreted"))?;

    let findings = [wasm_rows[0].1, wasm_rows[1].1, native_compiled.1, native_interpreted.1];
    anyhow::ensure!(findings.iter().all(|f| *f == findings[0]), "findings per run differ: {findings:?}");
    anyhow::ensure!(rsigma_matches == findings[0], "rsigma's engine matched {rsigma_matches}, the plugin found {}", findings[0]);

    let stats = {
        let d = <edr_plugin_sigma::Sigma as edr_sdk::Detector>::init(&native_config("compiled")).map_err(|e| anyhow::anyhow!(e))?;
        edr_plugin_sigma::mapping::Category::ALL
            .iter()
            .filter_map(|c| {
                d.prefilter_stats(*c)
                    .filter(|s| s.rules > 0)
                    .map(|s| format!("{c}: {} rules, {} ungated, {} fields, {} needles", s.rules, s.always, s.fields, s.needles))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!(
        "Sigma plugin, {} rule files from {} plus the built-in rules; realistic mix, {} events per run ({} of the kinds it subscribes to), median of {runs} runs.",
        files.len(),
        rules.display(),
        events,
        subscribed
    );
    for (engine, ms, kib) in &load_ms {
        println!("Wasm load, {engine} (compile + init with every rule): {ms:.0} ms; memory after init {kib} KiB.");
    }
    println!("Prefilter: {stats}.");
    println!("Compiled and interpreted gave the same rule ids, event by event, on all {events_checked} events ({fired} with findings).\n");
    println!("| path | ns/event | events/s per core | findings/run |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, ns: f64, f: usize| println!("| {name} | {ns:.0} | {:.0} | {f} |", 1e9 / ns);
    row("Wasm, compiled (agent runtime, epoch deadline)", wasm_rows[0].0, wasm_rows[0].1);
    row("Wasm, interpreted (before)", wasm_rows[1].0, wasm_rows[1].1);
    row("native, compiled (same plugin code)", native_compiled.0, native_compiled.1);
    row("native, interpreted (same plugin code, before)", native_interpreted.0, native_interpreted.1);
    row("native, rsigma 0.23 Engine::evaluate (matches only, no findings)", rsigma_ns, rsigma_matches);
    row("native, compiled rules (matches only, no findings)", rules_only_ns, rules_only_matches);
    println!("\nWasm/native: compiled {:.2}, interpreted {:.2}", wasm_rows[0].0 / native_compiled.0, wasm_rows[1].0 / native_interpreted.0);
    println!("Wasm compiled against rsigma natively: {:.2}x the time", wasm_rows[0].0 / rsigma_ns);
    Ok(())
}

/// ns/event of rsigma's own engine (its candidate index and rule-by-rule
/// evaluation) on the same rules and the same events, mapped by the plugin's
/// allocation-free field view, natively; no findings are built.
fn time_rsigma(stream: &[Vec<edr_event::Event>], files: &[(String, Vec<u8>)], runs: usize, mode: edr_sigma_core::rules::EvalMode) -> (f64, usize) {
    use edr_plugin_sigma::mapping::{map_event, Scratch};
    use edr_sigma_core::rules::Loader;
    let mut loader = Loader::new(None);
    for (n, c) in files.iter().filter(|(n, _)| edr_sigma_core::is_rule_file(n)) {
        loader.add_file(n, c);
    }
    for (name, yaml) in edr_plugin_sigma::BUILTIN_RULES {
        loader.add_file(&format!("builtin:{name}"), yaml.as_bytes());
    }
    let (mut set, _) = loader.finish_with(mode);
    let mut out = Vec::new();
    let wants = |k: edr_event::EventKind| <edr_plugin_sigma::Sigma as edr_sdk::Detector>::SUBSCRIPTIONS.iter().any(|s| s.as_str() == k.as_str());
    let filtered: Vec<edr_sdk::testing::EncodedBatch> =
        stream.iter().map(|b| edr_sdk::testing::EncodedBatch::encode(b.iter().filter(|e| wants(e.kind())).collect::<Vec<_>>())).collect();
    let n: usize = filtered.iter().map(|b| b.events.len()).sum();
    let wire: Vec<_> = filtered.iter().map(edr_sdk::testing::wire_batch).collect();
    let views: Vec<Vec<edr_sdk::Event<'_>>> = wire.iter().map(|(t, l, e)| edr_sdk::testing::decode(t, l, e)).collect();
    let mut scratch = Scratch::default();
    let mut samples = Vec::new();
    let mut matches = 0;
    for _ in 0..runs {
        matches = 0;
        let t = Instant::now();
        for b in &views {
            for e in b {
                if let edr_sdk::EventBody::ProcessExec(x) = &e.body {
                    scratch.fill(x);
                }
                let Some(view) = map_event(&e.body, &scratch) else { continue };
                out.clear();
                set.evaluate(view.category(), &view, &mut out);
                matches += std::hint::black_box(&out).len();
            }
        }
        samples.push(t.elapsed().as_nanos() as f64 / n.max(1) as f64);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[samples.len() / 2], matches)
}

/// Runs every event alone through the plugin compiled and interpreted and
/// checks the findings' rule ids agree; returns (events, events with findings).
fn same_findings(stream: &[Vec<edr_event::Event>], compiled: &edr_sdk::Config, interpreted: &edr_sdk::Config) -> anyhow::Result<(usize, usize)> {
    use edr_sdk::Detector;
    let mut c = edr_plugin_sigma::Sigma::init(compiled).map_err(|e| anyhow::anyhow!(e))?;
    let mut i = edr_plugin_sigma::Sigma::init(interpreted).map_err(|e| anyhow::anyhow!(e))?;
    let wants = |k: edr_event::EventKind| edr_plugin_sigma::Sigma::SUBSCRIPTIONS.iter().any(|s| s.as_str() == k.as_str());
    let (mut n, mut fired) = (0, 0);
    for b in stream {
        let enc = edr_sdk::testing::EncodedBatch::encode(b.iter().filter(|e| wants(e.kind())).collect::<Vec<_>>());
        let (t, l, e) = edr_sdk::testing::wire_batch(&enc);
        for ev in edr_sdk::testing::decode(&t, &l, &e) {
            let (mut fc, mut fi) = (edr_sdk::Findings::new(), edr_sdk::Findings::new());
            c.on_event(&ev, &mut fc);
            i.on_event(&ev, &mut fi);
            let (fc, fi) = (fc.into_vec(), fi.into_vec());
            let ids = |f: &[edr_sdk::Finding]| f.iter().map(|f| f.rule_id.clone()).collect::<Vec<_>>();
            anyhow::ensure!(ids(&fc) == ids(&fi), "event {}: compiled {:?}, interpreted {:?}", ev.id, ids(&fc), ids(&fi));
            anyhow::ensure!(format!("{fc:?}") == format!("{fi:?}"), "event {}: findings differ in content", ev.id);
            n += 1;
            fired += usize::from(!fc.is_empty());
        }
    }
    Ok((n, fired))
}
