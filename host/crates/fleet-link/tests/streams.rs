//! `[streams]` against a real nats-server: the central record's retention
//! (age, size) and every stream's replicas are applied at server start, a
//! changed value updates the existing stream without losing what it holds,
//! deletes stay denied, and values JetStream cannot honour stop the server
//! with the setting's name.

mod common;

use async_nats::jetstream;
use common::TestFleet;
use edr_fleet_proto::subjects;
use edr_fleet_server::fleet::StreamSettings;
use edr_fleet_server::{Fleet, InitOptions};
use std::time::Duration;

const DAY: u64 = 86_400;

/// (max age in seconds, max bytes, replicas, deny_delete, messages) of `stream`.
fn stream_state(f: &TestFleet, stream: &str) -> (u64, i64, usize, bool, u64) {
    let creds = std::fs::read_to_string(f.fleet_dir().join("server.creds")).unwrap();
    let url = format!("nats://{}", f.nats_listen);
    f.rt.block_on(async move {
        let client = async_nats::ConnectOptions::with_credentials(&creds).unwrap().connect(url.as_str()).await.unwrap();
        let js = jetstream::new(client);
        let info = js.get_stream(stream).await.unwrap().info().await.unwrap().clone();
        (info.config.max_age.as_secs(), info.config.max_bytes, info.config.num_replicas, info.config.deny_delete, info.state.messages)
    })
}

#[test]
fn stream_retention_and_replicas_follow_the_settings() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let mut f = TestFleet::start(InitOptions::default(), |_| {});
    assert_eq!(stream_state(&f, subjects::STREAM_EVENTS).0, 90 * DAY, "the central record keeps 90 days by default");
    let (age, bytes, replicas, deny_delete, _) = stream_state(&f, subjects::STREAM_EVENTS);
    assert_eq!((age, bytes, replicas, deny_delete), (90 * DAY, -1, 1, true));
    assert_eq!(stream_state(&f, subjects::STREAM_ALERTS).0, 0, "alerts are kept without an age limit by default");

    // Something in a stream, to show an update keeps it.
    f.token();
    f.token();
    let server_msgs = stream_state(&f, subjects::STREAM_SERVER).4;
    assert!(server_msgs >= 2, "two token creations are in {}: {server_msgs}", subjects::STREAM_SERVER);

    let shorter = StreamSettings { events_max_age_days: 7, events_max_gib: 2, alerts_max_age_days: 400, replicas: 1 };
    f.restart(false, |fleet: &mut Fleet| fleet.config.streams = shorter.clone());
    let (age, bytes, replicas, deny_delete, _) = stream_state(&f, subjects::STREAM_EVENTS);
    assert_eq!((age, bytes, replicas, deny_delete), (7 * DAY, 2 << 30, 1, true), "the existing stream was updated, deletes still denied");
    assert_eq!(stream_state(&f, subjects::STREAM_ALERTS).0, 400 * DAY);
    assert_eq!(stream_state(&f, subjects::STREAM_SERVER).4, server_msgs, "the update lost nothing");

    // Three replicas on one nats-server 2.9: it records the number (and keeps one copy); the server starts, retention applied.
    f.restart(false, |fleet: &mut Fleet| fleet.config.streams = StreamSettings { replicas: 3, events_max_age_days: 30, ..shorter.clone() });
    let (age, _, replicas, _, _) = stream_state(&f, subjects::STREAM_EVENTS);
    assert_eq!((age, replicas), (30 * DAY, 3), "the stream took the settings");
    assert_eq!(stream_state(&f, subjects::STREAM_SERVER).4, server_msgs, "nothing lost");

    // Out of range: the server does not start, and says which setting.
    let mut fleet = Fleet::open(&f.fleet_dir()).unwrap();
    fleet.config.nats.start_local = false;
    fleet.config.streams.replicas = 7;
    let _guard = f.rt.enter();
    let err = f.rt.block_on(edr_fleet_server::start(fleet, false)).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("[streams] replicas = 7"), "{err}");
    drop(_guard);
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn stream_settings_out_of_range_are_refused_with_what_to_write() {
    let ok = StreamSettings::default();
    assert!(ok.check().is_ok());
    for (bad, says) in [
        (StreamSettings { replicas: 0, ..ok.clone() }, "replicas = 0"),
        (StreamSettings { replicas: 6, ..ok.clone() }, "1 to 5"),
        (StreamSettings { events_max_age_days: 40_000, ..ok.clone() }, "events_max_age_days"),
        (StreamSettings { alerts_max_age_days: u64::MAX, ..ok.clone() }, "alerts_max_age_days"),
        (StreamSettings { events_max_gib: u64::MAX, ..ok.clone() }, "events_max_gib"),
    ] {
        let e = bad.check().unwrap_err();
        assert!(e.contains(says) && e.contains("[streams]"), "{e}");
    }
    // In fleet.toml: an unknown key is refused, a missing section is the defaults.
    let e = toml::from_str::<StreamSettings>("events_max_age = 3").unwrap_err().to_string();
    assert!(e.contains("unknown field"), "{e}");
    assert_eq!(toml::from_str::<StreamSettings>("replicas = 3").unwrap(), StreamSettings { replicas: 3, ..StreamSettings::default() });
}
