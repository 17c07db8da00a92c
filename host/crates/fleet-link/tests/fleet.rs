//! The fleet end to end, in one process: a real `nats-server` (started by
//! the management server as its local child, on a free loopback port, its
//! JetStream store in a temp dir, killed on drop), the management server,
//! and fleet links over real `edr-store` records. No agent is spawned.

mod common;

use common::write_alerts;
use edr_fleet_link::{identity, FleetLink, Identity, LinkOptions};
use edr_fleet_server::client::{Client, ClientError};
use edr_fleet_server::{FleetError, InitOptions, Running};
use edr_store::{Store, StoreConfig};
use edr_testkit::{free_port, wait_until};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn have_nats() -> bool {
    edr_testkit::have_program("nats-server", "nats-server")
}

/// The management server with its local NATS; everything stops on drop
/// (the server, then NATS, then the runtime).
struct Harness {
    running: Option<Running>,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    admin: Client,
    nats_listen: String,
}

impl Harness {
    fn start(heartbeat_secs: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let nats_listen = format!("127.0.0.1:{}", free_port());
        let opts =
            InitOptions { name: "test".into(), nats_listen: nats_listen.clone(), http_listen: "127.0.0.1:0".into(), heartbeat_secs, ..Default::default() };
        let created = edr_fleet_server::fleet::init(&dir.path().join("fleet"), &opts).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let running = rt.block_on(edr_fleet_server::start(created.fleet, false)).unwrap();
        let admin = Client::new(&format!("http://{}", running.http_addr), &created.admin_token);
        Harness { running: Some(running), rt, dir, admin, nats_listen }
    }

    fn fleet_dir(&self) -> PathBuf {
        self.dir.path().join("fleet")
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn token(&self) -> String {
        self.admin.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 600})).unwrap()["token"].as_str().unwrap().to_string()
    }

    fn stop_nats(&mut self) {
        common::stop_nats(self.running.as_mut().unwrap(), &self.nats_listen);
    }

    fn start_nats(&mut self) {
        let dir = self.fleet_dir();
        common::start_nats(self.running.as_mut().unwrap(), &dir, &self.nats_listen);
    }

    /// Messages in the alerts stream: each alert once, or duplicates show here.
    fn stream_messages(&self) -> u64 {
        let js = self.running().state.bus.js.clone();
        self.rt.block_on(async move { js.get_stream("EDR_ALERTS").await.unwrap().info().await.unwrap().state.messages })
    }

    fn alerts(&self, host: &str) -> Vec<Value> {
        self.admin.get(&format!("/api/v1/alerts?host={host}&limit=1000")).unwrap()["alerts"].as_array().unwrap().clone()
    }

    fn hosts(&self) -> Vec<Value> {
        self.admin.get("/api/v1/hosts").unwrap()["hosts"].as_array().unwrap().clone()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.running.take();
    }
}

fn status_doc() -> Result<Value, String> {
    Ok(json!({
        "agent": {"version": "0.1.0-test"},
        "packs": {"active": [{"id": "edr.builtin", "version": "1.0.0"}]},
        "collectors": [{"name": "process", "mode": "netlink", "dropped": 0, "lost": 0}],
        "response": {"isolation": {"isolated": false}},
    }))
}

fn link(data_dir: &Path, store: Arc<Store>) -> FleetLink {
    let opts =
        LinkOptions { agent_version: "test".into(), alert_poll: Duration::from_millis(100), heartbeat: Some(Duration::from_secs(1)), ..Default::default() };
    FleetLink::start(data_dir, opts, store, Arc::new(status_doc)).unwrap()
}

fn enroll(h: &Harness, data_dir: &Path, name: &str) -> Identity {
    edr_fleet_link::enroll::enroll(data_dir, &h.token(), name).unwrap()
}

