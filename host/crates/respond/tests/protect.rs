//! Protection that a user cannot forge (issue 14, items 1 and 4):
//! a process is protected by its verified system executable, never by its
//! name; the agent's own files, account files, the loader, libc, the system
//! shells and `protected_paths` are refused by quarantine and delete in both
//! modes, an operator may override explicitly (audited), a pack never.
//!
//! Real system files are only ever requested in simulate mode (or refused
//! before anything runs); enforced requests only touch temp files.

mod common;

use common::*;
use edr_respond::{ActionKind, BlockTarget, Decision, Mode, Outcome, PackGrant, Requester, ResponseAction};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn comm_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_string()).unwrap_or_default()
}

/// A forked child of the test that renames itself with prctl(PR_SET_NAME)
/// and waits; reaped by the caller.
fn renamed_child(name: &str) -> libc::pid_t {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: the child calls only async-signal-safe functions (prctl, pause, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_NAME, cname.as_ptr() as libc::c_ulong, 0, 0, 0);
            loop {
                libc::pause();
            }
        }
    }
    pid
}

/// Kills and reaps a forked child on drop.
struct Forked(libc::pid_t);

impl Drop for Forked {
    fn drop(&mut self) {
        // SAFETY: plain kill/waitpid on our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn a_process_renamed_like_a_daemon_can_be_killed() {
    let dir = tempfile::tempdir().unwrap();
    // Default protected names: "systemd-journald" is "systemd-journal" as a comm.
    let (r, _) = responder_with(dir.path(), |_| {});
    let child = Forked(renamed_child("systemd-journal"));
    let pid = child.0 as u32;
    assert!(wait_for(Duration::from_secs(5), || comm_of(pid) == "systemd-journal"), "the child renamed itself: {}", comm_of(pid));
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: false, expect: None }, "renamed");
    assert_eq!(rec.decision, Decision::Enforced, "a name is not protection: {rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    assert_eq!(unsafe { libc::waitpid(child.0, &mut status, 0) }, child.0);
    std::mem::forget(child); // reaped: its pid may be reused, so the guard must not signal it
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL, "killed by SIGKILL: {status:#x}");
}

