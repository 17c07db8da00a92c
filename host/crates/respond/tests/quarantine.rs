//! Quarantine and restore (owner, mode, mtime, byte-exact), occupied paths,
//! moves across filesystems, delete.

mod common;

use common::*;
use edr_respond::{Decision, Outcome, ResponseAction};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Content that is not all-text, not a round size.
fn payload() -> Vec<u8> {
    (0..100_003u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn set_owner_mode_mtime(p: &Path, uid: u32, gid: u32, mode: u32, mtime: (i64, i64)) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let times = [libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 0 }, libc::timespec { tv_sec: mtime.0 as libc::time_t, tv_nsec: mtime.1 as _ }];
    // SAFETY: valid path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) }, 0);
}

/// Quarantines `file` (prepared with `mode`), checks the store, restores,
/// checks the original is back exactly.
fn round_trip(work: &Path, store: &Path, mode: u32, expect_copy: bool) {
    let (r, recs) = responder_with(store, |_| {});
    let file = work.join("payload.bin");
    let content = payload();
    fs::write(&file, &content).unwrap();
    let mtime = (1_000_000_000, 123_456_789);
    set_owner_mode_mtime(&file, 65534, 65534, mode, mtime);
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, mode, "test setup");

    let rec = r.request(operator(), ResponseAction::Quarantine(file.clone()), "malware");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert!(!file.exists(), "moved away");
    assert_eq!(rec.detail["sha256"], sha256_of_bytes(&content));
    assert_eq!(rec.detail["copied_across_filesystems"], expect_copy.to_string());
    let id = rec.detail["quarantine_id"].clone();

    let entries = r.quarantined();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.id, id);
    assert_eq!(e.original_path, file);
    assert_eq!((e.meta.uid, e.meta.gid, e.meta.mode), (65534, 65534, mode));
    assert_eq!((e.meta.mtime_sec, e.meta.mtime_nsec), mtime);
    assert_eq!(e.size, content.len() as u64);
    assert_eq!(e.reason, "malware");

    // The stored copy: root-owned, 0400, no execute bit, nothing for group/others.
    let dir_meta = fs::metadata(store.join("quarantine")).unwrap();
    assert_eq!(dir_meta.mode() & 0o7777, 0o700);
    assert_eq!(dir_meta.uid(), 0);
    let sm = fs::metadata(&e.stored_path).unwrap();
    assert_eq!(sm.mode() & 0o7777, 0o400, "stored copy is 0400");
    assert_eq!(sm.uid(), 0, "stored copy is root's");
    assert_eq!(sm.mode() & 0o111, 0, "not executable");
    assert_eq!(sm.mode() & 0o077, 0, "not readable by others");
    assert_eq!(fs::read(&e.stored_path).unwrap(), content);
    let exec = run(&mut Command::new(&e.stored_path));
    assert_eq!(exec.err().and_then(|e| e.raw_os_error()), Some(libc::EACCES), "even root cannot execute it");

    let rec = r.request(operator(), ResponseAction::Restore { id: id.clone(), force: false }, "false positive");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(fs::read(&file).unwrap(), content, "byte-exact");
    let m = fs::metadata(&file).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534), "owner");
    assert_eq!(m.mode() & 0o7777, mode, "mode (setuid included)");
    assert_eq!((m.mtime(), m.mtime_nsec()), mtime, "mtime");
    assert!(r.quarantined().is_empty(), "gone from the store");
    assert!(!e.stored_path.exists());
    assert_eq!(recs.lock().unwrap().len(), 2);
}

fn sha256_of_bytes(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

#[test]
fn quarantine_and_restore_setuid_file() {
    require_root!();
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    round_trip(work.path(), store.path(), 0o4755, false);
}

#[test]
fn quarantine_and_restore_0640_file() {
    require_root!();
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    round_trip(work.path(), store.path(), 0o640, false);
}

#[test]
fn quarantine_across_filesystems() {
    require_root!();
    let store = tempfile::tempdir().unwrap();
    let Ok(work) = tempfile::tempdir_in("/dev/shm") else {
        edr_testkit::skip("no /dev/shm");
        return;
    };
    if fs::metadata(work.path()).unwrap().dev() == fs::metadata(store.path()).unwrap().dev() {
        edr_testkit::skip("/dev/shm and the temp dir are on the same filesystem");
        return;
    }
    round_trip(work.path(), store.path(), 0o755, true);
}

#[test]
fn restore_refuses_an_occupied_path_unless_forced() {
    require_root!();
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let file = work.path().join("tool");
    fs::write(&file, b"original").unwrap();
    let rec = r.request(operator(), ResponseAction::Quarantine(file.clone()), "");
    let id = rec.detail["quarantine_id"].clone();
    fs::write(&file, b"newcomer").unwrap();

    let rec = r.request(operator(), ResponseAction::Restore { id: id.clone(), force: false }, "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    assert!(rec.refusal.as_deref().unwrap().contains("already exists"), "{rec:?}");
    assert_eq!(fs::read(&file).unwrap(), b"newcomer", "untouched");
    assert_eq!(r.quarantined().len(), 1, "still quarantined");

    let rec = r.request(operator(), ResponseAction::Restore { id, force: true }, "");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(fs::read(&file).unwrap(), b"original");
    let leftovers: Vec<_> = fs::read_dir(work.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

#[test]
fn the_agents_own_files_cannot_be_quarantined_or_deleted() {
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let me = std::env::current_exe().unwrap();
    for action in [ResponseAction::Quarantine(me.clone()), ResponseAction::Delete(me.clone())] {
        let rec = r.request(operator(), action, "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    }
    assert!(me.exists());
    let rec = r.request(operator(), ResponseAction::Quarantine("/proc/self/status".into()), "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    let rec = r.request(operator(), ResponseAction::Quarantine("relative/path".into()), "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    let inside = store.path().join("quarantine").join("x");
    let rec = r.request(operator(), ResponseAction::Delete(inside), "");
    assert!(rec.refusal.as_deref().unwrap_or("").contains("quarantine store"), "{rec:?}");
}

#[test]
fn delete_records_the_hash_first() {
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let file = work.path().join("dropper");
    fs::write(&file, payload()).unwrap();
    let sha = sha256_of(&file);
    let rec = r.request(operator(), ResponseAction::Delete(file.clone()), "dropper");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["sha256"], sha);
    assert_eq!(rec.detail["size"], payload().len().to_string());
    assert!(!file.exists());
}
