//! A detector written against the frozen `edr:plugin@0.1.0` contract
//! (`wit/versions/0.1.0`), with `wit-bindgen` directly and not the SDK
//! (which follows the newest version): the agent must keep loading plugins
//! built before the contract moved on, beside current ones.
//!
//! It flags programs run from `/tmp` (rule `test.v0-1.exec-from-tmp`),
//! reports every network event it is given (rule `test.v0-1.network-seen`,
//! with the op: the agent must never give it a `close`, which 0.1.0 lacks)
//! and uses every 0.1.0 import it is granted by default (`log`, `clock`,
//! `state`, `process`), so a missing or mistyped old import fails the test
//! that loads it.

wit_bindgen::generate!({ path: "../../../wit/versions/0.1.0", world: "detector" });

use edr::plugin::types::{EventBody, EventKind, LogLevel, NetworkEvent, NetworkOp, Severity, StrList, StrRef};
use edr::plugin::{clock, log, process, state};

struct LegacyDetector;

fn text_at(text: &str, r: StrRef) -> &str {
    text.get(r.offset as usize..r.offset as usize + r.len as usize).unwrap_or("")
}

fn list_at<'a>(text: &'a str, lists: &'a [u32], l: StrList) -> impl Iterator<Item = &'a str> + 'a {
    (l.first..l.first.saturating_add(l.count)).filter_map(move |i| {
        let i = i as usize * 2;
        Some(text_at(text, StrRef { offset: *lists.get(i)?, len: *lists.get(i + 1)? }))
    })
}

impl Guest for LegacyDetector {
    fn init(_config: Config) -> Result<PluginInfo, String> {
        log::log(LogLevel::Info, &format!("contract 0.1.0 fixture starting at {}", clock::now()));
        Ok(PluginInfo {
            name: "contract-v0-1".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Flags programs run from /tmp (built against edr:plugin@0.1.0)".into(),
            subscriptions: vec![EventKind::ProcessExec, EventKind::Network],
        })
    }

    fn on_events(text: String, lists: Vec<u32>, events: Vec<Event>) -> Vec<Finding> {
        let mut findings = Vec::new();
        for e in &events {
            if let EventBody::Network(n) = &e.body {
                findings.push(network_seen(e.id, n));
                continue;
            }
            let EventBody::ProcessExec(x) = &e.body else { continue };
            let exe = text_at(&text, x.exe);
            if !exe.starts_with("/tmp/") {
                continue;
            }
            let argv: Vec<&str> = list_at(&text, &lists, x.argv).collect();
            let ancestors = process::ancestry(x.entity_id).len();
            findings.push(Finding {
                rule_id: "test.v0-1.exec-from-tmp".into(),
                title: "Program run from /tmp (0.1.0 plugin)".into(),
                severity: Severity::Medium,
                techniques: vec!["T1204.002".into()],
                message: format!("{exe} run from /tmp: {}", argv.join(" ")),
                author: "edr project".into(),
                event_ids: vec![e.id],
                evidence: vec![("parent".into(), text_at(&text, x.parent_exe).into()), ("known-ancestors".into(), ancestors.to_string())],
            });
        }
        let seen = state::get("seen").and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) + events.len() as u64;
        if let Err(e) = state::set("seen", &seen.to_le_bytes()) {
            log::log(LogLevel::Warn, &e);
        }
        findings
    }
}

/// What the plugin was given: the op as 0.1.0 names it, and the remote port.
fn network_seen(id: u64, n: &NetworkEvent) -> Finding {
    let op = match n.op {
        NetworkOp::Connect => "connect",
        NetworkOp::Accept => "accept",
        NetworkOp::Listen => "listen",
    };
    Finding {
        rule_id: "test.v0-1.network-seen".into(),
        title: "Network event seen (0.1.0 plugin)".into(),
        severity: Severity::Informational,
        techniques: vec![],
        message: format!("{op} remote port {}", n.remote_port),
        author: "edr project".into(),
        event_ids: vec![id],
        evidence: vec![("op".into(), op.into())],
    }
}

export!(LegacyDetector);
