//! `edr-bench fleet [--hosts N] [--alerts K] [--commands M] [--hold SECS] [--edr PATH]`:
//! a host simulator against one management server.
//!
//! The server is the real one (`edr server run`, a separate process with its
//! local `nats-server -js` child) in a temp directory. The simulated hosts
//! live in this process: each enrolls over the API with its own nkey, holds
//! its own NATS connection with its own user JWT (so the NATS server
//! confines it exactly as a real agent), sends heartbeats as the link does,
//! publishes alerts with JetStream acks and `Nats-Msg-Id`, and answers
//! signed commands after verifying them against the pinned operator key.
//! Measured: how long enrolling and bringing every host online takes, the
//! server's and nats-server's CPU and RSS while holding them, alerts per
//! second from publish until the server's index has them all, and the
//! round trip of signed `status` commands through the API (p50/p99).

use anyhow::{bail, Context};
use async_nats::jetstream;
use edr_fleet_proto::command::{CommandResult, SignedCommand};
use edr_fleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollToken};
use edr_fleet_proto::msg::{AlertMessage, Heartbeat};
use edr_fleet_proto::subjects;
use edr_fleet_server::client::Client;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    hosts: usize,
    alerts: usize,
    commands: usize,
    hold_secs: u64,
    edr: PathBuf,
}

fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args { hosts: 1000, alerts: 10, commands: 200, hold_secs: 30, edr: PathBuf::from("target/release/edr") };
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--hosts" => a.hosts = value()?.parse()?,
            "--alerts" => a.alerts = value()?.parse()?,
            "--commands" => a.commands = value()?.parse()?,
            "--hold" => a.hold_secs = value()?.parse()?,
            "--edr" => a.edr = value()?.into(),
            other => bail!("unknown flag {other}: use --hosts N --alerts K --commands M --hold SECS --edr PATH"),
        }
    }
    Ok(a)
}

/// The management server process; killed on drop (its NATS child with it).
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    api: Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM lets it stop its nats-server child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(edr: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let fleet = dir.path().join("fleet");
    let (nats, http) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let st = Command::new(edr)
        .args(["server", "init", "--dir"])
        .arg(&fleet)
        .args(["--nats-listen", &nats, "--listen", &http, "--heartbeat-secs", "30"])
        .output()
        .with_context(|| format!("running {} (build it: cargo build --release)", edr.display()))?;
    anyhow::ensure!(st.status.success(), "edr server init: {}", String::from_utf8_lossy(&st.stderr));
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let child = Command::new(edr).args(["server", "run", "--dir"]).arg(&fleet).stdout(log.try_clone()?).stderr(log).spawn()?;
    let token = std::fs::read_to_string(fleet.join("admin.token"))?.trim().to_string();
    let api = Client::new(&format!("http://{http}"), &token);
    let t = Instant::now();
    while api.get("/api/v1/hosts").is_err() {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "the server did not answer on {http} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Server { child, dir, api })
}

/// CPU seconds (user + system) and resident memory (MiB, now and peak) of `pid`.
fn usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok());
    (cpu, kib("VmRSS:").unwrap_or(0.0) / 1024.0, kib("VmHWM:").unwrap_or(0.0) / 1024.0)
}

/// The server's nats-server child (started from one of its threads, so
/// every thread's `children` is read).
fn nats_child(server: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{server}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .find_map(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
}

/// One simulated host's identity.
struct SimHost {
    host_id: String,
    key: Arc<nkeys::KeyPair>,
    jwt: String,
    nats_url: String,
}

fn enroll(api: &Client, base: &str, i: usize) -> anyhow::Result<(SimHost, String)> {
    let token = api.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 600}))?["token"].as_str().context("no token")?.to_string();
    let token = EnrollToken::decode(&token)?;
    let key = nkeys::KeyPair::new_user();
    let req = EnrollRequest { v: edr_fleet_proto::PROTO_VERSION, secret: token.secret, user_key: key.public_key(), hostname: format!("sim-{i:04}") };
    let mut resp = ureq::post(&format!("{base}/api/v1/enroll")).send_json(&req)?;
    let r: EnrollResponse = resp.body_mut().read_json()?;
    let pinned = token.command_keys.first().cloned().context("token without a command key")?;
    Ok((SimHost { host_id: r.host_id, key: Arc::new(key), jwt: r.user_jwt, nats_url: r.nats_urls[0].clone() }, pinned))
}

