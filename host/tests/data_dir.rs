//! The agent's data directory against a local attacker (issue 14): a data
//! dir someone else made is refused (item 2), nothing in it is written
//! through a planted link (items 2 and 7), the record is 0700 / 0600
//! (item 8), and drop-in files are size-checked before they are read, with
//! the agent's peak memory staying small (item 6).

mod common;
use common::agent::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VICTIM_TEXT: &str = "root's secret\n";
const NOBODY: u32 = 65534;

use edr_testkit::require_root;

fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, VICTIM_TEXT).unwrap();
    v
}

fn assert_victim_unchanged(v: &Path) {
    assert_eq!(std::fs::read_to_string(v).unwrap(), VICTIM_TEXT, "the agent wrote through a planted link");
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

const STDIN_CONFIG: &str = "[plugins]\nbuiltin = false\n[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n";

/// Runs `edr agent --config CFG --data-dir DATA` with stdin closed and
/// expects it to refuse to start: returns its stderr.
fn agent_refuses(dir: &Path, data_dir: &Path) -> String {
    let config = dir.join("edr.toml");
    std::fs::write(&config, STDIN_CONFIG).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edr"))
        .args(["agent", "--config", config.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not refuse the data dir {} within 60 s", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the agent started on {}:\n{err}", data_dir.display());
    err
}

/// Item 2: `mkdir /tmp/d; ln -s /root/secret /tmp/d/alerts.jsonl` as an
/// ordinary user, then root runs the agent on /tmp/d.
#[test]
fn a_data_dir_made_by_another_user_is_refused() {
    require_root!();
    let t = tempfile::tempdir().unwrap();
    // A /tmp of its own: world-writable and sticky.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let v = victim(t.path());
    let d = t.path().join("d");
    let made = Command::new("sh")
        .args(["-c", &format!("mkdir {0} && ln -s {1} {0}/alerts.jsonl", d.display(), v.display())])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(std::fs::metadata(&d).unwrap().uid(), NOBODY);
    let err = agent_refuses(t.path(), &d);
    assert!(err.contains(&format!("refusing {}", d.display())) && err.contains("owned by uid 65534"), "{err}");
    assert!(err.contains(&format!("chown root:root {0} && chmod 0700 {0}", d.display())), "the message says what to do: {err}");
    assert_victim_unchanged(&v);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "nothing was created in the refused dir");
}

/// Item 2: a root-made data dir holding a planted `alerts.jsonl` link (left
/// by an earlier compromise, say): the agent refuses to open it.
#[test]
fn a_planted_alerts_link_in_a_root_made_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let v = victim(t.path());
    let d = t.path().join("data");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&v, d.join("alerts.jsonl")).unwrap();
    let err = agent_refuses(t.path(), &d);
    assert!(err.contains(&format!("refusing {}: it is a symbolic link", d.join("alerts.jsonl").display())), "{err}");
    assert_victim_unchanged(&v);
}

/// Every directory under `dir` is 0700 and every other entry is readable by
/// its owner only; returns the relative paths seen.
fn check_private(dir: &Path, root: &Path, seen: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = mode(&p);
        let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
        if ft.is_dir() {
            assert_eq!(m, 0o700, "{rel} is a directory with mode {m:04o}");
            check_private(&p, root, seen);
        } else {
            assert_eq!(m & 0o077, 0, "{rel} has mode {m:04o}: other users can read it");
        }
        seen.push(rel);
    }
}

fn pack_config(vendor: &Publisher) -> String {
    format!("{STDIN_CONFIG}[runtime]\nbatch_timeout_ms = 10\n{}", vendor.trust_config("vendor"))
}

/// Item 8: on a fresh data dir the record is private: the dir 0700, the
/// store, alerts, actions, health and state files 0600.
#[test]
fn the_record_is_private_on_a_fresh_data_dir() {
    let t = tempfile::tempdir().unwrap();
    let vendor = Publisher::new(t.path(), "vendor");
    let mut agent = Agent::start(t.path(), &pack_config(&vendor));
    let v1 = vendor.pack("com.test.stateful", "1.0.0", "stateful", "edr-test-stateful", r#"["process-exec"]"#, r#"["log", "state"]"#);
    drop_pack(&v1, &agent.data_dir.join("packs-incoming"));
    agent.wait_for("1.0.0 active", Duration::from_secs(30), |a| a.active_version("com.test.stateful").as_deref() == Some("1.0.0"));
    agent.send(&exec_line("/usr/bin/stateful-probe", 4242));
    agent.wait_for("an alert", Duration::from_secs(30), |a| !a.alerts().is_empty());
    let data = agent.data_dir.clone();
    agent.stop();
    assert_eq!(mode(&data), 0o700);
    let mut seen = Vec::new();
    check_private(&data, &data, &mut seen);
    for f in ["events.db", "alerts.jsonl", "actions.jsonl", "health.jsonl", "packs/state.json", "packs-incoming/done/com.test.stateful-1.0.0.edrpack"] {
        assert!(seen.iter().any(|s| s == f), "{f} missing from the data dir: {seen:?}");
    }
    assert!(seen.iter().any(|s| s.starts_with("state/")), "no plugin state file: {seen:?}");
}

/// Item 8: an existing data dir left 0755 with 0644 files by an older agent
/// is tightened at start (with a log line), not refused.
#[test]
fn an_old_0755_data_dir_is_tightened() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("alerts.jsonl"), "").unwrap();
    std::fs::set_permissions(d.join("alerts.jsonl"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = Agent::start(t.path(), STDIN_CONFIG);
    let log = agent.log();
    agent.stop();
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&d.join("alerts.jsonl")), 0o600);
    assert!(log.contains("tightened to 0700") && log.contains("tightened to 0600"), "{log}");
}

