//! Configuration: parsing, validation errors that name the key, bad
//! addresses, unreachable receivers, `build`.

mod common;

use common::{show, wait_until};
use edr_output::{build, AlertOutput, Nats, NatsConfig, OutgoingAlert, OutputError, OutputsConfig};
use std::path::Path;
use std::time::Duration;

fn parse(text: &str) -> Result<OutputsConfig, String> {
    toml::from_str::<OutputsConfig>(text).map_err(|e| e.to_string())
}

/// The (key, message) of a validation error.
fn invalid(text: &str) -> (String, String) {
    let cfg = parse(text).expect("parses");
    match cfg.validate(Path::new("/var/lib/edr")) {
        Err(OutputError::Config { key, message }) => (key, message),
        other => panic!("expected a config error for {text:?}, got {other:?}"),
    }
}

#[test]
fn defaults_and_both_table_forms() {
    let cfg = parse("[syslog]\n[webhook]\nurl = \"https://siem.example/edr\"\n[nats]\n").unwrap();
    assert_eq!((cfg.syslog.len(), cfg.webhook.len(), cfg.nats.len()), (1, 1, 1));
    let (s, w, n) = (&cfg.syslog[0], &cfg.webhook[0], &cfg.nats[0]);
    assert_eq!(
        (s.address.as_str(), s.facility, s.app_name.as_str(), s.bom, s.max_datagram_bytes),
        ("unix:///dev/log", edr_output::Facility::Authpriv, "edr", true, 8192)
    );
    assert_eq!((w.timeout_ms, w.max_spool_mb, w.retry_initial_ms, w.retry_max_ms, w.batch_max), (10_000, 256, 1_000, 60_000, 1));
    assert_eq!(w.spool_dir(Path::new("/var/lib/edr")), Path::new("/var/lib/edr/spool/webhook"));
    assert_eq!((n.url.as_str(), n.subject.as_str(), n.stream.as_deref()), ("nats://127.0.0.1:4222", "edr.alerts", None));
    cfg.validate(Path::new("/var/lib/edr")).unwrap();
    assert_eq!(cfg.describe(), vec!["syslog unix:///dev/log", "webhook https://siem.example/edr", "nats nats://127.0.0.1:4222 edr.alerts"]);

    let many = parse("[[webhook]]\nname = \"siem\"\nurl = \"http://a/\"\n[[webhook]]\nname = \"soar\"\nurl = \"http://b/\"\nspool_dir = \"q/soar\"\n").unwrap();
    assert_eq!(many.webhook.len(), 2);
    assert_eq!(many.webhook[1].spool_dir(Path::new("/d")), Path::new("/d/q/soar"), "relative to the data dir");
    many.validate(Path::new("/d")).unwrap();
    assert!(parse("").unwrap().is_empty());
}

#[test]
fn malformed_config_names_the_key() {
    let e = parse("[webhook]\nurl = \"http://x/\"\nretries = 3\n").unwrap_err();
    assert!(e.contains("unknown field `retries`") && e.contains("retry_initial_ms"), "{e}");
    let e = parse("[webhook]\nurl = \"http://x/\"\ntimeout_ms = \"fast\"\n").unwrap_err();
    assert!(e.contains("timeout_ms") && e.contains("invalid type"), "{e}");
    let e = parse("[syslog]\nfacility = \"kernel\"\n").unwrap_err();
    assert!(e.contains("unknown variant `kernel`") && e.contains("authpriv"), "{e}");
    let e = parse("[kafka]\n").unwrap_err();
    assert!(e.contains("unknown field `kafka`"), "{e}");
    let e = parse("webhook = 3\n").unwrap_err();
    assert!(e.contains("a table or an array of tables"), "{e}");
    let e = parse("[[nats]]\nurl = \"nats://a:1\"\nsubjcet = \"x\"\n").unwrap_err();
    assert!(e.contains("unknown field `subjcet`"), "{e}");
}

