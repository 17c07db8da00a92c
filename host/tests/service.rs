//! Running as a service: `edr config check`, SIGHUP reload without losing
//! events, SIGTERM flush, `edr status --json`, the Prometheus endpoint, and
//! the systemd unit (`edr service`).

mod common;
use common::agent::{exec_line, Agent};
use edr_testkit::free_port;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn edr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edr")).args(args).output().unwrap()
}

use edr_testkit::is_root;

/// `edr config check --json FILE` on `text`.
fn check(dir: &Path, text: &str) -> (bool, serde_json::Value) {
    let f = dir.join("check.toml");
    std::fs::write(&f, text).unwrap();
    let out = edr(&["config", "check", "--json", f.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(out.status.success(), v["ok"].as_bool().unwrap(), "exit status and verdict agree");
    (out.status.success(), v)
}

#[test]
fn config_check_names_the_line_and_key_of_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, Option<usize>, Option<&str>, &str)] = &[
        // (config, line, key, words in the message)
        ("data_dir = \"/tmp/x\"\n\n[runtime]\nbatch_sise = 5\n", Some(4), None, "runtime.batch_sise"),
        ("[runtime]\nbatch_size = 0\n", Some(2), Some("runtime.batch_size"), "out of range"),
        ("[runtime]\nbatch_size = \"big\"\n", Some(2), None, "invalid type"),
        ("[metrics]\nlisten = \"0.0.0.0:9477\"\n", Some(2), Some("metrics.listen"), "not a loopback address"),
        ("[metrics]\nlisten = \"nonsense\"\n", Some(2), Some("metrics.listen"), "not an address"),
        ("[plugins.limits.sigma]\nmemory_mb = 5000\n", Some(2), Some("plugins.limits.sigma.memory_mb"), "out of range"),
        ("[plugins.capabilities]\nsigma = [\"log\", \"network\"]\n", Some(2), Some("plugins.capabilities.sigma"), "unknown capability `network`"),
        ("[packs]\nupdate_url = \"ftp://x\"\n", Some(2), Some("packs.update_url"), "not an http"),
        ("[[trust.keys]]\nname = \"v\"\npublic_key = \"not-a-key\"\n", Some(1), Some("trust.keys"), "`v`"),
        ("[output\nstdout = true\n", Some(1), None, "unclosed table"),
    ];
    for (text, line, key, words) in cases {
        let (ok, v) = check(dir.path(), text);
        assert!(!ok, "accepted: {text}");
        let e = &v["error"];
        assert_eq!(e["line"].as_u64().map(|l| l as usize), *line, "line for {text:?}: {e}");
        if let Some(k) = key {
            assert_eq!(e["key"].as_str(), Some(*k), "key for {text:?}: {e}");
        }
        assert!(e["message"].as_str().unwrap().contains(words), "message for {text:?} lacks {words:?}: {e}");
    }
    // A valid file passes, with a summary and warnings for what will not work as meant.
    let (ok, v) = check(
        dir.path(),
        "[packs]\nupdate_url = \"https://updates.example\"\n[[trust.keys]]\nname = \"vendor\"\npublic_key_file = \"/nonexistent/vendor.pub\"\n",
    );
    assert!(ok, "{v}");
    let warnings: Vec<String> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    assert!(warnings.iter().any(|w| w.contains("/nonexistent/vendor.pub")), "{warnings:?}");
    // The documented example is valid.
    let example = edr(&["config", "example"]);
    let (ok, v) = check(dir.path(), &String::from_utf8(example.stdout).unwrap());
    assert!(ok, "examples/edr.toml: {v}");
    // A missing file is an error, not the defaults.
    let out = edr(&["config", "check", dir.path().join("absent.toml").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
}

/// The three configs of issue 14 that `config check` accepted and that
/// crashed the agent (allocation abort, OOM kill, no alerts at all).
const CRASHING_CONFIGS: &[(&str, &str, &str)] = &[
    ("[collect]\nqueue = 99999999999\n", "collect.queue", "99999999999 is out of range 1..=262144"),
    ("[runtime]\nplugin_queue = 100000000\n", "runtime.plugin_queue", "100000000 is out of range 1..=4096"),
    ("[runtime]\nmax_findings_per_batch = 0\n", "runtime.max_findings_per_batch", "0 is out of range 1..=65536"),
];

#[test]
fn config_check_refuses_the_numbers_that_crashed_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, message) in CRASHING_CONFIGS {
        let (ok, v) = check(dir.path(), text);
        assert!(!ok, "accepted: {text}");
        assert_eq!(v["error"]["key"].as_str(), Some(*key), "{v}");
        assert_eq!(v["error"]["line"].as_u64(), Some(2), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(message), "{v}");
        // The human form: exit status non-zero, the line, key, value and range on stderr.
        let f = dir.path().join("check.toml");
        let out = edr(&["config", "check", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("line 2: `{key}`: {message}")), "{err}");
    }
}

