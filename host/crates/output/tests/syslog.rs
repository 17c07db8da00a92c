//! Syslog output: RFC 5424 messages over UDP, TCP (octet counting) and Unix
//! sockets, parsed back field by field.

mod common;

use common::{show, wait_until};
use edr_output::{AlertOutput, OutgoingAlert, OutputError, Syslog, SyslogConfig};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An RFC 5424 message, parsed.
#[derive(Debug)]
struct Msg {
    pri: u32,
    version: u32,
    timestamp: String,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: String,
    /// SD-ID and its params, values unescaped.
    sd: Vec<(String, Vec<(String, String)>)>,
    msg: Vec<u8>,
}

impl Msg {
    fn param(&self, name: &str) -> Option<&str> {
        self.sd.iter().flat_map(|(_, p)| p).find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// MSG without the BOM, as JSON.
    fn json(&self) -> serde_json::Value {
        let body = self.msg.strip_prefix(BOM).unwrap_or(&self.msg);
        serde_json::from_slice(body).expect("MSG is JSON")
    }
}

/// Parses per RFC 5424 §6 (strictly: panics on any deviation).
fn parse(b: &[u8]) -> Msg {
    let s = b;
    assert_eq!(s[0], b'<', "PRI starts with <");
    let close = s.iter().position(|&c| c == b'>').expect(">");
    assert!((2..=4).contains(&close), "PRI is 1-3 digits");
    let pri: u32 = std::str::from_utf8(&s[1..close]).unwrap().parse().unwrap();
    assert!(pri <= 191);
    let mut rest = &s[close + 1..];
    let mut field = |name: &str, max: usize| -> String {
        let sp = rest.iter().position(|&c| c == b' ').unwrap_or_else(|| panic!("{name} ends with a space"));
        let f = std::str::from_utf8(&rest[..sp]).unwrap().to_string();
        assert!(!f.is_empty() && f.len() <= max && f.bytes().all(|c| (33..=126).contains(&c)), "{name} {f:?} is 1-{max} PRINTUSASCII");
        rest = &rest[sp + 1..];
        f
    };
    let version: u32 = field("VERSION", 2).parse().unwrap();
    let timestamp = field("TIMESTAMP", 32);
    let hostname = field("HOSTNAME", 255);
    let app_name = field("APP-NAME", 48);
    let procid = field("PROCID", 128);
    let msgid = field("MSGID", 32);
    let mut sd = Vec::new();
    if rest.first() == Some(&b'-') {
        rest = &rest[1..];
    } else {
        while rest.first() == Some(&b'[') {
            let mut i = 1;
            let id_end = rest[i..].iter().position(|&c| c == b' ' || c == b']').unwrap() + i;
            let id = std::str::from_utf8(&rest[i..id_end]).unwrap().to_string();
            i = id_end;
            let mut params = Vec::new();
            while rest[i] == b' ' {
                i += 1;
                let eq = rest[i..].iter().position(|&c| c == b'=').unwrap() + i;
                let name = std::str::from_utf8(&rest[i..eq]).unwrap().to_string();
                assert!(!name.is_empty() && name.len() <= 32 && !name.contains(['"', ']', ' ']));
                assert_eq!(rest[eq + 1], b'"');
                i = eq + 2;
                let mut value = Vec::new();
                loop {
                    match rest[i] {
                        b'\\' if matches!(rest[i + 1], b'"' | b'\\' | b']') => {
                            value.push(rest[i + 1]);
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b']' => panic!("unescaped ] in PARAM-VALUE"),
                        c => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                params.push((name, String::from_utf8(value).unwrap()));
            }
            assert_eq!(rest[i], b']', "SD-ELEMENT closes");
            sd.push((id, params));
            rest = &rest[i + 1..];
        }
    }
    let msg = match rest.first() {
        None => Vec::new(),
        Some(b' ') => rest[1..].to_vec(),
        Some(c) => panic!("SP before MSG expected, got {:?}", *c as char),
    };
    Msg { pri, version, timestamp, hostname, app_name, procid, msgid, sd, msg }
}

/// `2024-05-01T12:00:00.123456Z`.
fn assert_timestamp(t: &str) {
    let b = t.as_bytes();
    assert_eq!(b.len(), 27, "{t}");
    for (i, c) in b.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*c, b'-', "{t}"),
            10 => assert_eq!(*c, b'T', "{t}"),
            13 | 16 => assert_eq!(*c, b':', "{t}"),
            19 => assert_eq!(*c, b'.', "{t}"),
            26 => assert_eq!(*c, b'Z', "{t}"),
            _ => assert!(c.is_ascii_digit(), "{t}"),
        }
    }
    assert!(t[..4].parse::<u32>().unwrap() >= 2024);
}

fn config(address: &str, extra: &str) -> SyslogConfig {
    toml::from_str(&format!("address = \"{address}\"\nretry_initial_ms = 20\nretry_max_ms = 200\n{extra}")).expect("config")
}

fn alert<'a>(id: u64, json: &'a str, severity: u8, rule_id: &'a str) -> OutgoingAlert<'a> {
    OutgoingAlert { id, json, severity, rule_id, hostname: "test-host" }
}

/// Reads one octet-counted frame (RFC 6587 §3.4.1).
fn read_frame(r: &mut impl BufRead) -> Vec<u8> {
    let mut len = Vec::new();
    r.read_until(b' ', &mut len).unwrap();
    assert_eq!(len.pop(), Some(b' '), "MSG-LEN SP");
    let len: usize = std::str::from_utf8(&len).unwrap().parse().expect("MSG-LEN");
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).unwrap();
    msg
}

