//! Saved hunt queries through the real API over a real nats-server: kept in
//! the JetStream key-value bucket, roles and CSRF enforced on every change,
//! hostile names and bodies refused or kept harmless, every change audited.

mod common;

use common::{login, request, Harness};
use edr_fleet_server::client::{saved_query_path, ClientError};
use edr_fleet_server::saved_queries::{BUCKET, NAME_MAX_BYTES, SQL_MAX_BYTES};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

fn refused(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, message }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The keys in the bucket itself.
fn bucket_keys(h: &Harness) -> Vec<String> {
    let js = h.running.as_ref().unwrap().state.bus.js.clone();
    h.rt.block_on(async move {
        let kv = js.get_key_value(BUCKET).await.unwrap();
        let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
        keys.sort();
        keys
    })
}

fn names(h: &Harness) -> Vec<String> {
    h.admin.get("/api/v1/queries").unwrap()["queries"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn saved_queries_are_kept_in_jetstream_with_roles_csrf_hostile_names_and_audit() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let h = Harness::start(Duration::from_secs(600));
    let b = h.base.clone();
    assert_eq!(h.admin.get("/api/v1/queries").unwrap(), json!({"queries": []}));

    // Save, list; a second save of the name is refused unless it says replace.
    let top = json!({"name": "Top executables", "sql": "SELECT exe, count(*) AS n FROM process GROUP BY exe", "description": "what runs most"});
    assert_eq!(h.admin.post("/api/v1/queries", &top).unwrap()["action"], "saved");
    let listed = h.admin.get("/api/v1/queries").unwrap()["queries"][0].clone();
    assert_eq!((listed["name"].as_str(), listed["saved_by"].as_str()), (Some("Top executables"), Some("admin")));
    assert_eq!(listed["description"], "what runs most");
    assert!(listed["saved_at"].as_u64().unwrap() > 1_700_000_000);
    let again = json!({"name": "Top executables", "sql": "SELECT 2"});
    let (status, msg) = refused(h.admin.post("/api/v1/queries", &again));
    assert!(status == 409 && msg.contains("replace"), "{status} {msg}");
    assert_eq!(h.admin.get("/api/v1/queries").unwrap()["queries"][0]["sql"], top["sql"], "the refused save changed nothing");
    let replace = json!({"name": "Top executables", "sql": "SELECT 2", "replace": true});
    assert_eq!(h.admin.post("/api/v1/queries", &replace).unwrap()["action"], "replaced");
    assert_eq!(h.admin.get("/api/v1/queries").unwrap()["queries"][0]["sql"], "SELECT 2");

    // Hostile bodies: refused with what is wrong, nothing kept.
    let long_name = "n".repeat(NAME_MAX_BYTES + 1);
    let long_sql = "x".repeat(SQL_MAX_BYTES + 1);
    for (body, says) in [
        (json!({"name": "", "sql": "SELECT 1"}), "name"),
        (json!({"name": "  ", "sql": "SELECT 1"}), "name"),
        (json!({"name": long_name, "sql": "SELECT 1"}), "at most"),
        (json!({"name": "two\nlines", "sql": "SELECT 1"}), "control"),
        (json!({"name": "..", "sql": "SELECT 1"}), "dots"),
        (json!({"name": "ok", "sql": "  "}), "empty"),
        (json!({"name": "ok", "sql": long_sql}), "at most"),
        (json!({"name": "ok", "sql": "SELECT 1", "saved_by": "someone else"}), "unknown field"),
        (json!({"name": "ok"}), "sql"),
    ] {
        let (status, msg) = refused(h.admin.post("/api/v1/queries", &body));
        assert!(status == 400 && msg.contains(says), "{body:.80}: {status} {msg}");
    }
    assert_eq!(names(&h), ["Top executables"]);

    // Names with path, wildcard and KV-illegal characters are kept as text under a hex key, and deleted by name.
    let odd = ["../../etc/passwd", "a.b.*.>", "$KV.EDR_SAVED_QUERIES.x y", "%2e%2e/%00", "<img src=x onerror=alert(1)>"];
    for n in odd {
        h.admin.post("/api/v1/queries", &json!({"name": n, "sql": "SELECT 1"})).unwrap();
    }
    let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).chain(["Top executables".to_string()]).collect();
    want.sort();
    assert_eq!(names(&h), want);
    let mut hex_keys: Vec<String> = want.iter().map(hex::encode).collect();
    hex_keys.sort();
    assert_eq!(bucket_keys(&h), hex_keys, "one hex key per name, nothing else in the bucket");
    for n in odd {
        assert_eq!(h.admin.delete(&saved_query_path(n)).unwrap()["deleted"], n);
    }
    assert_eq!(names(&h), ["Top executables"]);
    let (status, _) = refused(h.admin.delete(&saved_query_path("no such query")));
    assert_eq!(status, 404);
    let (status, _) = refused(h.admin.delete(&saved_query_path("..")));
    assert_eq!(status, 400);

    // A viewer's session may list but not save or delete, even with the page's CSRF token; without it, nothing at all.
    let (vcookie, vcsrf) = login(&b, "vic", common::PASSWORD).unwrap();
    let list = request("GET", &format!("{b}/api/v1/queries"), &[("cookie", &vcookie)], None);
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["queries"][0]["name"], "Top executables");
    let ct = ("content-type", "application/json");
    let forged = r#"{"name":"viewer's","sql":"SELECT 1"}"#;
    let save = request("POST", &format!("{b}/api/v1/queries"), &[("cookie", &vcookie), ("x-csrf-token", &vcsrf), ct], Some(forged));
    assert_eq!((save.status, save.json()["error"]["code"].as_str()), (403, Some("forbidden")), "{}", save.body);
    let del = request("DELETE", &format!("{b}{}", saved_query_path("Top executables")), &[("cookie", &vcookie), ("x-csrf-token", &vcsrf)], None);
    assert_eq!(del.status, 403, "{}", del.body);
    // A responder's session: without the CSRF token refused, with it saved and deleted.
    let (cookie, csrf) = login(&b, "alice", common::PASSWORD).unwrap();
    let body = r#"{"name":"alice's","sql":"SELECT 1"}"#;
    let no_csrf = request("POST", &format!("{b}/api/v1/queries"), &[("cookie", &cookie), ct], Some(body));
    assert_eq!((no_csrf.status, no_csrf.json()["error"]["code"].as_str()), (403, Some("csrf")));
    let no_csrf = request("DELETE", &format!("{b}{}", saved_query_path("Top executables")), &[("cookie", &cookie)], None);
    assert_eq!((no_csrf.status, no_csrf.json()["error"]["code"].as_str()), (403, Some("csrf")));
    let saved = request("POST", &format!("{b}/api/v1/queries"), &[("cookie", &cookie), ("x-csrf-token", &csrf), ct], Some(body));
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert_eq!(saved.json()["query"]["saved_by"], "console:alice");
    let gone = request("DELETE", &format!("{b}{}", saved_query_path("alice's")), &[("cookie", &cookie), ("x-csrf-token", &csrf)], None);
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert_eq!(names(&h), ["Top executables"], "only the refused changes' target is left");

    // Every change, and only the changes, in the audit with who made it.
    let changes: Vec<(String, String, String)> = h
        .audit()
        .iter()
        .rev()
        .filter(|e| e["change"]["kind"] == "saved_query")
        .map(|e| (e["actor"].as_str().unwrap().into(), e["change"]["action"].as_str().unwrap().into(), e["change"]["name"].as_str().unwrap().into()))
        .collect();
    let mut want = vec![("admin".into(), "saved".into(), "Top executables".into()), ("admin".into(), "replaced".into(), "Top executables".into())];
    want.extend(odd.iter().map(|n| ("admin".to_string(), "saved".to_string(), n.to_string())));
    want.extend(odd.iter().map(|n| ("admin".to_string(), "deleted".to_string(), n.to_string())));
    want.push(("console:alice".into(), "saved".into(), "alice's".into()));
    want.push(("console:alice".into(), "deleted".into(), "alice's".into()));
    assert_eq!(changes, want);
}
