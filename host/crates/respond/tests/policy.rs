//! The policy: grants, modes, operator-only undo, submit on the worker thread.

mod common;

use common::*;
use edr_respond::{ActionKind, Decision, Mode, Outcome, PackGrant, Requester, ResponseAction};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

fn grant(actions: &[ActionKind], mode: Mode) -> PackGrant {
    PackGrant { actions: actions.to_vec(), mode }
}

#[test]
fn an_action_not_granted_is_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(dir.path(), |c| {
        c.packs.insert("acme".into(), grant(&[ActionKind::FetchFile], Mode::Enforce));
    });
    let child = sleeper();
    let who = Requester::pack("acme", "revshell");
    let rec = r.request(who.clone(), ResponseAction::Kill { pid: child.pid(), tree: false, expect: None }, "reverse shell");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::NotRun);
    let refusal = rec.refusal.clone().unwrap();
    assert!(refusal.contains("not granted `kill-process`") && refusal.contains("fetch-file"), "{refusal}");
    assert_eq!(rec.requester, who);
    assert_eq!(rec.reason, "reverse shell");
    assert!(is_running(child.pid()), "still alive");

    let rec = r.request(Requester::pack("stranger", "x"), ResponseAction::Fetch("/etc/hostname".into()), "");
    assert_eq!(rec.decision, Decision::Refused, "an unknown pack has no grant");

    let rec = r.request(who, ResponseAction::Restore { id: "00".repeat(16), force: false }, "");
    assert_eq!(rec.decision, Decision::Refused);
    assert!(rec.refusal.unwrap().contains("only the operator"));

    let all = recs.lock().unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|r| r.decision == Decision::Refused && r.outcome == Outcome::NotRun));
}

#[test]
fn simulate_changes_nothing_but_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(dir.path(), |c| {
        c.packs.insert(
            "watch".into(),
            grant(&[ActionKind::KillProcess, ActionKind::QuarantineFile, ActionKind::DeleteFile, ActionKind::SuspendProcess], Mode::Simulate),
        );
    });
    let who = Requester::pack("watch", "lineage");
    let child = sleeper();
    let pid = child.pid();
    let rec = r.request(who.clone(), ResponseAction::Kill { pid, tree: true, expect: None }, "would kill");
    assert_eq!(rec.decision, Decision::Simulated, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::NotRun);
    assert_eq!(rec.detail["would_kill"], pid.to_string());
    let rec = r.request(who.clone(), ResponseAction::Suspend(pid), "would stop");
    assert_eq!(rec.decision, Decision::Simulated, "{rec:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(is_running(pid), "neither killed nor stopped");

    let file = work.path().join("implant");
    fs::write(&file, b"payload").unwrap();
    let sha = sha256_of(&file);
    for action in [ResponseAction::Quarantine(file.clone()), ResponseAction::Delete(file.clone())] {
        let rec = r.request(who.clone(), action, "would remove");
        assert_eq!(rec.decision, Decision::Simulated, "{rec:?}");
        assert_eq!(rec.detail["sha256"], sha, "the record says what would be removed");
    }
    assert_eq!(fs::read(&file).unwrap(), b"payload", "the file is still in place");
    assert!(r.quarantined().is_empty());

    // Protection applies in simulate mode too.
    let rec = r.request(who, ResponseAction::Kill { pid: 1, tree: false, expect: None }, "");
    assert_eq!(rec.decision, Decision::Refused);
    assert_eq!(recs.lock().unwrap().len(), 5);
}

#[test]
fn operator_simulate_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(dir.path(), |c| c.operator_mode = Mode::Simulate);
    let child = sleeper();
    let rec = r.request(operator(), ResponseAction::Kill { pid: child.pid(), tree: false, expect: None }, "");
    assert_eq!(rec.decision, Decision::Simulated);
    assert!(is_running(child.pid()));
}

#[test]
fn submit_decides_now_and_acts_on_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(dir.path(), |c| {
        c.packs.insert("acme".into(), grant(&[ActionKind::KillProcess], Mode::Enforce));
    });
    let who = Requester::pack("acme", "revshell");
    let mut child = sleeper();
    let pid = child.pid();
    let d = r.submit(who.clone(), ResponseAction::Kill { pid, tree: false, expect: None }, "async");
    assert_eq!(d, Decision::Enforced);
    assert!(r.wait_idle(Duration::from_secs(10)));
    assert_eq!(child.0.wait().unwrap().signal(), Some(libc::SIGKILL));
    {
        let all = recs.lock().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].decision, Decision::Enforced);
        assert_eq!(all[0].outcome, Outcome::Ok, "{:?}", all[0]);
    }
    // Refusals come back at once and are audited at once.
    let d = r.submit(who.clone(), ResponseAction::Kill { pid: 1, tree: false, expect: None }, "");
    assert_eq!(d, Decision::Refused);
    let d = r.submit(who, ResponseAction::Delete("/etc/hostname".into()), "");
    assert_eq!(d, Decision::Refused);
    assert_eq!(recs.lock().unwrap().len(), 3);
}

#[test]
fn dropping_the_responder_audits_what_was_still_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(dir.path(), |_| {});
    let kids: Vec<ChildGuard> = (0..3).map(|_| sleeper()).collect();
    for k in &kids {
        assert_eq!(r.submit(operator(), ResponseAction::Kill { pid: k.pid(), tree: false, expect: None }, ""), Decision::Enforced);
    }
    drop(r);
    let all = recs.lock().unwrap();
    assert_eq!(all.len(), 3, "every queued request has a record");
    for rec in all.iter() {
        assert!(rec.outcome == Outcome::Ok || rec.refusal.as_deref().is_some_and(|s| s.contains("shutting down")), "{rec:?}");
    }
}