#[test]
fn udp_message_parses_as_rfc5424() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let addr = format!("udp://{}", rx.local_addr().unwrap());
    let mut out = Syslog::start(&config(&addr, "facility = \"local3\"\napp_name = \"edr-test\""), "test-host").unwrap();
    let json = r#"{"event":{"severity":73},"message":"ünïcode \"quoted\" ]"}"#;
    let rule = r#"weird"rule\]x"#;
    out.send(&alert(42, json, 73, rule)).unwrap();
    out.send(&alert(43, json, 99, "r")).unwrap();
    out.send(&alert(44, json, 1, "r")).unwrap();

    let mut buf = [0u8; 65536];
    let n = rx.recv(&mut buf).unwrap();
    let m = parse(&buf[..n]);
    assert_eq!(m.pri, 19 * 8 + 3, "local3 (19), high (73) -> error (3)");
    assert_eq!(m.version, 1);
    assert_timestamp(&m.timestamp);
    assert_eq!(m.hostname, "test-host");
    assert_eq!(m.app_name, "edr-test");
    assert_eq!(m.procid, std::process::id().to_string());
    assert_eq!(m.msgid, "alert");
    assert_eq!(m.sd.len(), 1);
    assert_eq!(m.sd[0].0, "edr@32473");
    assert_eq!(m.param("alert_id"), Some("42"));
    assert_eq!(m.param("rule_id"), Some(rule), "escaped \" \\ ] come back");
    assert_eq!(m.param("severity"), Some("73"));
    assert!(m.msg.starts_with(BOM), "UTF-8 MSG starts with the BOM (RFC 5424 6.4)");
    assert_eq!(m.json(), serde_json::from_str::<serde_json::Value>(json).unwrap());
    let raw = String::from_utf8(buf[..n].to_vec()).unwrap();
    assert!(raw.contains(r#"rule_id="weird\"rule\\\]x""#), "{raw}");

    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(parse(&buf[..n]).pri, 19 * 8 + 2, "critical (99) -> crit (2)");
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(parse(&buf[..n]).pri, 19 * 8 + 6, "informational (1) -> info (6)");
    assert!(wait_until(Duration::from_secs(2), || out.status().delivered == 3), "{}", show(&out.status()));
    let st = out.status();
    assert_eq!((st.kind.as_str(), st.target.as_str(), st.queued, st.dropped), ("syslog", addr.as_str(), 0, 0));
}

#[test]
fn udp_cuts_large_alerts_to_the_datagram_limit() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let addr = format!("udp://{}", rx.local_addr().unwrap());
    let mut out = Syslog::start(&config(&addr, "max_datagram_bytes = 1024"), "test-host").unwrap();
    let json = serde_json::json!({"pad": "é".repeat(2500)}).to_string();
    out.send(&alert(7, &json, 47, "r")).unwrap();
    let mut buf = [0u8; 65536];
    let n = rx.recv(&mut buf).unwrap();
    assert!(n <= 1024 && n > 900, "{n} bytes");
    let m = parse(&buf[..n]);
    assert_eq!(m.pri, 10 * 8 + 4, "authpriv (default), medium -> warning");
    assert_eq!(m.param("original_bytes"), Some(json.len().to_string().as_str()));
    assert!(std::str::from_utf8(&m.msg).is_ok(), "cut on a character boundary");
    assert!(wait_until(Duration::from_secs(2), || out.status().truncated == 1));
}

