//! Interoperability with the minisign command-line tool (Debian package
//! `minisign`). Each test is skipped, with a note on stderr, when the tool is
//! not installed; CI installs it.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use edr_pack::{keygen, sign, signature_path, verify, PublicKey, SecretKey, TrustStore};

fn minisign(args: &[&dyn AsRef<std::ffi::OsStr>], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("minisign")
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run minisign");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "minisign failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `minisign -G -W`: an unencrypted key pair.
fn cli_keypair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (public, secret) = (dir.join("cli.pub"), dir.join("cli.key"));
    ok(&minisign(&[&"-G", &"-W", &"-p", &public, &"-s", &secret], ""));
    (public, secret)
}

macro_rules! require_minisign {
    () => {
        if !minisign_cli() {
            edr_testkit::skip("the minisign binary is not installed (apt-get install -y minisign)");
            return;
        }
    };
}

#[test]
fn pack_signed_by_minisign_cli_verifies() {
    require_minisign!();
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    fs::remove_file(signature_path(&built.path)).unwrap();
    let (public, secret) = cli_keypair(f.tmp.path());
    ok(&minisign(&[&"-S", &"-s", &secret, &"-m", &built.path], ""));

    let trust = TrustStore::from_pinned([("cli-vendor", fs::read_to_string(&public).unwrap())]).unwrap();
    let pack = verify(&built.path, &signature_path(&built.path), &trust, &policy()).unwrap();
    assert_eq!(pack.signer.name, "cli-vendor");
    assert_eq!(pack.signer.key_id, PublicKey::from_file(&public).unwrap().key_id());
    assert!(pack.trusted_comment.contains("file:com.example.test-pack-1.0.0.edrpack"), "{}", pack.trusted_comment);
    assert_eq!(pack.plugins[1].wasm, WASM_BETA);

    // The CLI's signature over a tampered archive is refused like ours.
    let mut bytes = fs::read(&built.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    fs::write(&built.path, bytes).unwrap();
    let r = verify(&built.path, &signature_path(&built.path), &trust, &policy()).unwrap_err();
    assert_eq!(r.reason_code(), "bad_signature");
}

#[test]
fn pack_signed_by_us_verifies_with_minisign_cli() {
    require_minisign!();
    let f = Fixture::new();
    let built = f.built("2.3.4", "");
    let out = ok(&minisign(&[&"-V", &"-m", &built.path, &"-p", &f.keys.public], ""));
    assert!(out.contains("pack:com.example.test-pack\tversion:2.3.4"), "{out}");

    // The CLI rejects a tampered archive signed by us, too.
    let mut bytes = fs::read(&built.path).unwrap();
    bytes[10] ^= 1;
    fs::write(&built.path, bytes).unwrap();
    let out = minisign(&[&"-V", &"-m", &built.path, &"-p", &f.keys.public], "");
    assert!(!out.status.success());
}

#[test]
fn minisign_cli_unencrypted_key_loads_and_signs() {
    require_minisign!();
    let f = Fixture::new();
    let (public, secret) = cli_keypair(f.tmp.path());
    let sk = SecretKey::from_file(&secret, None).unwrap();
    assert_eq!(sk.public_key(), &PublicKey::from_file(&public).unwrap());

    let built = f.built("1.0.0", "");
    sign(&built.path, &sk, None).unwrap();
    ok(&minisign(&[&"-V", &"-m", &built.path, &"-p", &public], ""));
    let trust = TrustStore::from_pinned([("cli", fs::read_to_string(&public).unwrap())]).unwrap();
    assert!(verify(&built.path, &signature_path(&built.path), &trust, &policy()).is_ok());
}

// minisign -G encrypts with scrypt at 1 GiB ("sensitive" parameters); the
// pure-Rust scrypt in an unoptimised test build needs about 3 minutes for
// that, so this runs on demand: cargo test -p edr-pack -- --ignored
#[test]
#[ignore = "about 3 minutes in a debug build (scrypt at minisign's 1 GiB parameters)"]
fn minisign_cli_encrypted_key_loads_with_its_password() {
    require_minisign!();
    let f = Fixture::new();
    let (public, secret) = (f.path("enc.pub"), f.path("enc.key"));
    ok(&minisign(&[&"-G", &"-p", &public, &"-s", &secret], "s3cret\ns3cret\n"));
    assert!(matches!(SecretKey::from_file(&secret, None), Err(edr_pack::PackError::PasswordRequired { .. })));
    let sk = SecretKey::from_file(&secret, Some("s3cret")).unwrap();
    assert_eq!(sk.key_id(), PublicKey::from_file(&public).unwrap().key_id());
}

#[test]
fn our_keys_work_with_minisign_cli() {
    require_minisign!();
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    // Unencrypted key from keygen, used by the CLI.
    ok(&minisign(&[&"-S", &"-s", &f.keys.secret, &"-m", &built.path, &"-t", &"pack:com.example.test-pack\tversion:1.0.0"], ""));
    assert!(verify(&built.path, &signature_path(&built.path), &f.trust, &policy()).is_ok());

    // Encrypted key from keygen, used by the CLI with its password.
    let keys = keygen(&f.path("enc"), "enc", Some("pw-for-cli")).unwrap();
    ok(&minisign(&[&"-S", &"-s", &keys.secret, &"-m", &built.path], "pw-for-cli\n"));
    ok(&minisign(&[&"-V", &"-m", &built.path, &"-p", &keys.public], ""));
}
