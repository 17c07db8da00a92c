//! The web console in a real browser against a real fleet (root): Debian's
//! headless Chromium driven through chromedriver, `edr server run` (with its
//! nats-server child) in one throw-away network namespace, and a real
//! `edr agent --enroll` on its live collectors in another, joined by a veth
//! pair, so that isolation puts real nftables rules into the agent's
//! namespace only. The test's own thread (and so the browser and the
//! server) is in the server's namespace: the browser reaches the console at
//! `http://127.0.0.1` (a secure context, where WebCrypto signs).
//!
//! In the page: log in as admin; the host is online in the hosts table; a
//! copy of `/bin/true` run from `/tmp` inside the agent's namespace raises
//! the built-in `edr.writable.exec-world-writable`, which is in the alert
//! queue; its page draws the storyline fetched live from the agent's record,
//! with the exec's process in it; isolate (confirmation, reason): the badge
//! says isolated, the agent's namespace has the isolation table and cannot
//! reach the server's API port while the fleet link still answers; release
//! it: released, the ruleset as before; a hunt returns the exec's row with
//! the host column; saved queries are saved (one named with markup, shown as
//! text), listed, run with a click and deleted, and `edr fleet queries`
//! lists, refuses a duplicate, replaces and deletes; a viewer is refused a
//! kill in the page and by the API (a forged, validly signed POST: 403).
//! Screenshots go to `target/console-screenshots/agent-*.png`.
//! Everything (processes, namespaces with their veth pair and nftables
//! table, the executable in /tmp) is removed even when the test fails.

#[path = "../crates/console/tests/common/browser.rs"]
mod browser;
mod common;

use browser::{accept, have_browser, load_key, login, ready, respond, shot, start_driver, text_of, wait_text, wait_until_url};
use common::fleet::{enter_netns, fleet, host_id_of, in_ns, make_net, on_path, reaches, spawn_logged, Cleanup, Net, EDR};
use edr_fleet_proto::command::Command as HostCommand;
use edr_fleet_server::client::Client as Api;
use edr_testkit::wait_until;
use fantoccini::{Client, Locator};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "a long test password";
const INJECTION: &str = "<img src=x onerror=\"document.body.dataset.pwned='1'\">Injected";
const API_PORT: u16 = 8480;

