//! Kill, kill tree, suspend/resume, protected processes and pid reuse.
//! These act only on children the test spawns, so they run without root too.

mod common;

use common::*;
use edr_respond::process::{current_entity_id, current_start_time};
use edr_respond::{Decision, Outcome, ProcessIdentity, ResponseAction};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn kill_a_child_with_its_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(dir.path(), |_| {});
    let mut child = sleeper();
    let pid = child.pid();
    let start = current_start_time(pid).expect("start time");
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: false, expect: Some(ProcessIdentity::StartTime(start)) }, "test kill");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["killed"], pid.to_string());
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(is_dead(pid));
    assert_eq!(recs.lock().unwrap().len(), 1, "one audit record");
    assert_eq!(recs.lock().unwrap()[0].reason, "test kill");
}

#[test]
fn kill_a_tree_leaves_first() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(dir.path(), |_| {});
    let mut sh = spawn(Command::new("sh").args(["-c", "sleep 60 & sleep 60 & wait"])).unwrap();
    let pid = sh.pid();
    assert!(wait_for(Duration::from_secs(5), || children_of(pid).len() == 2), "sh started two sleeps");
    let kids = children_of(pid);
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: true, expect: None }, "tree");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    let killed: Vec<u32> = rec.detail["killed"].split(',').map(|p| p.parse().unwrap()).collect();
    assert_eq!(killed.len(), 3, "{killed:?}");
    assert_eq!(*killed.last().unwrap(), pid, "the root is killed last");
    for k in &kids {
        assert!(killed.contains(k));
    }
    assert_eq!(sh.0.wait().unwrap().signal(), Some(libc::SIGKILL));
    for k in kids {
        assert!(wait_for(Duration::from_secs(2), || is_dead(k)), "sleep {k} is dead");
    }
}

#[test]
fn suspend_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(dir.path(), |_| {});
    let child = sleeper();
    let pid = child.pid();
    assert!(wait_for(Duration::from_secs(2), || state_of(pid) == Some('S')));
    let rec = r.request(operator(), ResponseAction::Suspend(pid), "pause");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(state_of(pid), Some('T'), "stopped");
    assert_eq!(rec.detail["state"], "T");
    let rec = r.request(operator(), ResponseAction::Resume(pid), "go on");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert!(wait_for(Duration::from_secs(2), || matches!(state_of(pid), Some('S') | Some('R'))), "running again: {:?}", state_of(pid));
}

#[test]
fn protected_processes_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    // A real system binary named in the list (a copy elsewhere no longer
    // counts: see tests/protect.rs). Name protection needs a process run by
    // root or a system service, so that case needs root.
    let (r, recs) = responder_with(dir.path(), |c| c.protected_names.push("sleep".into()));
    let named = spawn(Command::new("/bin/sleep").arg("60")).unwrap();
    assert!(wait_for(Duration::from_secs(2), || std::fs::read_to_string(format!("/proc/{}/comm", named.pid())).map(|c| c.trim() == "sleep").unwrap_or(false)));

    let me = std::process::id();
    let mut targets = vec![(1, "init"), (me, "the agent itself")];
    if is_root() {
        targets.push((named.pid(), "protected name"));
    } else {
        eprintln!("note: not root; the protected-name case is not checked here");
    }
    if std::fs::read_to_string("/proc/2/comm").map(|c| c.trim() == "kthreadd").unwrap_or(false) {
        targets.push((2, "kernel thread"));
    } else {
        eprintln!("note: no kthreadd at pid 2 in this pid namespace; kernel-thread case not checked here");
    }
    for (pid, why) in &targets {
        for action in [ResponseAction::Kill { pid: *pid, tree: true, expect: None }, ResponseAction::Suspend(*pid)] {
            let rec = r.request(operator(), action.clone(), "should be refused");
            assert_eq!(rec.decision, Decision::Refused, "{action:?}: {rec:?}");
            assert_eq!(rec.outcome, Outcome::NotRun);
            let refusal = rec.refusal.clone().unwrap();
            assert!(refusal.contains(why), "{pid}: `{refusal}` should mention `{why}`");
        }
    }
    assert!(is_running(named.pid()), "the protected process is untouched");
    assert_eq!(recs.lock().unwrap().len(), targets.len() * 2, "every refusal is audited");
    assert!(recs.lock().unwrap().iter().all(|r| r.decision == Decision::Refused));
}

#[test]
fn the_agents_ancestors_are_protected() {
    // Checked in simulate mode: if protection ever broke, an enforced
    // request would stop or kill the test runner itself.
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(dir.path(), |c| c.operator_mode = edr_respond::Mode::Simulate);
    let Some(parent) = ppid_of(std::process::id()).filter(|p| *p > 1) else {
        edr_testkit::skip("the test process is a child of pid 1");
        return;
    };
    for action in [ResponseAction::Kill { pid: parent, tree: false, expect: None }, ResponseAction::Suspend(parent)] {
        let rec = r.request(operator(), action, "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        assert!(rec.refusal.unwrap().contains("ancestor of the agent"));
    }
    // Killing a tree whose root is the agent's child is fine in simulation, and names the child.
    let child = sleeper();
    let rec = r.request(operator(), ResponseAction::Kill { pid: child.pid(), tree: true, expect: None }, "");
    assert_eq!(rec.decision, Decision::Simulated, "{rec:?}");
    assert_eq!(rec.detail["would_kill"], child.pid().to_string());
}

#[test]
fn a_reused_pid_is_not_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(dir.path(), |_| {});
    let mut child = sleeper();
    let pid = child.pid();
    let eid = current_entity_id(pid).unwrap();
    // An identity of some earlier process that had this pid.
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: false, expect: Some(ProcessIdentity::EntityId(eid ^ 0x5a5a)) }, "stale");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    assert!(rec.refusal.as_deref().unwrap().contains("reused"), "{rec:?}");
    assert!(is_running(pid), "still alive");
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: false, expect: Some(ProcessIdentity::EntityId(eid)) }, "right one");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(child.0.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn killing_a_missing_process_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(dir.path(), |_| {});
    let mut child = sleeper();
    let pid = child.pid();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: false, expect: None }, "gone");
    assert_eq!(rec.decision, Decision::Enforced);
    match &rec.outcome {
        Outcome::Error(e) => assert!(e.contains("no process"), "{e}"),
        o => panic!("expected an error, got {o:?}"),
    }
}