fn rejected(agent: &Agent) -> Vec<String> {
    agent.health().into_iter().filter(|h| h["event"]["action"] == "pack-rejected").map(|h| h["message"].as_str().unwrap_or("").to_string()).collect()
}

/// Item 7: links planted where a rejected pack's reason file and archive
/// go are replaced, never written through.
#[test]
fn a_planted_reason_link_is_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let v = victim(t.path());
    let agent = Agent::start(t.path(), STDIN_CONFIG);
    let incoming = agent.data_dir.join("packs-incoming");
    let rejected_dir = incoming.join("rejected");
    std::fs::create_dir_all(&rejected_dir).unwrap();
    std::os::unix::fs::symlink(&v, rejected_dir.join("evil.edrpack.reason")).unwrap();
    std::os::unix::fs::symlink(&v, rejected_dir.join("evil.edrpack")).unwrap();
    std::fs::write(incoming.join("evil.edrpack.minisig"), "not a signature\n").unwrap();
    std::fs::write(incoming.join("evil.edrpack"), b"not a pack").unwrap();
    agent.wait_for("the rejection", Duration::from_secs(30), |a| !rejected(a).is_empty());
    agent.wait_for("the reason file", Duration::from_secs(10), |_| {
        std::fs::symlink_metadata(rejected_dir.join("evil.edrpack.reason")).is_ok_and(|m| m.is_file())
    });
    agent.stop();
    assert_victim_unchanged(&v);
    let reason = std::fs::read_to_string(rejected_dir.join("evil.edrpack.reason")).unwrap();
    assert!(reason.contains("malformed signature"), "{reason}");
    assert_eq!(std::fs::read(rejected_dir.join("evil.edrpack")).unwrap(), b"not a pack", "the archive replaced the link");
    assert_eq!(mode(&rejected_dir.join("evil.edrpack.reason")), 0o600);
}

/// The agent's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Item 6: a 3 GiB (sparse) archive and a 1 GiB (sparse) signature are
/// refused by size, with the size and the limit in the message, without
/// being read: the agent's peak memory stays small.
#[test]
fn oversized_drop_ins_are_refused_without_being_read() {
    let t = tempfile::tempdir().unwrap();
    let agent = Agent::start(t.path(), STDIN_CONFIG);
    let incoming = agent.data_dir.join("packs-incoming");
    let before = peak_rss(agent.child.id());
    std::fs::write(incoming.join("huge.edrpack.minisig"), "untrusted comment: x\n").unwrap();
    std::fs::File::create(incoming.join("huge.edrpack")).unwrap().set_len(3 << 30).unwrap();
    std::fs::File::create(incoming.join("bigsig.edrpack.minisig")).unwrap().set_len(1 << 30).unwrap();
    std::fs::write(incoming.join("bigsig.edrpack"), b"a small archive").unwrap();
    agent.wait_for("both refusals", Duration::from_secs(60), |a| rejected(a).len() >= 2);
    let peak = peak_rss(agent.child.id());
    let messages = rejected(&agent);
    agent.stop();
    eprintln!("agent peak RSS: {} MiB before the drop-ins, {} MiB after", before >> 20, peak >> 20);
    let huge = messages.iter().find(|m| m.contains("huge.edrpack")).expect("huge.edrpack refused");
    assert!(huge.contains("the archive is 3221225472 bytes, more than the limit of 67108864 bytes"), "{huge}");
    let bigsig = messages.iter().find(|m| m.contains("bigsig.edrpack")).expect("bigsig.edrpack refused");
    assert!(bigsig.contains("is 1073741824 bytes, more than the limit of 65536 bytes"), "{bigsig}");
    assert!(peak < 300 << 20, "the agent's peak RSS reached {} MiB", peak >> 20);
    assert!(incoming.join("rejected/huge.edrpack").exists() && incoming.join("rejected/bigsig.edrpack.minisig").exists(), "refused files are moved out");
}
