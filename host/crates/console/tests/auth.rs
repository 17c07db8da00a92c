//! The console's logins, sessions and CSRF checks against the real API,
//! with raw HTTP requests (what a forged request would send), over a real
//! nats-server.

mod common;

use common::{enroll, feed_alert, login, request, Harness, PASSWORD};
use edr_testkit::wait_until;
use serde_json::json;
use std::time::Duration;

fn have_nats() -> bool {
    edr_testkit::have_program("nats-server", "nats-server")
}

#[test]
fn logins_sessions_csrf_and_roles_are_enforced_by_the_api() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(Duration::from_secs(600));
    let b = h.base.clone();
    let data = tempfile::tempdir().unwrap();
    let host = enroll(&h, data.path(), "web-1");
    feed_alert(&h, &host, 1, "high", "Test rule", json!({"message": "m"}));
    assert!(wait_until(Duration::from_secs(20), || common::alert_count(&h) == 1));

    // Pages need a session; the API without one says how to authenticate.
    let page = request("GET", &format!("{b}/console/hosts"), &[], None);
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/console/login")));
    assert_eq!(request("GET", &format!("{b}/api/v1/hosts"), &[], None).status, 401);

    // A wrong password: 401, no cookie, audited with the name and address.
    let wrong = login(&b, "alice", "not the password").unwrap_err();
    assert_eq!(wrong.status, 401);
    assert!(wrong.cookies.is_empty() && wrong.body.contains("Wrong name or password"));
    let unknown = login(&b, "mallory", PASSWORD).unwrap_err();
    assert_eq!(unknown.status, 401, "an unknown name looks like a wrong password");

    // A login form posted from another site (login CSRF) is refused; the console's own origin is fine.
    let form = format!("name=alice&password={}", PASSWORD.replace(' ', "+"));
    let form_ct = ("content-type", "application/x-www-form-urlencoded");
    let evil = request("POST", &format!("{b}/console/login"), &[form_ct, ("origin", "http://evil.example")], Some(&form));
    assert!(evil.status == 403 && evil.cookies.is_empty(), "{}", evil.status);
    let own = request("POST", &format!("{b}/console/login"), &[form_ct, ("origin", &b)], Some(&form));
    assert_eq!(own.status, 303);

    // A responder's session: the cookie's flags, the API through it, CSRF on changes.
    let form = format!("name=alice&password={}", PASSWORD.replace(' ', "+"));
    let ok = request("POST", &format!("{b}/console/login"), &[("content-type", "application/x-www-form-urlencoded")], Some(&form));
    assert_eq!(ok.status, 303);
    let set = &ok.cookies[0];
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/") && !set.contains("Secure"), "{set}");
    let (cookie, csrf) = login(&b, "alice", PASSWORD).unwrap();
    let me = request("GET", &format!("{b}/api/v1/whoami"), &[("cookie", &cookie)], None);
    assert_eq!(me.json(), json!({"name": "console:alice", "role": "responder"}));
    let triage = format!("{b}/api/v1/alerts/{host}/1/triage");
    let body = r#"{"state":"acknowledged","note":"looking"}"#;
    let ct = ("content-type", "application/json");
    let no_csrf = request("POST", &triage, &[("cookie", &cookie), ct], Some(body));
    assert_eq!(no_csrf.status, 403);
    assert_eq!(no_csrf.json()["error"]["code"], "csrf", "{}", no_csrf.body);
    let forged = request("POST", &triage, &[("cookie", &cookie), ct, ("x-csrf-token", &"0".repeat(64))], Some(body));
    assert_eq!((forged.status, forged.json()["error"]["code"].as_str()), (403, Some("csrf")));
    let (_, other_csrf) = login(&b, "alice", PASSWORD).unwrap();
    let crossed = request("POST", &triage, &[("cookie", &cookie), ct, ("x-csrf-token", &other_csrf)], Some(body));
    assert_eq!(crossed.status, 403, "a CSRF token is bound to its own session");
    let good = request("POST", &triage, &[("cookie", &cookie), ct, ("x-csrf-token", &csrf)], Some(body));
    assert_eq!(good.status, 200, "{}", good.body);
    assert_eq!(h.admin.get("/api/v1/alerts").unwrap()["alerts"][0]["state_by"], "console:alice");

    // A viewer's forged POST, with a valid session and CSRF token: refused by the API's roles.
    let (vcookie, vcsrf) = login(&b, "vic", PASSWORD).unwrap();
    let v = request("POST", &triage, &[("cookie", &vcookie), ct, ("x-csrf-token", &vcsrf)], Some(r#"{"state":"closed"}"#));
    assert_eq!((v.status, v.json()["error"]["code"].as_str()), (403, Some("forbidden")), "{}", v.body);
    let kill =
        edr_fleet_server::client::sign_command_with_reason(&h.key_file(), &host, edr_fleet_proto::command::Command::Kill { pid: 1, tree: false }, "x", 60)
            .unwrap();
    let kill = serde_json::to_string(&kill).unwrap();
    let vk = request("POST", &format!("{b}/api/v1/hosts/{host}/commands"), &[("cookie", &vcookie), ct, ("x-csrf-token", &vcsrf)], Some(&kill));
    assert_eq!(vk.status, 403, "a viewer's signed kill is refused: {}", vk.body);
    let ve = request("POST", &format!("{b}/api/v1/enroll-tokens"), &[("cookie", &cookie), ct, ("x-csrf-token", &csrf)], Some(r#"{"ttl_secs":600}"#));
    assert_eq!(ve.status, 403, "a responder is not an admin");
    assert_eq!(h.admin.get("/api/v1/alerts").unwrap()["alerts"][0]["state"], "acknowledged", "the viewer changed nothing");

    // Logout ends the session for the API too.
    let out = request("POST", &format!("{b}/console/logout"), &[("cookie", &cookie), ct, ("x-csrf-token", &csrf)], Some("{}"));
    assert_eq!(out.status, 200);
    assert!(out.cookies[0].contains("Max-Age=0"));
    assert_eq!(request("GET", &format!("{b}/api/v1/whoami"), &[("cookie", &cookie)], None).status, 401);
    let after = request("POST", &triage, &[("cookie", &cookie), ct, ("x-csrf-token", &csrf)], Some(body));
    assert_eq!(after.status, 401);

    // Every login, failure and logout is in the audit with who and when.
    let audit = h.audit();
    let logins: Vec<(String, String)> = audit
        .iter()
        .filter(|e| e["change"]["kind"] == "login")
        .map(|e| (e["change"]["user"].as_str().unwrap().to_string(), e["change"]["outcome"].as_str().unwrap().to_string()))
        .collect();
    for want in [("alice", "failed"), ("mallory", "failed"), ("alice", "ok"), ("vic", "ok"), ("alice", "logout")] {
        assert!(logins.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {logins:?}");
    }
    assert!(audit.iter().all(|e| e["time"].as_u64().unwrap() > 0 && e["actor"].is_string()));
    assert!(audit.iter().any(|e| e["change"]["kind"] == "login" && e["change"]["from"] == "127.0.0.1"));
}

#[test]
fn failed_logins_are_rate_limited_and_idle_sessions_expire() {
    if !have_nats() {
        return;
    }
    let h = Harness::start(Duration::from_millis(1500));
    let b = h.base.clone();
    let (cookie, _) = login(&b, "vic", PASSWORD).unwrap();
    assert_eq!(request("GET", &format!("{b}/api/v1/hosts"), &[("cookie", &cookie)], None).status, 200);
    std::thread::sleep(Duration::from_millis(2000));
    let expired = request("GET", &format!("{b}/api/v1/hosts"), &[("cookie", &cookie)], None);
    assert_eq!(expired.status, 401);
    assert!(expired.json()["error"]["message"].as_str().unwrap().contains("expired"), "{}", expired.body);
    assert_eq!(request("GET", &format!("{b}/console/alerts"), &[("cookie", &cookie)], None).status, 303, "an expired page goes to the login");

    for _ in 0..edr_console::session::MAX_FAILURES {
        assert_eq!(login(&b, "alice", "wrong password!").unwrap_err().status, 401);
    }
    let locked = login(&b, "alice", PASSWORD).unwrap_err();
    assert_eq!(locked.status, 429, "even the right password waits once the limit is reached");
    assert!(locked.body.contains("Too many failed logins"));
    assert!(h.audit().iter().any(|e| e["change"]["outcome"] == "rate_limited"));
}
