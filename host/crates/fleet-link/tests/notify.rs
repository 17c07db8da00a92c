//! Server-side notifications against a real nats-server: every alert that
//! reaches the fleet goes once to the operator's syslog receiver (a UDP
//! socket here), with the host's name and id; an index rebuild notifies
//! nothing again; wrong `[notify]` settings stop the server with a message.

mod common;

use common::TestFleet;
use edr_fleet_server::{Fleet, InitOptions};
use edr_store::{Store, StoreConfig};
use edr_testkit::wait_until;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn syslog_to(port: u16) -> impl Fn(&mut Fleet) + Clone {
    move |f: &mut Fleet| f.config.notify = toml::from_str(&format!("[[syslog]]\naddress = \"udp://127.0.0.1:{port}\"")).unwrap()
}

/// Datagrams received within `window` (stops early once `want` arrived).
fn receive(sock: &UdpSocket, want: usize, window: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + window;
    let mut buf = vec![0u8; 65536];
    while got.len() < want && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn every_alert_is_notified_once_and_a_rebuild_notifies_nothing_again() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let to = syslog_to(sock.local_addr().unwrap().port());
    let mut fleet = TestFleet::start(InitOptions { name: "notify".into(), heartbeat_secs: 1, ..Default::default() }, to.clone());
    let data = tempfile::tempdir().unwrap();
    let id = edr_fleet_link::enroll::enroll(data.path(), &fleet.token(), "web-7").unwrap();
    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let link = common::link(data.path(), store.clone(), "0.1.0-notify");

    common::write_alerts(&store, 1..=3);
    let got = receive(&sock, 3, Duration::from_secs(20));
    assert_eq!(got.len(), 3, "{got:?}");
    for (n, line) in got.iter().enumerate() {
        assert!(line.contains(" web-7 "), "the syslog HOSTNAME is the host's name: {line}");
        assert!(line.contains("rule_id=\"edr.test.rule\""), "{line}");
        assert!(line.contains(&format!("\"host_id\":\"{}\"", id.host_id)), "the document names the fleet host id: {line}");
        assert!(line.contains(&format!("alert {}", n + 1)), "in order: {line}");
    }
    assert!(receive(&sock, 1, Duration::from_secs(2)).is_empty(), "nothing more than the three");
    let status = fleet.admin.get("/api/v1/notify").unwrap();
    assert_eq!(status["outputs"][0]["kind"], "syslog", "{status}");
    assert_eq!(status["outputs"][0]["delivered"], 3, "{status}");

    // A rebuilt index is filled from the streams again; the notifications are not.
    fleet.restart(true, to);
    assert!(wait_until(Duration::from_secs(15), || fleet.admin.get("/api/v1/alerts?limit=100").unwrap()["alerts"].as_array().unwrap().len() == 3));
    assert!(receive(&sock, 1, Duration::from_secs(3)).is_empty(), "a rebuild must not notify again");
    common::write_alerts(&store, 4..=4);
    let got = receive(&sock, 2, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "only the new alert: {got:?}");
    assert!(got[0].contains("alert 4"), "{got:?}");
    link.stop();
}

#[test]
fn wrong_notify_settings_stop_the_server_with_the_reason() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions { nats_listen: format!("127.0.0.1:{}", edr_testkit::free_port()), http_listen: "127.0.0.1:0".into(), ..Default::default() };
    let mut fleet = edr_fleet_server::fleet::init(&dir.path().join("fleet"), &opts).unwrap().fleet;
    fleet.config.notify = toml::from_str("[[syslog]]\naddress = \"ftp://siem:514\"").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let e = rt.block_on(edr_fleet_server::start(fleet, false)).unwrap_err().to_string();
    assert!(e.contains("[notify]") && e.contains("ftp://siem:514"), "{e}");
}
