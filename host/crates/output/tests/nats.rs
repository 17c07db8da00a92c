//! NATS JetStream output against a real `nats-server` (Debian package
//! `nats-server`). Without it on PATH every test prints why it is skipped.

mod common;

use common::{free_port, show, wait_until};
use edr_output::{AlertOutput, Nats, NatsConfig, OutgoingAlert};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `nats-server -js` on 127.0.0.1, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(port: u16, store: &Path, extra: &[&str]) -> Server {
        let log = store.with_extension("log");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .arg("-l")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = Server { child, port };
        assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()), "nats-server listening on {port}");
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// False (with the message the brief asks for) when nats-server is missing.
fn have_server() -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    if !found {
        edr_testkit::skip("nats-server not on PATH (Debian package nats-server)");
    }
    found
}

fn config(url: &str, extra: &str) -> NatsConfig {
    toml::from_str(&format!("url = \"{url}\"\nretry_initial_ms = 50\nretry_max_ms = 500\ntimeout_ms = 2000\n{extra}")).expect("config")
}

fn send(out: &mut Nats, id: u64, json: &str) {
    out.send(&OutgoingAlert { id, json, severity: 73, rule_id: "edr.test", hostname: "test.host" }).expect("send");
}

fn doc(id: u64) -> String {
    serde_json::json!({"id": id, "event": {"kind": "alert"}}).to_string()
}

/// Every message of `stream`, read with an ephemeral pull consumer:
/// (subject, Nats-Msg-Id, alert id).
fn read_stream(url: &str, stream: &str) -> Vec<(String, String, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("test client");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(stream).await.expect("stream");
        let total = stream.cached_info().state.messages as usize;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut out = Vec::new();
        let mut batch = consumer.fetch().max_messages(total.max(1) + 10).expires(Duration::from_millis(500)).messages().await.expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string()).unwrap_or_default();
            let alert: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON payload");
            out.push((m.subject.to_string(), id, alert["id"].as_u64().expect("id")));
        }
        out
    })
}

/// Runs `f` against the test's own JetStream context.
fn with_js<T>(url: &str, f: impl AsyncFnOnce(async_nats::jetstream::Context) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("test client");
        f(async_nats::jetstream::new(client)).await
    })
}

#[test]
fn publishes_with_ack_and_survives_a_server_outage() {
    if !have_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store: PathBuf = tmp.path().join("js");
    let port = free_port();
    let mut server = Server::start(port, &store, &[]);
    let cfg = config(&server.url(), "subject = \"edr.{host}.alerts\"\nstream = \"EDR_TEST\"");
    let mut out = Nats::start(&cfg, tmp.path(), "test.host").unwrap();
    for id in 1..=20 {
        send(&mut out, id, &doc(id));
    }
    assert!(wait_until(Duration::from_secs(10), || out.status().delivered == 20), "{}", show(&out.status()));

    // Server down: alerts spool.
    drop(server);
    for id in 21..=30 {
        send(&mut out, id, &doc(id));
    }
    assert!(wait_until(Duration::from_secs(5), || out.status().retries >= 1), "{}", show(&out.status()));
    let st = out.status();
    assert_eq!((st.delivered, st.queued), (20, 10), "{}", show(&st));

    // Back up (same store): the spooled alerts arrive once, in order.
    server = Server::start(port, &store, &[]);
    assert!(wait_until(Duration::from_secs(10), || out.status().queued == 0), "{}", show(&out.status()));
    let st = out.status();
    assert_eq!((st.delivered, st.rejected, st.dropped), (30, 0, 0), "{}", show(&st));
    assert_eq!(st.target, format!("{} edr.test_host.alerts", server.url()));
    let msgs = read_stream(&server.url(), "EDR_TEST");
    assert_eq!(msgs.iter().map(|m| m.2).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>(), "each alert once, in order");
    for (subject, msg_id, id) in &msgs {
        assert_eq!(subject, "edr.test_host.alerts", "{{host}} with the dot replaced");
        assert_eq!(msg_id, &format!("test.host-{id}"));
    }
    out.shutdown(Duration::from_secs(1));
}

