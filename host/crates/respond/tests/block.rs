//! Exec blocking with fanotify permission events (root only).

mod common;

use common::*;
use edr_respond::{BlockTarget, Decision, Outcome, RespondError, Responder, ResponseAction};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Tests that stop a responder (every exec on the host then waits for the
/// deadline, or is denied in fail mode deny) or measure exec latency run
/// alone; the others share the host.
static HOST_EXECS: RwLock<()> = RwLock::new(());

/// For a test that execs while others may run.
fn shared_host() -> RwLockReadGuard<'static, ()> {
    HOST_EXECS.read().unwrap_or_else(|e| e.into_inner())
}

/// For a test whose stopped responder or timing affects every exec.
fn exclusive_host() -> RwLockWriteGuard<'static, ()> {
    HOST_EXECS.write().unwrap_or_else(|e| e.into_inner())
}

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
            edr_testkit::skip(e.to_string());
            return false;
        }
    }
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    true
}

#[test]
fn block_and_unblock_by_sha256() {
    let _host = shared_host();
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
    let _host = shared_host();
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
    let _host = shared_host();
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    for t in [BlockTarget::Path("/bin/sh".into()), BlockTarget::Sha256(sha256_of(Path::new("/bin/sh"))), BlockTarget::Path(std::env::current_exe().unwrap())] {
        let rec = r.request(operator(), ResponseAction::BlockExec(t.clone()), "");
        assert_eq!(rec.decision, Decision::Refused, "{t}: {rec:?}");
        assert!(rec.refusal.unwrap().contains("protected"));
    }
    assert!(!r.block_stats().running, "nothing was started");
}

#[test]
fn blocks_persist_across_restarts() {
    let _host = shared_host();
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
    let _host = shared_host();
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
    let _host = shared_host();
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
    let _host = shared_host();
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

/// Sends SIGCONT, then kills and reaps the responder process on drop, so a
/// failing test never leaves the host with a stopped permission reader.
struct StoppedGuard(std::process::Child);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The responder process of `stopped_responder_does_not_freeze_exec`: only
/// does something when that test starts this binary with
/// `EDR_TEST_RESPONDER_DIR` set (it blocks `EDR_TEST_BLOCK`, prints
/// `EDR-READY`, and prints its block stats for each `stats` line on stdin
/// until stdin closes). In a normal run it returns at once.
#[test]
fn responder_process() {
    let (Some(store), Some(target)) = (std::env::var_os("EDR_TEST_RESPONDER_DIR"), std::env::var_os("EDR_TEST_BLOCK")) else { return };
    let deny = std::env::var_os("EDR_TEST_FAIL_DENY").is_some();
    let (r, _) = responder_with(Path::new(&store), |c| {
        c.block_deadline_ms = 250;
        if deny {
            c.block_fail_mode = edr_respond::BlockFailMode::Deny;
        }
    });
    if !block(&r, BlockTarget::Path(PathBuf::from(target))) {
        println!("EDR-SKIP");
        return;
    }
    println!("EDR-READY");
    for line in std::io::stdin().lines() {
        if line.map(|l| l.trim() == "stats").unwrap_or(false) {
            println!("EDR-STATS {}", serde_json::to_string(&r.block_stats()).unwrap());
        }
    }
}

/// Starts this test binary as the responder process; None when skipped.
fn start_responder_process(store: &Path, target: &Path, deny: bool) -> Option<(StoppedGuard, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>)> {
    use std::io::BufRead;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "responder_process", "--nocapture", "--test-threads=1"])
        .env("EDR_TEST_RESPONDER_DIR", store)
        .env("EDR_TEST_BLOCK", target)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if deny {
        cmd.env("EDR_TEST_FAIL_DENY", "1");
    }
    let mut child = StoppedGuard(cmd.spawn().unwrap());
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            // The harness prints `test responder_process ... ` before it.
            Some(Ok(l)) if l.ends_with("EDR-READY") => return Some((child, lines)),
            Some(Ok(l)) if l.ends_with("EDR-SKIP") => {
                edr_testkit::skip("fanotify unavailable");
                return None;
            }
            Some(Ok(_)) => continue,
            _ => panic!("the responder process ended before it was ready"),
        }
    }
}

/// Runs `p` on a thread; its errno (None: ran) and how long it took, or
/// None when it did not finish within `limit`.
fn exec_within(p: &Path, limit: std::time::Duration) -> Option<(Option<i32>, std::time::Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let r = match run(&mut Command::new(&p)) {
            Ok(s) if s.success() => None,
            Ok(_) => Some(-2),
            Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
        };
        let _ = tx.send((r, t.elapsed()));
    });
    rx.recv_timeout(limit).ok()
}

fn wait_stopped(pid: u32) {
    assert!(wait_for(std::time::Duration::from_secs(5), || state_of(pid) == Some('T')), "the responder process did not stop");
}

