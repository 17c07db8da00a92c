//! Signed packs in a running agent: hot swap with no missed event, every
//! tampered or bad variant refused while the old version keeps alerting,
//! rollback (automatic and manual), anti-rollback and plugin state across a
//! restart, and the update URL.

mod common;
use common::agent::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

const PACK: &str = "com.test.stateful";
const PROBE: &str = "/usr/bin/stateful-probe";
const EXEC: &str = r#"["process-exec"]"#;

fn config(publisher: &Publisher) -> String {
    // No built-in pack: these tests are about the test publisher's packs.
    format!(
        "[plugins]\nbuiltin = false\n[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n[runtime]\nbatch_timeout_ms = 10\n{}",
        publisher.trust_config("test-publisher")
    )
}

/// Probe alerts so far: (count reported, pack version), in the order the
/// agent wrote them (one plugin: event order).
fn probes(agent: &Agent) -> Vec<(u64, String)> {
    agent
        .alerts()
        .into_iter()
        .filter(|a| a["rule"]["id"] == "test.stateful.count")
        .map(|a| {
            let count: u64 = a["message"].as_str().unwrap().trim_start_matches("count ").parse().unwrap();
            (count, a["edr"]["pack"]["version"].as_str().unwrap().to_string())
        })
        .collect()
}