#[test]
fn alerts_arrive_exactly_once_across_a_nats_restart_and_link_restarts() {
    if !have_nats() {
        return;
    }
    let mut h = Harness::start(1);
    let data = tempfile::tempdir().unwrap();
    let id = enroll(&h, data.path(), "web-1");
    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let l = link(data.path(), store.clone());
    write_alerts(&store, 1..=5);
    assert!(wait_until(Duration::from_secs(20), || h.alerts(&id.host_id).len() == 5), "5 alerts indexed: {:?}", h.alerts(&id.host_id).len());

    // A network cut: NATS goes away, alerts keep being recorded, NATS comes back.
    h.stop_nats();
    write_alerts(&store, 6..=10);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(l.stats().cursor.load(std::sync::atomic::Ordering::Relaxed), 5, "the cursor must not pass unacknowledged alerts");
    h.start_nats();
    assert!(wait_until(Duration::from_secs(30), || h.alerts(&id.host_id).len() == 10), "10 alerts after the restart: {}", h.alerts(&id.host_id).len());
    assert_eq!(h.stream_messages(), 10, "each alert once in the stream");

    // The link restarts (the agent restarted): it resumes from its cursor.
    l.stop();
    let dir = identity::state_dir(data.path()).unwrap();
    assert_eq!(identity::load_cursor(&dir).unwrap(), 10);
    let l = link(data.path(), store.clone());
    write_alerts(&store, 11..=12);
    assert!(wait_until(Duration::from_secs(20), || h.alerts(&id.host_id).len() == 12));
    assert_eq!(h.stream_messages(), 12);

    // A crash between the ack and the cursor's write: the cursor is lost and
    // everything is sent again; JetStream's duplicate window drops every copy.
    l.stop();
    dir.remove_file("alert-cursor").unwrap();
    let l = link(data.path(), store.clone());
    assert!(wait_until(Duration::from_secs(20), || l.stats().cursor.load(std::sync::atomic::Ordering::Relaxed) == 12));
    assert_eq!(h.stream_messages(), 12, "resent alerts were dropped as duplicates");
    let mut ids: Vec<u64> = h.alerts(&id.host_id).iter().map(|a| a["alert_id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=12).collect::<Vec<_>>());
    l.stop();
}

/// Collects the NATS client's error events (permission violations arrive as `-ERR`).
fn error_log() -> (Arc<Mutex<Vec<String>>>, impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (log, move |e: async_nats::Event| {
        l.lock().unwrap().push(e.to_string().to_lowercase());
        std::future::ready(())
    })
}

async fn next_within(sub: &mut async_nats::Subscriber, ms: u64) -> Option<async_nats::Message> {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_millis(ms), sub.next()).await.ok().flatten()
}

#[test]
fn a_host_cannot_publish_as_another_nor_read_its_commands() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(30);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (enroll(&h, da.path(), "host-a"), enroll(&h, db.path(), "host-b"));
    assert_ne!(a.host_id, b.host_id);
    let kp_a = Identity::key_pair(&identity::state_dir(da.path()).unwrap()).unwrap();
    let server_creds = edr_fleet_server::Fleet::open(&h.fleet_dir()).unwrap().server_creds().unwrap();
    let url = a.nats_urls[0].clone();
    let (errors, on_event) = error_log();
    h.rt.block_on(async {
        use edr_fleet_proto::subjects;
        let server = async_nats::ConnectOptions::with_credentials(&server_creds).unwrap().connect(url.as_str()).await.unwrap();
        let mut watch = server.subscribe("edr.host.>").await.unwrap();
        let host_a = common::connect_as_with(&a, kp_a, on_event).await;
        let mut own_cmds = host_a.subscribe(subjects::command(&a.host_id)).await.unwrap();
        let mut b_cmds = host_a.subscribe(subjects::command(&b.host_id)).await.unwrap();
        let mut b_inbox = host_a.subscribe(format!("{}.>", subjects::inbox_prefix(&b.host_id))).await.unwrap();
        host_a.publish(subjects::heartbeat(&b.host_id), "forged".into()).await.unwrap();
        host_a.publish(subjects::alert(&b.host_id), "forged".into()).await.unwrap();
        host_a.publish(subjects::heartbeat(&a.host_id), "own".into()).await.unwrap();
        host_a.flush().await.unwrap();
        server.publish(subjects::command(&b.host_id), "for b".into()).await.unwrap();
        server.publish(format!("{}.x", subjects::inbox_prefix(&b.host_id)), "b's reply".into()).await.unwrap();
        server.flush().await.unwrap();

        let got = next_within(&mut watch, 2000).await.expect("A's own heartbeat arrives");
        assert_eq!(got.subject.as_str(), subjects::heartbeat(&a.host_id), "only A's own subject gets through");
        assert!(next_within(&mut watch, 500).await.is_none(), "nothing A published as B reached the bus");
        // A's subscription may not be registered at the server yet (flush does not wait for it): publish until it is.
        let mut own = None;
        for _ in 0..10 {
            server.publish(subjects::command(&a.host_id), "for a".into()).await.unwrap();
            server.flush().await.unwrap();
            own = next_within(&mut own_cmds, 200).await;
            if own.is_some() {
                break;
            }
        }
        assert_eq!(own.expect("A gets its own commands").payload.as_ref(), b"for a");
        assert!(next_within(&mut b_cmds, 500).await.is_none(), "A must not read B's commands");
        assert!(next_within(&mut b_inbox, 200).await.is_none(), "A must not read B's inbox");
    });
    let errors = errors.lock().unwrap().clone();
    for what in [
        format!("publish to \"{}\"", edr_fleet_proto::subjects::heartbeat(&b.host_id)),
        format!("subscription to \"{}\"", edr_fleet_proto::subjects::command(&b.host_id)),
    ] {
        assert!(errors.iter().any(|e| e.contains("permissions violation") && e.contains(&what)), "nats-server refused {what}: {errors:?}");
    }
}

