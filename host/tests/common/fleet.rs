//! The fleet's real-process test kit (root): throw-away network namespaces
//! joined by a veth pair, `edr fleet` / `ip netns exec` helpers, and a
//! [`Cleanup`] that stops the test's children and removes its namespaces
//! (with them the veth pair and any isolation table) even when it fails.
//! Used by `fleet_e2e.rs` and `console_agent.rs`.
#![allow(dead_code)]

use edr_testkit::wait_until;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const EDR: &str = env!("CARGO_BIN_EXE_edr");

/// Everything the test made, undone on drop (children first, then namespaces).
#[derive(Default)]
pub struct Cleanup {
    pub children: Vec<Child>,
    pub netns: Vec<String>,
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
pub fn terminate(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap()
}

/// `edr fleet ... --dir DIR` in the server's namespace: (success, stdout, stderr).
pub fn fleet(ns: &str, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![EDR, "fleet", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = in_ns(ns, &all);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether a TCP connection from `ns` to `addr:port` opens within 2 s.
pub fn reaches(ns: &str, addr: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    in_ns(ns, &["timeout", "2", "bash", "-c", &script]).status.success()
}

/// Starts `args` inside network namespace `ns` (see [`spawn_logging`]).
pub fn spawn_logged(ns: &str, args: &[&str], log: &Path) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    spawn_logging(cmd, log)
}

/// Starts `cmd` with `EDR_LOG=info`, its stderr into `log`, stdin piped.
pub fn spawn_logging(mut cmd: Command, log: &Path) -> Child {
    cmd.env("EDR_LOG", "info").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::from(std::fs::File::create(log).unwrap())).spawn().unwrap()
}

pub fn hosts(ns: &str, dir: &Path) -> Vec<serde_json::Value> {
    let (_, out, _) = fleet(ns, dir, &["hosts", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

pub fn state_of(ns: &str, dir: &Path, host: &str) -> String {
    hosts(ns, dir).iter().find(|h| h["host_id"] == host).and_then(|h| h["state"].as_str().map(String::from)).unwrap_or_default()
}

/// The network plumbing: two namespaces and a veth pair between them.
pub struct Net {
    pub agent_ns: String,
    pub server_ns: String,
    pub agent_if: String,
    pub server_ip: String,
}

pub fn make_net(cleanup: &mut Cleanup) -> Net {
    let tag = std::process::id() % 100_000;
    let octet = 1 + tag % 250;
    let (agent_ns, server_ns) = (format!("edrea{tag}"), format!("edres{tag}"));
    let (agent_if, server_if) = (format!("edrea{tag}v"), format!("edres{tag}v"));
    let (agent_ip, server_ip) = (format!("10.252.{octet}.1"), format!("10.252.{octet}.2"));
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
    Net { agent_ns, server_ns, agent_if, server_ip }
}

/// Moves the calling thread (only it) into network namespace `ns`: its
/// sockets, and the processes it starts, are then in `ns`.
pub fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("/run/netns/{ns}: {e}"));
    // SAFETY: setns on a valid namespace fd; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
}

/// The host id an enrolled agent's data dir names (`fleet/identity.json`).
pub fn host_id_of(data: &Path) -> String {
    let id: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("fleet/identity.json")).unwrap()).unwrap();
    id["host_id"].as_str().unwrap().to_string()
}
