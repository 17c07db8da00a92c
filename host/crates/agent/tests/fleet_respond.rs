//! Remote response through the fleet, end to end in one process: a real
//! `nats-server` (the management server's local child on a free loopback
//! port), the management server and its HTTP API, and an agent built on a
//! temporary data dir, enrolled, whose fleet link runs the commands through
//! the agent's own response engine (the one `edr respond` reaches). Every
//! command is signed the way `edr fleet` signs it and relayed by the API.

use edr_agent::{Agent, AgentConfig, AgentHandle, Shutdown};
use edr_fleet_proto::command::{sign, Command, CommandBody};
use edr_fleet_server::client::{self, Client, ClientError};
use edr_fleet_server::{InitOptions, Running};
use edr_testkit::{free_port, wait_until};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn have_nats() -> bool {
    edr_testkit::have_program("nats-server", "nats-server")
}

/// The management server, its NATS, and one enrolled agent; all stop on drop.
struct Fleet {
    agent: Option<(AgentHandle, Shutdown, std::thread::JoinHandle<anyhow::Result<edr_agent::RunSummary>>)>,
    _events: crossbeam_channel::Sender<edr_event::Event>,
    running: Option<Running>,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    admin: Client,
    host: String,
}

impl Fleet {
    fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            name: "test".into(),
            nats_listen: format!("127.0.0.1:{}", free_port()),
            http_listen: "127.0.0.1:0".into(),
            heartbeat_secs: 1,
            ..Default::default()
        };
        let created = edr_fleet_server::fleet::init(&dir.path().join("fleet"), &opts).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let running = rt.block_on(edr_fleet_server::start(created.fleet, false)).unwrap();
        let base = format!("http://{}", running.http_addr);
        let admin = Client::new(&base, &created.admin_token);
        let token = admin.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 600})).unwrap()["token"].as_str().unwrap().to_string();
        let config = write_config(dir.path());
        let cfg = AgentConfig::load(&config).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(16);
        let agent = Agent::builder(cfg).config_file(&config).events(rx).enroll(Some(token)).build().unwrap();
        let handle = agent.handle();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || agent.run(s));
        let id_text = std::fs::read_to_string(dir.path().join("data/fleet/identity.json")).unwrap();
        let host = serde_json::from_str::<Value>(&id_text).unwrap()["host_id"].as_str().unwrap().to_string();
        let f = Fleet { agent: Some((handle, shutdown, thread)), _events: tx, running: Some(running), rt, dir, admin, host };
        assert!(wait_until(Duration::from_secs(30), || f.host_state() == "online"), "the agent's link comes online: {:?}", f.admin.get("/api/v1/hosts"));
        f
    }

    fn host_state(&self) -> String {
        self.admin.get("/api/v1/hosts").ok().and_then(|v| v["hosts"][0]["state"].as_str().map(String::from)).unwrap_or_default()
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("fleet/keys/command.ed25519")
    }

    fn base(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().http_addr)
    }

    /// Signs and relays `cmd` as `edr fleet` does; the host's result.
    fn run(&self, cmd: Command, reason: &str) -> Value {
        self.run_as(&self.admin, cmd, reason).unwrap()
    }

    fn run_as(&self, c: &Client, cmd: Command, reason: &str) -> Result<Value, ClientError> {
        let signed = client::sign_command_with_reason(&self.key_file(), &self.host, cmd, reason, 60).unwrap();
        c.post(&format!("/api/v1/hosts/{}/commands", self.host), &serde_json::to_value(&signed).unwrap())
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/actions.jsonl")).unwrap_or_default()
    }

    fn server_audit(&self) -> Vec<Value> {
        self.admin.get("/api/v1/audit?limit=200").unwrap()["audit"].as_array().unwrap().clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some((_, shutdown, thread)) = self.agent.take() {
            shutdown.trigger();
            let _ = thread.join();
        }
        let _g = self.rt.enter();
        self.running.take();
    }
}