#[test]
fn a_user_not_signed_by_the_fleet_cannot_connect() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(30);
    let (stranger, key, user) = (nkeys::KeyPair::new_account(), nkeys::KeyPair::new_account(), nkeys::KeyPair::new_user());
    let perms = edr_fleet_server::jwt::host_permissions("h0000000000000001");
    let jwt = edr_fleet_server::jwt::user(&key, &stranger.public_key(), &user.public_key(), "stranger", &perms).unwrap();
    let url = format!("nats://{}", h.nats_listen);
    let err = h.rt.block_on(async move {
        let user = Arc::new(user);
        async_nats::ConnectOptions::with_jwt(jwt, move |n| {
            let u = user.clone();
            async move { u.sign(&n).map_err(async_nats::AuthError::new) }
        })
        .connect(url.as_str())
        .await
        .map(|_| ())
    });
    let e = err.expect_err("a user JWT from another account must be refused").to_string().to_lowercase();
    assert!(e.contains("authorization"), "{e}");
}

#[test]
fn heartbeats_show_a_host_online_then_offline() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(1);
    let data = tempfile::tempdir().unwrap();
    let id = enroll(&h, data.path(), "db-1");
    assert_eq!(h.hosts()[0]["state"], "never-seen");
    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let l = link(data.path(), store);
    assert!(wait_until(Duration::from_secs(15), || h.hosts()[0]["state"] == "online"), "{:?}", h.hosts());
    let host = &h.hosts()[0];
    assert_eq!(host["host_id"], id.host_id.as_str());
    assert_eq!(host["hostname"], "db-1");
    let hb = &host["heartbeat"];
    assert_eq!(hb["agent_version"], "0.1.0-test");
    assert_eq!(hb["packs"], json!([{"id": "edr.builtin", "version": "1.0.0"}]));
    assert_eq!(hb["collectors"][0]["mode"], "netlink");
    assert!(!hb["kernel"].as_str().unwrap().is_empty() && !hb["os"].as_str().unwrap().is_empty());
    l.stop();
    assert!(wait_until(Duration::from_secs(15), || h.hosts()[0]["state"] == "offline"), "{:?}", h.hosts());
}

