//! Host isolation with nftables, exercised ONLY inside two network namespaces
//! the test creates ("agent" and "management", joined by a veth pair). The
//! responder is pointed at the agent namespace with `isolation_netns`, so
//! `nft` runs there; the host's own namespace is checked to be untouched.
//! The namespaces are deleted on drop, even when an assertion fails.

mod common;

use common::*;
use edr_respond::{Decision, Endpoint, Mode, Outcome, ResponseAction};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const AGENT_IP: &str = "10.213.7.1";
const MGMT_IP: &str = "10.213.7.2";
const MGMT_PORT: u16 = 7000;
const OTHER_PORT: u16 = 7001;
const AGENT_PORT: u16 = 9000;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn add(name: String) -> Result<Netns, String> {
        ip(&["netns", "add", &name])?;
        Ok(Netns(name))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.0]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace at `ns`
/// (sockets created there belong to that namespace for their whole life).
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(ns).expect("open netns");
            // SAFETY: setns on this thread only, with a valid fd.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

fn connects(from: &Path, to: &str, port: u16) -> bool {
    let addr: SocketAddr = format!("{to}:{port}").parse().unwrap();
    in_netns(from, || TcpStream::connect_timeout(&addr, Duration::from_millis(800)).is_ok())
}

/// Whether `nft` sees the isolation table in the namespace this process runs in (the host's).
fn host_has_isolation_table() -> bool {
    Command::new("nft").args(["list", "table", "inet", "edr_isolation"]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn nft_available() -> bool {
    Command::new("nft").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn isolate_and_release_inside_a_namespace() {
    require_root!();
    if !nft_available() {
        edr_testkit::skip("nft not installed (Debian package nftables)");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        edr_testkit::skip("ip (iproute2) not installed");
        return;
    }
    assert!(!host_has_isolation_table(), "the host must not be isolated before the test");
    let suffix = format!("{}-{}", std::process::id(), edr_respond_rand());
    let agent = match Netns::add(format!("edrt-a-{suffix}")) {
        Ok(n) => n,
        Err(e) => {
            edr_testkit::skip(format!("cannot create a network namespace: {e}"));
            return;
        }
    };
    let mgmt = Netns::add(format!("edrt-m-{suffix}")).expect("second namespace");
    let setup = [
        vec!["-n", &agent.0, "link", "add", "va", "type", "veth", "peer", "name", "vm", "netns", &mgmt.0],
        vec!["-n", &agent.0, "addr", "add", "10.213.7.1/24", "dev", "va"],
        vec!["-n", &mgmt.0, "addr", "add", "10.213.7.2/24", "dev", "vm"],
        vec!["-n", &agent.0, "link", "set", "va", "up"],
        vec!["-n", &mgmt.0, "link", "set", "vm", "up"],
        vec!["-n", &agent.0, "link", "set", "lo", "up"],
        vec!["-n", &mgmt.0, "link", "set", "lo", "up"],
    ];
    for args in &setup {
        ip(args).expect("namespace setup");
    }
    let (ap, mp) = (agent.path(), mgmt.path());

    // Listeners: management and another service in the peer namespace, one in the agent namespace.
    let (mgmt_l, other_l) = in_netns(&mp, || (TcpListener::bind((MGMT_IP, MGMT_PORT)).unwrap(), TcpListener::bind((MGMT_IP, OTHER_PORT)).unwrap()));
    let _agent_l = in_netns(&ap, || TcpListener::bind((AGENT_IP, AGENT_PORT)).unwrap());
    let _keep = (&other_l,);
    assert!(connects(&ap, MGMT_IP, MGMT_PORT));
    assert!(connects(&ap, MGMT_IP, OTHER_PORT));
    assert!(connects(&mp, AGENT_IP, AGENT_PORT));
    // Drain what the checks connected, then open the long-lived management connection.
    mgmt_l.set_nonblocking(true).unwrap();
    while mgmt_l.accept().is_ok() {}
    mgmt_l.set_nonblocking(false).unwrap();
    let addr: SocketAddr = format!("{MGMT_IP}:{MGMT_PORT}").parse().unwrap();
    let mut est = in_netns(&ap, || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap());
    let (mut est_peer, _) = mgmt_l.accept().unwrap();
    for s in [&est, &est_peer] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }

    let store = tempfile::tempdir().unwrap();
    let (r, recs) = responder_with(store.path(), |c| {
        c.isolation_netns = Some(ap.clone());
        c.management = vec![Endpoint::host_port(MGMT_IP.parse().unwrap(), MGMT_PORT)];
    });
    assert_eq!(r.config().isolation_netns.as_deref(), Some(ap.as_path()), "never isolate the host namespace in a test");
    assert!(!r.isolation_state().isolated);

    let rec = r.request(operator(), ResponseAction::Isolate, "contain");
    assert_eq!(rec.decision, Decision::Enforced, "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert!(!host_has_isolation_table(), "the host namespace is untouched");
    let st = r.isolation_state();
    assert!(st.isolated && st.intact, "{st:?}");
    assert_eq!(st.management, vec![Endpoint::host_port(MGMT_IP.parse().unwrap(), MGMT_PORT)]);
    let since = st.since.expect("since");

    assert!(connects(&ap, MGMT_IP, MGMT_PORT), "management stays reachable");
    assert!(!connects(&ap, MGMT_IP, OTHER_PORT), "anything else is cut off");
    assert!(!connects(&mp, AGENT_IP, AGENT_PORT), "inbound from elsewhere is cut off");
    est.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    est_peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping", "the established management connection survives");
    est_peer.write_all(b"pong").unwrap();
    est.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // Idempotent: isolating again keeps the table and its start time.
    let rec = r.request(operator(), ResponseAction::Isolate, "again");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["already_isolated"], "true");
    assert_eq!(r.isolation_state().since, Some(since));

    let rec = r.request(operator(), ResponseAction::Release, "done");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["was_isolated"], "true");
    let st = r.isolation_state();
    assert!(!st.isolated && st.error.is_none(), "{st:?}");
    let tables = Command::new("ip").args(["netns", "exec", &agent.0, "nft", "list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("edr_isolation"), "the table is gone");
    assert!(connects(&ap, MGMT_IP, MGMT_PORT));
    assert!(connects(&ap, MGMT_IP, OTHER_PORT), "reachable again after release");
    assert!(connects(&mp, AGENT_IP, AGENT_PORT));
    // Releasing twice is harmless.
    let rec = r.request(operator(), ResponseAction::Release, "again");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail["was_isolated"], "false");
    assert_eq!(recs.lock().unwrap().len(), 4);

    // Simulate mode installs nothing.
    let store2 = tempfile::tempdir().unwrap();
    let (sim, _) = responder_with(store2.path(), |c| {
        c.isolation_netns = Some(ap.clone());
        c.management = vec![Endpoint::host_port(MGMT_IP.parse().unwrap(), MGMT_PORT)];
        c.operator_mode = Mode::Simulate;
    });
    let rec = sim.request(operator(), ResponseAction::Isolate, "dry run");
    assert_eq!(rec.decision, Decision::Simulated, "{rec:?}");
    assert!(rec.detail["script"].contains("policy drop"));
    assert!(!sim.isolation_state().isolated);
    assert!(connects(&ap, MGMT_IP, OTHER_PORT));
    assert!(!host_has_isolation_table());
}

#[test]
fn isolation_without_management_endpoints_is_refused() {
    let store = tempfile::tempdir().unwrap();
    // No isolation_netns on purpose: the request must be refused before nft runs.
    let (r, _) = responder_with(store.path(), |_| {});
    let rec = r.request(operator(), ResponseAction::Isolate, "");
    assert_eq!(rec.decision, Decision::Refused, "{rec:?}");
    assert!(rec.refusal.unwrap().contains("no management endpoints"));
}

/// A few random hex characters for namespace names.
/// A network namespace of this test's own (`edrt-TAG-...`, removed on drop),
/// or `None` with the skip reason recorded when nft, ip or namespaces are missing.
fn throwaway_netns(tag: &str) -> Option<Netns> {
    if !nft_available() || Command::new("ip").arg("-V").output().is_err() {
        edr_testkit::skip("nft or ip not installed");
        return None;
    }
    Netns::add(format!("edrt-{tag}-{}-{}", std::process::id(), edr_respond_rand()))
        .map_err(|e| edr_testkit::skip(format!("cannot create a network namespace: {e}")))
        .ok()
}

fn edr_respond_rand() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}", t ^ (std::process::id() << 8))
}

