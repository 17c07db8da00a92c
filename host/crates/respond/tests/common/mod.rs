//! Helpers shared by the integration tests.
#![allow(dead_code)]

use edr_respond::{AuditRecord, Requester, Responder, ResponseConfig};
use std::io;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use edr_testkit::is_root;

/// Returns from the test, recorded as skipped, unless running as root.
#[allow(unused_imports)]
pub use edr_testkit::require_root;

/// The audit records a responder emitted.
pub type Records = Arc<Mutex<Vec<AuditRecord>>>;

/// A responder with its stores under `dir` and a sink collecting records.
pub fn responder_with(dir: &Path, f: impl FnOnce(&mut ResponseConfig)) -> (Responder, Records) {
    let mut cfg = ResponseConfig::new(dir.join("quarantine"), dir.join("evidence"));
    f(&mut cfg);
    let mut r = Responder::new(cfg).expect("responder");
    let recs: Records = Arc::new(Mutex::new(Vec::new()));
    let sink = recs.clone();
    r.audit_sink(move |rec| sink.lock().unwrap().push(rec.clone()));
    (r, recs)
}

/// The operator as uid 0.
pub fn operator() -> Requester {
    Requester::Operator { uid: 0 }
}

/// A child killed and reaped on drop, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2); the child may already be gone.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGCONT);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns, retrying on ETXTBSY (another test thread forked while a freshly
/// written executable was still open for writing).
pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
    for _ in 0..50 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
            r => return r.map(ChildGuard),
        }
    }
    cmd.spawn().map(ChildGuard)
}

/// Runs a command to completion, retrying on ETXTBSY.
pub fn run(cmd: &mut Command) -> io::Result<std::process::ExitStatus> {
    for _ in 0..50 {
        match cmd.status() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
            r => return r,
        }
    }
    cmd.status()
}

/// The state letter of `/proc/<pid>/stat`, or None when the pid is gone.
pub fn state_of(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// The ppid of a process.
pub fn ppid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Dead: gone, or a zombie waiting to be reaped (pid 1 here may be slow to reap).
pub fn is_dead(pid: u32) -> bool {
    matches!(state_of(pid), None | Some('Z') | Some('X'))
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Children of `pid` (scanning /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            if ppid_of(p) == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// `sleep 60` as a guarded child.
pub fn sleeper() -> ChildGuard {
    spawn(Command::new("sleep").arg("60")).expect("spawn sleep")
}

/// sha256 of a file, lowercase hex.
pub fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Alive and not stopped (sleeping, running or in disk wait).
pub fn is_running(pid: u32) -> bool {
    matches!(state_of(pid), Some('S') | Some('R') | Some('D'))
}