#[test]
fn invalid_values_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("[webhook]\n", "webhook.url", "missing"),
        ("[webhook]\nurl = \"ftp://x/\"\n", "webhook.url", "scheme"),
        ("[webhook]\nurl = \"siem.example/edr\"\n", "webhook.url", "absolute"),
        ("[webhook]\nurl = \"http://exa mple/\"\n", "webhook.url", "not a valid URL"),
        ("[webhook]\nurl = \"http://x/\"\nheaders = { \"Content-Type\" = \"text/plain\" }\n", "webhook.headers.Content-Type", "set by the webhook output"),
        ("[webhook]\nurl = \"http://x/\"\nheaders = { \"Bad Name\" = \"v\" }\n", "webhook.headers.Bad Name", "header name"),
        ("[webhook]\nurl = \"http://x/\"\nheaders = { X-A = \"a\\nb\" }\n", "webhook.headers.X-A", "line breaks"),
        ("[webhook]\nurl = \"http://x/\"\nbatch_max = 0\n", "webhook.batch_max", "out of range"),
        ("[webhook]\nurl = \"http://x/\"\nretry_initial_ms = 5000\nretry_max_ms = 100\n", "webhook.retry_max_ms", "5000"),
        ("[webhook]\nurl = \"http://x/\"\nmax_spool_mb = 0\n", "webhook.max_spool_mb", "out of range"),
        ("[[webhook]]\nurl = \"http://x/\"\n[[webhook]]\nurl = \"http://y/\"\n", "webhook[1].name", "already the name"),
        (
            "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\nspool_dir = \"/s\"\n[[webhook]]\nname = \"b\"\nurl = \"http://y/\"\nspool_dir = \"/s\"\n",
            "webhook[1].spool_dir",
            "also the spool of webhook[0]",
        ),
        ("[webhook]\nname = \"a b\"\nurl = \"http://x/\"\n", "webhook.name", "not a valid name"),
        ("[syslog]\naddress = \"tcp://logs\"\n", "syslog.address", "no port"),
        ("[syslog]\naddress = \"udp://logs:99999\"\n", "syslog.address", "not a port"),
        ("[syslog]\naddress = \"/dev/log\"\n", "syslog.address", "unix:///path"),
        ("[syslog]\napp_name = \"my edr\"\n", "syslog.app_name", "APP-NAME"),
        ("[syslog]\nmax_datagram_bytes = 100\n", "syslog.max_datagram_bytes", "480"),
        ("[nats]\nurl = \"http://x:4222\"\n", "nats.url", "nats://host:port"),
        ("[nats]\nsubject = \"edr.*\"\n", "nats.subject", "wildcards"),
        ("[nats]\nsubject = \"edr..alerts\"\n", "nats.subject", "non-empty tokens"),
        ("[nats]\nsubject = \"edr.{hostname}\"\n", "nats.subject", "{host}"),
        ("[nats]\nstream = \"a.b\"\n", "nats.stream", "not a stream name"),
        ("[nats]\ntoken = \"t\"\ncredentials_file = \"/c.creds\"\n", "nats.token", "not both"),
        ("[nats]\n[webhook]\nurl = \"http://x/\"\nname = \"nats\"\n", "nats.name", "already the name"),
    ];
    for (text, key, needle) in cases {
        let (k, m) = invalid(text);
        assert_eq!(&k, key, "{text:?}: {m}");
        assert!(m.contains(needle), "{text:?}: {m:?} should mention {needle:?}");
    }
}

#[test]
fn spool_directory_that_cannot_be_created_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "").unwrap();
    let cfg = parse(&format!("[webhook]\nurl = \"http://127.0.0.1:1/\"\nspool_dir = \"{}/spool\"\n", file.display())).unwrap();
    let err = build(&cfg, tmp.path(), "h").err().expect("fails");
    let text = err.to_string();
    assert!(matches!(err, OutputError::Io { .. }), "{err:?}");
    assert!(text.starts_with(&format!("webhook spool {}/spool: cannot create: ", file.display())), "{text}");

    let cfg = parse("[nats]\ncredentials_file = \"/nonexistent/edr.creds\"\n").unwrap();
    let err = build(&cfg, tmp.path(), "h").err().expect("fails").to_string();
    assert!(err.starts_with("nats.credentials_file: /nonexistent/edr.creds: "), "{err}");
}

#[test]
fn build_starts_every_output_without_touching_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = parse(
        "[[syslog]]\naddress = \"udp://127.0.0.1:9\"\n[[webhook]]\nname = \"siem\"\nurl = \"http://127.0.0.1:1/\"\n[[webhook]]\nname = \"soar\"\nurl = \"https://user:pw@127.0.0.1:1/hook?k=v\"\n[nats]\nurl = \"nats://127.0.0.1:1\"\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut outs = build(&cfg, tmp.path(), "test-host").unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "build does not wait for receivers");
    let names: Vec<String> = outs.iter().map(|o| o.name().to_string()).collect();
    assert_eq!(names, ["syslog", "siem", "soar", "nats"]);
    assert_eq!(outs[2].status().target, "https://127.0.0.1:1/hook", "no credentials in status");
    for o in outs.iter_mut() {
        o.send(&OutgoingAlert { id: 1, json: "{\"a\":1}", severity: 50, rule_id: "r", hostname: "test-host" }).unwrap();
    }
    assert!(tmp.path().join("spool/siem").is_dir() && tmp.path().join("spool/soar").is_dir() && tmp.path().join("spool/nats").is_dir());
    for o in outs.iter_mut() {
        o.shutdown(Duration::from_millis(100));
    }
}

#[test]
fn unreachable_nats_server_keeps_alerts_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg: NatsConfig = toml::from_str("url = \"nats://127.0.0.1:1\"\nretry_initial_ms = 20\nretry_max_ms = 100\ntimeout_ms = 500").unwrap();
    let mut out = Nats::start(&cfg, tmp.path(), "h").unwrap();
    out.send(&OutgoingAlert { id: 1, json: "{}", severity: 50, rule_id: "r", hostname: "h" }).unwrap();
    assert!(wait_until(Duration::from_secs(5), || out.status().retries >= 2), "{}", show(&out.status()));
    let st = out.status();
    assert_eq!((st.queued, st.delivered), (1, 0));
    assert!(st.last_error.as_deref().unwrap_or("").contains("cannot connect to nats://127.0.0.1:1"), "{}", show(&st));
}