#[test]
fn resent_batch_after_a_lost_commit_is_deduplicated_by_jetstream() {
    if !have_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), &tmp.path().join("js"), &[]);
    let cfg = config(&server.url(), "stream = \"DEDUP\"");
    let mut out = Nats::start(&cfg, tmp.path(), "test.host").unwrap();
    for id in 1..=5 {
        send(&mut out, id, &doc(id));
    }
    assert!(wait_until(Duration::from_secs(10), || out.status().delivered == 5), "{}", show(&out.status()));
    drop(out);
    // As if the agent died after the acks and before the commit: rewind it.
    std::fs::write(tmp.path().join("spool/nats/committed"), "v1 1 0\n").unwrap();
    let out = Nats::start(&cfg, tmp.path(), "test.host").unwrap();
    assert!(wait_until(Duration::from_secs(10), || out.status().delivered == 5), "resent: {}", show(&out.status()));
    let ids: Vec<u64> = read_stream(&server.url(), "DEDUP").iter().map(|m| m.2).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5], "Nats-Msg-Id dropped the resent copies");
}

#[test]
fn without_a_stream_alerts_wait_until_one_exists() {
    if !have_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), &tmp.path().join("js"), &[]);
    let mut out = Nats::start(&config(&server.url(), ""), tmp.path(), "test.host").unwrap();
    send(&mut out, 1, &doc(1));
    assert!(
        wait_until(Duration::from_secs(10), || out.status().last_error.is_some_and(|e| e.contains("no JetStream stream captures subject"))),
        "{}",
        show(&out.status())
    );
    assert_eq!(out.status().queued, 1);
    with_js(&server.url(), async |js| {
        js.create_stream(async_nats::jetstream::stream::Config { name: "LATE".into(), subjects: vec!["edr.alerts".into()], ..Default::default() })
            .await
            .expect("create stream");
    });
    assert!(wait_until(Duration::from_secs(10), || out.status().delivered == 1), "{}", show(&out.status()));
    assert_eq!(read_stream(&server.url(), "LATE").len(), 1);
}

#[test]
fn oversized_alert_is_rejected_and_the_rest_delivered() {
    if !have_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), &tmp.path().join("js"), &[]);
    with_js(&server.url(), async |js| {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "SMALL".into(),
            subjects: vec!["edr.alerts".into()],
            max_message_size: 1024,
            ..Default::default()
        })
        .await
        .expect("create stream");
    });
    let mut out = Nats::start(&config(&server.url(), ""), tmp.path(), "test.host").unwrap();
    send(&mut out, 1, &doc(1));
    send(&mut out, 2, &serde_json::json!({"id": 2, "pad": "x".repeat(4000)}).to_string());
    send(&mut out, 3, &doc(3));
    assert!(wait_until(Duration::from_secs(10), || out.status().queued == 0), "{}", show(&out.status()));
    let st = out.status();
    assert_eq!((st.delivered, st.rejected), (2, 1), "{}", show(&st));
    let ids: Vec<u64> = read_stream(&server.url(), "SMALL").iter().map(|m| m.2).collect();
    assert_eq!(ids, vec![1, 3]);
    let rejected = std::fs::read_to_string(tmp.path().join("spool/nats/rejected.ndjson")).unwrap();
    assert!(rejected.contains("\"alert_id\":2"), "{rejected}");
}

#[test]
fn token_authentication() {
    if !have_server() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), &tmp.path().join("js"), &["--auth", "s3cret"]);
    let good = Nats::start(&config(&server.url(), "token = \"s3cret\"\nstream = \"AUTH\"\nname = \"good\""), tmp.path(), "h").unwrap();
    let mut bad = Nats::start(&config(&server.url(), "token = \"wrong\"\nname = \"bad\""), tmp.path(), "h").unwrap();
    let mut good = good;
    send(&mut good, 1, &doc(1));
    send(&mut bad, 1, &doc(1));
    assert!(wait_until(Duration::from_secs(10), || good.status().delivered == 1), "{}", show(&good.status()));
    assert!(
        wait_until(Duration::from_secs(10), || bad.status().last_error.is_some_and(|e| e.to_lowercase().contains("authorization"))),
        "{}",
        show(&bad.status())
    );
    assert_eq!(bad.status().queued, 1);
}
