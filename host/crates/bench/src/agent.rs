//! `edr-bench agent`: the live agent under an exec workload (root only).
//!
//! Starts `edr agent` on its defaults (live collectors, built-in pack) in a
//! temporary data dir, once per telemetry source (`--sources old,ebpf`: the
//! old path, netlink + fanotify + `/proc/net` polling, forced with
//! `EDR_PROCESS_EBPF=0 EDR_NETWORK_EBPF=0`, and the eBPF hooks, side by
//! side in one run), measures it idle, then runs a copy of /bin/true from
//! /tmp at fixed rates (each exec is an attack for `writable-exec`, so each
//! must raise an alert) and measures:
//! * the agent's CPU (utime + stime from /proc/<pid>/stat) as % of one core,
//!   and per exec (all of it: collect, record, every built-in plugin),
//! * exec events the collector marked partial (argv or exe missing),
//! * its resident memory (VmRSS),
//! * exec-to-alert latency: alert `@timestamp` minus the moment just before
//!   the exec was spawned, matched by pid.
//!
//! Each rate runs twice: `/bin/true` (an ordinary exec: collect, record,
//! every plugin, no alert) and the copy in /tmp (an attack: one alert each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    edr: PathBuf,
    idle_secs: u64,
    secs: u64,
    rates: Vec<u32>,
    sources: Vec<String>,
}

fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a =
        Args { edr: PathBuf::from("target/release/edr"), idle_secs: 10, secs: 10, rates: vec![50, 200, 1000], sources: vec!["old".into(), "ebpf".into()] };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--edr" => a.edr = PathBuf::from(value()?),
            "--idle-secs" => a.idle_secs = value()?.parse()?,
            "--secs" => a.secs = value()?.parse()?,
            "--rates" => a.rates = value()?.split(',').map(|r| r.parse()).collect::<Result<_, _>>()?,
            "--sources" => a.sources = value()?.split(',').map(str::to_string).collect(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    for s in &a.sources {
        anyhow::ensure!(s == "old" || s == "ebpf", "unknown source {s}: old (netlink + /proc/net polling) or ebpf");
    }
    Ok(a)
}

fn clock_ticks() -> f64 {
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() as f64) * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Stop(Child);
impl Drop for Stop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A running agent; stopped (SIGTERM) and reaped on drop.
pub(crate) struct Agent {
    pid: u32,
    pub(crate) data: PathBuf,
    edr: PathBuf,
    _stop: Stop,
}

impl Agent {
    /// Starts `edr agent` on `data` with the process source `source`;
    /// returns once its control socket is up, and how long that took.
    pub(crate) fn start(edr: &Path, data: &Path, source: &str) -> anyhow::Result<(Agent, Duration)> {
        let mut cmd = Command::new(edr);
        cmd.args(["agent", "--data-dir", data.to_str().unwrap()]).env("EDR_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
        if source == "old" {
            cmd.env("EDR_PROCESS_EBPF", "0").env("EDR_NETWORK_EBPF", "0");
        }
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", edr.display()))?;
        let agent = Agent { pid: child.id(), data: data.to_path_buf(), edr: edr.to_path_buf(), _stop: Stop(child) };
        let start = Instant::now();
        while !data.join("control.sock").exists() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((agent, start.elapsed()))
    }

    /// The process collector's status (`edr status --json`).
    fn process_status(&self) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.edr).args(["status", "--json", "--data-dir", self.data.to_str().unwrap()]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["collectors"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "process").cloned()).unwrap_or_default())
    }
}

/// One rate's figures.
struct Round {
    rate: u32,
    achieved: f64,
    execs: u64,
    alerts: usize,
    cpu_pct: f64,
    cpu_us_per_exec: f64,
    partial: u64,
    rss: f64,
    lat: Vec<f64>,
}