/// A file outside the test's temp dir, removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `edr server init` in the server's namespace, the API on every address
/// there (the agent reaches it at the veth address, the browser at
/// 127.0.0.1), console users ada (admin) and vic (viewer); then `edr server run`.
fn start_server(net: &Net, dir: &Path, work: &Path, cleanup: &mut Cleanup) {
    let sns = net.server_ns.as_str();
    let (nats, api) = (format!("{}:4222", net.server_ip), format!("{}:{API_PORT}", net.server_ip));
    let d = dir.to_str().unwrap();
    let out = in_ns(sns, &[EDR, "server", "init", "--dir", d, "--name", "console-e2e", "--nats-listen", &nats, "--listen", &api, "--heartbeat-secs", "1"]);
    assert!(out.status.success(), "server init: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("fleet.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let listen = format!("listen = \"{api}\"");
    assert_eq!(text.matches(&listen).count(), 1, "one http listen line: {text}");
    std::fs::write(&config, text.replace(&listen, &format!("listen = \"0.0.0.0:{API_PORT}\""))).unwrap();
    for (name, role) in [("ada", "admin"), ("vic", "viewer")] {
        let mut add = Command::new(EDR).args(["server", "user", "add", name, "--role", role, "--dir", d]).stdin(Stdio::piped()).spawn().unwrap();
        add.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        assert!(add.wait().unwrap().success(), "user add {name}");
    }
    let log = work.join("server.log");
    cleanup.children.push(spawn_logged(sns, &[EDR, "server", "run", "--dir", d], &log));
    assert!(wait_until(Duration::from_secs(30), || fleet(sns, dir, &["hosts"]).0), "the API answers: {}", std::fs::read_to_string(&log).unwrap_or_default());
}

/// Enrolls and starts a real agent on its live collectors in the agent's namespace; returns its data dir and log.
fn start_agent(net: &Net, dir: &Path, work: &Path, cleanup: &mut Cleanup) -> (PathBuf, PathBuf) {
    let (ok, token, err) = fleet(&net.server_ns, dir, &["enroll-token", "--ttl", "10m"]);
    assert!(ok, "{err}");
    let data = work.join("agent-data");
    let config = work.join("agent.toml");
    std::fs::write(&config, format!("data_dir = {data:?}\n[output]\nstdout = false\n")).unwrap();
    let log = work.join("agent.log");
    cleanup.children.push(spawn_logged(&net.agent_ns, &[EDR, "agent", "--config", config.to_str().unwrap(), "--enroll", token.trim()], &log));
    (data, log)
}

/// The server's alert of rule `rule` on `host` whose process is `exe`.
fn find_alert(api: &Api, host: &str, rule: &str, exe: &str) -> Option<Value> {
    let v = api.get(&format!("/api/v1/alerts?host={host}&limit=10000&ecs=true")).ok()?;
    v["alerts"].as_array()?.iter().find(|a| a["rule_id"] == rule && a["ecs"]["process"]["executable"] == exe).cloned()
}

/// The host's state badge on its page, reloaded until it says `want`.
async fn host_state_becomes(c: &Client, base: &str, host: &str, want: &str) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        c.goto(&format!("{base}/console/hosts/{host}")).await.unwrap();
        ready(c).await;
        let state = text_of(c, "#host-detail .card .badge").await;
        if state == want {
            return state;
        }
        assert!(Instant::now() < end, "the host page never said {want}; it says {state}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Clicks the `button` (`saved-run` or `saved-delete`) of the saved query shown under `name`.
async fn click_saved(c: &Client, name: &str, button: &str) {
    let found = c
        .execute(
            "const [name, button] = arguments;
             const row = [...document.querySelectorAll('#saved-queries tbody tr')].find(r => (r.querySelector('.saved-name') || {}).textContent === name);
             if (!row) return false;
             // Clicked after this script returns: a confirmation it opens must not block the script.
             setTimeout(() => row.querySelector('.' + button).click(), 0);
             return true;",
            vec![json!(name), json!(button)],
        )
        .await
        .unwrap();
    assert_eq!(found, json!(true), "a saved query {name:?} is listed");
}

/// Posts `body` to `path` from the page with its CSRF token: [status, JSON answer].
async fn forge_post(c: &Client, path: &str, body: &str) -> Value {
    c.execute_async(
        "const [path, body, done] = arguments;
         fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
           'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}, body})
           .then(async r => done([r.status, await r.json()]));",
        vec![json!(path), json!(body)],
    )
    .await
    .unwrap()
}

#[test]
fn the_console_in_a_browser_triages_isolates_and_hunts_on_a_real_agent() {
    edr_testkit::require_root!("network namespaces, nftables and the agent's live collectors");
    for tool in ["nats-server", "nft", "ip", "bash", "timeout"] {
        if !on_path(tool) {
            edr_testkit::skip(format!("{tool} not on PATH"));
            return;
        }
    }
    if !have_browser() {
        edr_testkit::skip("no chromium / chromedriver (Debian's chromium and chromium-driver)");
        return;
    }
    let mut cleanup = Cleanup::default();
    let net = make_net(&mut cleanup);
    let (ans, sns) = (net.agent_ns.clone(), net.server_ns.clone());
    // This thread, the browser and everything it starts from here live in the server's namespace.
    enter_netns(&sns);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fleet");
    start_server(&net, &dir, work.path(), &mut cleanup);
    let api = Api::for_fleet_dir(&dir).unwrap();
    let (data, agent_log) = start_agent(&net, &dir, work.path(), &mut cleanup);
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    let online = || api.get("/api/v1/hosts").ok().is_some_and(|v| v["hosts"][0]["state"] == "online");
    assert!(wait_until(Duration::from_secs(60), online), "the agent comes online: {}", log());
    let host = host_id_of(&data);
    let hostname = api.get("/api/v1/hosts").unwrap()["hosts"][0]["hostname"].as_str().unwrap().to_string();

    // A real exec on the agent's host, inside its namespace: a copy of /bin/true run from /tmp.
    let exe = PathBuf::from(format!("/tmp/edr-console-test-{}", std::process::id()));
    let _exe_guard = RemoveOnDrop(exe.clone());
    std::fs::copy("/bin/true", &exe).unwrap();
    let exe_s = exe.to_str().unwrap().to_string();
    let rule = "edr.writable.exec-world-writable";
    // Exec again when the first one came before the collectors were up (at most three times).
    let mut alert = None;
    for _ in 0..3 {
        assert!(in_ns(&ans, &[&exe_s]).status.success());
        if wait_until(Duration::from_secs(15), || {
            alert = find_alert(&api, &host, rule, &exe_s);
            alert.is_some()
        }) {
            break;
        }
    }
    let alert = alert.unwrap_or_else(|| panic!("the exec's alert reached the server\n--- agent log ---\n{}", log()));
    let alert_id = alert["alert_id"].as_u64().unwrap();
    let rule_name = alert["rule_name"].as_str().unwrap().to_string();

    let (driver, port) = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let key = dir.join("keys/command.ed25519");
    let base = format!("http://127.0.0.1:{API_PORT}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser::browser(port, profile.path()).await;
        c.set_window_size(1400, 1000).await.unwrap();
        login(&c, &base, "ada", PASSWORD).await;
        ready(&c).await;
        let row = wait_text(&c, "#hosts tbody", &hostname).await;
        assert!(row.contains("online"), "{row}");
        shot(&c, "agent-hosts").await;

        triage_and_storyline(&c, &base, &host, (alert_id, &rule_name), &exe_s, &key).await;
        isolate_and_release(&c, &base, &host, &net, &key).await;
        hunt_and_saved_queries(&c, &base, &host, &exe_s, &key).await;
        viewer_refused_a_kill(&c, &base, &host, &key).await;
        c.close().await.unwrap();
    });
    saved_queries_cli(&sns, &dir);
    let audit = api.get("/api/v1/audit?limit=1000").unwrap();
    let ops: Vec<&str> =
        audit["audit"].as_array().unwrap().iter().filter(|e| e["change"]["kind"] == "command").filter_map(|e| e["change"]["op"].as_str()).collect();
    for op in ["storyline", "isolate", "processes", "release", "query"] {
        assert!(ops.contains(&op), "the page's {op} is in the audit: {ops:?}");
    }
    assert!(!ops.contains(&"kill"), "the viewer's kill never reached the host: {ops:?}");
    drop(driver);
    let namespaces = cleanup.netns.clone();
    drop(cleanup);
    let listed = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(namespaces.iter().all(|ns| !listed.split_whitespace().any(|n| n == ns)), "namespaces removed: {listed}");
    eprintln!("screenshots in {}", browser::screenshots().display());
}

/// The alert in the queue, and its page's storyline fetched live from the agent's record.
async fn triage_and_storyline(c: &Client, base: &str, host: &str, (alert_id, rule_name): (u64, &str), exe: &str, key: &Path) {
    c.goto(&format!("{base}/console/alerts")).await.unwrap();
    ready(c).await;
    c.find(Locator::Id("f-rule")).await.unwrap().send_keys("exec-world-writable").await.unwrap();
    let queue = wait_text(c, "#alerts tbody", rule_name).await;
    assert!(queue.contains("new"), "{queue}");
    let link = c.find(Locator::Css(&format!("#alerts a[href='/console/alerts/{host}/{alert_id}']"))).await.unwrap();
    assert_eq!(link.text().await.unwrap(), rule_name, "the exec's alert is in the queue");
    shot(c, "agent-alerts").await;
    c.goto(&format!("{base}/console/alerts/{host}/{alert_id}")).await.unwrap();
    ready(c).await;
    assert!(text_of(c, "#alert-detail").await.contains("edr.writable.exec-world-writable"));
    c.find(Locator::Id("storyline-key-file")).await.unwrap().send_keys(&key.display().to_string()).await.unwrap();
    let status = wait_text(c, "#storyline-status", "process(es)").await;
    assert!(status.starts_with("Storyline from the host's record"), "{status}");
    let trigger = text_of(c, "#storyline-tree li.self > .proc").await;
    assert!(trigger.contains(exe) && trigger.contains("trigger"), "the exec's process is the storyline's trigger: {trigger}");
    shot(c, "agent-storyline").await;
}

/// Isolate from the host page (confirmation, reason): badge, nftables in the agent's namespace, API port cut, link alive; then release.
async fn isolate_and_release(c: &Client, base: &str, host: &str, net: &Net, key: &Path) {
    let ans = net.agent_ns.as_str();
    let ruleset = || String::from_utf8_lossy(&in_ns(ans, &["nft", "list", "ruleset"]).stdout).into_owned();
    let before = ruleset();
    assert!(reaches(ans, &net.server_ip, API_PORT), "before isolation the agent's namespace reaches the API port");
    c.goto(&format!("{base}/console/hosts/{host}")).await.unwrap();
    ready(c).await;
    load_key(c, key).await;
    let isolated = respond(c, "isolate", "case 17: the test's exec from /tmp").await;
    assert!(isolated.contains("isolate: done"), "{isolated}");
    let table = String::from_utf8_lossy(&in_ns(ans, &["nft", "list", "table", "inet", "edr_isolation"]).stdout).into_owned();
    assert!(table.contains(&net.server_ip) && table.contains("4222"), "the isolation table, with the fleet's NATS allowed: {table}");
    assert!(!reaches(ans, &net.server_ip, API_PORT), "isolated: a connection out of the namespace (the API port) is refused");
    assert_eq!(host_state_becomes(c, base, host, "isolated").await, "isolated");
    // The fleet link still works: the isolated host answers the live view.
    load_key(c, key).await;
    c.find(Locator::Id("live-ps")).await.unwrap().click().await.unwrap();
    wait_text(c, "#live-result", "processes").await;
    shot(c, "agent-isolated").await;
    let released = respond(c, "release", "case 17: cleaned").await;
    assert!(released.contains("release: done"), "{released}");
    assert_eq!(ruleset(), before, "release restores the namespace's ruleset exactly");
    assert!(reaches(ans, &net.server_ip, API_PORT), "released: the API port is reachable again");
    assert_eq!(host_state_becomes(c, base, host, "online").await, "online");
    shot(c, "agent-released").await;
}

/// A hunt from the page, then saved queries: save (one named with markup), list, refuse a duplicate, run with a click, delete.
async fn hunt_and_saved_queries(c: &Client, base: &str, host: &str, exe: &str, key: &Path) {
    let sql_exec = format!("SELECT exe, pid FROM process WHERE exe = '{exe}'");
    c.goto(&format!("{base}/console/hunt")).await.unwrap();
    ready(c).await;
    load_key(c, key).await;
    let sql = c.find(Locator::Id("sql")).await.unwrap();
    sql.clear().await.unwrap();
    sql.send_keys(&sql_exec).await.unwrap();
    c.find(Locator::Id("run-hunt")).await.unwrap().click().await.unwrap();
    let status = wait_text(c, "#hunt-status", "row(s)").await;
    assert!(status.contains(&format!("{host}: done")), "{status}");
    let result = text_of(c, "#hunt-result").await;
    assert!(result.starts_with("host") && result.contains(host) && result.contains(exe), "a row with the host column: {result}");
    shot(c, "agent-hunt").await;

    let save = |name: &'static str, desc: &'static str| async move {
        for (id, text) in [("save-name", name), ("save-desc", desc)] {
            let input = c.find(Locator::Id(id)).await.unwrap();
            input.clear().await.unwrap();
            input.send_keys(text).await.unwrap();
        }
        c.find(Locator::Id("save-query")).await.unwrap().click().await.unwrap();
    };
    save(INJECTION, "the test's exec from /tmp").await;
    wait_text(c, "#save-status", "saved \"<img").await;
    let listed = wait_text(c, "#saved-queries tbody", INJECTION).await;
    assert!(listed.contains(exe) && listed.contains("console:ada"), "{listed}");
    let pwned = c.execute("return [document.body.dataset.pwned || null, document.querySelectorAll('#saved-queries img').length]", vec![]).await.unwrap();
    assert_eq!(pwned, json!([null, 0]), "the saved query's name is shown as text, never markup");
    sql.clear().await.unwrap();
    sql.send_keys("SELECT id, rule_id FROM alert ORDER BY id DESC LIMIT 5").await.unwrap();
    save("Latest alerts", "").await;
    wait_text(c, "#save-status", "saved \"Latest alerts\"").await;
    save("Latest alerts", "").await;
    wait_text(c, "#save-status", "is saved already").await;
    // Run the first with a click: its SQL goes into the form and to the host.
    sql.clear().await.unwrap();
    sql.send_keys("SELECT 1").await.unwrap();
    c.execute("document.querySelector('#hunt-result tbody').replaceChildren()", vec![]).await.unwrap();
    click_saved(c, INJECTION, "saved-run").await;
    wait_text(c, "#hunt-result", exe).await;
    assert_eq!(sql.prop("value").await.unwrap().as_deref(), Some(sql_exec.as_str()));
    shot(c, "agent-saved-queries").await;
    click_saved(c, "Latest alerts", "saved-delete").await;
    accept(c).await;
    wait_text(c, "#save-status", "deleted \"Latest alerts\"").await;
    let left = text_of(c, "#saved-queries tbody").await;
    assert!(left.contains("Injected") && !left.contains("Latest alerts"), "{left}");
}

/// A viewer: the kill is refused in the page, and a validly signed kill posted from the page is refused by the API.
async fn viewer_refused_a_kill(c: &Client, base: &str, host: &str, key: &Path) {
    c.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
    wait_until_url(c, "/console/login").await;
    login(c, base, "vic", PASSWORD).await;
    ready(c).await;
    c.goto(&format!("{base}/console/hunt")).await.unwrap();
    ready(c).await;
    assert!(text_of(c, "#saved-disabled").await.contains("needs the responder role"));
    assert!(c.find(Locator::Id("save-query")).await.unwrap().attr("disabled").await.unwrap().is_some());
    let forged = forge_post(c, "/api/v1/queries", r#"{"name":"viewer's","sql":"SELECT 1"}"#).await;
    assert_eq!((forged[0].as_u64(), forged[1]["error"]["code"].as_str()), (Some(403), Some("forbidden")), "{forged}");
    c.goto(&format!("{base}/console/hosts/{host}")).await.unwrap();
    ready(c).await;
    assert!(text_of(c, "#respond-disabled").await.contains("responder role"));
    assert!(c.find(Locator::Id("action-go")).await.unwrap().attr("disabled").await.unwrap().is_some(), "kill is disabled for a viewer");
    shot(c, "agent-viewer-refused").await;
    let kill = edr_fleet_server::client::sign_command_with_reason(key, host, HostCommand::Kill { pid: 1, tree: false }, "viewer", 60).unwrap();
    let refused = forge_post(c, &format!("/api/v1/hosts/{host}/commands"), &serde_json::to_string(&kill).unwrap()).await;
    assert_eq!((refused[0].as_u64(), refused[1]["error"]["code"].as_str()), (Some(403), Some("forbidden")), "{refused}");
}

/// `edr fleet queries`: the page's query listed; save, a duplicate refused, replace, delete.
fn saved_queries_cli(sns: &str, dir: &Path) {
    let (ok, out, err) = fleet(sns, dir, &["queries", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, [INJECTION]);
    assert_eq!(listed[0]["saved_by"], "console:ada");
    let (ok, out, err) =
        fleet(sns, dir, &["queries", "save", "Top executables", "SELECT exe, count(*) AS n FROM process GROUP BY exe", "--description", "most run"]);
    assert!(ok && out.contains("saved"), "{out} {err}");
    let (ok, _, err) = fleet(sns, dir, &["queries", "save", "Top executables", "SELECT 2"]);
    assert!(!ok && err.contains("saved already"), "{err}");
    let (ok, out, err) = fleet(sns, dir, &["queries", "save", "Top executables", "SELECT 2", "--replace"]);
    assert!(ok && out.contains("replaced"), "{out} {err}");
    let (ok, out, _) = fleet(sns, dir, &["queries", "list"]);
    assert!(ok && out.contains("\"Top executables\"  saved by admin") && out.contains("    SELECT 2"), "{out}");
    let (ok, out, err) = fleet(sns, dir, &["queries", "delete", "Top executables"]);
    assert!(ok && out.contains("deleted"), "{out} {err}");
    let (ok, _, err) = fleet(sns, dir, &["queries", "delete", "Top executables"]);
    assert!(!ok && err.contains("no saved query"), "{err}");
}
