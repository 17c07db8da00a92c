//! The agent on its defaults, on the real kernel (root; skipped otherwise):
//! live telemetry in, alerts out within a second.

mod common;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edr_testkit::is_root;

/// Removes what a test created, even when it fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Waits for an alert matching `pred` written after `since_ns`; returns the
/// delay between `since_ns` and the alert's timestamp.
fn wait_alert(alerts: &std::path::Path, since_ns: u64, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Duration {
    let data = alerts.parent().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for a in common::agent::read_jsonl(alerts) {
            if pred(&a) {
                let t = edr_event::time::parse_rfc3339(a["@timestamp"].as_str().unwrap()).unwrap();
                if t >= since_ns {
                    return Duration::from_nanos(t - since_ns);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = Command::new(env!("CARGO_BIN_EXE_edr"))
        .args([
            "query",
            "--data-dir",
            data.to_str().unwrap(),
            "SELECT ts, action, pid, ppid, exe, command_line, partial FROM process WHERE command_line LIKE '%edr-live-test%' OR exe LIKE '/tmp/%'",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    panic!("no alert for {what} within 20 s\nalerts:\n{}\nprocess rows:\n{rows}", std::fs::read_to_string(alerts).unwrap_or_default());
}

/// The rows `edr query --json` returns for `sql` on the record in `data`.
fn query(data: &std::path::Path, sql: &str) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["query", "--json", "--data-dir", data.to_str().unwrap(), sql]).output().unwrap();
    assert!(out.status.success(), "edr query failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// One live agent at a time: each watches the whole host, and the latency
/// checks should not pay for another's start.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops a process with SIGTERM and reaps it on drop (also when an
/// assertion fails).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The agent on its defaults (no config file; only the data dir is given),
/// once its control socket is up; its log goes to `dir/agent.log`.
fn start_agent(dir: &std::path::Path, data: &std::path::Path) -> Kill {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_edr"))
        .args(["agent", "--data-dir", data.to_str().unwrap()])
        .env("EDR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("agent.log")).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data.join("control.sock").exists() {
        assert!(Instant::now() < deadline, "agent did not start: {}", std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default());
        assert!(agent.try_wait().unwrap().is_none(), "agent exited: {}", std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    Kill(agent)
}

/// Fileless execution on the host (issue 14, item 3): a copy of `sleep`
/// written into a memfd and run as `/proc/self/fd/N` with a forged argv.
/// It used to be recorded as the dynamic loader, partial, without its
/// command line, and raised nothing. Now the alert names the memfd as the
/// executable, with the process's own argv, and the record holds it
/// complete.
#[test]
fn a_memfd_exec_on_the_host_raises_the_fileless_alert_with_its_exe_and_argv() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    if !is_root() {
        edr_testkit::skip("live telemetry needs root (CN_PROC, fanotify)");
        return;
    }
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _agent = start_agent(dir.path(), &data);
    let alerts = data.join("alerts.jsonl");

    let name = format!("edr-live-fileless-{}", std::process::id());
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    // No MFD_CLOEXEC: the child inherits it and execs it by its fd path.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::io::copy(&mut std::fs::File::open("/bin/sleep").unwrap(), &mut std::fs::File::from(fd.try_clone().unwrap())).unwrap();
    let t0 = now_ns();
    let payload = Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).arg0("[kworker/0:1-events]").arg("30").spawn().unwrap();
    let payload = Kill(payload);
    let pid = payload.0.id();
    let exe = format!("/memfd:{name} (deleted)");
    let delay = wait_alert(&alerts, t0, "execution from a memfd", |a| a["rule"]["id"] == "edr.writable.exec-memfd" && a["process"]["pid"] == pid);
    eprintln!("memfd exec: alert {delay:?} after the exec");
    let a = common::agent::read_jsonl(&alerts).into_iter().find(|a| a["rule"]["id"] == "edr.writable.exec-memfd" && a["process"]["pid"] == pid).unwrap();
    assert_eq!(a["process"]["executable"], exe, "{a}");
    assert_eq!(a["process"]["args"], serde_json::json!(["[kworker/0:1-events]", "30"]), "{a}");
    assert_eq!(a["event"]["severity"], 73, "high: {a}");
    assert!(a["threat"]["technique"]["id"].to_string().contains("T1620"), "{a}");
    // Nothing else claimed that exec (the loader is not the exe anywhere).
    let others: Vec<_> =
        common::agent::read_jsonl(&alerts).into_iter().filter(|a| a["process"]["pid"] == pid && a["rule"]["id"] != "edr.writable.exec-memfd").collect();
    assert!(others.is_empty(), "{others:?}");
    // The record: the exec is complete, as the memfd.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sql = format!("SELECT exe, command_line, partial FROM process WHERE pid = {pid} AND action = 'exec'");
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["query", "--json", "--data-dir", data.to_str().unwrap(), &sql]).output().unwrap();
        assert!(out.status.success(), "edr query failed: {}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if let Some(row) = rows.first() {
            assert_eq!(row["exe"], exe, "{rows:?}");
            assert_eq!(row["command_line"], "[kworker/0:1-events] 30", "{rows:?}");
            assert!(row["partial"] == 0 || row["partial"] == false, "{rows:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the memfd exec never reached the store");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(payload);
}

#[test]
fn the_agent_on_its_defaults_alerts_on_tmp_execution_and_authorized_keys() {
    if !is_root() {
        edr_testkit::skip("live telemetry needs root (CN_PROC, fanotify)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tag = std::process::id();
    let exe = PathBuf::from(format!("/tmp/edr-live-test-{tag}"));
    let home = PathBuf::from(format!("/home/edr-test-{tag}"));
    let _cleanup = Cleanup(vec![exe.clone(), home.clone()]);
    let _s = serial();

    let _agent = start_agent(dir.path(), &data);
    let agent_pid = _agent.0.id();
    let alerts = data.join("alerts.jsonl");

    // cp /bin/true /tmp/x && /tmp/x
    let t0 = now_ns();
    std::fs::copy("/bin/true", &exe).unwrap();
    assert!(Command::new(&exe).status().unwrap().success());
    let exe_s = exe.to_str().unwrap().to_string();
    let delay =
        wait_alert(&alerts, t0, "execution from /tmp", |a| a["rule"]["id"] == "edr.writable.exec-world-writable" && a["process"]["executable"] == exe_s);
    eprintln!("exec from /tmp: alert {delay:?} after the copy began");
    assert!(delay < Duration::from_secs(1), "alert after {delay:?}");

    // Appending a key to an authorized_keys file (a throw-away home).
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let keys = home.join(".ssh/authorized_keys");
    let t1 = now_ns();
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!("echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST edr-test' >> {}", keys.display()))
        .status()
        .unwrap()
        .success());
    let keys_s = keys.to_str().unwrap().to_string();
    let delay = wait_alert(&alerts, t1, "authorized_keys", |a| a["rule"]["id"] == "edr.persistence.authorized-keys" && a["file"]["path"] == keys_s);
    eprintln!("authorized_keys append: alert {delay:?} after the write");
    assert!(delay < Duration::from_secs(1), "alert after {delay:?}");

    // The writing process is attributed, and the agent's own files are not reported.
    let a =
        common::agent::read_jsonl(&alerts).into_iter().find(|a| a["file"]["path"] == keys_s && a["rule"]["id"] == "edr.persistence.authorized-keys").unwrap();
    assert!(a["process"]["executable"].as_str().unwrap_or("").ends_with("sh"), "{a}");
    // The record (the store) holds the write, and nothing the agent wrote itself.
    let query = |sql: &str| query(&data, sql);
    let deadline = Instant::now() + Duration::from_secs(20);
    while query(&format!("SELECT id FROM file WHERE path = '{keys_s}'")).is_empty() {
        assert!(Instant::now() < deadline, "the authorized_keys write never reached the store");
        std::thread::sleep(Duration::from_millis(100));
    }
    let own = query(&format!("SELECT path, pid FROM file WHERE path LIKE '{}%' OR pid = {agent_pid}", data.display()));
    assert!(own.is_empty(), "the agent reported its own file activity: {own:?}");

    // Status shows the live collectors.
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["status", "--json", "--data-dir", data.to_str().unwrap()]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let modes: Vec<String> =
        status["collectors"].as_array().unwrap().iter().map(|c| format!("{}={}", c["name"].as_str().unwrap(), c["mode"].as_str().unwrap())).collect();
    eprintln!("collectors: {modes:?}");
    assert!(modes.iter().any(|m| m.starts_with("process=ebpf")), "{modes:?}");
    assert!(modes.iter().any(|m| m.starts_with("file=fanotify")), "{modes:?}");
}

/// Issue 16's acceptance test: the agent on its defaults records every exec
/// of a 2,000-exec burst with its real argv, including the images of
/// `sh -c 'exec env true X'` chains that the process connector reported
/// with the wrong or a partial image.
#[test]
fn the_agent_on_its_defaults_records_every_exec_of_a_burst_with_its_argv() {
    if !is_root() {
        edr_testkit::skip("live telemetry needs root (eBPF)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _s = serial();
    let _agent = start_agent(dir.path(), &data);
    let tag = format!("edrburst{}", std::process::id());
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let tag = tag.clone();
            std::thread::spawn(move || {
                for i in (w..1700).step_by(4) {
                    Command::new("/bin/true").arg(format!("{tag}-t-{i}")).status().unwrap();
                }
                for i in (w..300).step_by(4) {
                    Command::new("/bin/sh").arg("-c").arg(format!("exec env true {tag}-c-{i}")).status().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let query = |sql: &str| query(&data, sql);
    let sql = format!("SELECT pid, exe, command_line, partial FROM process WHERE action = 'exec' AND command_line LIKE '%{tag}-%'");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = query(&sql);
    while rows.len() < 1700 + 3 * 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        rows = query(&sql);
    }
    let true_exe = std::fs::canonicalize("/bin/true").unwrap().to_string_lossy().into_owned();
    let env_exe = std::fs::canonicalize("/usr/bin/env").unwrap().to_string_lossy().into_owned();
    let sh_exe = std::fs::canonicalize("/bin/sh").unwrap().to_string_lossy().into_owned();
    let by_line: std::collections::HashMap<String, &serde_json::Value> =
        rows.iter().map(|r| (r["command_line"].as_str().unwrap_or_default().to_string(), r)).collect();
    let mut missing = Vec::new();
    let mut check = |line: String, exe: &str| -> Option<i64> {
        match by_line.get(&line) {
            Some(r) if r["exe"] == exe && r["partial"] == 0 => r["pid"].as_i64(),
            Some(r) => panic!("{line}: recorded as {r}"),
            None => {
                missing.push(line);
                None
            }
        }
    };
    for i in 0..1700 {
        check(format!("/bin/true {tag}-t-{i}"), &true_exe);
    }
    for i in 0..300 {
        let x = format!("{tag}-c-{i}");
        let pids = [check(format!("/bin/sh -c exec env true {x}"), &sh_exe), check(format!("env true {x}"), &env_exe), check(format!("true {x}"), &true_exe)];
        if pids.iter().all(Option::is_some) {
            assert!(pids.windows(2).all(|w| w[0] == w[1]), "{x}: one process, three images: {pids:?}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["status", "--json", "--data-dir", data.to_str().unwrap()]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let process = &status["collectors"][0];
    eprintln!("burst: {} exec rows of 2,600, missing {}; process collector {process}", rows.len(), missing.len());
    assert!(process["mode"].as_str().unwrap().starts_with("ebpf"), "{process}");
    assert!(missing.is_empty(), "not recorded with their argv: {:?}", &missing[..missing.len().min(10)]);
}

/// Issue 16: the agent on its defaults records every short TCP connection
/// (under a millisecond each, shorter than any poll interval) with the pid
/// of the process that made it.
#[test]
fn the_agent_on_its_defaults_records_every_short_tcp_connection_with_its_pid() {
    use std::io::{Read, Write};
    if !is_root() {
        edr_testkit::skip("live telemetry needs root (eBPF)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _s = serial();
    let _agent = start_agent(dir.path(), &data);
    const N: usize = 1000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..N {
            let (mut c, _) = listener.accept().unwrap();
            let _ = c.read(&mut [0u8; 1]);
        }
    });
    let mut longest = Duration::ZERO;
    for _ in 0..N {
        let t = Instant::now();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"x").unwrap();
        drop(c);
        longest = longest.max(t.elapsed());
    }
    server.join().unwrap();
    let query = |sql: &str| query(&data, sql);
    let sql = format!("SELECT action, pid, local_port, remote_port FROM network WHERE action = 'connect' AND remote_port = {port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rows = query(&sql);
    while rows.len() < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        rows = query(&sql);
    }
    let me = std::process::id() as u64;
    let ours = rows.iter().filter(|r| r["pid"].as_u64() == Some(me)).count();
    // Local ports are not unique: on loopback the kernel reuses a port still
    // in TIME_WAIT (net.ipv4.tcp_tw_reuse = 2, the default), so rows are
    // counted, and each must carry our pid.
    let ports: std::collections::HashSet<u64> = rows.iter().filter_map(|r| r["local_port"].as_u64()).collect();
    eprintln!("{N} connections (longest {longest:?}): {} connect rows, {ours} with our pid, {} distinct local ports", rows.len(), ports.len());
    assert_eq!(rows.len(), N, "one connect row per connection: {:?}", &rows[..rows.len().min(5)]);
    assert_eq!(ours, N, "every connection with our pid: {:?}", &rows[..rows.len().min(5)]);
    // And every client end's close, with our pid and its bytes: 1 byte + SYN
    // + FIN sent (the client closes first, so its FIN is acknowledged before
    // CLOSE), the server's FIN received (counted in at least almost all:
    // the edr-ebpf net test's tolerance for a FIN not yet counted).
    let sql = format!("SELECT pid, bytes_sent, bytes_received FROM network WHERE action = 'close' AND remote_port = {port}");
    let mut closes = query(&sql);
    while closes.len() < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        closes = query(&sql);
    }
    let mut sizes = std::collections::HashMap::<_, usize>::new();
    for r in &closes {
        *sizes.entry((r["pid"].as_u64(), r["bytes_sent"].as_u64(), r["bytes_received"].as_u64())).or_default() += 1;
    }
    eprintln!("{} close rows of client ends: (pid, sent, received) {sizes:?}", closes.len());
    assert_eq!(closes.len(), N, "one close row per client end");
    assert!(sizes.keys().all(|k| matches!(k, (Some(p), Some(3), Some(0 | 1)) if *p == me)), "{sizes:?}");
    assert!(sizes.get(&(Some(me), Some(3u64), Some(1u64))).copied().unwrap_or(0) >= N * 9 / 10, "the peer's FIN is counted almost always: {sizes:?}");
}