/// Runs `nft ARGS` inside the network namespace `ns`.
fn nft_in(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", &ns.0, "nft"]).args(args).output().unwrap();
    assert!(out.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 14 item 10: `nft delete table inet edr_isolation` (or a rule slipped
/// into the table) while isolated used to go unnoticed. The guard puts the
/// table back, counts it, reports it in the state and calls the tamper hook;
/// after release it re-applies nothing. Confined to a namespace the test creates.
#[test]
fn isolation_removed_or_altered_is_reapplied_until_release() {
    require_root!();
    let Some(ns) = throwaway_netns("g") else { return };
    let store = tempfile::tempdir().unwrap();
    let (r, _) = responder_with(store.path(), |c| {
        c.isolation_netns = Some(ns.path());
        c.management = vec![Endpoint::host_port(MGMT_IP.parse().unwrap(), MGMT_PORT)];
    });
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<edr_respond::TamperEvent>::new()));
    let sink = events.clone();
    r.on_isolation_tamper(move |e| sink.lock().unwrap().push(e.clone()));
    let rec = r.request(operator(), ResponseAction::Isolate, "contain");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    let st = r.isolation_state();
    assert!(st.isolated && st.intact && st.guarded && st.tamper_count == 0, "{st:?}");
    let since = st.since;

    nft_in(&ns, &["delete", "table", "inet", "edr_isolation"]);
    let back = common::wait_for(Duration::from_secs(10), || {
        let st = r.isolation_state();
        st.isolated && st.intact && st.tamper_count >= 1
    });
    assert!(back, "the deleted isolation table is not re-applied: {:?}", r.isolation_state());
    let st = r.isolation_state();
    assert_eq!(st.since, since, "the re-applied table keeps the start time");
    assert_eq!(st.management, vec![Endpoint::host_port(MGMT_IP.parse().unwrap(), MGMT_PORT)]);
    assert!(st.last_tamper.is_some() && st.last_tamper_what.as_deref().unwrap_or("").contains("deleted"), "{st:?}");
    {
        let ev = events.lock().unwrap();
        assert!(!ev.is_empty() && ev[0].reapplied && ev[0].what.contains("deleted") && ev[0].error.is_none(), "{ev:?}");
    }

    // A rule slipped in that accepts everything is an alteration too.
    nft_in(&ns, &["insert", "rule", "inet", "edr_isolation", "input", "accept"]);
    let fixed = common::wait_for(Duration::from_secs(10), || r.isolation_state().tamper_count >= 2);
    assert!(fixed, "an altered isolation table is not re-applied: {:?}", r.isolation_state());
    let listing = nft_in(&ns, &["list", "chain", "inet", "edr_isolation", "input"]);
    assert!(!listing.lines().any(|l| l.trim() == "accept"), "the inserted rule is gone:\n{listing}");
    assert!(r.isolation_state().last_tamper_what.unwrap_or_default().contains("altered"));

    let rec = r.request(operator(), ResponseAction::Release, "done");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    let st = r.isolation_state();
    assert!(!st.isolated && !st.guarded, "{st:?}");
    let count = st.tamper_count;
    std::thread::sleep(edr_respond::isolate::GUARD_INTERVAL * 2 + Duration::from_millis(500));
    let tables = nft_in(&ns, &["list", "tables"]);
    assert!(!tables.contains("edr_isolation"), "nothing is re-applied after release: {tables}");
    assert_eq!(r.isolation_state().tamper_count, count, "release is not tampering");
}

#[test]
fn isolation_survives_a_reboot_until_released() {
    require_root!();
    let Some(ns) = throwaway_netns("r") else { return };
    let store = tempfile::tempdir().unwrap();
    let marker = store.path().join("isolation.json");
    let configure = |c: &mut edr_respond::ResponseConfig| {
        c.isolation_netns = Some(ns.path());
        c.management = vec![Endpoint::host_port(MGMT_IP.parse().unwrap(), MGMT_PORT)];
        c.isolation_marker = Some(marker.clone());
    };
    let (r, _) = responder_with(store.path(), configure);
    assert!(r.restore_isolation().is_none(), "never isolated: nothing to restore");
    let rec = r.request(operator(), ResponseAction::Isolate, "case 11: ransomware");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert_eq!(rec.detail.get("survives_reboot").map(String::as_str), Some("yes"), "{rec:?}");
    assert!(marker.exists(), "the isolation note is written");
    drop(r);
    // The reboot: the kernel's tables are gone, the agent's data dir is not.
    nft_in(&ns, &["delete", "table", "inet", "edr_isolation"]);
    std::thread::sleep(edr_respond::isolate::GUARD_INTERVAL * 2);
    assert!(!nft_in(&ns, &["list", "tables"]).contains("edr_isolation"), "no guard is left to re-apply it");

    let (r, recs) = responder_with(store.path(), configure);
    let rec = r.restore_isolation().expect("the isolation is restored at start");
    assert_eq!((rec.decision, &rec.outcome), (Decision::Enforced, &Outcome::Ok), "{rec:?}");
    assert!(rec.reason.contains("re-applied at agent start") && rec.reason.contains("case 11: ransomware"), "{}", rec.reason);
    assert!(r.isolation_state().isolated && r.isolation_state().guarded, "{:?}", r.isolation_state());
    assert_eq!(recs.lock().unwrap().len(), 1, "audited like any isolation");
    assert!(r.restore_isolation().is_none(), "already isolated: nothing more to do");

    let rec = r.request(operator(), ResponseAction::Release, "case 11 closed");
    assert_eq!(rec.outcome, Outcome::Ok, "{rec:?}");
    assert!(!marker.exists(), "release removes the note");
    drop(r);
    let (r, _) = responder_with(store.path(), configure);
    assert!(r.restore_isolation().is_none() && !r.isolation_state().isolated, "released stays released after a restart");
}
