//! Keys, trust store, manifest rules, building and signing.

mod common;

use std::fs;

use common::*;
use edr_pack::{build, keygen, sign, signature_path, verify, KeyId, Manifest, PackError, PublicKey, Rejection, SecretKey, TrustStore};

#[test]
fn keygen_writes_minisign_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "vendor", None).unwrap();
    assert_eq!(keys.public, dir.path().join("vendor.pub"));
    assert_eq!(keys.secret, dir.path().join("vendor.key"));
    let public_text = fs::read_to_string(&keys.public).unwrap();
    assert!(public_text.starts_with(&format!("untrusted comment: minisign public key {}\nRW", keys.key_id)), "{public_text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&keys.secret).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let sk = SecretKey::from_file(&keys.secret, None).unwrap();
    assert_eq!(sk.key_id(), keys.key_id);
    assert_eq!(sk.public_key(), &PublicKey::from_file(&keys.public).unwrap());

    let again = keygen(dir.path(), "vendor", None).unwrap_err();
    assert!(matches!(again, PackError::KeyExists { .. }), "{again}");
    // The first pair is untouched.
    assert_eq!(SecretKey::from_file(&keys.secret, None).unwrap().key_id(), keys.key_id);

    for bad in ["", "../x", "a/b", ".hidden", "-flag"] {
        assert!(matches!(keygen(dir.path(), bad, None), Err(PackError::InvalidKeyName { .. })), "{bad}");
    }
}

#[test]
fn encrypted_keys_need_their_password() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "locked", Some("correct horse")).unwrap();
    assert!(matches!(SecretKey::from_file(&keys.secret, None), Err(PackError::PasswordRequired { .. })));
    assert!(matches!(SecretKey::from_file(&keys.secret, Some("wrong")), Err(PackError::WrongPassword { .. })));
    let sk = SecretKey::from_file(&keys.secret, Some("correct horse")).unwrap();
    assert_eq!(sk.key_id(), keys.key_id);

    // And it signs packs that verify.
    let f = Fixture::new();
    let src = f.path("src");
    write_source(&src, &manifest_template("1.0.0", ""));
    let built = build(&src, &f.path("out")).unwrap();
    sign(&built.path, &sk, Some("release 2026-11")).unwrap();
    let trust = TrustStore::from_pinned([("locked", fs::read_to_string(&keys.public).unwrap())]).unwrap();
    let pack = verify(&built.path, &signature_path(&built.path), &trust, &policy()).unwrap();
    assert!(pack.trusted_comment.ends_with("\tnote:release 2026-11"), "{}", pack.trusted_comment);
}

#[test]
fn public_key_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "k", None).unwrap();
    let text = fs::read_to_string(&keys.public).unwrap();
    let line = text.lines().nth(1).unwrap();
    let a = PublicKey::from_base64(&format!("  {line}\n")).unwrap();
    let b = PublicKey::from_minisign_text(&text, "test").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.key_id(), keys.key_id);
    assert_eq!(a.to_base64(), line);
    assert_eq!(PublicKey::from_minisign_text(&a.to_minisign_file(), "x").unwrap(), a);

    for (bad, why) in [
        ("", "empty"),
        ("RWQ", "56 characters"),
        ("untrusted comment: x\n", "not followed"),
        (&"!".repeat(56), "not base64"),
        (&format!("{text}extra line\n"), "extra line"),
    ] {
        let e = PublicKey::from_minisign_text(bad, "test").unwrap_err();
        assert!(e.to_string().contains(why), "{bad:?}: {e}");
    }
    // A secret key is not a public key.
    let secret_text = fs::read_to_string(&keys.secret).unwrap();
    assert!(PublicKey::from_minisign_text(&secret_text, "test").is_err());
}

#[test]
fn key_ids_print_like_minisign() {
    let id = KeyId(0x4FCFA8C91286C3DCu64.to_le_bytes());
    assert_eq!(id.to_string(), "4FCFA8C91286C3DC");
    assert_eq!("4fcfa8c91286c3dc".parse::<KeyId>().unwrap(), id);
    assert!("4FCF".parse::<KeyId>().is_err());
}

#[test]
fn corrupted_secret_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "k", None).unwrap();
    let text = fs::read_to_string(&keys.secret).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Change one character inside the secret key material.
    let mut chars: Vec<char> = lines[1].chars().collect();
    chars[100] = if chars[100] == 'A' { 'B' } else { 'A' };
    lines[1] = chars.into_iter().collect();
    fs::write(&keys.secret, lines.join("\n") + "\n").unwrap();
    let e = SecretKey::from_file(&keys.secret, None).unwrap_err();
    assert!(matches!(e, PackError::InvalidKey { kind: "secret", .. }), "{e}");
}