/// A data dir under `dir/data`, events from a channel, no plugins (none are needed).
fn write_config(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let path = dir.join("edr.toml");
    let text = format!(
        "data_dir = {:?}\n[plugins]\nbuiltin = false\ndir = {:?}\n[collect]\nsource = \"stdin\"\n[output]\nstdout = false\n",
        dir.join("data"),
        plugins
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn done(r: &Value) -> &Value {
    assert_eq!(r["status"], "done", "{r:#}");
    &r["output"]
}

fn failed(r: &Value, why: &str) {
    assert!(r["status"] == "failed" && r["output"]["error"].as_str().unwrap_or("").contains(why), "expected a failure with {why:?}: {r:#}");
}

#[test]
fn remote_kill_ps_quarantine_restore_delete_and_fetch_go_through_the_response_engine() {
    if !have_nats() {
        return;
    }
    let f = Fleet::start();
    let work = tempfile::tempdir_in("/tmp").unwrap();

    // ps: a known process with its parent and lineage.
    let mut sleeper = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let pid = sleeper.id();
    let ps = f.run(Command::Processes, "");
    let listed = done(&ps)["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).cloned().unwrap_or_else(|| panic!("pid {pid} not listed"));
    assert_eq!(listed["ppid"], std::process::id(), "{listed}");
    assert_eq!(listed["lineage"][0], std::process::id(), "{listed}");
    assert!(listed["exe"].as_str().unwrap().ends_with("sleep"), "{listed}");
    assert_eq!(listed["argv"], json!(["sleep", "300"]));
    assert!(listed["user"].is_string() && listed["uid"].is_u64(), "{listed}");
    assert!(client::render_processes(&ps).contains(&pid.to_string()));

    // kill: the engine kills it and audits it as any operator request.
    let r = f.run(Command::Kill { pid, tree: false }, "case 17: miner");
    let audit = &done(&r)["audit"];
    assert_eq!((audit["decision"].as_str(), audit["outcome"]["status"].as_str().or(audit["outcome"].as_str())), (Some("enforced"), Some("ok")), "{audit}");
    assert!(audit["reason"].as_str().unwrap().contains("case 17: miner"), "{audit}");
    let status = sleeper.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed by SIGKILL");
    assert!(f.journal().lines().any(|l| l.contains("kill-process") && l.contains("case 17: miner")), "{}", f.journal());
    // Protections hold remotely too: pid 1 is refused by the engine, with its reason.
    failed(&f.run(Command::Kill { pid: 1, tree: false }, "hostile"), "refused by the host's response engine");

    // quarantine, then restore by path: the same bytes back.
    let victim = work.path().join("dropper.bin");
    let content: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(&victim, &content).unwrap();
    let want_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content));
    let r = f.run(Command::Quarantine { path: victim.to_str().unwrap().into() }, "case 17");
    let detail = &done(&r)["audit"]["detail"];
    assert_eq!(detail["sha256"], want_sha.as_str());
    assert!(!victim.exists(), "moved into quarantine");
    let r = f.run(Command::Restore { id: victim.to_str().unwrap().into(), force: false }, "false positive");
    assert_eq!(done(&r)["audit"]["detail"]["sha256"], want_sha.as_str());
    assert_eq!(std::fs::read(&victim).unwrap(), content, "restored byte-exact");
    failed(&f.run(Command::Restore { id: "/nowhere/at/all".into(), force: false }, "again"), "nothing from /nowhere/at/all");

    // fetch: the exact bytes, hash checked by the client; a copy in the evidence store.
    let r = f.run(Command::Fetch { path: victim.to_str().unwrap().into() }, "triage");
    assert_eq!(client::fetched_bytes(&r).unwrap(), content);
    assert_eq!(done(&r)["sha256"], want_sha.as_str());
    // The largest fetch fits in one NATS reply (nats-server's default max_payload, 1 MiB).
    let largest = work.path().join("largest.bin");
    let bytes: Vec<u8> = (0..edr_fleet_proto::command::FETCH_MAX_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&largest, &bytes).unwrap();
    assert_eq!(client::fetched_bytes(&f.run(Command::Fetch { path: largest.to_str().unwrap().into() }, "limit")).unwrap(), bytes);
    let big = work.path().join("big.bin");
    std::fs::write(&big, vec![0u8; (edr_fleet_proto::command::FETCH_MAX_BYTES + 1) as usize]).unwrap();
    failed(&f.run(Command::Fetch { path: big.to_str().unwrap().into() }, "too big"), "at most 524288 bytes");
    failed(&f.run(Command::Fetch { path: "relative".into() }, "x"), "absolute path");

    // delete: gone, its hash audited; a protected path is refused.
    let r = f.run(Command::Delete { path: victim.to_str().unwrap().into() }, "cleanup");
    assert_eq!(done(&r)["audit"]["decision"], "enforced");
    assert!(!victim.exists());
    let data_file = f.dir.path().join("data/actions.jsonl");
    failed(&f.run(Command::Delete { path: data_file.to_str().unwrap().into() }, "hostile"), "refused");
    assert!(data_file.exists());

    // Audited on the server with op and reason.
    let audit = f.server_audit();
    let cmds: Vec<(String, String, String)> = audit
        .iter()
        .filter(|e| e["change"]["kind"] == "command")
        .map(|e| (e["change"]["op"].as_str().unwrap().into(), e["change"]["reason"].as_str().unwrap().into(), e["change"]["status"].as_str().unwrap().into()))
        .collect();
    for want in [
        ("kill", "case 17: miner", "done"),
        ("quarantine", "case 17", "done"),
        ("restore", "false positive", "done"),
        ("delete", "cleanup", "done"),
        ("kill", "hostile", "failed"),
    ] {
        assert!(cmds.iter().any(|(o, r, s)| (o.as_str(), r.as_str(), s.as_str()) == want), "{want:?} in {cmds:?}");
    }
}

#[test]
fn roles_reasons_forgeries_and_replays_are_refused() {
    if !have_nats() {
        return;
    }
    let f = Fleet::start();
    let mut sleeper = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let pid = sleeper.id();
    let fleet = edr_fleet_server::Fleet::open(&f.dir.path().join("fleet")).unwrap();
    let viewer = Client::new(&f.base(), &edr_fleet_server::api_auth::add_token(&fleet.dir, "vera", edr_fleet_server::api_auth::Role::Viewer).unwrap());
    let responder = Client::new(&f.base(), &edr_fleet_server::api_auth::add_token(&fleet.dir, "rita", edr_fleet_server::api_auth::Role::Responder).unwrap());

    // A viewer cannot kill (JSON error, 403), nor isolate; a responder must give a reason.
    for cmd in [Command::Kill { pid, tree: false }, Command::Isolate] {
        match f.run_as(&viewer, cmd, "curious") {
            Err(ClientError::Refused { status: 403, message }) => assert!(message.contains("needs responder"), "{message}"),
            other => panic!("a viewer's command must be refused: {other:?}"),
        }
    }
    match f.run_as(&responder, Command::Kill { pid, tree: false }, "  ") {
        Err(ClientError::Refused { status: 400, message }) => assert!(message.contains("reason"), "{message}"),
        other => panic!("a kill without a reason must be refused: {other:?}"),
    }
    assert!(sleeper.try_wait().unwrap().is_none(), "still alive after refused kills");

    // A forged kill (body altered after signing) and a replayed one: refused by the host.
    let good = client::sign_command_with_reason(&f.key_file(), &f.host, Command::Kill { pid: 1, tree: false }, "x", 60).unwrap();
    let mut forged = good.clone();
    forged.body = forged.body.replace(r#""pid":1"#, &format!(r#""pid":{pid}"#));
    let post =
        |s: &edr_fleet_proto::command::SignedCommand| responder.post(&format!("/api/v1/hosts/{}/commands", f.host), &serde_json::to_value(s).unwrap()).unwrap();
    let r = post(&forged);
    assert!(r["status"] == "refused" && r["output"]["reason"].as_str().unwrap().contains("does not verify"), "{r}");
    let kill = client::sign_command_with_reason(&f.key_file(), &f.host, Command::Kill { pid, tree: false }, "real", 60).unwrap();
    assert_eq!(post(&kill)["status"], "done");
    assert!(wait_until(Duration::from_secs(5), || sleeper.try_wait().unwrap().is_some()), "killed");
    let mut again = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let r = post(&kill);
    assert!(r["status"] == "refused" && r["output"]["reason"].as_str().unwrap().contains("replayed"), "{r}");
    assert!(again.try_wait().unwrap().is_none());
    let _ = again.kill();

    // An op this agent does not know (a newer tool), signed by the real key: refused with what it knows.
    let key = ed25519_dalek::SigningKey::from_bytes(&hex::decode(std::fs::read_to_string(f.key_file()).unwrap().trim()).unwrap().try_into().unwrap());
    let now = edr_fleet_proto::now_secs();
    let body = CommandBody {
        v: 2,
        command_id: "c-new".into(),
        host_id: f.host.clone(),
        issued_at: now,
        expires_at: now + 60,
        nonce: "ab".repeat(16),
        command: Command::Processes,
        reason: "r".into(),
    };
    let mut newer = sign(&body, &key);
    let text = newer.body.replace(r#"{"op":"processes"}"#, r#"{"op":"wipe"}"#);
    newer = edr_fleet_proto::command::SignedCommand { signature: sign_raw(&key, &text), body: text, ..newer };
    let bus = f.running.as_ref().unwrap().state.bus.client.clone();
    let subject = edr_fleet_proto::subjects::command(&f.host);
    let payload = serde_json::to_vec(&newer).unwrap();
    let m = f.rt.block_on(async move { bus.request(subject, payload.into()).await.unwrap() });
    let r: Value = serde_json::from_slice(&m.payload).unwrap();
    let why = r["output"]["reason"].as_str().unwrap();
    assert!(r["status"] == "refused" && why.contains("unknown command op \"wipe\"") && why.contains("kill"), "{r}");
}

/// The Ed25519 signature `edr_fleet_proto::command::sign` would make over `text`.
fn sign_raw(key: &ed25519_dalek::SigningKey, text: &str) -> String {
    use ed25519_dalek::Signer;
    let mut m = b"edr-fleet-command-v1\n".to_vec();
    m.extend_from_slice(text.as_bytes());
    hex::encode(key.sign(&m).to_bytes())
}

#[test]
fn a_fleet_query_hunts_every_host_read_only_with_limits_and_every_host_status() {
    if !have_nats() {
        return;
    }
    let f = Fleet::start();
    // A second host, enrolled but with no agent running: it never answers.
    let token = f.admin.post("/api/v1/enroll-tokens", &json!({"ttl_secs": 600})).unwrap()["token"].as_str().unwrap().to_string();
    let silent = edr_fleet_link::enroll::enroll(&f.dir.path().join("silent"), &token, "silent-host").unwrap().host_id;
    let fleet = edr_fleet_server::Fleet::open(&f.dir.path().join("fleet")).unwrap();
    let viewer = Client::new(&f.base(), &edr_fleet_server::api_auth::add_token(&fleet.dir, "vera", edr_fleet_server::api_auth::Role::Viewer).unwrap());
    let hunt = |hosts: &[String], sql: &str, limit: u32| {
        let q = client::HuntRequest { sql, limit, reason: "hunt 3", ttl_secs: 60, timeout_secs: 3, until_secs: None };
        viewer.post("/api/v1/query", &client::query_request(&f.key_file(), hosts, &q).unwrap())
    };

    // A viewer hunts both hosts: the live one answers rows from its record views, the silent one is listed.
    let both = [f.host.clone(), silent.clone()];
    let m = client::merge_hunt(&hunt(&both, "SELECT 'x' AS tag, (SELECT count(*) FROM process) AS procs, (SELECT count(*) FROM action) AS acts", 10).unwrap());
    assert_eq!(m["columns"], json!(["host", "tag", "procs", "acts"]), "{m:#}");
    assert_eq!(m["rows"], json!([[f.host, "x", 0, 0]]), "{m:#}");
    assert_eq!(m["hosts"][0], json!({"host": f.host, "status": "done", "rows": 1, "truncated": false}));
    assert_eq!(m["hosts"][1]["host"], silent.as_str());
    assert!(m["hosts"][1]["status"].as_str().unwrap().starts_with("no_answer"), "{m:#}");
    let table = client::render_hunt_table(&m);
    assert!(table.starts_with("host") && table.contains(&format!("host {silent}: no_answer")), "{table}");

    // The row limit cuts and says so.
    let count = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 50) SELECT x FROM n";
    let r = hunt(std::slice::from_ref(&f.host), count, 7).unwrap();
    assert_eq!(r["hosts"][0]["output"]["rows"].as_array().unwrap().len(), 7, "{r:#}");
    assert_eq!(r["hosts"][0]["output"]["truncated"], true);
    let r = hunt(std::slice::from_ref(&f.host), count, 50).unwrap();
    assert_eq!((r["hosts"][0]["output"]["rows"].as_array().unwrap().len(), &r["hosts"][0]["output"]["truncated"]), (50, &json!(false)));
    let r = hunt(std::slice::from_ref(&f.host), count, 10_001).unwrap();
    assert!(client::merge_hunt(&r)["hosts"][0]["status"].as_str().unwrap().contains("1 to 10000"), "{r:#}");

    // Writes, ATTACH, PRAGMA writes and stacked statements are refused by the store's own query path.
    for (sql, why) in [
        ("DELETE FROM events", "only a single SELECT"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "only a single SELECT"),
        ("SELECT * FROM pragma_journal_mode", "not allowed"),
        ("PRAGMA writable_schema = 1", "only a single SELECT"),
        ("SELECT 1; DROP TABLE events", "more than one statement"),
        ("WITH x AS (SELECT 1) DELETE FROM events", "not allowed"),
    ] {
        let m = client::merge_hunt(&hunt(std::slice::from_ref(&f.host), sql, 10).unwrap());
        let status = m["hosts"][0]["status"].as_str().unwrap();
        assert!(status.starts_with("failed: ") && status.contains(why), "{sql}: {status}");
    }
    assert_eq!(done(&f.run(Command::Processes, ""))["processes"].as_array().map(|p| !p.is_empty()), Some(true), "the agent still runs");

    // The same signed request again: each host refuses the replay, with its reason.
    let q = client::HuntRequest { sql: "SELECT 1", limit: 1, reason: "", ttl_secs: 60, timeout_secs: 3, until_secs: None };
    let req = client::query_request(&f.key_file(), std::slice::from_ref(&f.host), &q).unwrap();
    assert_eq!(viewer.post("/api/v1/query", &req).unwrap()["hosts"][0]["status"], "done");
    let again = client::merge_hunt(&viewer.post("/api/v1/query", &req).unwrap());
    assert!(again["hosts"][0]["status"].as_str().unwrap().starts_with("refused: replayed"), "{again:#}");

    // An unknown host is a JSON error naming it; nothing is sent to the others.
    match hunt(&[f.host.clone(), "hdeadbeefdeadbeef".into()], "SELECT 1", 1) {
        Err(ClientError::Refused { status: 404, message }) => assert!(message.contains("no host \"hdeadbeefdeadbeef\""), "{message}"),
        other => panic!("an unknown host must be refused: {other:?}"),
    }
    // The query endpoint relays only queries: a viewer cannot slip a kill through it.
    let kill = client::sign_command_with_reason(&f.key_file(), &f.host, Command::Kill { pid: 1, tree: false }, "x", 60).unwrap();
    match viewer.post("/api/v1/query", &json!({"commands": [kill]})) {
        Err(ClientError::Refused { status: 403, message }) => assert!(message.contains("only `query`"), "{message}"),
        other => panic!("a kill through the query endpoint must be refused: {other:?}"),
    }
    for bad in [json!({"commands": []}), json!({"commands": "x"}), json!({"commands": [], "timeout_secs": 0}), json!({"commands": [], "extra": 1})] {
        assert!(matches!(viewer.post("/api/v1/query", &bad), Err(ClientError::Refused { status: 400, .. })), "{bad}");
    }
    let dup = client::query_request(&f.key_file(), &[f.host.clone(), f.host.clone()], &q).unwrap();
    assert!(matches!(viewer.post("/api/v1/query", &dup), Err(ClientError::Refused { status: 400, .. })));

    // Audited like every command: op, status, who.
    let audit = f.server_audit();
    let queries: Vec<&Value> = audit.iter().filter(|e| e["change"]["op"] == "query").collect();
    assert!(queries.len() >= 10, "{audit:#?}");
    assert!(queries.iter().any(|e| e["change"]["status"] == "no-answer" && e["change"]["host_id"] == silent.as_str()), "{queries:#?}");
}