fn refused(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, message }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn enrollment_is_one_time_and_the_api_enforces_roles() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(30);
    let token = h.token();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = edr_fleet_link::enroll::enroll(da.path(), &token, "a").unwrap();
    let again = edr_fleet_link::enroll::enroll(da.path(), "not even a token", "a").unwrap();
    assert_eq!(again, a, "an enrolled host keeps its identity");
    let e = edr_fleet_link::enroll::enroll(db.path(), &token, "b").unwrap_err().to_string();
    assert!(e.contains("already used") && e.contains(&a.host_id), "{e}");
    let e = edr_fleet_link::enroll::enroll(db.path(), "edr1-garbage", "b").unwrap_err().to_string();
    assert!(e.contains("enroll-token"), "{e}");
    let mut forged = edr_fleet_proto::enroll::EnrollToken::decode(&token).unwrap();
    forged.secret = "ab".repeat(32);
    let e = edr_fleet_link::enroll::enroll(db.path(), &forged.encode(), "b").unwrap_err().to_string();
    assert!(e.contains("unknown enrollment token"), "{e}");
    let seed = std::fs::metadata(da.path().join("fleet/host.nk")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&seed.permissions()) & 0o777, 0o600);

    let base = format!("http://{}", h.running().http_addr);
    let fleet = edr_fleet_server::Fleet::open(&h.fleet_dir()).unwrap();
    let viewer = Client::new(&base, &edr_fleet_server::api_auth::add_token(&fleet.dir, "vera", edr_fleet_server::api_auth::Role::Viewer).unwrap());
    let responder = Client::new(&base, &edr_fleet_server::api_auth::add_token(&fleet.dir, "rita", edr_fleet_server::api_auth::Role::Responder).unwrap());
    let nobody = Client::new(&base, "edrapi-wrong");
    let (status, msg) = refused(nobody.get("/api/v1/hosts"));
    assert!(status == 401 && msg.contains("unknown API token"), "{status} {msg}");
    assert_eq!(viewer.get("/api/v1/hosts").unwrap()["hosts"].as_array().unwrap().len(), 1);
    let (status, msg) = refused(viewer.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 600})));
    assert!(status == 403 && msg.contains("needs admin"), "{status} {msg}");
    let (status, msg) = refused(h.admin.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 1})));
    assert!(status == 400 && msg.contains("out of range"), "{status} {msg}");
    let (status, msg) = refused(h.admin.post("/api/v1/enroll-tokens", &json!({"ttl": 600})));
    assert!(status == 400 && msg.contains("not the expected JSON"), "{status} {msg}");
    let (status, msg) = refused(responder.post(&format!("/api/v1/alerts/{}/99/triage", a.host_id), &json!({"state": "closed"})));
    assert!(status == 404 && msg.contains("edr fleet alerts"), "{status} {msg}");
    let (status, _) = refused(responder.get("/api/v1/nothing-here"));
    assert_eq!(status, 404);

    // Triage on a real alert, and its audit.
    let store = Arc::new(Store::open(StoreConfig::new(da.path().join("events.db"))).unwrap());
    write_alerts(&store, 1..=1);
    let l = link(da.path(), store);
    assert!(wait_until(Duration::from_secs(20), || h.alerts(&a.host_id).len() == 1));
    let (status, msg) = refused(viewer.post(&format!("/api/v1/alerts/{}/1/triage", a.host_id), &json!({"state": "closed"})));
    assert!(status == 403 && msg.contains("responder"), "{status} {msg}");
    let (status, msg) = refused(responder.post(&format!("/api/v1/alerts/{}/1/triage", a.host_id), &json!({"state": "done"})));
    assert!(status == 400 && msg.contains("acknowledged"), "{status} {msg}");
    responder.post(&format!("/api/v1/alerts/{}/1/triage", a.host_id), &json!({"state": "acknowledged", "note": "looking"})).unwrap();
    responder.post(&format!("/api/v1/alerts/{}/1/triage", a.host_id), &json!({"state": "closed", "note": "false positive"})).unwrap();
    let row = &h.alerts(&a.host_id)[0];
    assert_eq!((row["state"].as_str(), row["state_by"].as_str(), row["note"].as_str()), (Some("closed"), Some("rita"), Some("false positive")));
    let audit = viewer.get("/api/v1/audit").unwrap()["audit"].as_array().unwrap().clone();
    let kinds: Vec<(String, String)> =
        audit.iter().map(|e| (e["actor"].as_str().unwrap().to_string(), e["change"]["kind"].as_str().unwrap().to_string())).collect();
    for want in [("rita", "triage"), ("enrollment", "enrolled"), ("admin", "token_created")] {
        assert!(kinds.iter().any(|(a, k)| a == want.0 && k == want.1), "{want:?} in {kinds:?}");
    }
    l.stop();
}

