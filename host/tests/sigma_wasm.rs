//! The `sigma` plugin as the agent runs it: the real Wasm component, loaded
//! with the SigmaHQ Linux rules from ../shared/corpora (skipped with a
//! message where that corpus is absent) and with our own built-in rules.

mod common;
use common::*;
use edr_event::{DataFile, PluginConfig};
use edr_runtime::{MemoryServices, PluginSpec};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Every .yml file under `dir` as plugin data files.
fn rule_files(dir: &Path) -> Vec<DataFile> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yml") {
                let name = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push(DataFile { name, content: std::fs::read(&p).unwrap() });
            }
        }
    }
    out
}

fn sigma_plugin(files: Vec<DataFile>) -> edr_runtime::Plugin {
    let spec = PluginSpec { config: PluginConfig { settings: Vec::new(), files }, ..PluginSpec::new("sigma", plugin_wasm("edr-plugin-sigma")) };
    runtime().load(spec, Arc::new(MemoryServices::default())).unwrap_or_else(|e| panic!("{e}"))
}

/// (rule file, rule id, note, positive, negative) records of a cases file.
fn cases(file: &str) -> Vec<(String, String, String, serde_json::Value, serde_json::Value)> {
    std::fs::read_to_string(repo_root().join("plugins/sigma/tests").join(file))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["rule"].as_str().unwrap().into(),
                v["id"].as_str().unwrap().into(),
                v["note"].as_str().unwrap_or("").into(),
                v["positive"].clone(),
                v["negative"].clone(),
            )
        })
        .collect()
}

fn fires(plugin: &mut edr_runtime::Plugin, event: &serde_json::Value, rule_id: &str) -> bool {
    let mut e = edr_event::ecs::event_from_ecs(event).unwrap();
    e.id = 1;
    let out = plugin.run(&[e]);
    assert!(out.error.is_none(), "{:?}", out.error);
    out.findings.iter().any(|f| f.rule_id == rule_id)
}

#[test]
fn sigmahq_cases_through_the_wasm_plugin() {
    let Some(corpus) = edr_testkit::sigmahq_linux_rules() else { return };
    let mut plugin = sigma_plugin(rule_files(&corpus));
    let cases = cases("cases.jsonl");
    assert!(cases.len() >= 30, "at least 30 SigmaHQ rules are covered");
    let mut rules = std::collections::BTreeSet::new();
    for (rule, id, note, pos, neg) in &cases {
        assert!(fires(&mut plugin, pos, id), "{rule}: the positive ({note}) must fire {id}");
        assert!(!fires(&mut plugin, neg, id), "{rule}: the negative ({note}) must not fire {id}");
        rules.insert(rule.clone());
    }
    eprintln!("{} SigmaHQ rules, {} cases: every positive fires its rule and no negative does, in Wasm", rules.len(), cases.len());
    // The author is credited in every finding (the DRL requires it).
    let (_, id, _, pos, _) = &cases[0];
    let mut e = edr_event::ecs::event_from_ecs(pos).unwrap();
    e.id = 1;
    let f = plugin.run(&[e]).findings.into_iter().find(|f| f.rule_id == *id).unwrap();
    assert!(!f.author.is_empty() && f.author != "unknown", "{f:?}");
    assert!(f.techniques.iter().all(|t| t.starts_with('T')), "{f:?}");
}

#[test]
fn our_own_rules_through_the_wasm_plugin() {
    // No data files: the plugin's built-in rules only.
    let mut plugin = sigma_plugin(Vec::new());
    for (rule, id, note, pos, neg) in cases("builtin_cases.jsonl") {
        assert!(fires(&mut plugin, &pos, &id), "{rule}: the positive ({note}) must fire");
        assert!(!fires(&mut plugin, &neg, &id), "{rule}: the negative ({note}) must not fire");
    }
}

#[test]
fn sigma_check_serves_every_process_file_and_network_rule() {
    let Some(corpus) = edr_testkit::sigmahq_linux_rules() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["sigma", "check", corpus.to_str().unwrap(), "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let text = report.to_string();
    for (category, count) in [("process_creation", 122), ("file_event", 8), ("network_connection", 5)] {
        let loaded = report["summary"]["by_logsource"]
            .as_object()
            .and_then(|m| m.iter().find(|(k, _)| k.contains(category)))
            .map(|(_, v)| v["loaded"].as_u64().unwrap_or(0));
        assert_eq!(loaded, Some(count), "{category}: {text}");
    }
    // auditd and builtin rules are reported as not served, not silently dropped.
    assert!(text.contains("auditd"), "{text}");
    assert!(!out.status.success(), "not every rule loads, so the exit status says so");
}

#[test]
fn sigma_matches_appear_in_replay_with_the_author_credited() {
    let Some(corpus) = edr_testkit::sigmahq_linux_rules() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edr.toml");
    std::fs::write(&cfg, format!("data_dir = {:?}\n[plugins.data]\nsigma = [{:?}]\n", dir.path().join("data"), corpus)).unwrap();
    let events: String = cases("cases.jsonl").iter().take(10).map(|(_, _, _, pos, _)| pos.to_string() + "\n").collect();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edr"))
        .args(["replay", "--config", cfg.to_str().unwrap(), input.to_str().unwrap()])
        .env("EDR_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sigma: Vec<&serde_json::Value> = alerts.iter().filter(|a| a["edr"]["plugin"] == "sigma").collect();
    assert!(sigma.len() >= 10, "{} sigma alerts", sigma.len());
    for a in sigma {
        assert!(a["rule"]["author"][0].as_str().is_some_and(|s| !s.is_empty()), "{a}");
        assert_eq!(a["edr"]["pack"]["id"], "edr.builtin");
    }
}
