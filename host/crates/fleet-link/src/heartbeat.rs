//! The heartbeat: host facts and what the agent's status says.

use edr_fleet_proto::msg::{CollectorMode, Heartbeat, PackVersion, SelfRelease};
use serde_json::Value;
use std::collections::BTreeMap;

/// Operating system name (`PRETTY_NAME` of `/etc/os-release`).
pub fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").or_else(|_| std::fs::read_to_string("/usr/lib/os-release")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()).unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// Kernel release (`/proc/sys/kernel/osrelease`).
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// What the link itself knows, for the heartbeat.
#[derive(Debug, Clone)]
pub struct LinkFacts {
    /// Host id.
    pub host_id: String,
    /// Heartbeat interval.
    pub interval_secs: u64,
    /// Agent version when the status does not say.
    pub agent_version: String,
    /// Alerts forwarded since start.
    pub alerts_forwarded: u64,
    /// The cursor.
    pub alert_cursor: u64,
    /// Events forwarded to the central record since start, and its cursor.
    pub events_forwarded: u64,
    /// The central record's cursor.
    pub events_cursor: u64,
    /// The last isolation fallback (time, reason), if the host released itself.
    pub self_release: Option<(u64, String)>,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Builds the heartbeat from the agent's status document (`edr status --json`'s form).
pub fn build(facts: &LinkFacts, status: Result<Value, String>, now: u64) -> Heartbeat {
    let (s, status_error) = match status {
        Ok(s) => (s, None),
        Err(e) => (Value::Null, Some(e)),
    };
    let packs = s["packs"]["active"]
        .as_array()
        .map(|a| a.iter().map(|p| PackVersion { id: p["id"].as_str().unwrap_or("").into(), version: p["version"].as_str().unwrap_or("").into() }).collect())
        .unwrap_or_default();
    let mut drops = BTreeMap::new();
    let collectors = s["collectors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or("").to_string();
                    drops.insert(format!("collector.{name}.dropped"), u(&c["dropped"]));
                    drops.insert(format!("collector.{name}.lost"), u(&c["lost"]));
                    CollectorMode { mode: c["mode"].as_str().unwrap_or("").into(), name }
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(plugins) = s["plugins"].as_array() {
        drops.insert("plugins.dropped_events".into(), plugins.iter().map(|p| u(&p["dropped_events"])).sum());
    }
    if s["store"].is_object() {
        drops.insert("record.events_dropped".into(), u(&s["store"]["events_dropped"]));
        drops.insert("record.alerts_dropped".into(), u(&s["store"]["alerts_dropped"]));
    }
    Heartbeat {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id: facts.host_id.clone(),
        time: now,
        interval_secs: facts.interval_secs,
        hostname: crate::enroll::hostname(),
        os: os_name(),
        kernel: kernel(),
        agent_version: s["agent"]["version"].as_str().map(String::from).unwrap_or_else(|| facts.agent_version.clone()),
        packs,
        collectors,
        isolated: isolated(&s),
        drops,
        alerts_forwarded: facts.alerts_forwarded,
        alert_cursor: facts.alert_cursor,
        events_forwarded: facts.events_forwarded,
        events_cursor: facts.events_cursor,
        status_error,
        self_release: facts.self_release.as_ref().map(|(time, reason)| SelfRelease { time: *time, reason: reason.clone() }),
        pipeline_events: s["pipeline"]["events"].as_u64(),
    }
}

/// Whether the status document says the host is isolated.
pub fn isolated(status: &Value) -> bool {
    status["response"]["isolation"]["isolated"].as_bool().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_status_document_becomes_inventory() {
        let status = json!({
            "agent": {"version": "9.9.9"},
            "packs": {"active": [{"id": "edr.builtin", "version": "1.2.0", "signer": "dev"}]},
            "collectors": [{"name": "process", "mode": "netlink", "dropped": 3, "lost": 1}],
            "plugins": [{"dropped_events": 2}, {"dropped_events": 5}],
            "store": {"events_dropped": 4, "alerts_dropped": 0},
            "response": {"isolation": {"isolated": true}},
            "pipeline": {"events": 12345, "queued_events": 0},
        });
        let facts = LinkFacts {
            host_id: "h0123456789abcdef".into(),
            interval_secs: 10,
            agent_version: "0.1.0".into(),
            alerts_forwarded: 0,
            alert_cursor: 0,
            events_forwarded: 0,
            events_cursor: 0,
            self_release: None,
        };
        let hb = build(&facts, Ok(status), 5);
        assert_eq!(hb.agent_version, "9.9.9");
        assert_eq!(hb.packs, vec![PackVersion { id: "edr.builtin".into(), version: "1.2.0".into() }]);
        assert_eq!(hb.collectors[0].mode, "netlink");
        assert!(hb.isolated);
        assert_eq!(hb.drops["plugins.dropped_events"], 7);
        assert_eq!(hb.drops["collector.process.dropped"], 3);
        assert_eq!(hb.pipeline_events, Some(12345));
        let down = build(&facts, Err("agent busy".into()), 5);
        assert_eq!((down.status_error.as_deref(), down.agent_version.as_str(), down.pipeline_events), (Some("agent busy"), "0.1.0", None));
    }
}
