//! Remote isolation through the fleet, for real (root): two throw-away
//! network namespaces joined by a veth pair, the management server (with
//! its nats-server) in one, an `edr agent` in the other. `edr fleet
//! isolate` cuts the agent's namespace off from everything but the fleet's
//! NATS endpoint: a TCP connection to another port of the server's address
//! fails, while the host still answers `ls` and its heartbeat says
//! isolated; `edr fleet release` restores the path. The namespaces (and with
//! them the veth pair and the isolation table) are removed even when the
//! test fails; the only addresses used are inside them.

use edr_testkit::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const EDR: &str = env!("CARGO_BIN_EXE_edr");

/// Everything the test made, undone on drop (children first, then namespaces).
#[derive(Default)]
struct Cleanup {
    children: Vec<Child>,
    netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // SIGTERM first: `edr server run` then stops its nats-server child.
        for c in &mut self.children {
            terminate(c.id());
        }
        for c in &mut self.children {
            if !wait_until(Duration::from_secs(5), || c.try_wait().ok().flatten().is_some()) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        // Whatever still runs inside the test's namespaces was started by the test.
        for ns in &self.netns {
            let pids = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// SIGTERM to one pid, through kill(1).
fn terminate(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap()
}

/// `edr fleet ... --dir DIR` in the server's namespace: (success, stdout, stderr).
fn fleet(ns: &str, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![EDR, "fleet", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = in_ns(ns, &all);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether a TCP connection from `ns` to `addr:port` opens within 2 s.
fn reaches(ns: &str, addr: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    in_ns(ns, &["timeout", "2", "bash", "-c", &script]).status.success()
}

fn host_state(ns: &str, dir: &Path) -> String {
    let (_, out, _) = fleet(ns, dir, &["hosts", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out).ok().and_then(|v| v[0]["state"].as_str().map(String::from)).unwrap_or_default()
}

fn spawn_logged(ns: &str, args: &[&str], log: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .env("EDR_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

#[test]
fn an_isolated_host_keeps_its_fleet_and_is_released() {
    edr_testkit::require_root!("network namespaces and nftables");
    for tool in ["nats-server", "nft", "ip", "bash", "timeout"] {
        if !on_path(tool) {
            edr_testkit::skip(format!("{tool} not on PATH"));
            return;
        }
    }
    let tag = std::process::id() % 100_000;
    let octet = 1 + tag % 250;
    let (agent_ns, server_ns) = (format!("edrfa{tag}"), format!("edrfs{tag}"));
    let (agent_if, server_if) = (format!("edrfa{tag}v"), format!("edrfs{tag}v"));
    let (agent_ip, server_ip) = (format!("10.251.{octet}.1"), format!("10.251.{octet}.2"));
    let mut cleanup = Cleanup::default();
    for ns in [&agent_ns, &server_ns] {
        ip(&["netns", "add", ns]);
        cleanup.netns.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&["link", "add", &agent_if, "netns", &agent_ns, "type", "veth", "peer", "name", &server_if, "netns", &server_ns]);
    ip(&["-n", &agent_ns, "addr", "add", &format!("{agent_ip}/24"), "dev", &agent_if]);
    ip(&["-n", &server_ns, "addr", "add", &format!("{server_ip}/24"), "dev", &server_if]);
    ip(&["-n", &agent_ns, "link", "set", &agent_if, "up"]);
    ip(&["-n", &server_ns, "link", "set", &server_if, "up"]);

    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().join("fleet");
    let (nats, api) = (format!("{server_ip}:4222"), format!("{server_ip}:8480"));
    let out = in_ns(&server_ns, &[EDR, "server", "init", "--dir", dir.to_str().unwrap(), "--nats-listen", &nats, "--listen", &api, "--heartbeat-secs", "1"]);
    assert!(out.status.success(), "server init: {}", String::from_utf8_lossy(&out.stderr));
    let server_log = work.path().join("server.log");
    cleanup.children.push(spawn_logged(&server_ns, &[EDR, "server", "run", "--dir", dir.to_str().unwrap()], &server_log));
    let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(30), || fleet(&server_ns, &dir, &["hosts"]).0), "the server's API answers: {}", log(&server_log));
    let (ok, token, err) = fleet(&server_ns, &dir, &["enroll-token", "--ttl", "10m"]);
    assert!(ok, "{err}");

    let config = work.path().join("edr.toml");
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let text = format!(
        "data_dir = {:?}\n[plugins]\nbuiltin = false\ndir = {:?}\n[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n",
        work.path().join("data"),
        plugins
    );
    std::fs::write(&config, text).unwrap();
    let agent_log = work.path().join("agent.log");
    cleanup.children.push(spawn_logged(&agent_ns, &[EDR, "agent", "--config", config.to_str().unwrap(), "--enroll", token.trim()], &agent_log));
    assert!(wait_until(Duration::from_secs(60), || host_state(&server_ns, &dir) == "online"), "the agent comes online: {}", log(&agent_log));
    let (_, hosts, _) = fleet(&server_ns, &dir, &["hosts", "--json"]);
    let hosts: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    let host = hosts[0]["host_id"].as_str().unwrap().to_string();
    assert!(reaches(&agent_ns, &server_ip, 8480), "before isolation the agent's namespace reaches the server's API port");

    let (ok, out, err) = fleet(&server_ns, &dir, &["isolate", &host, "--reason", "case 9: beaconing"]);
    assert!(ok, "isolate: {out} {err}\nagent: {}", log(&agent_log));
    assert!(!reaches(&agent_ns, &server_ip, 8480), "isolated: the server's API port (not NATS) is unreachable");
    let (ok, out, err) = fleet(&server_ns, &dir, &["ls", &host, "/"]);
    assert!(ok && out.contains("\"entries\""), "an isolated host still answers: {out} {err}");
    assert!(
        wait_until(Duration::from_secs(15), || host_state(&server_ns, &dir) == "isolated"),
        "the heartbeat says isolated: {}",
        host_state(&server_ns, &dir)
    );
    let tables = in_ns(&agent_ns, &["nft", "list", "table", "inet", "edr_isolation"]);
    let rules = String::from_utf8_lossy(&tables.stdout);
    assert!(rules.contains(&server_ip) && rules.contains("4222"), "the NATS endpoint is in the allowlist: {rules}");

    let (ok, out, err) = fleet(&server_ns, &dir, &["release", &host, "--reason", "case 9 closed"]);
    assert!(ok, "release: {out} {err}");
    assert!(reaches(&agent_ns, &server_ip, 8480), "released: reachable again");
    assert!(wait_until(Duration::from_secs(15), || host_state(&server_ns, &dir) == "online"), "online again: {}", host_state(&server_ns, &dir));
    // The CLI's other response commands on the same host: fetch (hash checked, written) and ps.
    let wanted = work.path().join("evidence.txt");
    std::fs::write(&wanted, b"line 1\nline 2\x00\xff\n").unwrap();
    let got = work.path().join("got.txt");
    let (ok, _, err) = fleet(&server_ns, &dir, &["fetch", &host, wanted.to_str().unwrap(), "-o", got.to_str().unwrap(), "--reason", "case 9 evidence"]);
    assert!(ok && err.contains("sha256"), "fetch: {err}");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&wanted).unwrap(), "fetched byte-exact");
    let (ok, _, err) = fleet(&server_ns, &dir, &["fetch", &host, wanted.to_str().unwrap(), "-o", got.to_str().unwrap()]);
    assert!(!ok && err.contains("--reason"), "a fetch without a reason is refused by the CLI: {err}");
    let agent_pid = cleanup.children[1].id();
    let (ok, table, err) = fleet(&server_ns, &dir, &["ps", &host]);
    assert!(
        ok && table.lines().any(|l| l.split_whitespace().next() == Some(agent_pid.to_string().as_str()) && l.contains("edr")),
        "ps lists the agent ({agent_pid}): {table} {err}"
    );
    let journal = std::fs::read_to_string(work.path().join("data/actions.jsonl")).unwrap_or_default();
    assert!(journal.contains("isolate-host") && journal.contains("case 9: beaconing") && journal.contains("release-host"), "{journal}");
    let namespaces = cleanup.netns.clone();
    drop(cleanup);
    let listed = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(namespaces.iter().all(|ns| !listed.split_whitespace().any(|n| n == ns)), "namespaces removed: {listed}");
}
