//! `edr status`: what the running agent is doing.

use edr_agent::control::{self, Request};
use serde_json::Value;
use std::path::PathBuf;

/// `writeln!` into a String (which cannot fail).
macro_rules! outln {
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($arg)*);
    }};
}

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
    let mut s = reply.result.unwrap_or_default();
    let losses = LossSummary::from_status(&s);
    if a.json {
        if let Some(o) = s.as_object_mut() {
            o.insert("losses".into(), serde_json::to_value(&losses)?);
        }
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print!("{}", render(&s, &losses));
    Ok(())
}

/// What was lost on the way, summed from the status document: the one set
/// of loss counters the human form prints and `--json` adds as `losses`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LossSummary {
    /// Events the kernel dropped before a collector read them (collectors' `lost`).
    pub kernel_lost: u64,
    /// Events a collector could not queue to the pipeline (collectors' `dropped`).
    pub collector_dropped: u64,
    /// Events a plugin's full queue cost it (plugins' `dropped_events`).
    pub plugin_dropped: u64,
    /// Events the record refused: its queue was full or closed (`store.events_dropped`).
    pub store_dropped: u64,
    /// Events the record lost: their write failed twice (`store.events_lost`).
    pub store_lost: u64,
    /// Failed record writes, each rolled back (`store.write_errors`).
    pub store_write_errors: u64,
    /// Alerts and actions the record refused.
    pub store_alerts_dropped: u64,
    pub store_actions_dropped: u64,
    /// Alerts the remote outputs dropped (outputs' `dropped`).
    pub output_dropped: u64,
}

impl LossSummary {
    /// The counters of a status document (missing ones count 0).
    pub fn from_status(s: &Value) -> Self {
        let sum = |list: &Value, k: &str| list.as_array().map(|a| a.iter().map(|x| x[k].as_u64().unwrap_or(0)).sum()).unwrap_or(0);
        let store = |k: &str| s["store"][k].as_u64().unwrap_or(0);
        LossSummary {
            kernel_lost: sum(&s["collectors"], "lost"),
            collector_dropped: sum(&s["collectors"], "dropped"),
            plugin_dropped: sum(&s["plugins"], "dropped_events"),
            store_dropped: store("events_dropped"),
            store_lost: store("events_lost"),
            store_write_errors: store("write_errors"),
            store_alerts_dropped: store("alerts_dropped"),
            store_actions_dropped: store("actions_dropped"),
            output_dropped: sum(&s["outputs"], "dropped"),
        }
    }

    /// Events not recorded in the store.
    pub fn unrecorded_events(&self) -> u64 {
        self.store_dropped + self.store_lost
    }

    /// The record's part, for its status line: "nothing lost" or what was.
    fn record_text(&self) -> String {
        let mut parts = Vec::new();
        if self.store_dropped > 0 {
            parts.push(format!("{} events refused (queue full)", self.store_dropped));
        }
        if self.store_lost > 0 || self.store_write_errors > 0 {
            parts.push(format!("{} events lost to failed writes ({} write errors)", self.store_lost, self.store_write_errors));
        }
        if self.store_alerts_dropped > 0 {
            parts.push(format!("{} alerts refused", self.store_alerts_dropped));
        }
        if self.store_actions_dropped > 0 {
            parts.push(format!("{} action records refused", self.store_actions_dropped));
        }
        if parts.is_empty() {
            "nothing lost".into()
        } else {
            format!("NOT RECORDED: {}", parts.join(", "))
        }
    }

