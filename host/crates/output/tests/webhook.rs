//! Webhook delivery: outages, retries, restarts, refusals, a full spool, a
//! torn spool tail.

mod common;

use common::*;
use edr_output::spool::{Spool, SpoolOptions};
use edr_output::{AlertOutput, OutputError, Webhook, WebhookConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A webhook config for 127.0.0.1:`port` with quick retries; `extra` (TOML)
/// adds or overrides keys.
fn config(port: u16, extra: &str) -> WebhookConfig {
    let mut t: toml::Table =
        toml::from_str(&format!("url = \"http://127.0.0.1:{port}/alerts\"\nretry_initial_ms = 20\nretry_max_ms = 200\ntimeout_ms = 2000")).unwrap();
    t.extend(toml::from_str::<toml::Table>(extra).expect("extra config"));
    t.try_into().expect("config")
}

fn spool_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".seg")).collect();
    v.sort();
    v
}

#[test]
fn receiver_down_then_up_gets_every_alert_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // 1 MiB spool: 64 KiB segments, so the 200 alerts of ~2 KiB span several
    // and delivered ones must be deleted.
    let cfg = config(port, "batch_max = 50\nmax_spool_mb = 1\nheaders = { Authorization = \"Bearer t0ken\" }");
    let mut out = Webhook::start(&cfg, tmp.path(), "test-host").unwrap();
    let started = Instant::now();
    for id in 1..=200 {
        send(&mut out, id, &alert_json(id, 2000)).unwrap();
    }
    let send_time = started.elapsed();
    eprintln!("200 spooled sends (fsync each): {send_time:?} ({:?} per alert)", send_time / 200);
    let spool_dir = tmp.path().join("spool/webhook");
    assert!(spool_files(&spool_dir).len() >= 6, "several segments: {:?}", spool_files(&spool_dir));
    assert!(wait_until(Duration::from_secs(5), || out.status().retries >= 3), "retries while down: {}", show(&out.status()));
    let st = out.status();
    assert_eq!(st.queued, 200);
    assert!(st.last_error.as_deref().unwrap_or("").contains("127.0.0.1"), "{}", show(&st));

    let up = Instant::now();
    let rx = Receiver::start(port);
    assert!(wait_until(Duration::from_secs(8), || out.status().queued == 0), "drained: {}", show(&out.status()));
    eprintln!("drained 200 alerts {:?} after the receiver came up", up.elapsed());
    let ids = rx.accepted_ids();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>(), "each alert once, in order");
    for r in rx.accepted() {
        assert_eq!(r.headers["content-type"], "application/x-ndjson");
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        assert!(r.body.ends_with('\n'));
        let body_ids = r.body_ids();
        assert_eq!(r.header_ids(), body_ids, "X-Edr-Alert-Ids lists the body's alerts");
        assert!(body_ids.len() <= 50);
        assert_eq!(r.headers["idempotency-key"], format!("test-host-{}-{}", body_ids[0], body_ids[body_ids.len() - 1]));
        assert!(r.headers["user-agent"].starts_with("edr/"));
    }
    let st = out.status();
    assert_eq!((st.delivered, st.queued, st.queued_bytes, st.dropped, st.rejected), (200, 0, 0, 0, 0), "{}", show(&st));
    assert!(st.last_delivery.is_some());
    assert!(spool_files(&spool_dir).len() <= 1, "delivered segments deleted: {:?}", spool_files(&spool_dir));
    out.shutdown(Duration::from_secs(1));
    assert!(matches!(send(&mut out, 201, "{}"), Err(OutputError::ShutDown { .. })));
}

