//! `edr status`: what the running agent is doing.

use crate::control::{self, Request};
use std::path::PathBuf;

/// Arguments of `edr status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => super::load_config(a.config.as_deref())?.data_dir,
    };
    let reply = control::call(&data_dir, &Request::Status)?;
    if !reply.ok {
        anyhow::bail!("{}", reply.error.unwrap_or_default());
    }
    let s = reply.result.unwrap_or_default();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let agent = &s["agent"];
    println!("edr {} (pid {}), up {} s, data dir {}", agent["version"].as_str().unwrap_or("?"), agent["pid"], agent["uptime_secs"], agent["data_dir"].as_str().unwrap_or("?"));
    println!("events received: {} ({} waiting for the pipeline)", s["pipeline"]["events"], s["pipeline"]["queued_events"].as_u64().unwrap_or(0));
    let collectors = s["collectors"].as_array().cloned().unwrap_or_default();
    if !collectors.is_empty() {
        println!("\ncollectors:");
        println!("  {:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  mode", "name", "events", "partial", "no exe", "dropped", "lost", "per sec");
        for c in collectors {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            println!(
                "  {:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8.1}  {}",
                c["name"].as_str().unwrap_or("?"),
                n("events"),
                n("partial"),
                n("exe_missing"),
                n("dropped"),
                n("lost"),
                c["events_per_sec"].as_f64().unwrap_or(0.0),
                c["mode"].as_str().unwrap_or("?")
            );
        }
    } else {
        println!("source: {}", s["source"].as_str().unwrap_or("?"));
    }
    let store = &s["store"];
    if store.is_object() {
        let n = |k: &str| store[k].as_u64().unwrap_or(0);
        println!(
            "\nrecord: {} events, {} alerts, {} actions, {:.1} MiB on disk; {} writes queued, {} events dropped",
            n("events"),
            n("alerts"),
            n("actions"),
            n("bytes_on_disk") as f64 / 1048576.0,
            n("writes_queued"),
            n("events_dropped")
        );
    }
    let r = &s["response"];
    if r.is_object() {
        let iso = &r["isolation"];
        let state = if iso["isolated"].as_bool() == Some(true) {
            format!("ISOLATED{} (management: {})", if iso["intact"].as_bool() == Some(true) { "" } else { ", rules modified by hand" }, iso["management"].as_array().map(|m| m.iter().filter_map(|e| e.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default())
        } else {
            "not isolated".to_string()
        };
        println!("response: {state}; {} files quarantined; {} execution blocks", r["quarantined"], r["blocks"]);
        let (b, n) = (&r["block_stats"], |v: &serde_json::Value| v.as_u64().unwrap_or(0));
        if b["running"].as_bool() == Some(true) || n(&b["deadline_answers"]) > 0 {
            println!("exec blocking: {} execs seen, {} denied, {} answered by the deadline ({} ms, fail mode {})", n(&b["events"]), n(&b["denied"]), n(&b["deadline_answers"]), n(&b["deadline_ms"]), b["fail_mode"].as_str().unwrap_or("?"));
        }
        if n(&iso["tamper_count"]) > 0 {
            let when = iso["last_tamper"].as_u64().map(edr_event::time::to_rfc3339).unwrap_or_default();
            println!("isolation tampering: re-applied {} times, last at {when}: {}", n(&iso["tamper_count"]), iso["last_tamper_what"].as_str().unwrap_or("?"));
        }
        let a = &s["actions"];
        if a.is_object() {
            println!("actions: {} carried out, {} simulated, {} refused, {} failed", a["done"], a["simulated"], a["refused"], a["failed"]);
        }
    }
    let outputs = s["outputs"].as_array().cloned().unwrap_or_default();
    if !outputs.is_empty() {
        println!("\noutputs:");
        for o in outputs {
            let n = |k: &str| o[k].as_u64().unwrap_or(0);
            println!(
                "  {:<10} {:<40} delivered {:>7}  queued {:>5}  dropped {:>4}{}",
                o["name"].as_str().unwrap_or("?"),
                o["target"].as_str().unwrap_or(""),
                n("delivered"),
                n("queued"),
                n("dropped"),
                o["last_error"].as_str().map(|e| format!("  last error: {e}")).unwrap_or_default()
            );
        }
    }
    let c = &s["config"];
    if c.is_object() {
        println!(
            "\nconfig: {}; {} reloads, {} refused{}{}",
            c["file"].as_str().unwrap_or("built-in defaults"),
            c["reloads"],
            c["reload_failures"],
            c["last_error"].as_str().map(|e| format!("; last problem: {e}")).unwrap_or_default(),
            c["restart_needed"].as_array().filter(|a| !a.is_empty()).map(|a| format!("; restart to apply: {}", a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))).unwrap_or_default()
        );
    }
    println!("\npacks:");
    for p in s["packs"]["active"].as_array().into_iter().flatten() {
        println!("  {} {} (signed by {}; {} plugins)", p["id"].as_str().unwrap_or("?"), p["version"].as_str().unwrap_or("?"), p["signer"].as_str().unwrap_or("?"), p["plugins"].as_array().map(|a| a.len()).unwrap_or(0));
    }
    for r in s["packs"]["recent"].as_array().into_iter().flatten().rev().take(5) {
        println!("  {} {}: {}", r["time"].as_str().unwrap_or(""), r["action"].as_str().unwrap_or(""), r["message"].as_str().unwrap_or(""));
    }
    println!("\nplugins:");
    println!("  {:<32} {:<9} {:<8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9}", "plugin", "version", "health", "events", "findings", "errors", "tmouts", "p50 us", "p99 us", "mem KiB");
    for p in s["plugins"].as_array().into_iter().flatten() {
        let m = &p["metrics"];
        let health = p["health"].as_str().unwrap_or("?");
        let short = if health == "active" { "active" } else { "QUARANT" };
        let n = |k: &str| m[k].as_u64().unwrap_or(0);
        println!(
            "  {:<32} {:<9} {:<8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9}",
            p["key"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            short,
            n("events"),
            n("findings"),
            n("errors"),
            n("timeouts"),
            n("p50_us"),
            n("p99_us"),
            n("memory_bytes") / 1024
        );
        if short != "active" {
            println!("      {health}");
        }
        if p["dropped_events"].as_u64().unwrap_or(0) > 0 {
            println!("      {} events dropped (queue full)", p["dropped_events"]);
        }
    }
    Ok(())
}
