//! Exec blocking with fanotify permission events (root only).

mod common;

use common::*;
use edr_respond::{BlockTarget, Decision, Outcome, RespondError, ResponseAction, Responder};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of /bin/true with a unique tail, so its sha256 is its own and
/// blocking it does not block the system's `true`.
fn unique_true(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    fs::copy("/bin/true", &p).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    writeln!(f, "edr-test {name} {} {:?}", std::process::id(), std::time::SystemTime::now()).unwrap();
    drop(f);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn exec_errno(p: &Path) -> Option<i32> {
    match run(&mut Command::new(p)) {
        Ok(s) => {
            assert!(s.success(), "{} ran but failed: {s}", p.display());
            None
        }
        Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
    }
}

/// Blocks `target`; returns false (test skipped) when fanotify is unavailable.
fn block(r: &Responder, target: BlockTarget) -> bool {
    let rec = r.request(operator(), ResponseAction::BlockExec(target), "test block");
    if let Outcome::Error(e) = &rec.outcome {
        if e.contains("fanotify") {
            edr_testkit::skip(format!("{e}"));
            return false;
        }
    }
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    true
}

#[test]
fn block_and_unblock_by_sha256() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(store.path(), |_| {});
    let bin = unique_true(dir.path(), "evil-true");
    assert_eq!(exec_errno(&bin), None, "runs before the block");
    let sha = sha256_of(&bin);
    if !block(&r, BlockTarget::Sha256(sha.to_uppercase())) {
        return;
    }
    assert!(r.block_stats().running);
    assert_eq!(r.blocks().len(), 1);
    assert_eq!(r.blocks()[0].target, BlockTarget::Sha256(sha.clone()), "stored in lowercase");

    let errno = exec_errno(&bin);
    assert!(matches!(errno, Some(libc::EPERM) | Some(libc::EACCES)), "exec is denied: {errno:?}");
    // A second run is answered from the hash cache.
    assert!(exec_errno(&bin).is_some());
    // The system keeps working.
    assert_eq!(exec_errno(Path::new("/usr/bin/true")), None, "/usr/bin/true still runs");
    let out = Command::new("/bin/sh").args(["-c", "echo alive"]).output().unwrap();
    assert_eq!(out.stdout, b"alive\n");
    // Many execs at once are all answered.
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    assert_eq!(exec_errno(Path::new("/usr/bin/true")), None);
                }
            });
        }
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "execs were held up: {:?}", started.elapsed());
    let stats = r.block_stats();
    assert!(stats.denied >= 2, "{stats:?}");
    assert!(stats.allowed >= 102, "{stats:?}");
    assert_eq!(stats.timeouts, 0, "{stats:?}");
    assert!(stats.cache_hits >= 1, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");

    let rec = r.request(operator(), ResponseAction::Unblock(BlockTarget::Sha256(sha)), "cleared");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["engine_stopped"], "true");
    assert_eq!(exec_errno(&bin), None, "runs again after unblock");
    assert!(!r.block_stats().running, "the permission thread is stopped");
    assert!(r.blocks().is_empty());
    assert_eq!(recs.lock().unwrap().len(), 2);
}

#[test]
fn block_by_path_leaves_other_copies_alone() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let bin = unique_true(dir.path(), "by-path");
    let twin = dir.path().join("twin");
    fs::copy(&bin, &twin).unwrap();
    if !block(&r, BlockTarget::Path(bin.clone())) {
        return;
    }
    assert!(exec_errno(&bin).is_some(), "blocked path");
    assert_eq!(exec_errno(&twin), None, "same content elsewhere is not blocked by a path block");
    let rec = r.request(operator(), ResponseAction::Unblock(BlockTarget::Path(bin.clone())), "");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(exec_errno(&bin), None);
    assert!(!r.block_stats().running);
}

#[test]
fn critical_executables_cannot_be_blocked() {
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    for t in [
        BlockTarget::Path("/bin/sh".into()),
        BlockTarget::Sha256(sha256_of(Path::new("/bin/sh"))),
        BlockTarget::Path(std::env::current_exe().unwrap()),
    ] {
        let rec = r.request(operator(), ResponseAction::BlockExec(t.clone()), "");
        assert_eq!(rec.decision, Decision::Refused, "{t}: {rec:?}");
        assert!(rec.refusal.unwrap().contains("protected"));
    }
    assert!(!r.block_stats().running, "nothing was started");
}

#[test]
fn blocks_persist_across_restarts() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let list = store.path().join("blocks.json");
    let bin = unique_true(dir.path(), "persisted");
    let sha = sha256_of(&bin);
    {
        let (r, _) = responder_with(store.path(), |c| c.blocklist_file = Some(list.clone()));
        if !block(&r, BlockTarget::Sha256(sha.clone())) {
            return;
        }
    }
    assert_eq!(exec_errno(&bin), None, "dropping the responder stops enforcement");
    let (r, _) = responder_with(store.path(), |c| c.blocklist_file = Some(list.clone()));
    assert_eq!(r.blocks().len(), 1, "reloaded");
    assert!(r.block_stats().running, "re-enforced at start");
    assert!(exec_errno(&bin).is_some());
    let rec = r.request(operator(), ResponseAction::Unblock(BlockTarget::Sha256(sha)), "");
    assert_eq!(rec.outcome, Outcome::Ok);
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&list).unwrap()).unwrap();
    assert_eq!(saved, serde_json::json!([]));
}

#[test]
fn unblocking_what_is_not_blocked_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let rec = r.request(operator(), ResponseAction::Unblock(BlockTarget::Sha256("ab".repeat(32))), "");
    assert_eq!(rec.decision, Decision::Refused);
    assert!(rec.refusal.unwrap().contains("not blocked"));
    // The error type says what to do when fanotify is missing.
    let e = RespondError::Fanotify { what: "fanotify_init".into(), source: std::io::Error::from_raw_os_error(libc::EPERM) };
    assert!(e.to_string().contains("needs root"));
}

#[test]
fn files_over_the_hash_limit_are_allowed_not_hashed() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |c| c.block.hash_max_bytes = 1024);
    let bin = unique_true(dir.path(), "big");
    if !block(&r, BlockTarget::Sha256(sha256_of(&bin))) {
        return;
    }
    // Hashing every huge executable would stall exec; over the limit the agent allows and counts.
    assert_eq!(exec_errno(&bin), None);
    let stats = r.block_stats();
    assert!(stats.too_large >= 1, "{stats:?}");
    assert_eq!(stats.denied, 0, "{stats:?}");
}

#[test]
fn blocking_without_root_reports_a_clear_error() {
    if is_root() {
        edr_testkit::not_applicable("runs as root (this checks the error a non-root agent gets)");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let rec = r.request(operator(), ResponseAction::BlockExec(BlockTarget::Sha256("cd".repeat(32))), "");
    assert_eq!(rec.decision, Decision::Enforced);
    match &rec.outcome {
        Outcome::Error(e) => assert!(e.contains("fanotify") && e.contains("needs root"), "{e}"),
        o => panic!("expected an error, got {o:?}"),
    }
    assert!(r.blocks().is_empty(), "a block that cannot be enforced is not recorded");
    assert!(r.block_stats().last_error.is_some());
}