#[test]
fn server_errors_are_retried_until_accepted_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let rx = Receiver::scripted(port, vec![(500, vec![]), (503, vec![]), (429, vec![("Retry-After".into(), "1".into())]), (500, vec![])]);
    // retry_max_ms caps Retry-After: 2 s allows the 1 s asked for.
    let cfg = config(port, "retry_max_ms = 2000");
    let mut out = Webhook::start(&cfg, tmp.path(), "test-host").unwrap();
    for id in 1..=5 {
        send(&mut out, id, &alert_json(id, 10)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(8), || out.status().delivered == 5), "{}", show(&out.status()));
    assert_eq!(rx.accepted_ids(), vec![1, 2, 3, 4, 5]);
    let all = rx.all();
    assert_eq!(all.iter().map(|r| r.status).collect::<Vec<_>>()[..5], [500, 503, 429, 500, 200]);
    assert!(all[..5].iter().all(|r| r.body_ids() == vec![1]), "the same alert is retried first");
    assert_eq!(all[0].headers["content-type"], "application/json", "batch_max 1 sends plain JSON");
    assert_eq!(all[0].headers["idempotency-key"], all[4].headers["idempotency-key"], "a retry keeps its key");
    let gap = all[3].at - all[2].at;
    assert!(gap >= Duration::from_millis(900), "Retry-After: 1 honoured, waited {gap:?}");
    let st = out.status();
    assert_eq!((st.retries, st.delivered, st.rejected), (4, 5, 0), "{}", show(&st));
}

#[test]
fn restart_on_the_same_spool_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // A slow receiver, so that the first output stops mid-way.
    let rx = Receiver::with(
        port,
        Arc::new(|_| {
            std::thread::sleep(Duration::from_millis(10));
            (200, vec![])
        }),
    );
    let cfg = config(port, "");
    let mut first = Webhook::start(&cfg, tmp.path(), "test-host").unwrap();
    for id in 1..=100 {
        send(&mut first, id, &alert_json(id, 100)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || first.status().delivered >= 20));
    drop(first);
    let n = rx.accepted_ids().len();
    assert!(n < 100, "stopped mid-way ({n} delivered)");

    let mut second = Webhook::start(&cfg, tmp.path(), "test-host").unwrap();
    let st = second.status();
    assert_eq!(st.queued as usize + n, 100, "the rest is still spooled: {}", show(&st));
    for id in 101..=110 {
        send(&mut second, id, &alert_json(id, 100)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(8), || second.status().queued == 0), "{}", show(&second.status()));
    assert_eq!(rx.accepted_ids(), (1..=110).collect::<Vec<_>>());
    assert_eq!(second.status().delivered as usize, 110 - n);
}

