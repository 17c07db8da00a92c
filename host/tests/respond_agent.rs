//! Response through a running agent, on the real kernel (root; skipped
//! otherwise): the example response pack under each policy, and the
//! operator's `edr respond` commands with their undo.
//!
//! One test function, phases in sequence: two live agents at once would each
//! see (and act on) the other's test processes.

mod common;
use common::agent::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edr_testkit::is_root;

const PACK: &str = "com.example.response";

/// Removes paths and network namespaces, even when the test fails.
struct Cleanup {
    paths: Vec<PathBuf>,
    netns: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// Sends SIGCONT on drop, so a failing test never leaves the agent stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

fn edr(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn live_config(vendor: &Publisher, grant: &str, extra: &str) -> String {
    format!(
        "[plugins]\nbuiltin = false\n[output]\nstdout = false\n[collect]\nfile = \"off\"\nnetwork = \"off\"\nlogin = \"off\"\n{}[respond.packs.{PACK:?}]\n{grant}\n{extra}",
        vendor.trust_config("vendor")
    )
}

/// Starts a "reverse shell": a copy of bash in /tmp connected to a local
/// listener. It stays bash (a real reverse shell does): bash `exec`s the
/// last command of `-c` in place, and a shell that becomes `sleep` within a
/// millisecond leaves a busy collector only the exe of the bash exec (its
/// argv is gone from /proc; the event is partial), not the `/dev/tcp` the
/// plugin looks for.
fn start_reverse_shell(copy: &Path, port: u16) -> Child {
    std::fs::copy("/bin/bash", copy).unwrap();
    let child = Command::new(copy).arg("-c").arg(format!("exec 5<>/dev/tcp/127.0.0.1/{port}; sleep 60; exit 0")).stdout(Stdio::null()).spawn().unwrap();
    SHELL.store(child.id(), std::sync::atomic::Ordering::Relaxed);
    child
}

/// The pid of the last reverse shell, for failure messages.
static SHELL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn audit(agent: &Agent) -> Vec<serde_json::Value> {
    read_jsonl(&agent.data_dir.join("actions.jsonl"))
}

fn wait_records(agent: &Agent, n: usize) -> Vec<serde_json::Value> {
    let done = agent.poll_until(Duration::from_secs(20), |a| audit(a).len() >= n);
    assert!(done.is_some(), "timed out waiting for {n} audit records\n{}", diagnose(agent));
    audit(agent)
}

/// What the agent recorded and did, for a failure message.
fn diagnose(agent: &Agent) -> String {
    let pid = SHELL.load(std::sync::atomic::Ordering::Relaxed);
    let recorded = edr(&[
        "query",
        "--data-dir",
        agent.data_dir.to_str().unwrap(),
        &format!(
            "select id, ts, action, pid, ppid, exe, command_line, partial from process where exe like '/tmp/edr-revshell%' or pid = {pid} or ppid = {pid}"
        ),
    ])
    .1;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let proc_stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
    let recorded = format!("shell pid {pid}\n{proc_status}\nkernel stack:\n{proc_stack}\n{recorded}");
    format!("audit: {:#?}\n--- recorded ---\n{recorded}\n--- status ---\n{:#}\n--- agent log ---\n{}", audit(agent), agent.status(), agent.log())
}

fn exited_within(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn response_pack_policies_and_operator_actions() {
    if !is_root() {
        edr_testkit::skip("response actions and live telemetry need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vendor = Publisher::new(dir.path(), "vendor");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let tag = std::process::id();
    let copy = PathBuf::from(format!("/tmp/edr-revshell-{tag}"));
    let mut cleanup = Cleanup { paths: vec![copy.clone()], netns: Vec::new(), children: Vec::new() };
    let pack = vendor.pack_with_actions(
        PACK,
        "0.1.0",
        "kill-revshell",
        "edr-example-response",
        r#"["process-exec"]"#,
        r#"["log", "respond"]"#,
        r#"["kill-process", "quarantine-file"]"#,
    );

    let start_agent = |grant: &str, extra: &str, with_pack: bool| {
        let agent_dir = dir.path().join(format!("agent-{}", grant.len() + extra.len()));
        std::fs::create_dir_all(&agent_dir).unwrap();
        let agent = Agent::start(&agent_dir, &live_config(&vendor, grant, extra));
        if with_pack {
            drop_pack(&pack, &agent.data_dir.join("packs-incoming"));
            agent.wait_for("the response pack", Duration::from_secs(30), |a| a.active_version(PACK).is_some());
        }
        agent
    };

    // A: simulate: everything recorded, nothing done.
    {
        let agent = start_agent(
            r#"actions = ["kill-process", "quarantine-file"]
mode = "simulate""#,
            "",
            true,
        );
        let mut shell = start_reverse_shell(&copy, port);
        let records = wait_records(&agent, 2);
        assert!(records.iter().all(|r| r["decision"] == "simulated"), "{records:#?}");
        assert!(!exited_within(&mut shell, Duration::from_secs(1)), "simulate must not kill");
        assert!(copy.exists(), "simulate must not quarantine");
        let _ = shell.kill();
        let _ = shell.wait();
        agent.stop();
    }

    // B: only kill granted: the kill is enforced, the quarantine refused (and audited).
    {
        let agent = start_agent(
            r#"actions = ["kill-process"]
mode = "enforce""#,
            "#b\n",
            true,
        );
        let mut shell = start_reverse_shell(&copy, port);
        assert!(exited_within(&mut shell, Duration::from_secs(10)), "the reverse shell was not killed; {}", diagnose(&agent));
        let records = wait_records(&agent, 2);
        let kill = records.iter().find(|r| r["action"] == "kill-process").unwrap();
        assert_eq!(kill["decision"], "enforced", "{kill}");
        assert_eq!(kill["requester"]["pack"], PACK);
        let q = records.iter().find(|r| r["action"] == "quarantine-file").unwrap();
        assert_eq!(q["decision"], "refused", "{q}");
        assert!(copy.exists(), "a refused quarantine changes nothing");
        agent.stop();
    }

    // C: both granted: killed, and the dropped binary quarantined; restore is byte-exact.
    {
        let agent = start_agent(
            r#"actions = ["kill-process", "quarantine-file"]
mode = "enforce""#,
            "#c\n",
            true,
        );
        let mut shell = start_reverse_shell(&copy, port);
        assert!(exited_within(&mut shell, Duration::from_secs(10)), "the reverse shell was not killed; {}", diagnose(&agent));
        agent.wait_for("the binary quarantined", Duration::from_secs(20), |_| !copy.exists());
        let records = wait_records(&agent, 2);
        assert!(records.iter().all(|r| r["decision"] == "enforced"), "{records:#?}");
        let d = agent.data_dir.to_str().unwrap();
        let (ok, out) = edr(&["respond", "list", "--data-dir", d]);
        assert!(ok, "{out}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let entry = list["quarantined"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["original_path"] == copy.to_str().unwrap())
            .unwrap_or_else(|| panic!("not in the quarantine list: {list}"));
        let id = entry["id"].as_str().unwrap().to_string();
        let (ok, out) = edr(&["respond", "restore", &id, "--data-dir", d, "--reason", "false positive"]);
        assert!(ok, "{out}");
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read("/bin/bash").unwrap(), "restored byte-exact");
        agent.stop();
    }

    // D: the operator's actions through the CLI, and their undo.
    let ns = format!("edr-t{tag}");
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    cleanup.netns.push(ns.clone());
    let agent = start_agent(r#"actions = []"#, &format!("[respond]\nisolation_netns = \"/run/netns/{ns}\"\nmanagement = [\"192.0.2.10/32\"]\n"), false);
    let d = agent.data_dir.to_str().unwrap().to_string();
    // Suspend and resume.
    let sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id().to_string();
    cleanup.children.push(sleeper);
    let state =
        |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().rsplit(')').next().unwrap().split_whitespace().next().unwrap().to_string();
    assert!(edr(&["respond", "suspend", &pid, "--data-dir", &d]).0);
    assert_eq!(state(&pid), "T");
    assert!(edr(&["respond", "resume", &pid, "--data-dir", &d]).0);
    assert_ne!(state(&pid), "T");
    // Quarantine and restore with owner, mode and content.
    let victim = PathBuf::from(format!("/tmp/edr-victim-{tag}"));
    cleanup.paths.push(victim.clone());
    std::fs::write(&victim, b"payload\x00\x01\x02").unwrap();
    // chown first: it clears the setuid bit.
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (ok, out) = edr(&["respond", "quarantine", victim.to_str().unwrap(), "--data-dir", &d, "--json"]);
    assert!(ok, "{out}");
    assert!(!victim.exists());
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = rec["detail"]["quarantine_id"].as_str().or_else(|| rec["detail"]["id"].as_str()).map(str::to_string).unwrap_or_else(|| {
        let (_, l) = edr(&["respond", "list", "--data-dir", &d]);
        let list: serde_json::Value = serde_json::from_str(&l).unwrap();
        list["quarantined"].as_array().unwrap().iter().find(|q| q["original_path"] == victim.to_str().unwrap()).unwrap()["id"].as_str().unwrap().to_string()
    });
    assert!(edr(&["respond", "restore", &id, "--data-dir", &d]).0);
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"payload\x00\x01\x02");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    // Isolation, inside the throw-away namespace, and its release.
    let tables = || {
        let mut s = String::new();
        Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "list", "tables"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
            .stdout
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let (ok, out) = edr(&["respond", "isolate", "--data-dir", &d]);
    assert!(ok, "{out}");
    assert!(tables().contains("edr_isolation"), "{}", tables());
    // Issue 14 item 10: the table deleted behind the agent's back comes back,
    // with an alert and the count in status.
    assert!(Command::new("ip").args(["netns", "exec", &ns, "nft", "delete", "table", "inet", "edr_isolation"]).status().unwrap().success());
    let back = agent.poll_until(Duration::from_secs(15), |a| a.status()["response"]["isolation"]["tamper_count"].as_u64().unwrap_or(0) >= 1);
    assert!(back.is_some(), "the deleted isolation table is not re-applied\n{}", diagnose(&agent));
    assert!(tables().contains("edr_isolation"), "re-applied: {}", tables());
    let alerted = agent.poll_until(Duration::from_secs(10), |a| a.alerts().iter().any(|al| al["rule"]["id"] == "edr.tamper.isolation-removed"));
    assert!(alerted.is_some(), "no edr.tamper.isolation-removed alert: {:#?}", agent.alerts());
    let (_, human) = edr(&["status", "--data-dir", &d]);
    assert!(human.contains("isolation tampering: re-applied 1 times"), "{human}");
    assert!(edr(&["respond", "release", "--data-dir", &d]).0);
    assert!(!tables().contains("edr_isolation"), "release removes what isolation added");
    std::thread::sleep(Duration::from_millis(4500));
    assert!(!tables().contains("edr_isolation"), "nothing is re-applied after release");
    // Issue 14 item 9: with a block active, a stopped agent delays execs by
    // the deadline instead of freezing them; the deadline answers are counted.
    let blocked = PathBuf::from(format!("/tmp/edr-blocked-{tag}"));
    let free = PathBuf::from(format!("/tmp/edr-free-{tag}"));
    for (p, n) in [(&blocked, "blocked"), (&free, "free")] {
        std::fs::copy("/bin/true", p).unwrap();
        std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(format!("edr-test {n} {tag}").as_bytes()).unwrap();
        cleanup.paths.push(p.clone());
    }
    let (ok, out) = edr(&["respond", "block", blocked.to_str().unwrap(), "--data-dir", &d]);
    assert!(ok, "{out}");
    assert!(Command::new(&blocked).status().is_err(), "blocked while the agent runs");
    {
        let agent_pid = agent.child.id() as i32;
        let _resume = Resume(agent_pid);
        // SAFETY: plain kill(2) of our child; `_resume` sends SIGCONT whatever happens.
        unsafe { libc::kill(agent_pid, libc::SIGSTOP) };
        let (tx, rx) = std::sync::mpsc::channel();
        let f = free.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let _ = tx.send((Command::new(&f).status().map(|s| s.success()).unwrap_or(false), t.elapsed()));
        });
        let (ran, took) = rx.recv_timeout(Duration::from_secs(10)).expect("an exec hangs while the agent is stopped");
        assert!(ran, "allowed by the fail mode");
        eprintln!("exec while the agent is stopped: {took:?}");
    }
    assert!(Command::new(&blocked).status().is_err(), "blocked again once the agent runs");
    let st = agent.status();
    assert!(st["response"]["block_stats"]["deadline_answers"].as_u64().unwrap_or(0) >= 1, "{:#}", st["response"]);
    let (_, human) = edr(&["status", "--data-dir", &d]);
    assert!(human.contains("answered by the deadline (250 ms, fail mode allow)"), "{human}");
    assert!(edr(&["respond", "unblock", blocked.to_str().unwrap(), "--data-dir", &d]).0);
    // Protected processes are refused, and that is audited.
    let (ok, out) = edr(&["respond", "kill", "1", "--data-dir", &d]);
    assert!(!ok, "killing pid 1 must be refused: {out}");
    let refused = audit(&agent).into_iter().find(|r| r["action"] == "kill-process" && r["decision"] == "refused").expect("the refusal is audited");
    assert_eq!(refused["requester"]["kind"], "operator");
    agent.stop();
}