#[test]
fn tcp_uses_octet_counting_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let mut out = Syslog::start(&config(&addr, "bom = false\nfacility = \"auth\""), "test-host").unwrap();
    let docs: Vec<String> = (1..=3).map(|i| serde_json::json!({"id": i, "text": "line with spaces 12 34"}).to_string()).collect();
    for (i, d) in docs.iter().enumerate() {
        out.send(&alert(i as u64 + 1, d, 21, "edr.r")).unwrap();
    }
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(conn);
    for (i, d) in docs.iter().enumerate() {
        let frame = read_frame(&mut r);
        let m = parse(&frame);
        assert_eq!(m.pri, 4 * 8 + 5, "auth, low -> notice");
        assert_eq!(m.param("alert_id"), Some((i + 1).to_string().as_str()));
        assert_eq!(m.msg, d.as_bytes(), "no BOM when bom = false, the JSON as is");
    }
    // The receiver restarts: the next alert goes over a new connection.
    drop(r);
    std::thread::sleep(Duration::from_millis(100));
    out.send(&alert(4, &docs[0], 21, "edr.r")).unwrap();
    listener.set_nonblocking(false).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(conn);
    assert_eq!(parse(&read_frame(&mut r)).param("alert_id"), Some("4"));
    assert!(wait_until(Duration::from_secs(2), || out.status().delivered == 4), "{}", show(&out.status()));
}

#[test]
fn tcp_receiver_down_then_up_gets_the_queued_alerts() {
    let port = common::free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let mut out = Syslog::start(&config(&addr, ""), "test-host").unwrap();
    for id in 1..=5 {
        out.send(&alert(id, "{}", 50, "r")).unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || out.status().retries >= 2), "{}", show(&out.status()));
    assert!(out.status().last_error.unwrap().contains("cannot connect"));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(conn);
    let ids: Vec<String> = (0..5).map(|_| parse(&read_frame(&mut r)).param("alert_id").unwrap().to_string()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
}

#[test]
fn full_queue_drops_and_counts() {
    let port = common::free_port();
    let mut out = Syslog::start(&config(&format!("tcp://127.0.0.1:{port}"), "queue = 5"), "test-host").unwrap();
    let mut full = 0;
    for id in 1..=20 {
        match out.send(&alert(id, "{}", 50, "r")) {
            Ok(()) => {}
            Err(OutputError::QueueFull { capacity: 5, .. }) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full >= 14, "{full}");
    assert_eq!(out.status().dropped, full);
    out.shutdown(Duration::from_millis(50));
    let st = out.status();
    assert_eq!(st.dropped, 20, "still queued at shutdown counts as dropped: {}", show(&st));
}

#[test]
fn unix_datagram_and_stream_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let dgram_path = tmp.path().join("log.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Syslog::start(&config(&format!("unix://{}", dgram_path.display()), ""), "test-host").unwrap();
    out.send(&alert(9, "{\"a\":1}", 80, "r")).unwrap();
    let mut buf = [0u8; 65536];
    let n = rx.recv(&mut buf).unwrap();
    let m = parse(&buf[..n]);
    assert_eq!((m.pri, m.param("alert_id")), (10 * 8 + 3, Some("9")));
    assert_eq!(m.json()["a"], 1);

    let stream_path = tmp.path().join("stream.sock");
    let listener = std::os::unix::net::UnixListener::bind(&stream_path).unwrap();
    let mut out = Syslog::start(&config(&format!("unix://{}", stream_path.display()), ""), "test-host").unwrap();
    out.send(&alert(10, "{\"a\":2}", 80, "r")).unwrap();
    out.send(&alert(11, "{\"a\":3}", 80, "r")).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(conn);
    for (id, a) in [("10", 2), ("11", 3)] {
        let mut frame = Vec::new();
        r.read_until(0, &mut frame).unwrap();
        assert_eq!(frame.pop(), Some(0), "NUL-terminated like syslog(3)");
        let m = parse(&frame);
        assert_eq!((m.param("alert_id"), m.json()["a"].as_i64()), (Some(id), Some(a)));
    }
}
