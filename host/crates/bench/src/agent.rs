//! `edr-bench agent`: the live agent under an exec workload (root only).
//!
//! Starts `edr agent` on its defaults (live collectors, built-in pack) in a
//! temporary data dir, measures it idle, then runs a copy of /bin/true from
//! /tmp at fixed rates (each exec is an attack for `writable-exec`, so each
//! must raise an alert) and measures:
//! * the agent's CPU (utime + stime from /proc/<pid>/stat) as % of one core,
//! * its resident memory (VmRSS),
//! * exec-to-alert latency: alert `@timestamp` minus the moment just before
//!   the exec was spawned, matched by a unique argument.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    edr: PathBuf,
    idle_secs: u64,
    secs: u64,
    rates: Vec<u32>,
}

fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args { edr: PathBuf::from("target/release/edr"), idle_secs: 10, secs: 10, rates: vec![50, 200] };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--edr" => a.edr = PathBuf::from(value()?),
            "--idle-secs" => a.idle_secs = value()?.parse()?,
            "--secs" => a.secs = value()?.parse()?,
            "--rates" => a.rates = value()?.split(',').map(|r| r.parse()).collect::<Result<_, _>>()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
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

pub fn run(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let a = parse(args)?;
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "the agent benchmark needs root (live collectors)");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // First start: compiles the plugins (cold). Measure it, stop, then measure
    // a restart on the warm compile cache: what an installed agent runs as.
    {
        let child = Command::new(&a.edr)
            .args(["agent", "--data-dir", data.to_str().unwrap()])
            .env("EDR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id();
        let _stop = Stop(child);
        let start = Instant::now();
        while !data.join("control.sock").exists() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("cold start (compiling every plugin): ready in {:.1} s, {:.1} MB resident", start.elapsed().as_secs_f64(), rss_mb(pid));
    }
    let child = Command::new(&a.edr)
        .args(["agent", "--data-dir", data.to_str().unwrap()])
        .env("EDR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", a.edr.display()))?;
    let pid = child.id();
    let _stop = Stop(child);
    let start = Instant::now();
    while !data.join("control.sock").exists() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "the agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("warm restart (compile cache): ready in {:.1} s", start.elapsed().as_secs_f64());
    // Let start-up work (compiling, /proc scan) settle before measuring idle.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(a.idle_secs));
    let idle_cpu = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let idle_rss = rss_mb(pid);
    println!("agent idle: {idle_cpu:.2}% of one core over {} s, {idle_rss:.1} MB resident", a.idle_secs);

    let exe = Path::new("/tmp").join(format!("edr-bench-true-{}", std::process::id()));
    std::fs::copy("/bin/true", &exe)?;
    let alerts_path = data.join("alerts.jsonl");
    println!("\n| execs/s | execs | alerts | agent CPU % of a core | RSS MB | latency p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (round, rate) in a.rates.iter().enumerate() {
        // Matched by pid: an exec too short-lived for /proc still carries its
        // pid (and, through fanotify, its exe), but not always its argv.
        let mut spawned: HashMap<u64, u64> = HashMap::new();
        let interval = Duration::from_secs_f64(1.0 / *rate as f64);
        let (c0, t0) = (cpu_secs(pid), Instant::now());
        let mut next = Instant::now();
        let total = *rate as u64 * a.secs;
        for i in 0..total {
            let t = now_ns();
            let mut child = Command::new(&exe).arg(format!("r{round}-{i}")).spawn()?;
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
        // Drain: alerts for the last execs.
        std::thread::sleep(Duration::from_secs(2));
        let cpu = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        let rss = rss_mb(pid);
        let mut lat: Vec<f64> = std::fs::read_to_string(&alerts_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["rule"]["id"] == "edr.writable.exec-world-writable")
            .filter_map(|v| {
                let sent = spawned.get(&v["process"]["pid"].as_u64()?)?;
                let at = edr_event::time::parse_rfc3339(v["@timestamp"].as_str()?).ok()?;
                Some(at.saturating_sub(*sent) as f64 / 1e6)
            })
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {rate} | {total} | {} | {cpu:.1} | {rss:.1} | {:.1} | {:.1} | {:.1} |",
            lat.len(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    }
    let _ = std::fs::remove_file(&exe);
    let out = Command::new(&a.edr).args(["status", "--data-dir", data.to_str().unwrap()]).output()?;
    println!("\n{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