/// `/bin/sleep` copied to `<dir>/sshd`, executable.
fn sleep_copy_named_sshd(dir: &Path) -> PathBuf {
    let bin = dir.join("sshd");
    fs::copy("/bin/sleep", &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn a_copy_named_sshd_can_be_killed_quarantined_deleted_and_blocked() {
    require_root!();
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let (sim, _) = responder_with(&store.path().join("sim"), |c| c.operator_mode = Mode::Simulate);
    let bin = sleep_copy_named_sshd(work.path());
    let mut copy = spawn(Command::new(&bin).arg("60")).unwrap();
    let pid = copy.pid();
    assert!(wait_for(Duration::from_secs(5), || comm_of(pid) == "sshd"), "runs as sshd: {}", comm_of(pid));

    let rec = sim.request(operator(), ResponseAction::BlockExec(BlockTarget::Path(bin.clone())), "");
    assert_eq!(rec.decision, Decision::Simulated, "blocking the copy is not refused: {rec:?}");
    let rec = r.request(operator(), ResponseAction::Quarantine(bin.clone()), "fake sshd");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert!(!bin.exists(), "quarantined while it runs");
    let rec = r.request(operator(), ResponseAction::Kill { pid, tree: true, expect: None }, "fake sshd");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(copy.0.wait().unwrap().signal(), Some(libc::SIGKILL));

    let bin = sleep_copy_named_sshd(work.path());
    let running = spawn(Command::new(&bin).arg("60")).unwrap();
    assert!(wait_for(Duration::from_secs(5), || comm_of(running.pid()) == "sshd"));
    let rec = r.request(operator(), ResponseAction::Delete(bin.clone()), "fake sshd");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert!(!bin.exists(), "deleted while it runs");
}

#[test]
fn blocking_python_is_not_refused_because_a_renamed_python_runs() {
    require_root!();
    let Ok(python) = fs::canonicalize("/usr/bin/python3") else {
        edr_testkit::skip("no /usr/bin/python3");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let (sim, _) = responder_with(store.path(), |c| c.operator_mode = Mode::Simulate);
    // The script renames itself: prctl(PR_SET_NAME, "auditd").
    let script = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'auditd', 0, 0, 0); time.sleep(60)";
    let py = spawn(Command::new(&python).args(["-c", script])).unwrap();
    assert!(wait_for(Duration::from_secs(5), || comm_of(py.pid()) == "auditd"));
    let rec = sim.request(operator(), ResponseAction::BlockExec(BlockTarget::Path(python.clone())), "");
    assert_eq!(rec.decision, Decision::Simulated, "python is not shielded by a process called auditd: {rec:?}");
    assert!(rec.refusal.is_none(), "{rec:?}");
    assert!(is_running(py.pid()));
}

#[test]
fn a_system_binary_named_in_the_list_stays_protected() {
    require_root!();
    let store = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(store.path(), |c| c.protected_names.push("sleep".into()));
    let real = spawn(Command::new("/bin/sleep").arg("60")).unwrap();
    let pid = real.pid();
    assert!(wait_for(Duration::from_secs(5), || comm_of(pid) == "sleep"));
    for action in [ResponseAction::Kill { pid, tree: false, expect: None }, ResponseAction::Suspend(pid)] {
        let rec = r.request(operator(), action, "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        let why = rec.refusal.unwrap();
        assert!(why.contains("protected name `sleep`") && why.contains("verified system executable"), "{why}");
    }
    // Its binary cannot be blocked either, whether named by path or by hash.
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    for t in [BlockTarget::Path(exe.clone()), BlockTarget::Sha256(sha256_of(&exe))] {
        let rec = r.request(operator(), ResponseAction::BlockExec(t), "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        assert!(rec.refusal.unwrap().contains("the executable of protected process"));
    }
    assert!(is_running(pid));
    assert!(!r.block_stats().running, "nothing was started");
    assert_eq!(recs.lock().unwrap().len(), 4);
}

/// A data dir with the agent's files, a config and a trust key, all in `root`.
struct AgentFiles {
    data: PathBuf,
    config: PathBuf,
    key: PathBuf,
}

fn agent_files(root: &Path) -> AgentFiles {
    let data = root.join("data");
    fs::create_dir_all(data.join("packs")).unwrap();
    for f in ["events.db", "actions.jsonl", "alerts.jsonl", "packs/state.json"] {
        fs::write(data.join(f), b"agent state").unwrap();
    }
    let config = root.join("edr.toml");
    fs::write(&config, b"[respond]\n").unwrap();
    let key = root.join("publisher.pub");
    fs::write(&key, b"untrusted comment: minisign public key\nRWQ...\n").unwrap();
    AgentFiles { data, config, key }
}

#[test]
fn the_agents_data_dir_config_and_keys_are_refused_in_both_modes() {
    let root = tempfile::tempdir().unwrap();
    let files = agent_files(root.path());
    for mode in [Mode::Enforce, Mode::Simulate] {
        let (r, _) = responder_with(&root.path().join(format!("stores-{mode}")), |c| {
            c.operator_mode = mode;
            c.data_dir = Some(files.data.clone());
            c.config_file = Some(files.config.clone());
            c.trust_keys = vec![files.key.clone()];
        });
        let targets = [
            (files.data.join("events.db"), "data directory"),
            (files.data.join("actions.jsonl"), "data directory"),
            (files.data.join("packs/state.json"), "data directory"),
            (files.config.clone(), "configuration file"),
            (files.key.clone(), "trust key"),
        ];
        for (path, why) in &targets {
            for action in [ResponseAction::Quarantine(path.clone()), ResponseAction::Delete(path.clone())] {
                let rec = r.request(operator(), action.clone(), "");
                assert_eq!(rec.decision, Decision::Refused, "{mode}: {action:?}: {rec:?}");
                let refusal = rec.refusal.unwrap();
                assert!(refusal.contains(why) && refusal.contains("--override-protection"), "{mode}: `{refusal}` should say `{why}`");
                assert!(path.exists(), "{} untouched", path.display());
            }
        }
        // Through a symlinked directory, and through a hard link elsewhere.
        let link_dir = root.path().join(format!("via-{mode}"));
        std::os::unix::fs::symlink(&files.data, &link_dir).unwrap();
        let hard = root.path().join(format!("hard-{mode}.db"));
        fs::hard_link(files.data.join("events.db"), &hard).unwrap();
        let hard_cfg = root.path().join(format!("hard-{mode}.toml"));
        fs::hard_link(&files.config, &hard_cfg).unwrap();
        for path in [link_dir.join("events.db"), hard.clone(), hard_cfg.clone()] {
            for action in [ResponseAction::Quarantine(path.clone()), ResponseAction::Delete(path.clone())] {
                let rec = r.request(operator(), action.clone(), "");
                assert_eq!(rec.decision, Decision::Refused, "{mode}: {action:?}: {rec:?}");
                assert!(path.exists());
            }
        }
        assert!(r.quarantined().is_empty());
    }
}

#[test]
fn system_files_are_refused_in_simulate_mode_too() {
    let store = tempfile::tempdir().unwrap();
    let (sim, _) = responder_with(store.path(), |c| c.operator_mode = Mode::Simulate);
    let mut targets: Vec<(PathBuf, &str)> = vec![
        ("/etc/passwd".into(), "account or system database"),
        ("/etc/ld.so.cache".into(), "account or system database"),
        ("/bin/sh".into(), "shell"),
        ("/bin/bash".into(), "shell"),
        ("/usr/bin/bash".into(), "shell"),
    ];
    if Path::new("/etc/shadow").exists() {
        targets.push(("/etc/shadow".into(), "account or system database"));
    }
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let libc_path = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so")))
        .map(PathBuf::from);
    if let Some(l) = libc_path {
        targets.push((l, "the C library"));
    }
    // The loader the test binary runs with.
    if let Some(ld) = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/ld-linux")).map(PathBuf::from) {
        targets.push((ld, "loader"));
    }
    for (path, why) in &targets {
        if !path.exists() {
            continue;
        }
        for action in [ResponseAction::Quarantine(path.clone()), ResponseAction::Delete(path.clone())] {
            let rec = sim.request(operator(), action.clone(), "");
            assert_eq!(rec.decision, Decision::Refused, "{action:?}: {rec:?}");
            let refusal = rec.refusal.unwrap();
            assert!(refusal.contains(why), "`{refusal}` should say `{why}`");
        }
    }
    // The preload file is a persistence target: cleaning it stays possible.
    let rec = sim.request(operator(), ResponseAction::Quarantine("/etc/ld.so.preload".into()), "");
    assert_ne!(rec.decision, Decision::Refused, "{rec:?}");
}

#[test]
fn a_hard_link_to_etc_passwd_is_refused() {
    require_root!();
    // A temp dir on the filesystem of /etc (a hard link cannot cross filesystems).
    let Ok(dir) = tempfile::tempdir_in("/etc") else {
        edr_testkit::skip("cannot create a temp dir in /etc");
        return;
    };
    let link = dir.path().join("not-passwd");
    fs::hard_link("/etc/passwd", &link).unwrap();
    assert_eq!(fs::metadata(&link).unwrap().ino(), fs::metadata("/etc/passwd").unwrap().ino());
    let store = tempfile::tempdir().unwrap();
    let (sim, _) = responder_with(store.path(), |c| c.operator_mode = Mode::Simulate);
    for action in [ResponseAction::Quarantine(link.clone()), ResponseAction::Delete(link.clone())] {
        let rec = sim.request(operator(), action, "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        assert!(rec.refusal.unwrap().contains("hard link to /etc/passwd"));
    }
    fs::remove_file(&link).unwrap();
}

#[test]
fn an_operator_may_override_a_protected_path_and_it_is_audited() {
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let guarded = work.path().join("guarded");
    fs::create_dir(&guarded).unwrap();
    let (r, recs) = responder_with(store.path(), |c| c.protected_paths = vec![guarded.clone()]);
    for (i, plain) in [ResponseAction::Quarantine as fn(PathBuf) -> ResponseAction, ResponseAction::Delete].into_iter().enumerate() {
        let file = guarded.join(format!("file{i}"));
        fs::write(&file, b"operator knows best").unwrap();
        let rec = r.request(operator(), plain(file.clone()), "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        assert!(rec.refusal.unwrap().contains("protected_paths"));
        assert!(file.exists());

        let over = ResponseAction::OverrideProtection(Box::new(plain(file.clone())));
        let rec = r.request(operator(), over.clone(), "confirmed implant");
        assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
        assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
        assert_eq!(rec.detail["protection_overridden"], "true", "{rec:?}");
        assert!(rec.detail["protected_because"].contains("protected_paths"), "{rec:?}");
        assert_eq!(rec.request, over, "the record keeps the override request");
        assert!(!file.exists());
    }
    assert_eq!(r.quarantined().len(), 1);
    assert_eq!(recs.lock().unwrap().len(), 4);
    // The override never reaches the agent's own stores.
    let inside = store.path().join("quarantine").join("x");
    let rec = r.request(operator(), ResponseAction::OverrideProtection(Box::new(ResponseAction::Delete(inside))), "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    // Nor applies to anything but quarantine and delete.
    let rec = r.request(operator(), ResponseAction::OverrideProtection(Box::new(ResponseAction::Kill { pid: 1, tree: false, expect: None })), "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    assert!(rec.refusal.unwrap().contains("only for quarantine and delete"));
}

#[test]
fn simulate_mode_reports_the_same_refusal_and_the_override() {
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let file = work.path().join("guarded");
    fs::write(&file, b"x").unwrap();
    let (sim, _) = responder_with(store.path(), |c| {
        c.operator_mode = Mode::Simulate;
        c.protected_paths = vec![file.clone()];
    });
    let rec = sim.request(operator(), ResponseAction::Quarantine(file.clone()), "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    let rec = sim.request(operator(), ResponseAction::OverrideProtection(Box::new(ResponseAction::Quarantine(file.clone()))), "");
    assert_eq!(rec.decision, Decision::Simulated, "{rec:?}");
    assert_eq!(rec.detail["protection_overridden"], "true");
    assert!(file.exists());
}

#[test]
fn a_pack_can_never_override() {
    let work = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let file = work.path().join("guarded");
    fs::write(&file, b"x").unwrap();
    let (r, recs) = responder_with(store.path(), |c| {
        c.protected_paths = vec![file.clone()];
        c.packs.insert("acme".into(), PackGrant { actions: vec![ActionKind::QuarantineFile, ActionKind::DeleteFile], mode: Mode::Enforce });
    });
    let who = Requester::pack("acme", "cleaner");
    for plain in [ResponseAction::Quarantine(file.clone()), ResponseAction::Delete(file.clone())] {
        let rec = r.request(who.clone(), plain.clone(), "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        let over = ResponseAction::OverrideProtection(Box::new(plain));
        let rec = r.request(who.clone(), over.clone(), "");
        assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
        assert!(rec.refusal.unwrap().contains("only the operator may"));
        assert_eq!(r.submit(who.clone(), over, ""), Decision::Refused);
    }
    assert!(r.wait_idle(Duration::from_secs(5)));
    assert!(file.exists(), "untouched");
    assert!(recs.lock().unwrap().iter().all(|rec| rec.decision == Decision::Refused));
}