fn rejections(agent: &Agent) -> Vec<String> {
    agent.health().into_iter().filter(|h| h["event"]["action"] == "pack-rejected").map(|h| h["edr"]["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn hot_swap_refusals_rollback_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = Publisher::new(dir.path(), "vendor");
    std::fs::create_dir_all(dir.path().join("stranger")).unwrap();
    let stranger = Publisher::new(&dir.path().join("stranger"), "stranger");
    let mut agent = Agent::start(dir.path(), &config(&vendor));
    let incoming = agent.data_dir.join("packs-incoming");

    // 1. First version: dropped in, active within 5 s.
    let v1 = vendor.pack(PACK, "1.0.0", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    drop_pack(&v1, &incoming);
    let took = agent.wait_for("1.0.0 active", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("1.0.0"));
    eprintln!("drop-in activation of 1.0.0 took {took:?}");
    assert!(took < Duration::from_secs(5), "activation took {took:?}");

    // 2. A continuous stream; 1.1.0 is dropped in while it flows, and the
    // stream goes on (at least 600 events) until 1.1.0 is active and has had
    // 100 more, however long the swap takes on a loaded machine (30 s at most).
    let v11 = vendor.pack(PACK, "1.1.0", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    let mut swap_started = None;
    let mut swapped_at = None;
    let mut total = 0u64;
    let stream_limit = Instant::now() + Duration::from_secs(30);
    while total < 600 || swapped_at.is_none_or(|at| total < at + 100) {
        agent.send(&exec_line(PROBE, 10_000 + total as u32));
        total += 1;
        if total == 101 {
            drop_pack(&v11, &incoming);
            swap_started = Some(Instant::now());
        }
        if swapped_at.is_none() && total > 101 && total.is_multiple_of(20) && agent.active_version(PACK).as_deref() == Some("1.1.0") {
            swapped_at = Some(total);
        }
        assert!(Instant::now() < stream_limit, "1.1.0 not active 30 s into the stream");
        std::thread::sleep(Duration::from_millis(5));
    }
    agent.wait_for("every probe alerted", Duration::from_secs(30), |a| probes(a).len() as u64 >= total);
    let seen = probes(&agent);
    assert_eq!(seen.len() as u64, total, "no event missed, none doubled");
    // The state counter runs 1..=600 across the swap: no gap, no repeat, no reset.
    assert_eq!(seen.iter().map(|(c, _)| *c).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    let first_new = seen.iter().position(|(_, v)| v == "1.1.0").expect("the new version processed events");
    assert!(first_new > 0, "the old version processed the first events");
    assert!(seen[first_new..].iter().all(|(_, v)| v == "1.1.0"), "once swapped, only the new version runs");
    eprintln!(
        "swap during the stream: events 1..{first_new} on 1.0.0, {}..{total} on 1.1.0 (dropped at event 101, {:?} before the stream ended)",
        first_new + 1,
        swap_started.unwrap().elapsed()
    );
    assert_eq!(agent.active_version(PACK).as_deref(), Some("1.1.0"));

    // 3. Every bad variant is refused; 1.1.0 stays active and keeps alerting.
    let mut count = total;
    let mut expect_refusal = |agent: &mut Agent, what: &str, reason: &str, archive: &Path| {
        let before = rejections(agent).len();
        drop_pack(archive, &incoming);
        agent.wait_for(what, Duration::from_secs(30), |a| rejections(a).len() > before);
        assert_eq!(rejections(agent).last().unwrap(), reason, "{what}");
        assert_eq!(agent.active_version(PACK).as_deref(), Some("1.1.0"), "{what}: the old version stays");
        count += 1;
        agent.send(&exec_line(PROBE, 20_000 + count as u32));
        agent.wait_for("the old version still alerting", Duration::from_secs(30), |a| probes(a).len() as u64 >= count);
        assert_eq!(probes(agent).last().unwrap(), &(count, "1.1.0".to_string()), "{what}");
    };
    let tampered = vendor.pack(PACK, "1.2.0", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    let mut bytes = std::fs::read(&tampered).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&tampered, bytes).unwrap();
    expect_refusal(&mut agent, "a tampered archive", "bad_signature", &tampered);
    let foreign = stranger.pack(PACK, "1.2.1", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    expect_refusal(&mut agent, "an unknown key", "unknown_key", &foreign);
    let older = vendor.pack(PACK, "1.0.5", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    expect_refusal(&mut agent, "a lower version", "rollback", &older);
    let unsigned = vendor.pack(PACK, "1.2.2", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    std::fs::remove_file(edr_pack::signature_path(&unsigned)).unwrap();
    expect_refusal(&mut agent, "a missing signature", "missing_signature", &unsigned);
    let trapping = vendor.pack(PACK, "1.2.3", "stateful", "edr-hostile-panic", r#"["process-exec", "file"]"#, r#"["log"]"#);
    expect_refusal(&mut agent, "a plugin failing the canary", "staging_failed", &trapping);
    let overreaching = vendor.pack(PACK, "1.2.4", "stateful", "edr-test-stateful", EXEC, r#"["log"]"#);
    expect_refusal(&mut agent, "a plugin importing an ungranted capability", "staging_failed", &overreaching);
    // Judged archives leave the drop-in directory: refused ones with their reason.
    let reason = std::fs::read_to_string(incoming.join("rejected").join(format!("{}.reason", foreign.file_name().unwrap().to_str().unwrap()))).unwrap();
    assert!(reason.contains("key"), "{reason}");
    assert!(incoming.join("rejected").join(foreign.file_name().unwrap()).exists());
    assert!(incoming.join("done").join(v11.file_name().unwrap()).exists());
    let waiting: Vec<_> = std::fs::read_dir(&incoming).unwrap().flatten().filter(|e| e.path().is_file()).map(|e| e.file_name()).collect();
    assert!(waiting.is_empty(), "judged archives stay in the drop-in directory: {waiting:?}");
    let log = agent.log();
    assert!(log.contains("failed the canary batch"), "{log}");
    assert!(log.contains(&format!("edr:plugin/state@{}", edr_runtime::CONTRACT_VERSION)) && log.contains("was not granted"), "the refusal names the import");

    // 4. A version that passes the canary but traps in service is rolled back automatically.
    let bad = vendor.pack(PACK, "1.3.0", "stateful", "edr-hostile-corrupt-after-trap", EXEC, r#"["log"]"#);
    drop_pack(&bad, &incoming);
    agent.wait_for("1.3.0 active", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("1.3.0"));
    for i in 0..3 {
        agent.send(&exec_line("/poison", 30_000 + i));
        std::thread::sleep(Duration::from_millis(300));
    }
    let took = agent.wait_for("automatic rollback to 1.1.0", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("1.1.0"));
    eprintln!("automatic rollback after the third strike took {took:?}");
    assert!(agent.health().iter().any(|h| h["event"]["action"] == "pack-activated" && h["message"].as_str().unwrap().contains("automatic rollback")));
    count += 1;
    agent.send(&exec_line(PROBE, 40_000));
    agent.wait_for("1.1.0 alerting again", Duration::from_secs(30), |a| probes(a).len() as u64 >= count);
    assert_eq!(probes(&agent).last().unwrap(), &(count, "1.1.0".to_string()));

    // 5. Manual rollback through the running agent.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edr"))
        .args(["pack", "rollback", PACK, "--data-dir", agent.data_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    agent.wait_for("manual rollback to 1.0.0", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("1.0.0"));
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_edr")).args(["pack", "list", "--data-dir", agent.data_dir.to_str().unwrap()]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("active 1.0.0 (highest ever 1.3.0)"), "{list}");
    assert!(list.contains("rolled back from 1.3.0") && list.contains("rolled back from 1.1.0"), "{list}");

    // 6. Restart: the rolled-back version comes back, state carries on, the floor holds.
    agent.stop();
    let mut agent = Agent::start(dir.path(), &config(&vendor));
    assert_eq!(agent.active_version(PACK).as_deref(), Some("1.0.0"));
    count += 1;
    agent.send(&exec_line(PROBE, 50_000));
    agent.wait_for("a probe after the restart", Duration::from_secs(30), |a| probes(a).len() as u64 >= count);
    assert_eq!(probes(&agent).last().unwrap(), &(count, "1.0.0".to_string()), "the count survived the restart");
    let replay_old = vendor.pack(PACK, "1.2.9", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    let before = rejections(&agent).len();
    drop_pack(&replay_old, &incoming);
    agent.wait_for("anti-rollback after restart", Duration::from_secs(30), |a| rejections(a).len() > before);
    assert_eq!(rejections(&agent).last().unwrap(), "rollback", "1.2.9 is below the highest ever activated (1.3.0), even after a restart");
    agent.stop();
}

/// Serves files from `dir` over HTTP on 127.0.0.1 (a static update server).
fn serve(dir: std::path::PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            // One thread per connection, like any server: a client holding a
            // kept-alive connection must not block the next one.
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).map(|n| n == 0).unwrap_or(true) {
                        return;
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        line.clear();
                    }
                    let (status, body) = match std::fs::read(dir.join(&path)) {
                        Ok(body) => ("200 OK", body),
                        Err(_) => ("404 Not Found", Vec::new()),
                    };
                    if write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len()).and_then(|_| stream.write_all(&body)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_version_published_at_the_update_url_is_activated() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = Publisher::new(dir.path(), "vendor");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let url = serve(site.clone());
    let mut agent = Agent::start(dir.path(), &format!("{}[packs]\nupdate_url = {url:?}\npoll_interval_secs = 1\n", config(&vendor)));
    let publish = |version: &str| {
        let archive = vendor.pack(PACK, version, "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
        let name = archive.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&archive, site.join(&name)).unwrap();
        std::fs::copy(edr_pack::signature_path(&archive), site.join(format!("{name}.minisig"))).unwrap();
        let index: BTreeMap<&str, serde_json::Value> = [("packs", serde_json::json!([{"id": PACK, "version": version, "file": name}]))].into();
        std::fs::write(site.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    };
    publish("2.0.0");
    let took = agent.wait_for("2.0.0 from the update URL", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("2.0.0"));
    eprintln!("update URL activation of 2.0.0 took {took:?} (1 s poll interval)");
    assert!(took < Duration::from_secs(5), "activation took {took:?}");
    publish("2.1.0");
    agent.wait_for("2.1.0 from the update URL", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("2.1.0"));
    agent.send(&exec_line(PROBE, 1));
    agent.wait_for("an alert from 2.1.0", Duration::from_secs(30), |a| a.alerts().iter().any(|x| x["edr"]["pack"]["version"] == "2.1.0"));
    let alert = agent.alerts().into_iter().find(|x| x["edr"]["pack"]["version"] == "2.1.0").unwrap();
    assert_eq!(alert["edr"]["pack"]["id"], PACK);
    assert!(alert["edr"]["pack"]["signer"].as_str().unwrap().starts_with("test-publisher ("), "{alert}");
    agent.stop();
}

/// Issue 14: deleting `packs/state.json` reset the anti-rollback floor, so
/// an older (perhaps vulnerable) version was accepted after a restart. The
/// floor is in the record too, and the agent takes the higher of the two.
#[test]
fn deleting_the_state_file_does_not_reset_the_anti_rollback_floor() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = Publisher::new(dir.path(), "vendor");
    let agent = Agent::start(dir.path(), &config(&vendor));
    let incoming = agent.data_dir.join("packs-incoming");
    let v2 = vendor.pack(PACK, "2.0.0", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    drop_pack(&v2, &incoming);
    agent.wait_for("2.0.0 active", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("2.0.0"));
    let data_dir = agent.data_dir.clone();
    agent.stop();

    // The attack: remove the one file that held the floor, restart.
    let state = data_dir.join("packs/state.json");
    std::fs::remove_file(&state).unwrap();
    let agent = Agent::start(dir.path(), &config(&vendor));
    assert!(agent.log().contains("lacked the anti-rollback floor the record holds"), "{}", agent.log());
    let restored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(restored["packs"][PACK]["highest"], "2.0.0", "state.json gets the floor back: {restored}");
    let v1 = vendor.pack(PACK, "1.0.0", "stateful", "edr-test-stateful", EXEC, r#"["log", "state"]"#);
    let before = rejections(&agent).len();
    drop_pack(&v1, &incoming);
    agent.wait_for("1.0.0 refused", Duration::from_secs(30), |a| rejections(a).len() > before);
    assert_eq!(rejections(&agent).last().unwrap(), "rollback", "1.0.0 is older than 2.0.0, the highest ever activated");
    let refusal = agent.health().into_iter().rfind(|h| h["event"]["action"] == "pack-rejected").unwrap();
    assert!(refusal["message"].as_str().unwrap().contains("older than the installed 2.0.0"), "{refusal}");
    assert_eq!(agent.active_version(PACK), None, "1.0.0 was not activated");
    // The version at the floor itself may come back (it is no rollback).
    drop_pack(&v2, &incoming);
    agent.wait_for("2.0.0 active again", Duration::from_secs(30), |a| a.active_version(PACK).as_deref() == Some("2.0.0"));
    agent.stop();
}