fn heartbeat(h: &SimHost, i: usize) -> Heartbeat {
    Heartbeat {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id: h.host_id.clone(),
        time: edr_fleet_proto::now_secs(),
        interval_secs: 30,
        hostname: format!("sim-{i:04}"),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0-sim".into(),
        agent_version: "sim".into(),
        packs: vec![],
        collectors: vec![],
        isolated: false,
        drops: Default::default(),
        alerts_forwarded: 0,
        alert_cursor: 0,
        events_forwarded: 0,
        events_cursor: 0,
        status_error: None,
        self_release: None,
        pipeline_events: None,
    }
}

/// Connects host `h`, answers its commands, and beats every 30 s until the runtime ends.
async fn run_host(h: SimHost, i: usize, pinned: ed25519_dalek::VerifyingKey) -> anyhow::Result<(async_nats::Client, SimHost)> {
    let key = h.key.clone();
    let client = async_nats::ConnectOptions::with_jwt(h.jwt.clone(), move |nonce| {
        let key = key.clone();
        async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
    })
    .custom_inbox_prefix(subjects::inbox_prefix(&h.host_id))
    .connect(h.nats_url.as_str())
    .await?;
    let mut cmds = client.subscribe(subjects::command(&h.host_id)).await?;
    let (c, host_id) = (client.clone(), h.host_id.clone());
    tokio::spawn(async move {
        while let Some(m) = cmds.next().await {
            let Some(reply) = m.reply else { continue };
            let signed: Result<SignedCommand, _> = serde_json::from_slice(&m.payload);
            let (command_id, status, output) =
                match signed.map_err(|e| e.to_string()).and_then(|s| s.verify(&[pinned], &host_id, edr_fleet_proto::now_secs()).map_err(|e| e.to_string())) {
                    Ok(body) => (body.command_id, "done", json!({"agent": {"version": "sim"}})),
                    Err(why) => (String::new(), "refused", json!({"reason": why})),
                };
            let r = CommandResult { v: edr_fleet_proto::PROTO_VERSION, host_id: host_id.clone(), command_id, status: status.into(), output };
            let _ = c.publish(reply, serde_json::to_vec(&r).unwrap_or_default().into()).await;
        }
    });
    let (c, hb) = (client.clone(), heartbeat(&h, i));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            let hb = Heartbeat { time: edr_fleet_proto::now_secs(), ..hb.clone() };
            let _ = c.publish(subjects::heartbeat(&hb.host_id), serde_json::to_vec(&hb).unwrap_or_default().into()).await;
        }
    });
    Ok((client, h))
}

fn alert(host_id: &str, id: u64) -> AlertMessage {
    AlertMessage {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id: host_id.into(),
        alert_id: id,
        time: edr_fleet_proto::now_secs() * 1_000_000_000,
        rule_id: "edr.sim.rule".into(),
        rule_name: "Simulated".into(),
        severity: "high".into(),
        ecs: json!({"event": {"severity": 73}, "rule": {"id": "edr.sim.rule"}, "message": format!("alert {id}")}),
    }
}