/// Runs `rate` execs/s of `exe` for `secs` against the agent.
fn round(agent: &Agent, exe: &Path, tag: &str, rate: u32, secs: u64) -> anyhow::Result<Round> {
    // Matched by pid: every exec event carries it, whatever else it lacks.
    let mut spawned: HashMap<u64, u64> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let partial0 = agent.process_status()?["partial"].as_u64().unwrap_or(0);
    let started_ns = now_ns();
    let (c0, t0) = (cpu_secs(agent.pid), Instant::now());
    let mut next = Instant::now();
    let total = rate as u64 * secs;
    for i in 0..total {
        let t = now_ns();
        let mut child = Command::new(exe).arg(format!("{tag}-{i}")).spawn()?;
        spawned.insert(child.id() as u64, t);
        // Reap without waiting on the schedule.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        next += interval;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let achieved = total as f64 / t0.elapsed().as_secs_f64();
    // Drain: alerts for the last execs.
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_secs(agent.pid) - c0;
    let cpu_pct = cpu / t0.elapsed().as_secs_f64() * 100.0;
    let partial = agent.process_status()?["partial"].as_u64().unwrap_or(0).saturating_sub(partial0);
    let mut lat: Vec<f64> = std::fs::read_to_string(agent.data.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["rule"]["id"] == "edr.writable.exec-world-writable")
        .filter_map(|v| {
            let sent = spawned.get(&v["process"]["pid"].as_u64()?)?;
            let at = edr_event::time::parse_rfc3339(v["@timestamp"].as_str()?).ok()?;
            // Earlier rounds' alerts may carry a pid reused since.
            (at >= started_ns).then(|| at.saturating_sub(*sent) as f64 / 1e6)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(Round { rate, achieved, execs: total, alerts: lat.len(), cpu_pct, cpu_us_per_exec: cpu * 1e6 / total as f64, partial, rss: rss_mb(agent.pid), lat })
}

/// One rate's figures for TCP connections.
struct ConnRound {
    rate: u32,
    achieved: f64,
    conns: u64,
    recorded: u64,
    cpu_us_per_conn: f64,
}

/// Runs `rate` short loopback TCP connections/s (connect, one byte, close)
/// for `secs`; counts the connects the record holds for the listener's port.
fn conn_round(agent: &Agent, rate: u32, secs: u64) -> anyhow::Result<ConnRound> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let total = rate as u64 * secs;
    let server = std::thread::spawn(move || {
        for _ in 0..total {
            let Ok((mut c, _)) = listener.accept() else { break };
            let _ = c.read(&mut [0u8; 1]);
        }
    });
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (c0, t0) = (cpu_secs(agent.pid), Instant::now());
    let mut next = Instant::now();
    for _ in 0..total {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c.write_all(b"x")?;
        drop(c);
        next += interval;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let achieved = total as f64 / t0.elapsed().as_secs_f64();
    let _ = server.join();
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_secs(agent.pid) - c0;
    let sql = format!("SELECT count(*) AS n FROM network WHERE action = 'connect' AND remote_port = {port}");
    let out = Command::new(&agent.edr).args(["query", "--json", "--data-dir", agent.data.to_str().unwrap(), &sql]).output()?;
    let row: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default()).unwrap_or_default();
    Ok(ConnRound { rate, achieved, conns: total, recorded: row["n"].as_u64().unwrap_or(0), cpu_us_per_conn: cpu * 1e6 / total as f64 })
}

pub fn run(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let a = parse(args)?;
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "the agent benchmark needs root (live collectors)");
    let exe = Path::new("/tmp").join(format!("edr-bench-true-{}", std::process::id()));
    std::fs::copy("/bin/true", &exe)?;
    let mut rows = Vec::new();
    let mut conn_rows = Vec::new();
    for (n, source) in a.sources.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        // First start: compiles the plugins (cold). Then a restart on the
        // warm compile cache: what an installed agent runs as.
        {
            let (agent, took) = Agent::start(&a.edr, &data, source)?;
            println!("[{source}] cold start (compiling every plugin): ready in {:.1} s, {:.1} MB resident", took.as_secs_f64(), rss_mb(agent.pid));
        }
        let (agent, took) = Agent::start(&a.edr, &data, source)?;
        let mode = agent.process_status()?["mode"].as_str().unwrap_or("?").to_string();
        println!("[{source}] warm restart: ready in {:.1} s; process collector: {mode}", took.as_secs_f64());
        // Let start-up work (compiling, /proc scan) settle before measuring idle.
        std::thread::sleep(Duration::from_secs(3));
        let (c0, t0) = (cpu_secs(agent.pid), Instant::now());
        std::thread::sleep(Duration::from_secs(a.idle_secs));
        let idle_cpu = (cpu_secs(agent.pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        println!("[{source}] idle: {idle_cpu:.2}% of one core over {} s, {:.1} MB resident", a.idle_secs, rss_mb(agent.pid));
        for rate in &a.rates {
            // An ordinary exec (nothing to alert on) and an attack (each
            // raises an alert: the full path, output and record included).
            for (workload, exe) in [("ordinary /bin/true", Path::new("/bin/true")), ("alerting /tmp copy", exe.as_path())] {
                rows.push((format!("{source} | {workload}"), round(&agent, exe, &format!("s{n}r{rate}"), *rate, a.secs)?));
            }
        }
        for rate in &a.rates {
            conn_rows.push((source.clone(), conn_round(&agent, *rate, a.secs)?));
        }
    }
    let _ = std::fs::remove_file(&exe);
    println!("\n| source | workload | execs/s asked (achieved) | execs | alerts | partial | agent CPU % | CPU µs/exec | RSS MB | exec → alert p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (source, r) in rows {
        println!(
            "| {source} | {} ({:.0}) | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.rate,
            r.achieved,
            r.execs,
            r.alerts,
            r.partial,
            r.cpu_pct,
            r.cpu_us_per_exec,
            r.rss,
            percentile(&r.lat, 0.50),
            percentile(&r.lat, 0.99),
            r.lat.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!("\n| source | connections/s asked (achieved) | connections | recorded (connect) | agent CPU µs/connection |");
    println!("|---|---:|---:|---:|---:|");
    for (source, r) in conn_rows {
        println!("| {source} | {} ({:.0}) | {} | {} | {:.0} |", r.rate, r.achieved, r.conns, r.recorded, r.cpu_us_per_conn);
    }
    Ok(())
}
