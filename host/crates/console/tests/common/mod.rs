//! The console's test harness: a fleet in a temp dir, its local nats-server
//! on a free loopback port, the server with the console, console users, and
//! raw HTTP helpers (so the API's own checks are tested, not the page's).
#![allow(dead_code)]

pub mod browser;

use edr_console::session::SessionLimits;
use edr_console::ConsoleOptions;
use edr_fleet_server::api_auth::Role;
use edr_fleet_server::client::Client;
use edr_fleet_server::{InitOptions, Running};
use edr_testkit::free_port;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub const PASSWORD: &str = "a long test password";

pub struct Harness {
    pub running: Option<Running>,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub admin: Client,
    pub base: String,
}

impl Harness {
    /// A server with users alice (responder), vic (viewer) and root (admin), sessions idle out after `idle`.
    pub fn start(idle: Duration) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            name: "test".into(),
            nats_listen: format!("127.0.0.1:{}", free_port()),
            http_listen: "127.0.0.1:0".into(),
            heartbeat_secs: 1,
            ..Default::default()
        };
        let created = edr_fleet_server::fleet::init(&dir.path().join("fleet"), &opts).unwrap();
        for (name, role) in [("alice", Role::Responder), ("vic", Role::Viewer), ("root", Role::Admin)] {
            edr_console::users::add_user(&created.fleet.dir, name, role, PASSWORD).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let limits = SessionLimits { idle, ..SessionLimits::default() };
        let running = rt.block_on(edr_console::start(created.fleet, false, ConsoleOptions { limits })).unwrap();
        let base = format!("http://{}", running.http_addr);
        let admin = Client::new(&base, &created.admin_token);
        Harness { running: Some(running), rt, dir, admin, base }
    }

    pub fn fleet_dir(&self) -> PathBuf {
        self.dir.path().join("fleet")
    }

    pub fn key_file(&self) -> PathBuf {
        self.fleet_dir().join("keys/command.ed25519")
    }

    pub fn audit(&self) -> Vec<Value> {
        self.admin.get("/api/v1/audit?limit=1000").unwrap()["audit"].as_array().unwrap().clone()
    }

    pub fn token(&self) -> String {
        self.admin.post("/api/v1/enroll-tokens", &serde_json::json!({"ttl_secs": 600})).unwrap()["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.running.take();
    }
}

/// An HTTP answer: status, `Set-Cookie` values, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub cookies: Vec<String>,
    pub location: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One raw request: no redirects followed, statuses not turned into errors.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let resp = match method {
        "GET" => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = agent.delete(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.unwrap_or("").as_bytes())
        }
    };
    let mut resp = resp.unwrap();
    let cookies = resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Answer { status, cookies, location, body }
}

/// Logs in through the form; the session cookie pair (`edr_session=...`) and the page's CSRF token.
pub fn login(base: &str, name: &str, password: &str) -> Result<(String, String), Answer> {
    let form = format!("name={name}&password={}", password.replace(' ', "+"));
    let a = request("POST", &format!("{base}/console/login"), &[("content-type", "application/x-www-form-urlencoded")], Some(&form));
    if a.status != 303 {
        return Err(a);
    }
    let cookie = a.cookies[0].split(';').next().unwrap().to_string();
    let page = request("GET", &format!("{base}/console/hosts"), &[("cookie", &cookie)], None);
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.body.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    Ok((cookie, csrf))
}

/// Publishes an alert for `host` onto the alerts stream as a host's link
/// would (the server's own NATS user may publish anywhere): how tests give
/// alerts fields a real record would not easily produce (an incident, HTML).
pub fn feed_alert(h: &Harness, host: &str, alert_id: u64, severity: &str, title: &str, ecs: Value) {
    let msg = edr_fleet_proto::msg::AlertMessage {
        v: 1,
        host_id: host.into(),
        alert_id,
        time: 1_700_000_000_000_000_000 + alert_id * 60_000_000_000,
        rule_id: format!("edr.test.{severity}"),
        rule_name: title.into(),
        severity: severity.into(),
        ecs,
    };
    let js = h.running.as_ref().unwrap().state.bus.js.clone();
    let payload = serde_json::to_vec(&msg).unwrap();
    h.rt.block_on(async move { js.publish(edr_fleet_proto::subjects::alert(host), payload.into()).await.unwrap().await.unwrap() });
}

/// Enrolls a host named `name` (its fleet identity in `data`); returns its id.
pub fn enroll(h: &Harness, data: &std::path::Path, name: &str) -> String {
    edr_fleet_link::enroll::enroll(data, &h.token(), name).unwrap().host_id
}

pub fn alert_count(h: &Harness) -> usize {
    h.admin.get("/api/v1/alerts?limit=10000").unwrap()["alerts"].as_array().unwrap().len()
}
