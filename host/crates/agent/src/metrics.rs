//! The Prometheus endpoint: `GET /metrics` in the text exposition format
//! (version 0.0.4), rendered from the same status document `edr status
//! --json` prints, so both always agree. Off unless `[metrics] listen` is
//! set, and loopback only (the config refuses other addresses): it has no
//! authentication.
//!
//! HTTP is served by hyper on a one-thread tokio runtime of its own; a
//! scrape asks the agent for its status through an [`AgentHandle`], as the
//! control socket does, and waits at most 2 s.

use crate::config::AgentConfig;
use crate::health::HealthLog;
use crate::AgentHandle;
use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming as Body};
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// A running endpoint; stops when dropped.
pub struct MetricsServer {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Starts the endpoint when `[metrics] listen` is set; a failure (port
    /// taken) is reported and leaves the agent running without it.
    pub fn start_configured(cfg: &AgentConfig, agent: &AgentHandle, health: &HealthLog) -> Option<MetricsServer> {
        let addr = cfg.metrics.address().ok().flatten()?;
        match MetricsServer::start(addr, agent.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                health.record("metrics-failed", true, &format!("the metrics endpoint did not start: {e:#}"), serde_json::json!({"listen": addr.to_string()}));
                None
            }
        }
    }

    /// Binds `addr` and serves until dropped.
    pub fn start(addr: SocketAddr, agent: AgentHandle) -> anyhow::Result<MetricsServer> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().context("starting the metrics runtime")?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("metrics endpoint: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("edr-metrics".into()).spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        conn = listener.accept() => {
                            let Ok((stream, _)) = conn else { continue };
                            let agent = agent.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| handle(req, agent.clone()));
                                let io = hyper_util::rt::TokioIo::new(stream);
                                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                                    tracing::debug!("metrics connection: {e}");
                                }
                            });
                        }
                    }
                }
            });
        })?;
        tracing::info!(%addr, "metrics endpoint listening: http://{addr}/metrics");
        Ok(MetricsServer { shutdown: Some(tx), thread: Some(thread) })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(req: HttpRequest<Body>, agent: AgentHandle) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        Ok(Response::builder().status(code).header("content-type", ctype).body(Full::new(Bytes::from(body))).expect("static response parts are valid"))
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "only GET /metrics is served\n".into());
    }
    // The pipeline thread answers status requests between batches.
    let status =
        tokio::task::spawn_blocking(move || agent.status_within(Duration::from_secs(2)).ok().and_then(|s| serde_json::to_value(s).ok())).await.ok().flatten();
    match status {
        Some(s) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", render(&s)),
        None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the agent did not answer within 2 s\n".into()),
    }
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    Family { out }
}

