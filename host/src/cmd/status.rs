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
    println!("events received: {}", s["pipeline"]["events"]);
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