    /// One line over every stage.
    fn overall_text(&self) -> String {
        let parts: Vec<String> = [
            (self.kernel_lost, "lost by the kernel"),
            (self.collector_dropped, "dropped at the collector queue"),
            (self.plugin_dropped, "dropped at plugin queues"),
            (self.unrecorded_events(), "not recorded"),
            (self.output_dropped, "alerts dropped by outputs"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() && self.store_write_errors == 0 {
            "none".into()
        } else if parts.is_empty() {
            format!("{} failed record writes (retried, nothing lost)", self.store_write_errors)
        } else {
            parts.join(", ")
        }
    }
}

/// The human form of a status document.
fn render(s: &Value, losses: &LossSummary) -> String {
    let mut o = String::new();
    render_pipeline(&mut o, s, losses);
    render_response_outputs(&mut o, s);
    render_fleet(&mut o, &s["fleet"]);
    render_packs_plugins(&mut o, s);
    o
}

/// The fleet link, when this host is enrolled.
fn render_fleet(o: &mut String, f: &Value) {
    if !f.is_object() {
        return;
    }
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    outln!(
        o,
        "\nfleet: host {}, {}; alerts forwarded {} (cursor {}), events forwarded {} (cursor {}), {} heartbeats{}",
        f["host_id"].as_str().unwrap_or("?"),
        if f["connected"].as_bool() == Some(true) { "connected" } else { "NOT CONNECTED" },
        n("alerts_forwarded"),
        n("alert_cursor"),
        n("events_forwarded"),
        n("events_cursor"),
        n("heartbeats"),
        f["last_error"].as_str().map(|e| format!("\n  last error: {e}")).unwrap_or_default()
    );
    if let Some([at, why]) = f["self_release"].as_array().map(Vec::as_slice) {
        let when = at.as_u64().map(|t| edr_event::time::to_rfc3339(t * 1_000_000_000)).unwrap_or_default();
        outln!(o, "  released itself from isolation at {when}: {}", why.as_str().unwrap_or("?"));
    }
}

/// The agent, its collectors and the record.
fn render_pipeline(o: &mut String, s: &Value, losses: &LossSummary) {
    let agent = &s["agent"];
    outln!(
        o,
        "edr {} (pid {}), up {} s, data dir {}",
        agent["version"].as_str().unwrap_or("?"),
        agent["pid"],
        agent["uptime_secs"],
        agent["data_dir"].as_str().unwrap_or("?")
    );
    outln!(o, "events received: {} ({} waiting for the pipeline)", s["pipeline"]["events"], s["pipeline"]["queued_events"].as_u64().unwrap_or(0));
    outln!(o, "losses: {}", losses.overall_text());
    let collectors = s["collectors"].as_array().cloned().unwrap_or_default();
    if !collectors.is_empty() {
        outln!(o, "\ncollectors:");
        outln!(o, "  {:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  mode", "name", "events", "partial", "no exe", "dropped", "lost", "per sec");
        for c in collectors {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            outln!(
                o,
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
        outln!(o, "source: {}", s["source"].as_str().unwrap_or("?"));
    }
    let store = &s["store"];
    if store.is_object() {
        let n = |k: &str| store[k].as_u64().unwrap_or(0);
        outln!(
            o,
            "\nrecord: {} events, {} alerts, {} actions, {:.1} MiB on disk; {} writes queued; {}",
            n("events"),
            n("alerts"),
            n("actions"),
            n("bytes_on_disk") as f64 / 1048576.0,
            n("writes_queued"),
            losses.record_text()
        );
    }
}

/// Response, outputs and the configuration.
fn render_response_outputs(o: &mut String, s: &Value) {
    let r = &s["response"];
    if r.is_object() {
        let iso = &r["isolation"];
        let state = if iso["isolated"].as_bool() == Some(true) {
            format!(
                "ISOLATED{} (management: {})",
                if iso["intact"].as_bool() == Some(true) { "" } else { ", rules modified by hand" },
                iso["management"].as_array().map(|m| m.iter().filter_map(|e| e.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()
            )
        } else {
            "not isolated".to_string()
        };
        outln!(o, "response: {state}; {} files quarantined; {} execution blocks", r["quarantined"], r["blocks"]);
        let (b, n) = (&r["block_stats"], |v: &serde_json::Value| v.as_u64().unwrap_or(0));
        if b["running"].as_bool() == Some(true) || n(&b["deadline_answers"]) > 0 {
            outln!(
                o,
                "exec blocking: {} execs seen, {} denied, {} answered by the deadline ({} ms, fail mode {})",
                n(&b["events"]),
                n(&b["denied"]),
                n(&b["deadline_answers"]),
                n(&b["deadline_ms"]),
                b["fail_mode"].as_str().unwrap_or("?")
            );
        }
        if n(&iso["tamper_count"]) > 0 {
            let when = iso["last_tamper"].as_u64().map(edr_event::time::to_rfc3339).unwrap_or_default();
            outln!(o, "isolation tampering: re-applied {} times, last at {when}: {}", n(&iso["tamper_count"]), iso["last_tamper_what"].as_str().unwrap_or("?"));
        }
        let a = &s["actions"];
        if a.is_object() {
            outln!(o, "actions: {} carried out, {} simulated, {} refused, {} failed", a["done"], a["simulated"], a["refused"], a["failed"]);
        }
    }
    let outputs = s["outputs"].as_array().cloned().unwrap_or_default();
    if !outputs.is_empty() {
        outln!(o, "\noutputs:");
        for out in outputs {
            let n = |k: &str| out[k].as_u64().unwrap_or(0);
            outln!(
                o,
                "  {:<10} {:<40} delivered {:>7}  queued {:>5}  dropped {:>4}{}",
                out["name"].as_str().unwrap_or("?"),
                out["target"].as_str().unwrap_or(""),
                n("delivered"),
                n("queued"),
                n("dropped"),
                out["last_error"].as_str().map(|e| format!("  last error: {e}")).unwrap_or_default()
            );
        }
    }
    let c = &s["config"];
    if c.is_object() {
        outln!(
            o,
            "\nconfig: {}; {} reloads, {} refused{}{}",
            c["file"].as_str().unwrap_or("built-in defaults"),
            c["reloads"],
            c["reload_failures"],
            c["last_error"].as_str().map(|e| format!("; last problem: {e}")).unwrap_or_default(),
            c["restart_needed"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| format!("; restart to apply: {}", a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", ")))
                .unwrap_or_default()
        );
    }
}

/// Packs and plugins.
fn render_packs_plugins(o: &mut String, s: &Value) {
    outln!(o, "\npacks:");
    for p in s["packs"]["active"].as_array().into_iter().flatten() {
        outln!(
            o,
            "  {} {} (signed by {}; {} plugins)",
            p["id"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["signer"].as_str().unwrap_or("?"),
            p["plugins"].as_array().map(|a| a.len()).unwrap_or(0)
        );
    }
    for r in s["packs"]["recent"].as_array().into_iter().flatten().rev().take(5) {
        outln!(o, "  {} {}: {}", r["time"].as_str().unwrap_or(""), r["action"].as_str().unwrap_or(""), r["message"].as_str().unwrap_or(""));
    }
    outln!(o, "\nplugins:");
    outln!(
        o,
        "  {:<32} {:<9} {:<8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9}",
        "plugin",
        "version",
        "health",
        "events",
        "findings",
        "errors",
        "tmouts",
        "p50 us",
        "p99 us",
        "mem KiB"
    );
    for p in s["plugins"].as_array().into_iter().flatten() {
        let m = &p["metrics"];
        let health = p["health"].as_str().unwrap_or("?");
        let short = if health == "active" { "active" } else { "QUARANT" };
        let n = |k: &str| m[k].as_u64().unwrap_or(0);
        outln!(
            o,
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
            outln!(o, "      {health}");
        }
        if p["dropped_events"].as_u64().unwrap_or(0) > 0 {
            outln!(o, "      {} events dropped (queue full)", p["dropped_events"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The disk-full case of issue 14: the record lost 11710 events in 10
    /// failed writes, its queue refused none.
    fn disk_full() -> Value {
        json!({
            "agent": {"version": "0.1.0", "pid": 1, "uptime_secs": 5, "data_dir": "/var/lib/edr"},
            "pipeline": {"events": 20000, "queued_events": 0},
            "collectors": [
                {"name": "process", "events": 15000, "dropped": 0, "lost": 7, "mode": "netlink"},
                {"name": "file", "events": 5000, "dropped": 3, "lost": 0, "mode": "fanotify"}
            ],
            "store": {"events": 8290, "alerts": 1, "actions": 0, "bytes_on_disk": 1048576, "writes_queued": 0,
                      "events_dropped": 0, "events_lost": 11710, "write_errors": 10, "alerts_dropped": 0, "actions_dropped": 0},
            "plugins": [{"key": "edr.builtin/lineage", "health": "active", "metrics": {}, "dropped_events": 2}],
            "packs": {"active": [], "recent": []}
        })
    }

    #[test]
    fn human_status_reports_the_records_losses_as_json_does() {
        let s = disk_full();
        let losses = LossSummary::from_status(&s);
        assert_eq!(losses.store_lost, 11710);
        assert_eq!(losses.store_write_errors, 10);
        assert_eq!(losses.unrecorded_events(), 11710);
        assert_eq!((losses.kernel_lost, losses.collector_dropped, losses.plugin_dropped), (7, 3, 2));
        let text = render(&s, &losses);
        let record = text.lines().find(|l| l.starts_with("record:")).unwrap();
        assert!(record.contains("NOT RECORDED: 11710 events lost to failed writes (10 write errors)"), "{record}");
        assert!(!text.contains("0 events dropped"), "{text}");
        let summary = text.lines().find(|l| l.starts_with("losses:")).unwrap();
        assert_eq!(summary, "losses: 7 lost by the kernel, 3 dropped at the collector queue, 2 dropped at plugin queues, 11710 not recorded");
        // The JSON form carries the same summary.
        let v = serde_json::to_value(&losses).unwrap();
        assert_eq!(v["store_lost"], 11710);
        assert_eq!(v["store_write_errors"], 10);
    }

    #[test]
    fn a_status_without_losses_says_so() {
        let mut s = disk_full();
        s["store"]["events_lost"] = json!(0);
        s["store"]["write_errors"] = json!(0);
        s["collectors"] = json!([]);
        s["plugins"] = json!([]);
        let losses = LossSummary::from_status(&s);
        assert_eq!(losses, LossSummary::default());
        let text = render(&s, &losses);
        assert!(text.contains("losses: none"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("record:") && l.ends_with("nothing lost")), "{text}");
    }
}