/// A label value escaped per the exposition format (`\\`, `\"`, `\n`).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The status document as Prometheus text.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let o = &mut out;
    family(o, "edr_up", "gauge", "1 while the agent answers.").sample("edr_up", &[], 1.0);
    family(o, "edr_uptime_seconds", "gauge", "Seconds since the agent started.").sample("edr_uptime_seconds", &[], num(&s["agent"]["uptime_secs"]));
    family(o, "edr_events_received_total", "counter", "Events the pipeline received from the collectors.").sample(
        "edr_events_received_total",
        &[],
        num(&s["pipeline"]["events"]),
    );
    let collectors = s["collectors"].as_array().cloned().unwrap_or_default();
    for (metric, key, help) in [
        ("edr_collector_events_total", "events", "Events a collector produced."),
        ("edr_collector_partial_total", "partial", "Events emitted with fields missing (process gone before enrichment)."),
        ("edr_collector_dropped_total", "dropped", "Events a collector dropped because the agent's queue was full."),
        ("edr_collector_lost_total", "lost", "Events the kernel lost before the collector read them (overflows)."),
    ] {
        let mut f = family(o, metric, "counter", help);
        for c in &collectors {
            f.sample(metric, &[("collector", c["name"].as_str().unwrap_or("?")), ("mode", c["mode"].as_str().unwrap_or("?"))], num(&c[key]));
        }
    }
    let plugins = s["plugins"].as_array().cloned().unwrap_or_default();
    let metric = |key: &'static str| move |p: &Value| num(&p["metrics"][key]);
    type Extract = Box<dyn Fn(&Value) -> f64>;
    let per_plugin: [(&str, &str, &str, Extract); 9] = [
        ("edr_plugin_calls_total", "counter", "Batches delivered to a plugin.", Box::new(metric("calls"))),
        ("edr_plugin_events_total", "counter", "Events delivered to a plugin.", Box::new(metric("events"))),
        ("edr_plugin_findings_total", "counter", "Findings a plugin returned.", Box::new(metric("findings"))),
        ("edr_plugin_errors_total", "counter", "Failed calls (traps, timeouts, out of memory).", Box::new(metric("errors"))),
        ("edr_plugin_timeouts_total", "counter", "Calls stopped at their deadline.", Box::new(metric("timeouts"))),
        ("edr_plugin_memory_bytes", "gauge", "Linear memory of the plugin's live instance.", Box::new(metric("memory_bytes"))),
        (
            "edr_plugin_dropped_events_total",
            "counter",
            "Events a plugin never saw because its queue was full.",
            Box::new(|p: &Value| num(&p["dropped_events"])),
        ),
        ("edr_plugin_queued_batches", "gauge", "Batches waiting in a plugin's queue.", Box::new(|p: &Value| num(&p["queued_batches"]))),
        (
            "edr_plugin_quarantined",
            "gauge",
            "1 when a plugin is quarantined after repeated failures.",
            Box::new(|p: &Value| if p["health"].as_str() == Some("active") { 0.0 } else { 1.0 }),
        ),
    ];
    for (name, kind, help, value) in &per_plugin {
        let mut f = family(o, name, kind, help);
        for p in &plugins {
            f.sample(name, &[("plugin", p["key"].as_str().unwrap_or("?")), ("version", p["version"].as_str().unwrap_or("?"))], value(p));
        }
    }
    {
        let mut f = family(o, "edr_plugin_call_seconds", "gauge", "Recent call duration quantiles.");
        for p in &plugins {
            for (q, key) in [("0.5", "p50_us"), ("0.99", "p99_us")] {
                f.sample(
                    "edr_plugin_call_seconds",
                    &[("plugin", p["key"].as_str().unwrap_or("?")), ("version", p["version"].as_str().unwrap_or("?")), ("quantile", q)],
                    num(&p["metrics"][key]) / 1e6,
                );
            }
        }
    }
    {
        let mut f = family(o, "edr_pack_info", "gauge", "The active version of each detection pack.");
        for p in s["packs"]["active"].as_array().into_iter().flatten() {
            f.sample(
                "edr_pack_info",
                &[
                    ("pack", p["id"].as_str().unwrap_or("?")),
                    ("version", p["version"].as_str().unwrap_or("?")),
                    ("signer", p["signer"].as_str().unwrap_or("?")),
                ],
                1.0,
            );
        }
    }
    let store = &s["store"];
    if store.is_object() {
        for (metric, key, kind, help) in [
            ("edr_store_events", "events", "gauge", "Events in the record."),
            ("edr_store_alerts", "alerts", "gauge", "Alerts in the record."),
            ("edr_store_actions", "actions", "gauge", "Response actions in the record."),
            ("edr_store_bytes_on_disk", "bytes_on_disk", "gauge", "Database, WAL and shared-memory files."),
            ("edr_store_writes_queued", "writes_queued", "gauge", "Writes waiting for the store's writer."),
            ("edr_store_events_written_total", "events_written", "counter", "Events committed since the agent started."),
            ("edr_store_events_dropped_total", "events_dropped", "counter", "Events the store refused because its queue was full."),
        ] {
            family(o, metric, kind, help).sample(metric, &[], num(&store[key]));
        }
    }
    let response = &s["response"];
    if response.is_object() {
        family(o, "edr_isolated", "gauge", "1 while the host is isolated from the network.").sample(
            "edr_isolated",
            &[],
            if response["isolation"]["isolated"].as_bool() == Some(true) { 1.0 } else { 0.0 },
        );
        family(o, "edr_quarantined_files", "gauge", "Files in the quarantine store.").sample("edr_quarantined_files", &[], num(&response["quarantined"]));
        family(o, "edr_exec_blocks", "gauge", "Active execution blocks.").sample("edr_exec_blocks", &[], num(&response["blocks"]));
    }
    let outputs = s["outputs"].as_array().cloned().unwrap_or_default();
    for (metric, key, kind, help) in [
        ("edr_output_delivered_total", "delivered", "counter", "Alerts an output delivered."),
        ("edr_output_queued", "queued", "gauge", "Alerts waiting in an output's spool."),
        ("edr_output_dropped_total", "dropped", "counter", "Alerts an output could not keep (spool full, best-effort send failed)."),
    ] {
        let mut f = family(o, metric, kind, help);
        for out in &outputs {
            f.sample(metric, &[("output", out["name"].as_str().unwrap_or("?"))], num(&out[key]));
        }
    }
    family(o, "edr_config_reloads_total", "counter", "Successful configuration reloads (SIGHUP).").sample(
        "edr_config_reloads_total",
        &[],
        num(&s["config"]["reloads"]),
    );
    family(o, "edr_config_reload_failures_total", "counter", "Configuration reloads refused (the old configuration stayed).").sample(
        "edr_config_reload_failures_total",
        &[],
        num(&s["config"]["reload_failures"]),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_escapes_labels() {
        let s = serde_json::json!({
            "agent": {"uptime_secs": 5},
            "pipeline": {"events": 42},
            "collectors": [{"name": "process", "mode": "netlink", "events": 40, "partial": 1, "dropped": 0, "lost": 0}],
            "plugins": [{"key": "pack/x\"y", "version": "1.0.0", "health": "active", "dropped_events": 0, "queued_batches": 0,
                          "metrics": {"calls": 3, "events": 42, "findings": 1, "errors": 0, "timeouts": 0, "memory_bytes": 65536, "p50_us": 12, "p99_us": 80}}],
            "packs": {"active": [{"id": "edr.builtin", "version": "0.1.0", "signer": "edr-dev"}]},
            "config": {"reloads": 2, "reload_failures": 1},
        });
        let text = render(&s);
        assert!(text.contains("# TYPE edr_events_received_total counter\nedr_events_received_total 42\n"), "{text}");
        assert!(text.contains("edr_collector_events_total{collector=\"process\",mode=\"netlink\"} 40\n"), "{text}");
        assert!(text.contains("edr_plugin_events_total{plugin=\"pack/x\\\"y\",version=\"1.0.0\"} 42\n"), "{text}");
        assert!(text.contains("edr_plugin_call_seconds{plugin=\"pack/x\\\"y\",version=\"1.0.0\",quantile=\"0.99\"} 0.00008\n"), "{text}");
        assert!(text.contains("edr_config_reloads_total 2\n"), "{text}");
        // Every sample line belongs to a family declared just before.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "sample without a TYPE line: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
            }
        }
    }
}
