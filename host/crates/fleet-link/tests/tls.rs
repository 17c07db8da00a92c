//! NATS over TLS with a CA made by the test: the management server and an
//! enrolled host connect through it and the host shows online; a client
//! that does not trust the fleet's CA, or trusts another CA, cannot
//! connect; an enrollment answer whose CA is not the one the token pins is
//! refused by the host.

use edr_fleet_proto::enroll::EnrollToken;
mod common;

use common::TestFleet;
use edr_fleet_server::fleet::NatsTls;
use edr_fleet_server::InitOptions;
use edr_store::{Store, StoreConfig};
use edr_testkit::wait_until;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use std::sync::Arc;
use std::time::Duration;

/// A CA, and a server certificate for 127.0.0.1 / localhost signed by it.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn make_pki() -> Pki {
    let ca = make_ca("edr test fleet CA");
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// A fleet whose NATS runs TLS with `pki`.
fn tls_fleet(pki: &Pki) -> TestFleet {
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let nats_tls = NatsTls { cert_file: pem("cert.pem", &pki.cert_pem), key_file: pem("key.pem", &pki.key_pem), ca_file: pem("ca.pem", &pki.ca_pem) };
    // init copies the files: the temp dir may go.
    TestFleet::start(InitOptions { name: "tls".into(), heartbeat_secs: 1, nats_tls: Some(nats_tls), ..Default::default() }, |_| {})
}

#[test]
fn hosts_enroll_and_report_over_tls_and_strangers_to_the_ca_cannot_connect() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let pki = make_pki();
    let fleet = tls_fleet(&pki);
    let conf = std::fs::read_to_string(fleet.dir.path().join("fleet/nats/nats.conf")).unwrap();
    assert!(conf.contains("tls {") && conf.contains("nats/tls/server.pem"), "{conf}");

    let token = fleet.token();
    let pinned = EnrollToken::decode(&token).unwrap().nats_ca_sha256.expect("a TLS fleet's token pins its CA");
    assert_eq!(pinned, edr_fleet_server::api_auth::sha256_hex(&pki.ca_pem));
    let data = tempfile::tempdir().unwrap();
    let id = edr_fleet_link::enroll::enroll(data.path(), &token, "tls-host").unwrap();
    assert_eq!(id.nats_ca_pem.as_deref(), Some(pki.ca_pem.as_str()));
    assert!(id.nats_urls.iter().all(|u| u.starts_with("tls://")), "{:?}", id.nats_urls);

    let store = Arc::new(Store::open(StoreConfig::new(data.path().join("events.db"))).unwrap());
    let link = common::link(data.path(), store, "0.1.0-tls");
    assert!(wait_until(Duration::from_secs(15), || fleet.hosts()[0]["state"] == "online"), "{:?}", fleet.hosts());
    assert_eq!(fleet.hosts()[0]["heartbeat"]["agent_version"], "0.1.0-tls");
    link.stop();

    // The CA is what lets a client in: the system roots do not know it, and another CA is not it.
    let e = fleet.connect_tls_with(None).expect_err("a client without the fleet's CA must not connect");
    assert!(e.to_lowercase().contains("tls") || e.to_lowercase().contains("certificate") || e.contains("timed out"), "{e}");
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), make_ca("someone else's CA").pem()).unwrap();
    assert!(fleet.connect_tls_with(Some(other.path())).is_err(), "a client trusting another CA must not connect");
    let ours = fleet.dir.path().join("fleet/nats/tls/ca.pem");
    fleet.connect_tls_with(Some(&ours)).expect("the fleet's own CA works");
}

#[test]
fn an_enrollment_answer_with_a_ca_the_token_does_not_pin_is_refused() {
    if !edr_testkit::have_program("nats-server", "nats-server") {
        return;
    }
    let fleet = tls_fleet(&make_pki());
    let mut token = EnrollToken::decode(&fleet.token()).unwrap();
    token.nats_ca_sha256 = Some("00".repeat(32));
    let data = tempfile::tempdir().unwrap();
    let e = edr_fleet_link::enroll::enroll(data.path(), &token.encode(), "h").unwrap_err().to_string();
    assert!(e.contains("the token pins"), "{e}");
    assert!(!data.path().join("fleet/identity.json").exists(), "no identity may be kept from a refused answer");

    let mut unpinned = EnrollToken::decode(&fleet.token()).unwrap();
    unpinned.nats_ca_sha256 = None;
    let e = edr_fleet_link::enroll::enroll(data.path(), &unpinned.encode(), "h").unwrap_err().to_string();
    assert!(e.contains("does not pin"), "{e}");
}

#[test]
fn init_refuses_tls_files_that_are_not_what_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let tls = NatsTls { cert_file: dir.path().join("cert.pem"), key_file: dir.path().join("key.pem"), ca_file: dir.path().join("ca.pem") };
    let opts = InitOptions { nats_tls: Some(tls.clone()), ..Default::default() };
    let e = edr_fleet_server::fleet::init(&dir.path().join("fleet"), &opts).unwrap_err().to_string();
    assert!(e.contains("key.pem") && e.contains("PRIVATE KEY"), "{e}");
    std::fs::write(dir.path().join("key.pem"), &pki.key_pem).unwrap();
    let missing = NatsTls { ca_file: dir.path().join("nope.pem"), ..tls };
    let e = edr_fleet_server::fleet::init(&dir.path().join("fleet2"), &InitOptions { nats_tls: Some(missing), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("nope.pem"), "{e}");
}