#[test]
fn the_index_is_rebuilt_from_the_streams() {
    if !have_nats() {
        return;
    }
    let mut h = Harness::start(1);
    let data = tempfile::tempdir().unwrap();
    let id = enroll(&h, data.path(), "app-1");
    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    write_alerts(&store, 1..=3);
    let l = link(data.path(), store);
    assert!(wait_until(Duration::from_secs(20), || h.alerts(&id.host_id).len() == 3));
    h.admin.post(&format!("/api/v1/alerts/{}/2/triage", id.host_id), &json!({"state": "closed", "note": "benign"})).unwrap();
    assert!(wait_until(Duration::from_secs(10), || h.hosts()[0]["last_seen"].is_u64()));
    l.stop();

    // Stop the server (NATS keeps running), lose the index, start again on the external NATS.
    let nats = h.running.as_mut().unwrap().nats.take();
    {
        let _g = h.rt.enter();
        h.running.take();
    }
    std::fs::remove_file(h.fleet_dir().join("index.db")).unwrap();
    let mut fleet = edr_fleet_server::Fleet::open(&h.fleet_dir()).unwrap();
    fleet.config.nats.start_local = false;
    fleet.config.http.listen = "127.0.0.1:0".into();
    let running: Result<Running, FleetError> = h.rt.block_on(edr_fleet_server::start(fleet, false));
    let mut running = running.unwrap();
    running.nats = nats;
    h.admin = h.admin.clone().with_overrides(Some(&format!("http://{}", running.http_addr)), None);
    h.running = Some(running);
    assert!(wait_until(Duration::from_secs(20), || h.alerts(&id.host_id).len() == 3), "alerts rebuilt");
    assert!(wait_until(Duration::from_secs(10), || h.alerts(&id.host_id).iter().any(|a| a["alert_id"] == 2 && a["state"] == "closed")), "triage rebuilt");
    let hosts = h.hosts();
    assert_eq!((hosts.len(), hosts[0]["hostname"].as_str()), (1, Some("app-1")));
    assert!(hosts[0]["last_seen"].is_u64(), "the last heartbeat is rebuilt too");
}

fn operator_key(h: &Harness) -> ed25519_dalek::SigningKey {
    let text = std::fs::read_to_string(h.fleet_dir().join("keys/command.ed25519")).unwrap();
    ed25519_dalek::SigningKey::from_bytes(&hex::decode(text.trim()).unwrap().try_into().unwrap())
}

fn body(host: &str, nonce: &str, issued_at: u64, expires_at: u64, path: &str) -> edr_fleet_proto::command::CommandBody {
    edr_fleet_proto::command::CommandBody {
        v: 1,
        command_id: format!("c-{nonce}"),
        host_id: host.into(),
        issued_at,
        expires_at,
        nonce: nonce.into(),
        command: edr_fleet_proto::command::Command::Ls { path: path.into() },
        reason: String::new(),
    }
}