#[test]
fn refused_alert_goes_to_the_rejected_file_and_delivery_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // The alerts are already spooled when the output starts (as after an
    // outage), so they go as one batch, which the receiver refuses whole.
    {
        let spool = Spool::open(&tmp.path().join("spool/webhook"), "webhook spool", SpoolOptions::with_max_bytes(1 << 20)).unwrap();
        for id in 1..=10 {
            let json = if id == 5 { serde_json::json!({"id": id, "bad": true}).to_string() } else { alert_json(id, 10) };
            spool.append(id, &json).unwrap();
        }
    }
    let rx = Receiver::with(port, Arc::new(|r| if r.body.contains("\"bad\"") { (400, vec![]) } else { (200, vec![]) }));
    let out = Webhook::start(&config(port, "batch_max = 10"), tmp.path(), "test-host").unwrap();
    assert!(wait_until(Duration::from_secs(5), || out.status().queued == 0), "{}", show(&out.status()));
    assert_eq!(rx.accepted_ids(), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    let all = rx.all();
    assert_eq!((all[0].status, all[0].body_ids().len()), (400, 10), "the batch was refused whole");
    assert!(all[1..].iter().all(|r| r.body_ids().len() == 1 || r.status == 200), "then sent one by one");
    let st = out.status();
    assert_eq!((st.delivered, st.rejected), (9, 1), "{}", show(&st));
    assert!(st.last_error.as_deref().unwrap().contains("400"), "{}", show(&st));
    let rejected = std::fs::read_to_string(tmp.path().join("spool/webhook/rejected.ndjson")).unwrap();
    let lines: Vec<serde_json::Value> = rejected.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["alert_id"], 5);
    assert_eq!(lines[0]["alert"]["bad"], true, "the alert is kept whole");
    assert!(lines[0]["reason"].as_str().unwrap().contains("HTTP 400"));
    assert!(lines[0]["rejected_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn full_spool_refuses_and_counts_dropped_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(port, "max_spool_mb = 1");
    let mut out = Webhook::start(&cfg, tmp.path(), "test-host").unwrap();
    let (mut ok, mut full) = (0u64, 0u64);
    for id in 1..=150 {
        match send(&mut out, id, &alert_json(id, 10_000)) {
            Ok(()) => ok += 1,
            Err(OutputError::SpoolFull { id: e, max_bytes, .. }) => {
                assert_eq!((e, max_bytes), (id, 1 << 20));
                full += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!((95..=105).contains(&ok), "about 1 MiB of 10 KB alerts accepted: {ok}");
    let st = out.status();
    assert_eq!((st.queued, st.dropped), (ok, full), "{}", show(&st));
    assert!(st.queued_bytes <= 1 << 20);
    assert!(st.last_error.as_deref().unwrap().contains("spool full"), "{}", show(&st));
    let rx = Receiver::start(port);
    assert!(wait_until(Duration::from_secs(8), || out.status().queued == 0), "{}", show(&out.status()));
    assert_eq!(rx.accepted_ids(), (1..=ok).collect::<Vec<_>>());
    // Room again.
    send(&mut out, 1000, &alert_json(1000, 10)).unwrap();
}

#[test]
fn torn_spool_tail_is_truncated_and_the_rest_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool/webhook");
    {
        let spool = Spool::open(&dir, "webhook spool", SpoolOptions::with_max_bytes(1 << 20)).unwrap();
        for id in 1..=3 {
            spool.append(id, &alert_json(id, 10)).unwrap();
        }
    }
    // A crash in the middle of appending alert 4: header and half a payload.
    let seg = dir.join("00000000000000000001.seg");
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let json = alert_json(4, 10);
    let mut torn = Vec::new();
    torn.extend_from_slice(&(json.len() as u32).to_le_bytes());
    torn.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    torn.extend_from_slice(&4u64.to_le_bytes());
    torn.extend_from_slice(&json.as_bytes()[..json.len() / 2]);
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&torn).unwrap();

    let port = free_port();
    let rx = Receiver::start(port);
    let mut out = Webhook::start(&config(port, ""), tmp.path(), "test-host").unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len, "torn record cut off");
    send(&mut out, 4, &json).unwrap();
    assert!(wait_until(Duration::from_secs(5), || out.status().queued == 0), "{}", show(&out.status()));
    assert_eq!(rx.accepted_ids(), vec![1, 2, 3, 4]);
}

#[test]
fn unreachable_receiver_keeps_alerts_and_reports_why() {
    let tmp = tempfile::tempdir().unwrap();
    // 192.0.2.0/24 is TEST-NET-1 (never routed); use a closed local port
    // instead so that the test sends nothing off the machine.
    let cfg: WebhookConfig = toml::from_str("url = \"http://127.0.0.1:1/x?token=secret\"\nretry_initial_ms = 10\nretry_max_ms = 50").unwrap();
    let mut out = Webhook::start(&cfg, tmp.path(), "h").unwrap();
    send(&mut out, 1, "{\"id\":1}").unwrap();
    assert!(wait_until(Duration::from_secs(5), || out.status().retries >= 2));
    let st = out.status();
    assert_eq!(st.target, "http://127.0.0.1:1/x", "no query string (credentials) in status");
    assert_eq!((st.queued, st.delivered), (1, 0));
    let err = st.last_error.unwrap();
    assert!(err.contains("POST http://127.0.0.1:1/x") && !err.contains("secret"), "{err}");
    let started = Instant::now();
    out.shutdown(Duration::from_millis(100));
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown is bounded");
    assert_eq!(out.status().queued, 1, "status still reports the spool depth");
    // Still there for the next start.
    let again = Webhook::start(&cfg, tmp.path(), "h").unwrap();
    assert_eq!(again.status().queued, 1);
}

#[test]
fn fsync_cost_per_append() {
    // Measured on the disk that holds the temp dir; printed for the record.
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(tmp.path(), "bench spool", SpoolOptions::with_max_bytes(64 << 20)).unwrap();
    let json = alert_json(0, 1500);
    let n = 200;
    let started = Instant::now();
    for id in 0..n {
        spool.append(id, &json).unwrap();
    }
    let per = started.elapsed() / n as u32;
    eprintln!("spool append of a {} byte alert with fdatasync: {per:?} per append", json.len());
    assert_eq!(spool.queued(), n);
}