#[test]
fn trust_store_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = PublicKey::from_file(&keygen(dir.path(), "a", None).unwrap().public).unwrap();
    let b = PublicKey::from_file(&keygen(dir.path(), "b", None).unwrap().public).unwrap();
    let mut store = TrustStore::new();
    store.add("vendor-a", a.clone()).unwrap();
    assert!(matches!(store.add("again", a.clone()), Err(PackError::TrustStore { .. })));
    assert!(matches!(store.add("vendor-a", b.clone()), Err(PackError::TrustStore { .. })));
    store.add("vendor-b", b.clone()).unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(store.get(&b.key_id()).map(|(n, _)| n), Some("vendor-b"));
    assert!(TrustStore::from_pinned([("x", "not a key")]).is_err());
}

#[test]
fn build_fills_hashes_and_checks_pinned_ones() {
    let f = Fixture::new();
    let src = f.path("src");
    write_source(&src, &manifest_template("1.0.0", ""));
    let built = build(&src, &f.path("out")).unwrap();
    assert!(built.manifest.files().all(|(_, h)| h.len() == 64));
    assert!(built.unpacked_bytes > (WASM_ALPHA.len() + WASM_BETA.len() + RULES.len()) as u64);
    assert_eq!(built.archive_bytes, fs::read(&built.path).unwrap().len() as u64);

    // A template may pin hashes itself: the final manifest is a valid template.
    fs::write(src.join("pack.toml"), built.manifest.to_toml()).unwrap();
    let again = build(&src, &f.path("out2")).unwrap();
    assert_eq!(fs::read(&again.path).unwrap(), fs::read(&built.path).unwrap());

    // ... and a pinned hash that no longer matches is an error.
    fs::write(src.join("plugins/beta.wasm"), b"\0asm changed").unwrap();
    let e = build(&src, &f.path("out3")).unwrap_err();
    assert!(matches!(&e, PackError::PinnedHashMismatch { file, .. } if file == "plugins/beta.wasm"), "{e}");
}

#[test]
fn build_reports_missing_files_and_bad_templates() {
    let f = Fixture::new();
    let src = f.path("src");
    write_source(&src, &manifest_template("1.0.0", ""));
    fs::remove_file(src.join("rules/main.yml")).unwrap();
    let e = build(&src, &f.path("out")).unwrap_err();
    assert!(matches!(&e, PackError::Io { path, .. } if path.ends_with("rules/main.yml")), "{e}");

    write_source(&src, &manifest_template("1.0.0", "colour = \"red\""));
    let e = build(&src, &f.path("out")).unwrap_err();
    assert!(matches!(&e, PackError::Manifest { message, .. } if message.contains("colour") && message.contains("line 6")), "{e}");
    let e = build(&f.path("nowhere"), &f.path("out")).unwrap_err();
    assert!(matches!(e, PackError::Io { .. }));
}

#[test]
fn sign_refuses_broken_packs() {
    let f = Fixture::new();
    let path = f.path("garbage.edrpack");
    fs::write(&path, b"not a pack").unwrap();
    let e = sign(&path, &f.key, None).unwrap_err();
    assert!(matches!(&e, PackError::NotAPack { reason: Rejection::MalformedArchive { .. }, .. }), "{e}");
    assert!(!signature_path(&path).exists());

    let built = f.built("1.0.0", "");
    assert!(matches!(sign(&built.path, &f.key, Some("two\nlines")), Err(PackError::InvalidComment { .. })));
    assert!(matches!(sign(&built.path, &f.key, Some("tab\there")), Err(PackError::InvalidComment { .. })));
}

fn manifest_error(text: &str) -> String {
    Manifest::from_toml_str(text).expect_err("the manifest must be refused")
}

fn valid_final() -> String {
    let f = Fixture::new();
    f.built("1.0.0", "").manifest.to_toml()
}

