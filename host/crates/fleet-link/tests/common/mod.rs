//! A management server with its local nats-server child, for the tests
//! that need their own fleet settings (TLS, notifications).

#![allow(dead_code)]

use edr_fleet_server::client::Client;
use edr_fleet_server::{Fleet, InitOptions, Running};
use edr_testkit::free_port;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The server and its NATS; stopped on drop (server first, then NATS).
pub struct TestFleet {
    pub running: Option<Running>,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub admin: Client,
    pub nats_listen: String,
}

impl TestFleet {
    /// `init` with `opts` (a free NATS port, an ephemeral API port), then
    /// `configure` on the fleet's settings, then `start`.
    pub fn start(opts: InitOptions, configure: impl FnOnce(&mut Fleet)) -> TestFleet {
        let dir = tempfile::tempdir().unwrap();
        let nats_listen = format!("127.0.0.1:{}", free_port());
        let opts = InitOptions { nats_listen: nats_listen.clone(), http_listen: "127.0.0.1:0".into(), ..opts };
        let mut created = edr_fleet_server::fleet::init(&dir.path().join("fleet"), &opts).unwrap();
        configure(&mut created.fleet);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let running = rt.block_on(edr_fleet_server::start(created.fleet, false)).unwrap();
        let admin = Client::new(&format!("http://{}", running.http_addr), &created.admin_token);
        TestFleet { running: Some(running), rt, dir, admin, nats_listen }
    }

    /// The fleet directory.
    pub fn fleet_dir(&self) -> PathBuf {
        self.dir.path().join("fleet")
    }

    /// A fresh enrollment token.
    pub fn token(&self) -> String {
        self.admin.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 600})).unwrap()["token"].as_str().unwrap().to_string()
    }

    /// `GET /api/v1/hosts`.
    pub fn hosts(&self) -> Vec<Value> {
        self.admin.get("/api/v1/hosts").unwrap()["hosts"].as_array().unwrap().clone()
    }

    /// Connects with the server's own credentials over TLS, trusting `ca`
    /// (a PEM file) or only the system roots.
    pub fn connect_tls_with(&self, ca: Option<&Path>) -> Result<(), String> {
        let creds = std::fs::read_to_string(self.fleet_dir().join("server.creds")).unwrap();
        let url = format!("tls://{}", self.nats_listen);
        let ca = ca.map(Path::to_path_buf);
        self.rt.block_on(async move {
            let mut opts = async_nats::ConnectOptions::with_credentials(&creds).unwrap().connection_timeout(Duration::from_secs(3));
            if let Some(ca) = ca {
                opts = opts.add_root_certificates(ca);
            }
            opts.require_tls(true).connect(url.as_str()).await.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// Stops the server (keeping NATS) and starts it again on the same
    /// directory, rebuilding the index when `rebuild`.
    pub fn restart(&mut self, rebuild: bool, configure: impl FnOnce(&mut Fleet)) {
        let mut old = self.running.take().unwrap();
        let nats = old.nats.take();
        {
            let _guard = self.rt.enter();
            drop(old);
        }
        let mut fleet = Fleet::open(&self.fleet_dir()).unwrap();
        fleet.config.nats.start_local = false;
        configure(&mut fleet);
        let mut running = self.rt.block_on(edr_fleet_server::start(fleet, rebuild)).unwrap();
        running.nats = nats;
        self.admin = Client::new(&format!("http://{}", running.http_addr), std::fs::read_to_string(self.fleet_dir().join("admin.token")).unwrap().trim());
        self.running = Some(running);
    }
}

impl TestFleet {
    /// Stops the local nats-server child (the server keeps running, reconnecting).
    pub fn stop_nats(&mut self) {
        stop_nats(self.running.as_mut().unwrap(), &self.nats_listen);
    }

    /// Starts nats-server again on the same store and port.
    pub fn start_nats(&mut self) {
        let dir = self.fleet_dir();
        start_nats(self.running.as_mut().unwrap(), &dir, &self.nats_listen);
    }
}

/// Stops `running`'s nats-server child and checks nothing listens on `listen`.
pub fn stop_nats(running: &mut Running, listen: &str) {
    let nats = running.nats.take();
    assert!(nats.is_some(), "the server runs its own nats-server");
    drop(nats);
    assert!(std::net::TcpStream::connect(listen).is_err(), "nats-server still listening");
}

/// Starts nats-server for the fleet in `fleet_dir` again, on `listen`, as `running`'s child.
pub fn start_nats(running: &mut Running, fleet_dir: &Path, listen: &str) {
    let conf = fleet_dir.join("nats/nats.conf");
    let nats = edr_fleet_server::natsd::LocalNats::start("nats-server", &conf, listen, &fleet_dir.join("nats/restart.log")).unwrap();
    running.nats = Some(nats);
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.running.take();
    }
}

/// A test alert with id `id` (rule `edr.test.rule`, high).
pub fn alert(id: u64) -> edr_event::Alert {
    use edr_event::{Alert, Finding, Severity};
    Alert {
        id,
        time: 1_700_000_000_000_000_000 + id,
        plugin: "lineage".into(),
        pack: None,
        finding: Finding {
            rule_id: "edr.test.rule".into(),
            title: "Test rule".into(),
            severity: Severity::High,
            techniques: vec!["T1059".into()],
            message: format!("alert {id}"),
            author: "tests".into(),
            event_ids: vec![],
            evidence: vec![],
        },
        event: None,
    }
}

/// Records alerts `ids` in `store`.
pub fn write_alerts(store: &edr_store::Store, ids: std::ops::RangeInclusive<u64>) {
    let w = store.writer();
    for id in ids {
        w.append_alert(&alert(id)).unwrap();
    }
    w.flush().unwrap();
}

/// The status document a link reports in its heartbeat.
pub fn status_doc(version: &'static str) -> impl Fn() -> Result<Value, String> + Send + Sync + 'static {
    move || Ok(json!({"agent": {"version": version}, "packs": {"active": []}, "collectors": [], "response": {"isolation": {"isolated": false}}}))
}

/// Starts a fleet link for `data_dir` over `store`, polling alerts every 100 ms.
pub fn link(data_dir: &Path, store: std::sync::Arc<edr_store::Store>, version: &'static str) -> edr_fleet_link::FleetLink {
    let opts = edr_fleet_link::LinkOptions {
        agent_version: version.into(),
        alert_poll: Duration::from_millis(100),
        heartbeat: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    edr_fleet_link::FleetLink::start(data_dir, opts, store, std::sync::Arc::new(status_doc(version))).unwrap()
}

/// A NATS client with host `id`'s own credentials (its user JWT, signed with `kp`).
pub async fn connect_as(id: &edr_fleet_link::Identity, kp: nkeys::KeyPair) -> async_nats::Client {
    connect_as_with(id, kp, |_| std::future::ready(())).await
}

/// [`connect_as`], with `events` called on each connection event.
pub async fn connect_as_with(
    id: &edr_fleet_link::Identity,
    kp: nkeys::KeyPair,
    events: impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static,
) -> async_nats::Client {
    let kp = std::sync::Arc::new(kp);
    async_nats::ConnectOptions::with_jwt(id.user_jwt.clone(), move |nonce| {
        let kp = kp.clone();
        async move { kp.sign(&nonce).map_err(async_nats::AuthError::new) }
    })
    .custom_inbox_prefix(edr_fleet_proto::subjects::inbox_prefix(&id.host_id))
    .event_callback(events)
    .connect(id.nats_urls[0].as_str())
    .await
    .unwrap()
}