#[test]
fn signed_commands_run_and_hostile_ones_are_refused_by_the_host() {
    use edr_fleet_proto::command::sign;
    if !have_nats() {
        return;
    }
    let h = Harness::start(1);
    let data = tempfile::tempdir().unwrap();
    let id = enroll(&h, data.path(), "files-1");
    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let l = link(data.path(), store);
    assert!(wait_until(Duration::from_secs(15), || h.hosts()[0]["state"] == "online"));
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("x"), "hello").unwrap();
    let path = target.path().to_str().unwrap().to_string();
    let run = |signed: &edr_fleet_proto::command::SignedCommand| {
        h.admin.post(&format!("/api/v1/hosts/{}/commands", id.host_id), &serde_json::to_value(signed).unwrap()).unwrap()
    };

    // The CLI's path: signed with the operator key file, relayed by the server.
    let key_file = h.fleet_dir().join("keys/command.ed25519");
    let good = edr_fleet_server::client::sign_command(&key_file, &id.host_id, edr_fleet_proto::command::Command::Ls { path: path.clone() }, 60).unwrap();
    let r = run(&good);
    assert_eq!(r["status"], "done", "{r}");
    let entry = &r["output"]["entries"][0];
    assert_eq!((entry["name"].as_str(), entry["type"].as_str(), entry["size"].as_u64()), (Some("x"), Some("file"), Some(5)));
    assert_eq!(entry["sha256"], "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");

    let now = edr_fleet_proto::now_secs();
    let key = operator_key(&h);
    let mut forged = sign(&body(&id.host_id, "00000000000000000001", now, now + 60, &path), &key);
    forged.body = forged.body.replace(&path, "/etc");
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let cases = [
        (good.clone(), "replayed"),
        (sign(&body("h00000000000000ff", "00000000000000000002", now, now + 60, &path), &key), "is for host h00000000000000ff"),
        (sign(&body(&id.host_id, "00000000000000000003", now - 120, now - 60, &path), &key), "expired"),
        (sign(&body(&id.host_id, "00000000000000000004", now, now + 60, &path), &stranger), "does not trust"),
        (forged, "does not verify"),
        (sign(&body(&id.host_id, "00000000000000000005", now, now + 30 * 86400, &path), &key), "validity window"),
    ];
    for (signed, why) in &cases {
        let r = run(signed);
        assert_eq!(r["status"], "refused", "{why}: {r}");
        assert!(r["output"]["reason"].as_str().unwrap().contains(why), "{why}: {r}");
    }
    // A compromised bus sends garbage straight to the host.
    let client = h.running().state.bus.client.clone();
    let subject = edr_fleet_proto::subjects::command(&id.host_id);
    let m = h.rt.block_on(async move { client.request(subject, "garbage".into()).await.unwrap() });
    let r: Value = serde_json::from_slice(&m.payload).unwrap();
    assert!(r["status"] == "refused" && r["output"]["reason"].as_str().unwrap().contains("malformed"), "{r}");

    // Both sides audit: the host every command it got, the server every one it relayed.
    let host_audit = std::fs::read_to_string(data.path().join("fleet/commands.jsonl")).unwrap();
    assert_eq!(host_audit.lines().count(), 1 + cases.len() + 1);
    let audit = h.admin.get("/api/v1/audit?limit=100").unwrap()["audit"].as_array().unwrap().clone();
    let relayed: Vec<&str> = audit.iter().filter(|e| e["change"]["kind"] == "command").map(|e| e["change"]["status"].as_str().unwrap()).collect();
    assert_eq!(relayed.len(), 1 + cases.len());
    assert_eq!(relayed.iter().filter(|s| **s == "done").count(), 1);
    l.stop();
}

#[test]
fn a_host_gets_pack_chunks_only_on_its_own_subject_and_only_for_its_rollouts() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(30);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (enroll(&h, da.path(), "host-a"), enroll(&h, db.path(), "host-b"));
    let kp_a = Identity::key_pair(&identity::state_dir(da.path()).unwrap()).unwrap();
    let (errors, on_event) = error_log();
    h.rt.block_on(async {
        use edr_fleet_proto::{msg, subjects};
        let host_a = common::connect_as_with(&a, kp_a, on_event).await;
        let ask = |subject: String| {
            let req = msg::PackChunkRequest { v: 1, sha256: "ab".repeat(32), index: 0 };
            let c = host_a.clone();
            async move { tokio::time::timeout(Duration::from_secs(3), c.request(subject, serde_json::to_vec(&req).unwrap().into())).await }
        };
        // On its own subject the server answers, and refuses a pack no rollout gives this host.
        let own = ask(subjects::pack_get(&a.host_id)).await.expect("answered in time").expect("a reply");
        let reply: msg::PackChunkReply = msg::decode(&own.payload).unwrap();
        assert!(reply.error.as_deref().unwrap_or("").contains("not a target"), "{reply:?}");
        assert!(reply.data.is_empty());
        // On B's subject NATS refuses the publish: no answer reaches A.
        let other = ask(subjects::pack_get(&b.host_id)).await;
        assert!(!matches!(other, Ok(Ok(_))), "A got an answer on B's subject: {other:?}");
    });
    let errors = errors.lock().unwrap().clone();
    let what = format!("publish to \"{}\"", edr_fleet_proto::subjects::pack_get(&b.host_id));
    assert!(errors.iter().any(|e| e.contains("permissions violation") && e.contains(&what)), "nats-server refused {what}: {errors:?}");
}