/// Issue 14 item 9: with a block active, a SIGSTOPped responder (every
/// thread stopped) used to hold every exec on the host until SIGCONT. Now
/// its watchdog process answers each exec with the fail mode after the
/// deadline, counts it, and the block holds again once the responder runs.
#[test]
fn stopped_responder_does_not_freeze_exec() {
    let _host = exclusive_host();
    use std::io::Write as _;
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let blocked = unique_true(dir.path(), "blocked-while-stopped");
    let free = unique_true(dir.path(), "free-while-stopped");
    let Some((mut child, mut lines)) = start_responder_process(store.path(), &blocked, false) else { return };
    let pid = child.0.id();
    let limit = std::time::Duration::from_secs(10);
    assert!(matches!(exec_within(&blocked, limit), Some((Some(libc::EPERM | libc::EACCES), _))), "blocked while the responder runs");
    assert!(matches!(exec_within(&free, limit), Some((None, _))), "others run");

    // SAFETY: plain kill(2) of our child; the guard resumes it on any failure.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_stopped(pid);
    let r = exec_within(&free, limit);
    let (errno, took) = r.expect("an exec hangs while the responder is stopped (no deadline on permission events)");
    assert_eq!(errno, None, "answered with the fail mode (allow)");
    eprintln!("exec while the responder is stopped took {took:?} (deadline 250 ms per permission event: the binary and its loader)");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };

    assert!(matches!(exec_within(&blocked, limit), Some((Some(libc::EPERM | libc::EACCES), _))), "blocked again once the responder runs");
    let stdin = child.0.stdin.as_mut().unwrap();
    writeln!(stdin, "stats").unwrap();
    let stats: serde_json::Value = loop {
        let l = lines.next().expect("stats line").unwrap();
        if let Some(i) = l.find("EDR-STATS ") {
            break serde_json::from_str(&l[i + 10..]).unwrap();
        }
    };
    assert!(stats["deadline_answers"].as_u64().unwrap() >= 1, "deadline answers are counted: {stats}");
    assert_eq!(stats["deadline_ms"], 250);
    assert_eq!(stats["fail_mode"], "allow");
    assert!(stats["watchdog_pid"].as_i64().is_some(), "{stats}");
    assert!(stats["denied"].as_u64().unwrap() >= 2, "{stats}");
}

/// With `block_fail_mode = "deny"`, an exec the stopped responder cannot
/// answer is refused after the deadline instead of allowed, and does not hang.
#[test]
fn stopped_responder_with_fail_mode_deny_refuses_exec() {
    let _host = exclusive_host();
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let blocked = unique_true(dir.path(), "blocked-deny-mode");
    let free = unique_true(dir.path(), "free-deny-mode");
    let Some((child, _lines)) = start_responder_process(store.path(), &blocked, true) else { return };
    let pid = child.0.id();
    let limit = std::time::Duration::from_secs(10);
    assert!(matches!(exec_within(&free, limit), Some((None, _))), "others run while the responder runs");
    // SAFETY: plain kill(2) of our child; the guard resumes it.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_stopped(pid);
    let r = exec_within(&free, limit);
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let (errno, _) = r.expect("an exec hangs while the responder is stopped");
    assert!(matches!(errno, Some(libc::EPERM | libc::EACCES)), "fail mode deny refuses: {errno:?}");
    assert!(matches!(exec_within(&free, limit), Some((None, _))), "runs again once the responder runs");
    drop(child);
}

/// A stopped watchdog process would freeze exec like a stopped agent: the
/// agent resumes it and counts it.
#[test]
fn stopped_watchdog_process_is_resumed() {
    let _host = exclusive_host();
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |_| {});
    let bin = unique_true(dir.path(), "dog-stop");
    if !block(&r, BlockTarget::Path(bin.clone())) {
        return;
    }
    let dog = r.block_stats().watchdog_pid.expect("watchdog pid") as u32;
    // SAFETY: kill(2) of the responder's own child process.
    unsafe { libc::kill(dog as i32, libc::SIGSTOP) };
    assert!(wait_for(std::time::Duration::from_secs(5), || r.block_stats().watchdog_resumed >= 1), "the watchdog process stays stopped");
    assert!(exec_errno(&bin).is_some(), "still blocked");
    assert_eq!(exec_errno(Path::new("/usr/bin/true")), None);
}

/// Issue 14 item 9, cost: the exec latency the permission path adds, as
/// the median and p99 of 300 execs of a small static-free binary without
/// any block, then with a path block and a sha256 block of other files
/// (every exec is read by the watchdog process, passed to the agent with
/// its fd, path-checked, hash-cached, answered through the watchdog).
#[test]
fn exec_latency() {
    let _host = exclusive_host();
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let bin = unique_true(dir.path(), "latency");
    let other = unique_true(dir.path(), "latency-other");
    let measure = |label: &str| {
        let mut t: Vec<u128> = (0..300)
            .map(|_| {
                let s = std::time::Instant::now();
                assert_eq!(exec_errno(&bin), None);
                s.elapsed().as_micros()
            })
            .collect();
        t.sort_unstable();
        eprintln!("exec latency {label}: median {} us, p99 {} us", t[t.len() / 2], t[t.len() * 99 / 100]);
        t[t.len() / 2]
    };
    let base = measure("without blocks");
    let (r, _) = responder_with(store.path(), |_| {});
    if !block(&r, BlockTarget::Path(other.clone())) || !block(&r, BlockTarget::Sha256(sha256_of(&other))) {
        return;
    }
    let with = measure("with a path and a sha256 block");
    eprintln!("exec latency added: {} us (median)", with as i128 - base as i128);
    // Deadline answers can occur here only when the host starves the agent's
    // threads for the whole deadline (other tests stopping processes, heavy load).
    let stats = r.block_stats();
    eprintln!("deadline answers during the run: {}", stats.deadline_answers);
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert!(stats.events >= 600, "every exec (binary and loader) went through the watchdog: {stats:?}");
}
