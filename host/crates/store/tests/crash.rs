//! kill -9 during ingest: the store is never corrupt, and loses at most
//! about one flush interval.
//!
//! The test re-runs its own binary as a child (the ignored test
//! `crash_child`, with `EDR_STORE_CRASH_CHILD_DIR` set). The child ingests
//! continuously with the default 1 s flush interval and prints `ack <id>`
//! after each batch the writer accepted. The parent SIGKILLs it mid-stream,
//! reopens the store, and checks: integrity_check is ok, and every event
//! acknowledged more than one flush interval (plus a little slack for the
//! commit itself) before the kill is there. It does this twice, the second
//! child resuming from `max_event_id() + 1` on the crashed store.

mod common;

use common::mixed;
use edr_store::{Backpressure, Store, StoreConfig};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "EDR_STORE_CRASH_CHILD_DIR";
const FLUSH: Duration = Duration::from_secs(1);
/// Time a commit of one flush interval's events may take on a slow debug build.
const SLACK: Duration = Duration::from_millis(250);

/// Ingests forever (until killed), ~12,000 events/s in batches of 256,
/// printing `ack <highest id>` for each batch the writer accepted.
fn ingest_until_killed(dir: &Path) -> ! {
    let store = Store::open(StoreConfig::new(dir.join("events.db"))).expect("child: open store");
    let w = store.writer();
    let mut next = store.max_event_id().expect("child: max_event_id") + 1;
    loop {
        let batch = mixed(next, 256, edr_event::time::now());
        match w.append_events(Arc::new(batch)) {
            Ok(()) => {
                next += 256;
                println!("ack {}", next - 1);
            }
            Err(Backpressure::Full { .. }) => {}
            Err(e) => panic!("child: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "child half of kill9_mid_ingest_is_bounded_and_never_corrupts; alone it is a short ingest self-check"]
fn crash_child() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        ingest_until_killed(Path::new(&dir));
    }
    // Run by hand (`--ignored`): check the child's ingest path on its own.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("events.db"))).unwrap();
    store.writer().append_events(Arc::new(mixed(1, 256, edr_event::time::now()))).unwrap();
    store.writer().flush().unwrap();
    assert_eq!(store.max_event_id().unwrap(), 256);
}

/// Runs one child for `run`, kills it, returns the acks with their arrival times and the kill time.
fn run_and_kill(dir: &Path, run: Duration) -> (Vec<(u64, Instant)>, Instant) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child test binary");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ack ").and_then(|s| s.trim().parse::<u64>().ok()) {
                let _ = tx.send((id, Instant::now()));
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("the child acknowledged nothing within 60 s");
    std::thread::sleep(run);
    let killed_at = Instant::now();
    child.kill().expect("SIGKILL the child"); // std sends SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished: {status:?}");
    reader.join().unwrap();
    let mut acks = vec![first];
    acks.extend(rx.try_iter().filter(|(_, t)| *t <= killed_at));
    (acks, killed_at)
}

fn check_after_crash(dir: &Path, acks: &[(u64, Instant)], killed_at: Instant, round: u32) -> u64 {
    let store = Store::open(StoreConfig::new(dir.join("events.db"))).expect("reopen after kill -9");
    assert!(store.integrity_check().unwrap().is_empty(), "round {round}: integrity_check found problems");
    let stored = store.max_event_id().unwrap();
    let stats = store.stats();
    // Ids are contiguous from 1: nothing in the middle went missing, and a
    // resumed child continued right after the last committed id.
    assert_eq!(stats.events, stored, "round {round}: holes in the stored ids");
    let bound = killed_at - FLUSH - SLACK;
    let must_have = acks.iter().filter(|(_, t)| *t <= bound).map(|(id, _)| *id).max().unwrap_or(0);
    let acked = acks.iter().map(|(id, _)| *id).max().unwrap_or(0);
    assert!(must_have > 0, "round {round}: the child ran too briefly to test anything");
    assert!(
        stored >= must_have,
        "round {round}: lost events acknowledged more than {:?} before the kill: stored up to {stored}, acknowledged {must_have} by then",
        FLUSH + SLACK
    );
    // How far back the loss reached, for the report.
    let last_kept = acks.iter().filter(|(id, _)| *id <= stored).map(|(_, t)| *t).max();
    let window = last_kept.map(|t| killed_at - t);
    eprintln!(
        "round {round}: acknowledged {acked}, stored {stored}, lost {} events; the newest stored ack came {:?} before the kill",
        acked.saturating_sub(stored),
        window
    );
    stored
}

#[test]
fn kill9_mid_ingest_is_bounded_and_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let (acks, killed_at) = run_and_kill(dir.path(), Duration::from_millis(3_300));
    let first_round = check_after_crash(dir.path(), &acks, killed_at, 1);
    // Crash the recovered store again, mid-stream, with the next child
    // continuing the ids.
    let (acks, killed_at) = run_and_kill(dir.path(), Duration::from_millis(2_700));
    assert!(acks[0].0 > first_round, "the second child continued after the recovered ids");
    let second_round = check_after_crash(dir.path(), &acks, killed_at, 2);
    assert!(second_round > first_round);
}
