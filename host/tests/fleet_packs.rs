//! Pack rollout through the fleet, with the real binaries: `edr server run`
//! (and its nats-server child on a free loopback port), three `edr agent`
//! processes with their own data dirs, enrolled, and `edr fleet pack ...`.
//! A signed pack becomes active on all three (their heartbeats say so); a
//! pack whose bytes were changed after signing is refused by each agent's
//! own verification, with its reason; rollback takes every host back to its
//! previous version; halt and an unknown pack name answer as documented; a
//! fleet-wide hunt returns rows from all three.
//! Every process is stopped on drop, also when the test fails.

mod common;
use common::agent::Publisher;
use edr_testkit::{free_port, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const EDR: &str = env!("CARGO_BIN_EXE_edr");
const PACK: &str = "com.test.fleetpack";

/// The children, SIGTERMed (then killed) on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for c in &mut self.0 {
            if !wait_until(Duration::from_secs(5), || c.try_wait().ok().flatten().is_some()) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn spawn_logged(args: &[&str], log: &Path) -> Child {
    let mut cmd = Command::new(EDR);
    cmd.args(args);
    common::fleet::spawn_logging(cmd, log)
}

/// `edr fleet --dir DIR ARGS`: (success, stdout, stderr).
fn fleet(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(EDR).args(["fleet", "--dir", dir.to_str().unwrap()]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fleet_json(dir: &Path, args: &[&str]) -> Value {
    let (ok, out, err) = fleet(dir, args);
    assert!(ok, "edr fleet {args:?}: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("edr fleet {args:?}: {e}: {out}"))
}

/// Each host's state in `edr fleet pack status PACK --json`.
fn states(dir: &Path) -> Vec<(String, String, String)> {
    let (ok, out, _) = fleet(dir, &["pack", "status", PACK, "--json"]);
    if !ok {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| (h["state"].as_str().unwrap_or("").into(), h["heartbeat_version"].as_str().unwrap_or("").into(), h["reason"].as_str().unwrap_or("").into()))
        .collect()
}

fn agent_config(work: &Path, n: usize, publisher: &Publisher) -> PathBuf {
    let plugins = work.join(format!("plugins{n}"));
    std::fs::create_dir_all(&plugins).unwrap();
    let path = work.join(format!("edr{n}.toml"));
    let text = format!(
        "data_dir = {:?}\n[plugins]\nbuiltin = false\ndir = {:?}\n[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n{}",
        work.join(format!("data{n}")),
        plugins,
        publisher.trust_config("vendor")
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn pack(p: &Publisher, version: &str) -> PathBuf {
    p.pack(PACK, version, "lineage", "edr-plugin-lineage", r#"["process-exec"]"#, r#"["log"]"#)
}

#[test]
fn a_pack_rolls_out_to_three_agents_tampered_ones_are_refused_and_it_rolls_back() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fleet");
    let (nats, api) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let out = Command::new(EDR)
        .args(["server", "init", "--dir", dir.to_str().unwrap(), "--nats-listen", &nats, "--listen", &api, "--heartbeat-secs", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "server init: {}", String::from_utf8_lossy(&out.stderr));
    let mut children = Children::default();
    let server_log = work.path().join("server.log");
    children.0.push(spawn_logged(&["server", "run", "--dir", dir.to_str().unwrap()], &server_log));
    let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(30), || fleet(&dir, &["hosts"]).0), "the API answers: {}", log(&server_log));

    let vendor_dir = work.path().join("vendor");
    std::fs::create_dir_all(&vendor_dir).unwrap();
    let vendor = Publisher::new(&vendor_dir, "vendor");
    for n in 0..3 {
        let (ok, token, err) = fleet(&dir, &["enroll-token", "--ttl", "10m"]);
        assert!(ok, "{err}");
        let config = agent_config(work.path(), n, &vendor);
        children.0.push(spawn_logged(&["agent", "--config", config.to_str().unwrap(), "--enroll", token.trim()], &work.path().join(format!("agent{n}.log"))));
    }
    let online = || fleet_json(&dir, &["hosts", "--json"]).as_array().map(|h| h.iter().filter(|h| h["state"] == "online").count()).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(60), || online() == 3), "three agents online: {}", log(&work.path().join("agent0.log")));

    // A hunt reaches all three (the client path `edr fleet query` uses).
    let hunt = fleet_json(&dir, &["query", "SELECT count(*) AS n FROM alert", "--json"]);
    let hunted: std::collections::BTreeSet<&str> = hunt["rows"].as_array().unwrap().iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(hunted.len(), 3, "rows from every host: {hunt}");

    // 1. A signed pack: active on all three, the heartbeats agree.
    let v1 = pack(&vendor, "1.0.0");
    let published = fleet_json(&dir, &["pack", "publish", v1.to_str().unwrap()]);
    assert_eq!(published["targets"].as_array().unwrap().len(), 3, "{published}");
    let all_active = |version: &str| {
        let s = states(&dir);
        s.len() == 3 && s.iter().all(|(st, hb, _)| st == "active" && hb == version)
    };
    assert!(wait_until(Duration::from_secs(90), || all_active("1.0.0")), "1.0.0 active on all three: {:?}\n{}", states(&dir), log(&server_log));

    // 2. The same pack id, other bytes, the genuine signature: each agent's verification refuses it.
    let other_dir = work.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let tampered = Publisher::new(&other_dir, "vendor").pack(PACK, "1.1.0", "lineage", "edr-plugin-lineage", r#"["process-exec"]"#, r#"["log", "state"]"#);
    let genuine = pack(&vendor, "1.1.0");
    std::fs::copy(edr_pack::signature_path(&genuine), edr_pack::signature_path(&tampered)).unwrap();
    fleet_json(&dir, &["pack", "publish", tampered.to_str().unwrap()]);
    let all_refused = || {
        let s = states(&dir);
        s.len() == 3 && s.iter().all(|(st, hb, why)| st == "refused" && hb == "1.0.0" && why.contains("signature"))
    };
    assert!(wait_until(Duration::from_secs(60), all_refused), "refused by each, 1.0.0 still active: {:?}", states(&dir));
    let (_, table, _) = fleet(&dir, &["pack", "status", PACK]);
    assert!(table.contains("1.1.0") && table.contains("refused"), "{table}");

    // 3. A newer genuine version, then a fleet-wide rollback to 1.0.0.
    let v12 = pack(&vendor, "1.2.0");
    fleet_json(&dir, &["pack", "publish", v12.to_str().unwrap(), "--percent", "100"]);
    assert!(wait_until(Duration::from_secs(90), || all_active("1.2.0")), "1.2.0 active on all three: {:?}", states(&dir));
    let rolled = fleet_json(&dir, &["pack", "rollback", PACK, "--reason", "bad rules"]);
    let hosts = rolled["hosts"].as_array().unwrap();
    assert!(hosts.len() == 3 && hosts.iter().all(|h| h["state"] == "rolled_back"), "{rolled}");
    let back = || {
        let s = states(&dir);
        s.len() == 3 && s.iter().all(|(st, hb, _)| st == "rolled_back" && hb == "1.0.0")
    };
    assert!(wait_until(Duration::from_secs(30), back), "every host runs 1.0.0 again: {:?}", states(&dir));
    let list = fleet_json(&dir, &["pack", "status", "--json"]);
    assert!(list["packs"].as_array().unwrap().iter().any(|p| p["version"] == "1.2.0" && p["halted"] == true && p["rolled_back"] == true), "{list}");

    // 4. Halt, and a pack this server never published.
    let halted = fleet_json(&dir, &["pack", "halt", PACK]);
    assert_eq!(halted["halted"], true);
    let (ok, _, err) = fleet(&dir, &["pack", "status", "com.test.nothing"]);
    assert!(!ok && err.contains("no rollout of pack"), "{err}");
    let (ok, _, err) = fleet(&dir, &["pack", "halt", "com.test.nothing"]);
    assert!(!ok && err.contains("404"), "{err}");

    let server = log(&server_log);
    assert!(!server.contains("panicked"), "{server}");
}