/// Publishes `k` alerts from every host (JetStream acks, message ids), all hosts at once.
async fn publish_alerts(hosts: &[(async_nats::Client, SimHost)], k: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (client, h) in hosts {
        let js = jetstream::new(client.clone());
        let host_id = h.host_id.clone();
        tasks.push(tokio::spawn(async move {
            for id in 1..=k as u64 {
                let body = serde_json::to_vec(&alert(&host_id, id)).unwrap_or_default();
                let msg = jetstream::message::PublishMessage::build().payload(body.into()).message_id(subjects::alert_msg_id(&host_id, id));
                js.send_publish(subjects::alert(&host_id), msg).await?.await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

fn raise_fd_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Runs the benchmark and prints its table.
pub fn run(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let a = parse(args)?;
    raise_fd_limit();
    let server = start_server(&a.edr)?;
    let base = server.api.base().to_string();
    let t = Instant::now();
    let mut enrolled = Vec::with_capacity(a.hosts);
    for i in 0..a.hosts {
        enrolled.push(enroll(&server.api, &base, i).with_context(|| format!("enrolling host {i}"))?);
    }
    let enroll_secs = t.elapsed().as_secs_f64();
    let pinned = edr_fleet_proto::command::parse_key(&enrolled[0].1).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let t = Instant::now();
    let hosts: Vec<(async_nats::Client, SimHost)> = rt.block_on(async {
        let mut out = Vec::new();
        for (i, (h, _)) in enrolled.into_iter().enumerate() {
            out.push(run_host(h, i, pinned).await?);
        }
        anyhow::Ok(out)
    })?;
    let online = |api: &Client| api.get("/api/v1/hosts").map(|v| count_state(&v, "online")).unwrap_or(0);
    while online(&server.api) < a.hosts {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "only {} of {} hosts online after 300 s", online(&server.api), a.hosts);
        std::thread::sleep(Duration::from_millis(250));
    }
    let online_secs = t.elapsed().as_secs_f64();
    let spid = server.child.id();
    let npid = nats_child(spid).context("the server's nats-server child")?;
    let (s0, n0) = (usage(spid), usage(npid));
    std::thread::sleep(Duration::from_secs(a.hold_secs));
    let (s1, n1) = (usage(spid), usage(npid));
    let still = online(&server.api);
    let hold = a.hold_secs as f64;

    let total = a.hosts * a.alerts;
    let t = Instant::now();
    rt.block_on(publish_alerts(&hosts, a.alerts))?;
    let published_secs = t.elapsed().as_secs_f64();
    let creds = std::fs::read_to_string(server.dir.path().join("fleet/server.creds"))?;
    let nats_url = hosts[0].1.nats_url.clone();
    rt.block_on(async {
        let js = jetstream::new(async_nats::ConnectOptions::with_credentials(&creds)?.connect(nats_url.as_str()).await?);
        let stream = js.get_stream(subjects::STREAM_ALERTS).await?;
        loop {
            let acked = stream.consumer_info("edr-server-alerts").await?.ack_floor.stream_sequence;
            if acked >= total as u64 {
                return anyhow::Ok(());
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "only {acked} of {total} alerts indexed after 600 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    let ingest_secs = t.elapsed().as_secs_f64();

    let key_file = server.dir.path().join("fleet/keys/command.ed25519");
    let mut rtt = Vec::with_capacity(a.commands);
    for n in 0..a.commands {
        let h = &hosts[(n * 7919) % hosts.len()].1;
        let signed = edr_fleet_server::client::sign_command(&key_file, &h.host_id, edr_fleet_proto::command::Command::Status, 300)?;
        let t = Instant::now();
        let r = server.api.post(&format!("/api/v1/hosts/{}/commands", h.host_id), &serde_json::to_value(&signed)?)?;
        rtt.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(r["status"] == "done", "command {n}: {r}");
    }
    rtt.sort_by(f64::total_cmp);
    let (s2, n2) = (usage(spid), usage(npid));

    println!("edr-bench fleet: {} simulated hosts (one NATS connection and user JWT each), one server (`edr server run` + its nats-server)\n", a.hosts);
    println!("| measure | value |\n|---|---|");
    println!("| enroll {} hosts over the API (sequential) | {enroll_secs:.1} s ({:.1} ms/host) |", a.hosts, enroll_secs * 1000.0 / a.hosts as f64);
    println!("| connect all and see them online in `GET /api/v1/hosts` | {online_secs:.1} s |");
    println!("| hosts online after holding {hold:.0} s | {still} of {} |", a.hosts);
    println!("| server CPU while holding | {:.1} % of a core |", (s1.0 - s0.0) / hold * 100.0);
    println!("| nats-server CPU while holding | {:.1} % of a core |", (n1.0 - n0.0) / hold * 100.0);
    println!("| server RSS holding (peak over the run) | {:.0} MiB ({:.0} MiB) |", s1.1, s2.2);
    println!("| nats-server RSS holding (peak over the run) | {:.0} MiB ({:.0} MiB) |", n1.1, n2.2);
    println!("| {total} alerts, all hosts publishing at once: published (acked) | {published_secs:.1} s |");
    println!("| ... all in the server's index | {ingest_secs:.1} s = {:.0} alerts/s |", total as f64 / ingest_secs);
    println!("| server CPU during alerts + commands | {:.1} CPU s |", s2.0 - s1.0);
    println!(
        "| signed `status` command round trip via the API ({} commands, one at a time) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        a.commands,
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99),
        rtt.last().copied().unwrap_or(0.0)
    );
    drop(hosts);
    drop(rt);
    Ok(())
}

fn count_state(v: &Value, state: &str) -> usize {
    v["hosts"].as_array().map_or(0, |h| h.iter().filter(|h| h["state"] == state).count())
}