#[test]
fn the_agent_refuses_the_numbers_that_crashed_it_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, message) in CRASHING_CONFIGS {
        let f = dir.path().join("agent.toml");
        // Dotted keys: the same setting beside a stdin source (never live collection).
        let value = message.split(' ').next().unwrap();
        std::fs::write(&f, format!("data_dir = {:?}\ncollect.source = \"stdin\"\noutput.stdout = false\n{key} = {value}\n", dir.path().join("data"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edr"))
            .args(["agent", "--config", f.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the agent started on {text:?} instead of refusing it");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), None, "killed by a signal (abort/OOM) on {text:?}: {err}");
        assert_eq!(status.code(), Some(1), "{text:?}: {err}");
        assert!(err.contains(&format!("`{key}`: {message}")), "{err}");
        assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
    }
}

#[test]
fn config_check_warns_of_catch_all_isolation_and_an_alerts_file_outside_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[output]\nalerts_file = \"/root/secret\"\n[respond]\nmanagement = [\"0.0.0.0/0\", \"10.0.0.5:8443\"]\n",
        dir.path().join("data")
    );
    let (ok, v) = check(dir.path(), &text);
    assert!(ok, "warnings, not errors: {v}");
    let warnings: Vec<String> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    assert!(warnings.iter().any(|w| w.contains("respond.management `0.0.0.0/0` covers most of the internet")), "{warnings:?}");
    assert!(!warnings.iter().any(|w| w.contains("10.0.0.5")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("output.alerts_file /root/secret is outside data_dir")), "{warnings:?}");
    let (_, v) = check(dir.path(), "[respond]\nmanagement = [\"::/0\"]\n");
    assert!(v["warnings"].to_string().contains("`::/0` covers most of the internet"), "{v}");
}

const BASE: &str = "[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n[runtime]\nbatch_timeout_ms = 10\n";

fn store_count(data_dir: &Path, sql: &str) -> u64 {
    let out = edr(&["query", "--json", "--data-dir", data_dir.to_str().unwrap(), sql]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(String::from_utf8_lossy(&out.stdout).lines().next().unwrap().as_bytes()).unwrap();
    v.as_object().unwrap().values().next().unwrap().as_u64().unwrap()
}

#[test]
fn sighup_reloads_without_losing_events_and_sigterm_flushes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), BASE);
    let pid = agent.child.id() as i32;
    let config = agent.config.clone();
    let original = std::fs::read_to_string(&config).unwrap();
    // A continuous stream: 30 rounds of 200 events (every 10th an exec from
    // /tmp, which the built-in writable-exec rule flags), with reloads between.
    let mut sent = 0u32;
    let mut flagged = 0u32;
    for round in 0..30 {
        let mut lines = String::new();
        for i in 0..200 {
            sent += 1;
            let exe = if i % 10 == 0 {
                flagged += 1;
                format!("/tmp/drop-{sent}")
            } else {
                "/usr/bin/ls".to_string()
            };
            lines.push_str(&exec_line(&exe, 100_000 + sent));
        }
        agent.send(&lines);
        match round {
            // Valid: alerts go to a second file from now on; a restart-only change too.
            10 => std::fs::write(
                &config,
                original
                    .replace("stdout = false\n", "stdout = false\nalerts_file = \"alerts-after.jsonl\"\n")
                    .replace("batch_timeout_ms = 10", "batch_timeout_ms = 20"),
            )
            .unwrap(),
            // Invalid: refused, the running config stays.
            20 => std::fs::write(&config, format!("{original}\n[metrics]\nlisten = \"0.0.0.0:9477\"\n")).unwrap(),
            _ => {}
        }
        if round == 10 || round == 20 {
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    agent.wait_for("both reloads", Duration::from_secs(20), |a| {
        let c = &a.status()["config"];
        c["reloads"] == 1 && c["reload_failures"] == 1
    });
    let status = agent.status();
    let c = &status["config"];
    assert_eq!(c["restart_needed"], serde_json::json!(["runtime"]), "{c}");
    assert!(c["last_error"].as_str().unwrap().contains("metrics.listen"), "{c}");
    let health = agent.health();
    assert!(health.iter().any(|h| h["event"]["action"] == "config-reloaded"), "{health:?}");
    assert!(health.iter().any(|h| h["event"]["action"] == "config-reload-failed" && h["message"].as_str().unwrap().contains("line")), "{health:?}");
    let data = agent.data_dir.clone();
    agent.stop(); // SIGTERM: flush the queues and the store, exit 0.
                  // Every event is in the record, every flagged exec has exactly one alert
                  // across the two files: none lost, none doubled by the switch.
    assert_eq!(store_count(&data, "SELECT count(*) AS n FROM process"), sent as u64, "events lost across reloads");
    let before = common::agent::read_jsonl(&data.join("alerts.jsonl"));
    let after = common::agent::read_jsonl(&data.join("alerts-after.jsonl"));
    let ids = |v: &[serde_json::Value]| {
        v.iter().filter(|a| a["rule"]["id"] == "edr.writable.exec-world-writable").map(|a| a["process"]["pid"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    let (b, a) = (ids(&before), ids(&after));
    assert!(!b.is_empty() && !a.is_empty(), "alerts before ({}) and after ({}) the reload", b.len(), a.len());
    let mut all: Vec<u64> = b.iter().chain(a.iter()).copied().collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, all.len(), "an alert was written twice");
    assert_eq!(all.len() as u32, flagged, "alerts lost across the output switch");
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in\n{text}")).trim().parse().unwrap()
}

#[test]
fn metrics_endpoint_serves_live_figures_on_loopback_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    // Off by default.
    let port = free_port();
    let mut agent = Agent::start(dir.path(), BASE);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(agent.status()["config"]["file"].is_string());
    agent.send(&exec_line("/usr/bin/ls", 4242));
    agent.stop();

    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &format!("{BASE}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut lines = String::new();
    for i in 0..500 {
        lines.push_str(&exec_line(if i % 50 == 0 { "/dev/shm/x" } else { "/usr/bin/id" }, 50_000 + i));
    }
    agent.send(&lines);
    agent.wait_for("500 events", Duration::from_secs(20), |a| a.status()["pipeline"]["events"] == 500);
    // `pipeline.events` counts receipt; wait for the plugins to have seen every exec too,
    // so the scrape and the status below describe the same, settled agent.
    // Plugins also see a few agent events besides the execs, so wait for their
    // counts to pass 500 and hold still between two polls.
    let mut last = Vec::new();
    agent.wait_for("the plugins to see 500 execs", Duration::from_secs(20), |a| {
        let seen: Vec<u64> = a.status()["plugins"].as_array().unwrap().iter().map(|p| p["metrics"]["events"].as_u64().unwrap()).collect();
        let settled = seen.iter().any(|n| *n >= 500) && seen == last;
        last = seen;
        std::thread::sleep(Duration::from_millis(200));
        settled
    });
    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{text}");
    assert_eq!(sample(&text, "edr_events_received_total"), 500.0);
    assert_eq!(sample(&text, "edr_up"), 1.0);
    assert!(text.contains("edr_plugin_events_total{plugin=\"edr.builtin/writable-exec\""), "{text}");
    assert!(text.contains("edr_pack_info{pack=\"edr.builtin\""), "{text}");
    // Agrees with `edr status --json`.
    let status = agent.status();
    let findings: u64 = status["plugins"].as_array().unwrap().iter().map(|p| p["metrics"]["findings"].as_u64().unwrap()).sum();
    let scraped: f64 =
        text.lines().filter(|l| l.starts_with("edr_plugin_findings_total{")).map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()).sum();
    assert_eq!(scraped, findings as f64);
    assert!(findings >= 10, "the /dev/shm execs were flagged");
    let (code, _) = http_get(port, "/");
    assert_eq!(code, 404);
    // Reloading with the endpoint off closes it.
    let cfg = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, cfg.replace(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), "")).unwrap();
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the endpoint stayed open after the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.stop();
}

#[test]
fn service_unit_is_valid_and_its_command_lines_run_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = edr(&["service", "install", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit_path = root.join("etc/systemd/system/edr.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode("etc/edr"), 0o750);
    assert_eq!(mode("etc/edr/edr.toml"), 0o640);
    assert_eq!(mode("var/lib/edr"), 0o700);
    assert_eq!(mode("usr/local/bin/edr"), 0o755);
    for line in [
        "ExecStart=/usr/local/bin/edr agent --config /etc/edr/edr.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "StateDirectory=edr",
        "ConfigurationDirectory=edr",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    // A second install keeps the operator's config.
    std::fs::write(root.join("etc/edr/edr.toml"), "data_dir = \"/var/lib/edr\"\n# mine\n").unwrap();
    assert!(edr(&["service", "install", "--root", root.to_str().unwrap()]).status.success());
    assert!(std::fs::read_to_string(root.join("etc/edr/edr.toml")).unwrap().contains("# mine"));
    let fresh = std::fs::read_to_string(root.join("etc/edr/edr.toml.edr-new")).is_err();
    assert!(fresh, "no temporary file left behind");

    // systemd's own checker, on the unit pointing at this build.
    let here = Command::new(env!("CARGO_BIN_EXE_edr")).args(["service", "unit", "--bin", env!("CARGO_BIN_EXE_edr")]).output().unwrap();
    let checked = dir.path().join("edr.service");
    std::fs::write(&checked, &here.stdout).unwrap();
    match Command::new("systemd-analyze").arg("verify").arg(&checked).output() {
        Ok(o) => assert!(o.status.success() && o.stderr.is_empty(), "systemd-analyze verify: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => edr_testkit::skip("the systemd-analyze check: systemd-analyze is not installed (Debian package systemd)"),
    }

    // What systemd would run, with the staged paths: ExecStartPre, ExecStart,
    // ExecReload, stop. (systemd itself does not run this machine.)
    if !is_root() {
        edr_testkit::skip("running the unit's command lines: the live agent needs root (CN_PROC, fanotify)");
        return;
    }
    std::fs::write(root.join("etc/edr/edr.toml"), edr_toml_of(&root)).unwrap();
    let map = |cmd: &str| -> Vec<String> {
        cmd.split_whitespace()
            .map(|w| {
                if w == "/usr/local/bin/edr" {
                    root.join("usr/local/bin/edr").to_string_lossy().into_owned()
                } else if w == "/etc/edr/edr.toml" {
                    root.join("etc/edr/edr.toml").to_string_lossy().into_owned()
                } else {
                    w.to_string()
                }
            })
            .collect()
    };
    let directive = |name: &str| unit.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap().to_string();
    let pre = map(&directive("ExecStartPre"));
    let o = Command::new(&pre[0]).args(&pre[1..]).output().unwrap();
    assert!(o.status.success(), "ExecStartPre: {}", String::from_utf8_lossy(&o.stderr));
    let start = map(&directive("ExecStart"));
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut child = Command::new(&start[0])
        .args(&start[1..])
        .env("EDR_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Stop(child.id());
    let state = root.join("var/lib/edr");
    let status = || -> Option<serde_json::Value> {
        let o = edr(&["status", "--json", "--data-dir", state.to_str().unwrap()]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        assert!(Instant::now() < deadline, "the agent did not come up: {}", std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default());
        assert!(child.try_wait().unwrap().is_none(), "the agent exited: {}", std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default());
        // Live figures: the host's own processes reach the pipeline.
        let _ = Command::new("true").status();
        if let Some(s) = status() {
            if s["pipeline"]["events"].as_u64().unwrap_or(0) > 0 {
                break s;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let modes: Vec<String> =
        s["collectors"].as_array().unwrap().iter().map(|c| format!("{}={}", c["name"].as_str().unwrap(), c["mode"].as_str().unwrap())).collect();
    eprintln!("service: collectors {modes:?}, {} events", s["pipeline"]["events"]);
    assert!(modes.iter().any(|m| m.starts_with("process=ebpf")), "{modes:?}");
    // ExecReload.
    let reload = directive("ExecReload").replace("$MAINPID", &child.id().to_string());
    let r: Vec<&str> = reload.split_whitespace().collect();
    assert!(Command::new(r[0]).args(&r[1..]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status().map(|s| s["config"]["reloads"] == 1) != Some(true) {
        assert!(Instant::now() < deadline, "SIGHUP was not handled");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stop: SIGTERM (KillSignal), clean exit within TimeoutStopSec.
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap();
    assert!(code.success(), "exit {code}: {}", std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default());
    assert!(t.elapsed() < Duration::from_secs(30), "stop took {:?}", t.elapsed());
    assert!(!state.join("control.sock").exists(), "control socket left behind");
}

/// The installed config with its absolute state dir moved under the staging root.
fn edr_toml_of(root: &Path) -> String {
    let text = std::fs::read_to_string(root.join("etc/edr/edr.toml")).unwrap();
    text.replace("data_dir = \"/var/lib/edr\"", &format!("data_dir = {:?}", root.join("var/lib/edr")))
}

#[test]
fn an_operator_reenables_a_quarantined_plugin_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(common::plugin_path("edr-hostile-panic"), plugins.join("hostile-panic.wasm")).unwrap();
    let mut agent = Agent::start(dir.path(), &format!("{BASE}max_strikes = 2\n[plugins]\nbuiltin = false\ndir = {plugins:?}\n"));
    let health =
        |a: &Agent| a.status()["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "hostile-panic").map(|p| p["health"].as_str().unwrap().to_string());
    assert_eq!(health(&agent).as_deref(), Some("active"));
    for i in 0..3 {
        agent.send(&exec_line("/usr/bin/id", 7000 + i));
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.wait_for("quarantine", Duration::from_secs(20), |a| health(a).is_some_and(|h| h != "active"));
    let data = agent.data_dir.to_str().unwrap().to_string();
    let out = edr(&["plugin", "reenable", "hostile-panic", "--data-dir", &data]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-enabled hostile-panic"));
    assert_eq!(health(&agent).as_deref(), Some("active"));
    let out = edr(&["plugin", "reenable", "no-such-plugin", "--data-dir", &data]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin `no-such-plugin`"));
    agent.stop();
}

/// A minimal HTTP receiver: records the `X-Edr-Alert-Ids` of every POST and answers 200.
fn webhook_receiver(port: u16, ids: std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut headers = Vec::new();
                    loop {
                        let mut line = String::new();
                        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        headers.push(line.trim_end().to_string());
                    }
                    let header = |name: &str| {
                        headers.iter().find_map(|h| h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
                    };
                    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    if let Some(v) = header("x-edr-alert-ids") {
                        ids.lock().unwrap().extend(v.split(',').map(|x| x.trim().parse::<u64>().unwrap()));
                    }
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
                }
            });
        }
    });
}

#[test]
fn webhook_down_for_a_while_then_up_gets_every_alert_exactly_once_and_syslog_gets_rfc5424() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let config = format!(
        "{BASE}[output.webhook]\nurl = \"http://127.0.0.1:{port}/alerts\"\nretry_initial_ms = 100\nretry_max_ms = 300\n[output.syslog]\naddress = \"udp://{}\"\n",
        syslog.local_addr().unwrap()
    );
    let mut agent = Agent::start(dir.path(), &config);
    // The receiver is down: 40 alerts are spooled on disk.
    let mut lines = String::new();
    for i in 0..40 {
        lines.push_str(&exec_line(&format!("/tmp/payload-{i}"), 60_000 + i));
    }
    agent.send(&lines);
    let webhook_status = |a: &Agent| a.status()["outputs"].as_array().unwrap().iter().find(|o| o["kind"] == "webhook").cloned().unwrap();
    agent.wait_for("40 alerts spooled", Duration::from_secs(20), |a| webhook_status(a)["queued"] == 40);
    assert!(webhook_status(&agent)["last_error"].is_string());
    // Syslog (UDP) got them meanwhile, as RFC 5424.
    let mut buf = vec![0u8; 65536];
    let n = syslog.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with('<') && msg.contains(">1 "), "not RFC 5424: {msg}");
    assert!(msg.contains("edr") && msg.contains("[edr@32473 ") && msg.contains("edr.writable.exec-world-writable"), "{msg}");
    // An agent restart keeps the spool.
    agent.stop();
    let mut agent = Agent::start(dir.path(), &config);
    agent.send(&exec_line("/tmp/payload-after-restart", 61_000));
    agent.wait_for("41 alerts spooled", Duration::from_secs(20), |a| webhook_status(a)["queued"] == 41);
    // The receiver comes up: every alert arrives, exactly once.
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    webhook_receiver(port, ids.clone());
    agent.wait_for("the spool to drain", Duration::from_secs(30), |a| webhook_status(a)["queued"] == 0);
    let status = webhook_status(&agent);
    assert_eq!(status["delivered"], 41, "{status}");
    agent.stop();
    let got = ids.lock().unwrap().clone();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(got.len(), 41, "every alert once: {got:?}");
    assert_eq!(unique.len(), 41, "no alert twice: {got:?}");
    let written: Vec<u64> = common::agent::read_jsonl(&dir.path().join("data/alerts.jsonl"))
        .iter()
        .map(|a| a["edr"]["alert_id"].as_u64().or_else(|| a["event"]["id"].as_str().and_then(|s| s.parse().ok())).unwrap())
        .collect();
    let mut written_sorted = written.clone();
    written_sorted.sort();
    assert_eq!(written_sorted, unique, "the webhook got exactly the alerts the agent wrote");
}

#[test]
fn nats_jetstream_collects_alerts_from_the_agent() {
    let Ok(server) = which("nats-server") else {
        edr_testkit::skip("nats-server not on PATH (Debian package nats-server; scripts/test.sh installs it as root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nats = Command::new(server)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path().join("js"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        assert!(nats.try_wait().unwrap().is_none(), "nats-server exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _nats = Kill(nats);
    let mut agent = Agent::start(
        dir.path(),
        &format!("{BASE}[output.nats]\nurl = \"nats://127.0.0.1:{port}\"\nsubject = \"edr.alerts.{{host}}\"\nstream = \"EDR_ALERTS\"\n"),
    );
    let mut lines = String::new();
    for i in 0..25 {
        lines.push_str(&exec_line(&format!("/dev/shm/implant-{i}"), 62_000 + i));
    }
    agent.send(&lines);
    let nats_status = |a: &Agent| a.status()["outputs"].as_array().unwrap().iter().find(|o| o["kind"] == "nats").cloned().unwrap();
    agent.wait_for("25 alerts acknowledged by JetStream", Duration::from_secs(30), |a| nats_status(a)["delivered"] == 25);
    let s = nats_status(&agent);
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["dropped"], 0, "{s}");
    agent.stop();
    // The stream holds them (JetStream's own account of it, over its HTTP-less API: the server's storage dir).
    let stored = walk_bytes(&dir.path().join("js"));
    assert!(stored > 0, "JetStream stored nothing");
}

fn which(cmd: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]).map(|d| d.join(cmd)).find(|p| p.is_file()).ok_or(())
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk_bytes(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }).sum())
        .unwrap_or(0)
}