#[test]
fn manifest_rules() {
    let good = valid_final();
    let m = Manifest::from_toml_str(&good).unwrap();
    assert_eq!(m.plugin("alpha").unwrap().settings["threshold"], "3");
    assert_eq!(Manifest::from_toml_str(&m.to_toml()).unwrap(), m);

    let cases: &[(&str, &str, &str)] = &[
        ("id = \"com.example.test-pack\"", "id = \"single\"", "two labels"),
        ("id = \"com.example.test-pack\"", "id = \"Com.Example\"", "a-z"),
        ("id = \"com.example.test-pack\"", "id = \"1com.example\"", "start with a letter"),
        ("id = \"com.example.test-pack\"", "id = \"com.-bad\"", "start or end"),
        ("version = \"1.0.0\"", "version = \"1.0\"", "line 2"),
        ("version = \"1.0.0\"", "version = \"1.0.0+build5\"", "build metadata"),
        ("contract = \"0.1\"", "contract = \"v1\"", "MAJOR.MINOR"),
        ("publisher = \"Example Security\"", "publisher = \"\"", "publisher"),
        ("name = \"beta\"", "name = \"alpha\"", "two plugins are named"),
        ("name = \"beta\"", "name = \"Beta!\"", "name"),
        ("file = \"plugins/beta.wasm\"", "file = \"../beta.wasm\"", "`..`"),
        ("file = \"plugins/beta.wasm\"", "file = \"/abs.wasm\"", "relative"),
        ("file = \"plugins/beta.wasm\"", "file = \"pack.toml\"", "reserved"),
        ("file = \"plugins/beta.wasm\"", "file = \"plugins/alpha.wasm\"", "already named"),
        ("file = \"plugins/beta.wasm\"", "file = \"rules/main.yml\"", "already named"),
        ("subscriptions = [\"file\"]", "subscriptions = []", "at least one"),
        ("subscriptions = [\"file\"]", "subscriptions = [\"file\", \"file\"]", "`file` twice"),
        ("subscriptions = [\"file\"]", "subscriptions = [\"files\"]", "unknown variant `files`"),
        ("capabilities = [\"log\", \"clock\", \"respond\"]", "capabilities = [\"log\", \"clock\"]", "`respond` capability"),
        ("capabilities = [\"log\", \"clock\", \"respond\"]", "capabilities = [\"log\", \"net\", \"respond\"]", "unknown variant `net`"),
        ("actions = [\"kill-process\", \"quarantine-file\"]", "actions = [\"format-disk\"]", "unknown variant `format-disk`"),
        ("memory_mb = 32", "memory_mb = 0", "out of range"),
        ("call_deadline_ms = 50", "call_deadline_ms = 600000", "out of range"),
        ("threshold = \"3\"", "threshold = 3", "invalid type"),
        ("threshold = \"3\"", "\"\" = \"3\"", "settings key"),
    ];
    for (from, to, expect) in cases {
        assert!(good.contains(from), "fixture lacks {from}");
        let e = manifest_error(&good.replacen(from, to, 1));
        assert!(e.contains(expect), "{to}: expected `{expect}` in: {e}");
    }

    // Hashes: missing in a final manifest, malformed anywhere; upper case is normalised.
    let beta_hash = m.plugin("beta").unwrap().sha256.clone();
    let e = manifest_error(&good.replacen(&format!("sha256 = \"{beta_hash}\""), "sha256 = \"\"", 1));
    assert!(e.contains("missing"), "{e}");
    let e = manifest_error(&good.replacen(&beta_hash, "abc", 1));
    assert!(e.contains("64 hex digits"), "{e}");
    let upper = Manifest::from_toml_str(&good.replacen(&beta_hash, &beta_hash.to_uppercase(), 1)).unwrap();
    assert_eq!(upper.plugin("beta").unwrap().sha256, beta_hash);

    // Data files: undeclared, unused.
    let e = manifest_error(&good.replacen("data = [\"rules/main.yml\"]", "data = [\"rules/other.yml\"]", 1));
    assert!(e.contains("not declared"), "{e}");
    let e = manifest_error(&good.replace("data = [\"rules/main.yml\"]", "data = []"));
    assert!(e.contains("no plugin lists it"), "{e}");

    // Dates.
    let dated = good.replacen("publisher", "not_before = \"2027-01-01T00:00:00Z\"\nexpires = \"2026-01-01T00:00:00Z\"\npublisher", 1);
    assert!(manifest_error(&dated).contains("later than not_before"));
    let bad_date = good.replacen("publisher", "expires = \"next tuesday\"\npublisher", 1);
    assert!(manifest_error(&bad_date).contains("RFC 3339"));
    let native_date = good.replacen("publisher", "expires = 2027-01-01T00:00:00Z\npublisher", 1);
    assert!(manifest_error(&native_date).contains("RFC 3339"));
}
