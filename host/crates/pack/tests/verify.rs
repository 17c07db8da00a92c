//! Verification: the happy path and one test per rejection reason.

mod common;

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use edr_pack::semver::Version;
use edr_pack::{inspect, keygen, signature_path, verify, verify_bytes, ActionKind, Capability, EventKind, PublicKey, Rejection, TrustStore};

fn verify_default(f: &Fixture, archive: &std::path::Path) -> Result<edr_pack::VerifiedPack, Rejection> {
    verify(archive, &signature_path(archive), &f.trust, &policy())
}

fn rejected(f: &Fixture, archive: &std::path::Path) -> Rejection {
    let r = verify_default(f, archive).expect_err("the pack must be rejected");
    // Every rejection renders an actionable sentence.
    assert!(r.to_string().len() > 20, "{r}");
    r
}

#[test]
fn happy_path_returns_plugins_data_and_settings_byte_exact() {
    let f = Fixture::new();
    let built = f.built("1.2.0", "description = \"Test pack\"");
    assert_eq!(built.path.file_name().unwrap(), "com.example.test-pack-1.2.0.edrpack");
    assert!(signature_path(&built.path).exists());

    let pack = verify_default(&f, &built.path).unwrap();
    assert_eq!(pack.manifest.id, PACK_ID);
    assert_eq!(pack.manifest.version, Version::new(1, 2, 0));
    assert_eq!(pack.manifest.description.as_deref(), Some("Test pack"));
    assert_eq!(pack.signer.name, "vendor");
    assert_eq!(pack.signer.key_id, f.keys.key_id);
    assert_eq!(pack.archive_sha256, built.archive_sha256);
    assert!(pack.trusted_comment.contains("pack:com.example.test-pack"), "{}", pack.trusted_comment);
    assert!(pack.trusted_comment.contains("version:1.2.0"), "{}", pack.trusted_comment);

    assert_eq!(pack.plugins.len(), 2);
    let alpha = &pack.plugins[0];
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.wasm, WASM_ALPHA);
    assert_eq!(alpha.subscriptions, vec![EventKind::ProcessExec, EventKind::Network]);
    assert_eq!(alpha.capabilities, vec![Capability::Log, Capability::Clock, Capability::Respond]);
    assert_eq!(alpha.actions, vec![ActionKind::KillProcess, ActionKind::QuarantineFile]);
    assert_eq!(alpha.limits.call_deadline_ms, Some(50));
    assert_eq!(alpha.limits.memory_mb, Some(32));
    assert_eq!(alpha.limits.max_findings_per_batch, None);
    assert_eq!(alpha.settings.get("threshold").map(String::as_str), Some("3"));
    assert_eq!(alpha.settings.get("mode").map(String::as_str), Some("strict"));
    assert_eq!(alpha.data, vec![("rules/main.yml".to_string(), RULES.to_vec())]);
    assert_eq!(alpha.wasm_sha256, sha256_hex(WASM_ALPHA));

    let beta = &pack.plugins[1];
    assert_eq!(beta.name, "beta");
    assert_eq!(beta.wasm, WASM_BETA);
    assert_eq!(beta.subscriptions, vec![EventKind::File]);
    assert!(beta.capabilities.is_empty() && beta.actions.is_empty() && beta.settings.is_empty());
    assert_eq!(beta.data, vec![("rules/main.yml".to_string(), RULES.to_vec())]);

    // The manifest in the archive pins every hash the builder computed.
    assert_eq!(pack.manifest, built.manifest);
    assert_eq!(pack.manifest.data[0].sha256, sha256_hex(RULES));
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn archive_layout_is_deterministic_with_manifest_first() {
    let f = Fixture::new();
    let a = f.built("1.0.0", "");
    let bytes_a = fs::read(&a.path).unwrap();
    let b = f.built("1.0.0", "");
    let bytes_b = fs::read(&b.path).unwrap();
    assert_eq!(bytes_a, bytes_b, "building the same inputs twice must give the same bytes");

    let entries = unpack(&bytes_a);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["pack.toml", "plugins/alpha.wasm", "plugins/beta.wasm", "rules/main.yml"]);
    let tar = zstd::decode_all(&bytes_a[..]).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 0));
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
    }
    // The manifest inside has every sha256 filled in.
    let manifest = String::from_utf8(entries[0].1.clone()).unwrap();
    assert!(manifest.contains(&sha256_hex(WASM_BETA)), "{manifest}");
    assert!(!manifest.contains("sha256 = \"\""), "{manifest}");
}

#[test]
fn verify_bytes_matches_verify() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let bytes = fs::read(&built.path).unwrap();
    let sig = fs::read_to_string(signature_path(&built.path)).unwrap();
    let from_memory = verify_bytes(&bytes, &sig, &f.trust, &policy()).unwrap();
    assert_eq!(from_memory, verify_default(&f, &built.path).unwrap());
}

#[test]
fn missing_signature() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    fs::remove_file(signature_path(&built.path)).unwrap();
    let r = rejected(&f, &built.path);
    assert!(matches!(r, Rejection::MissingSignature { .. }), "{r:?}");
    assert_eq!(r.reason_code(), "missing_signature");
}

#[test]
fn malformed_signatures() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let sig_path = signature_path(&built.path);
    let good = fs::read_to_string(&sig_path).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let overlong = format!("{}\n{}AAAAAAAA\n{}\n{}\n", lines[0], lines[1], lines[2], lines[3]);
    let short_global = format!("{}\n{}\n{}\nAAAA\n", lines[0], lines[1], lines[2]);
    for bad in ["", "hello\n", "untrusted comment: x\nnot base64!\ntrusted comment: y\nzz\n", &overlong, &short_global] {
        fs::write(&sig_path, bad).unwrap();
        let r = rejected(&f, &built.path);
        assert!(matches!(r, Rejection::MalformedSignature { .. }), "{bad:?}: {r:?}");
        assert_eq!(r.reason_code(), "malformed_signature");
    }
}

#[test]
fn flipped_archive_byte_is_a_bad_signature() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let mut bytes = fs::read(&built.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&built.path, &bytes).unwrap();
    let r = rejected(&f, &built.path);
    assert!(matches!(&r, Rejection::BadSignature { signer, .. } if signer == "vendor"), "{r:?}");
    assert_eq!(r.reason_code(), "bad_signature");
}

#[test]
fn tampered_trusted_comment_is_a_bad_signature() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let sig_path = signature_path(&built.path);
    let text = fs::read_to_string(&sig_path).unwrap().replace("version:1.0.0", "version:9.0.0");
    fs::write(&sig_path, text).unwrap();
    let r = rejected(&f, &built.path);
    assert!(matches!(r, Rejection::BadSignature { .. }), "{r:?}");
}

#[test]
fn unknown_key() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let other = keygen(&f.path("other-keys"), "intruder", None).unwrap();
    sign_raw(&built.path, &other.secret, None);
    let r = rejected(&f, &built.path);
    assert_eq!(r, Rejection::UnknownKey { key_id: other.key_id });
    assert_eq!(r.reason_code(), "unknown_key");
    assert!(r.to_string().contains(&other.key_id.to_string()));
}

#[test]
fn key_id_collision_with_a_pinned_key_is_a_bad_signature() {
    // An attacker's key that claims the vendor's key id must not verify.
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let other = keygen(&f.path("other-keys"), "intruder", None).unwrap();
    // Re-sign with the intruder key, then rewrite the signature's key id to the vendor's.
    sign_raw(&built.path, &other.secret, None);
    let sig_path = signature_path(&built.path);
    let text = fs::read_to_string(&sig_path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut raw = ct_codecs_decode(&lines[1]);
    raw[2..10].copy_from_slice(&f.keys.key_id.0);
    lines[1] = ct_codecs_encode(&raw);
    fs::write(&sig_path, lines.join("\n") + "\n").unwrap();
    let r = rejected(&f, &built.path);
    assert!(matches!(r, Rejection::BadSignature { key_id, .. } if key_id == f.keys.key_id), "{r:?}");
}

fn ct_codecs_decode(s: &str) -> Vec<u8> {
    use ct_codecs::Decoder;
    ct_codecs::Base64::decode_to_vec(s, None).unwrap()
}

fn ct_codecs_encode(b: &[u8]) -> String {
    use ct_codecs::Encoder;
    ct_codecs::Base64::encode_to_string(b).unwrap()
}

#[test]
fn empty_trust_store_trusts_nothing() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let r = verify(&built.path, &signature_path(&built.path), &TrustStore::new(), &policy()).unwrap_err();
    assert_eq!(r, Rejection::UnknownKey { key_id: f.keys.key_id });
}

#[test]
fn archive_too_large_is_refused_before_the_signature_is_read() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    fs::remove_file(signature_path(&built.path)).unwrap();
    let mut p = policy();
    p.max_archive_bytes = 100;
    let r = verify(&built.path, &signature_path(&built.path), &f.trust, &p).unwrap_err();
    assert!(matches!(r, Rejection::TooLarge { limit: 100, size } if size == built.archive_bytes), "{r:?}");
    assert_eq!(r.reason_code(), "archive_too_large");
}

#[test]
fn unreadable_archive() {
    let f = Fixture::new();
    let missing = f.path("nope.edrpack");
    let r = rejected(&f, &missing);
    assert!(matches!(r, Rejection::Unreadable { .. }), "{r:?}");
}

#[test]
fn nothing_is_parsed_before_the_signature_is_checked() {
    let f = Fixture::new();
    // Garbage signed by an unknown key: the key is the reason, not the garbage.
    let path = f.path("garbage.edrpack");
    fs::write(&path, b"this is not an archive at all").unwrap();
    let other = keygen(&f.path("other-keys"), "intruder", None).unwrap();
    sign_raw(&path, &other.secret, None);
    assert_eq!(rejected(&f, &path), Rejection::UnknownKey { key_id: other.key_id });
    // The same garbage signed by the trusted key gets as far as the archive reader.
    let path = f.signed_raw("garbage2.edrpack", b"this is not an archive at all");
    let r = rejected(&f, &path);
    assert!(matches!(r, Rejection::MalformedArchive { .. }), "{r:?}");
    assert_eq!(r.reason_code(), "malformed_archive");
}

/// The fixture's files, to assemble variants from.
fn good_files(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let built = f.built("1.0.0", "");
    unpack(&fs::read(&built.path).unwrap())
}

fn entries(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect()
}

#[test]
fn swapped_wasm_is_a_hash_mismatch() {
    let f = Fixture::new();
    let mut files = good_files(&f);
    files.iter_mut().find(|(n, _)| n == "plugins/beta.wasm").unwrap().1 = b"\0asm evil replacement".to_vec();
    let path = f.signed_raw("swapped.edrpack", &pack(&entries(&files)));
    let r = rejected(&f, &path);
    assert!(matches!(&r, Rejection::HashMismatch { file, .. } if file == "plugins/beta.wasm"), "{r:?}");
    assert_eq!(r.reason_code(), "hash_mismatch");
}

#[test]
fn missing_named_file() {
    let f = Fixture::new();
    let mut files = good_files(&f);
    files.retain(|(n, _)| n != "rules/main.yml");
    let path = f.signed_raw("missing.edrpack", &pack(&entries(&files)));
    let r = rejected(&f, &path);
    assert_eq!(r, Rejection::MissingFile { file: "rules/main.yml".into() });
    assert_eq!(r.reason_code(), "missing_file");
}

#[test]
fn missing_manifest() {
    let f = Fixture::new();
    let mut files = good_files(&f);
    files.retain(|(n, _)| n != "pack.toml");
    let path = f.signed_raw("nomanifest.edrpack", &pack(&entries(&files)));
    assert_eq!(rejected(&f, &path), Rejection::MissingFile { file: "pack.toml".into() });
}

/// Issue 14, item 12: a signed pack whose `pack.toml` carries a 40 MiB
/// comment is refused by size, before the manifest is read into memory or
/// parsed (the entry is under the unpacked-size budget, so only the
/// manifest cap stops it).
#[test]
fn a_40_mib_manifest_is_refused_before_parsing() {
    let f = Fixture::new();
    let mut files = good_files(&f);
    let manifest = files.iter_mut().find(|(n, _)| n == "pack.toml").unwrap();
    let mut padded = b"# ".to_vec();
    padded.resize(40 << 20, b'x');
    padded.extend_from_slice(b"\n");
    padded.extend_from_slice(&manifest.1);
    let size = padded.len();
    manifest.1 = padded;
    let path = f.signed_raw("bigmanifest.edrpack", &pack(&entries(&files)));
    let r = rejected(&f, &path);
    let msg = r.to_string();
    assert_eq!(r.reason_code(), "malformed_manifest", "{r:?}");
    assert!(msg.contains(&format!("pack.toml is {size} bytes, more than the limit of 1048576 bytes")), "{msg}");
    // And `edr pack inspect` (no signature check) refuses it the same way.
    let e = edr_pack::inspect(&path).unwrap_err();
    assert_eq!(e.reason_code(), "malformed_manifest", "{e:?}");
}

#[test]
fn unlisted_file() {
    let f = Fixture::new();
    let mut files = good_files(&f);
    files.push(("plugins/extra.wasm".into(), b"\0asm smuggled".to_vec()));
    let path = f.signed_raw("unlisted.edrpack", &pack(&entries(&files)));
    let r = rejected(&f, &path);
    assert_eq!(r, Rejection::UnlistedFile { path: "plugins/extra.wasm".into() });
    assert_eq!(r.reason_code(), "unlisted_file");
}

#[test]
fn duplicate_entry() {
    let f = Fixture::new();
    let mut files = good_files(&f);
    files.push(("plugins/alpha.wasm".into(), WASM_ALPHA.to_vec()));
    let path = f.signed_raw("dup.edrpack", &pack(&entries(&files)));
    let r = rejected(&f, &path);
    assert_eq!(r, Rejection::DuplicateEntry { path: "plugins/alpha.wasm".into() });
    // `./x` and `x` are the same entry.
    let mut files = good_files(&f);
    let manifest = files[0].1.clone();
    files.push(("./pack.toml".into(), manifest));
    let path = f.signed_raw("dup2.edrpack", &pack(&entries(&files)));
    assert_eq!(rejected(&f, &path), Rejection::DuplicateEntry { path: "pack.toml".into() });
}

#[test]
fn a_leading_dot_slash_and_directory_entries_are_accepted() {
    // What `tar -C dir -c .` produces.
    let f = Fixture::new();
    let files = good_files(&f);
    let mut raw = vec![RawEntry { name: b"./", kind: tar::EntryType::Directory, data: b"", link: None }];
    let names: Vec<String> = files.iter().map(|(n, _)| format!("./{n}")).collect();
    for ((_, data), name) in files.iter().zip(&names) {
        raw.push(RawEntry::file(name, data));
    }
    raw.push(RawEntry { name: b"./plugins/", kind: tar::EntryType::Directory, data: b"", link: None });
    let path = f.signed_raw("dotslash.edrpack", &raw_tar(&raw));
    let pack = verify_default(&f, &path).unwrap();
    assert_eq!(pack.plugins[0].wasm, WASM_ALPHA);
}

fn unsafe_entry(entry: RawEntry) -> Rejection {
    let f = Fixture::new();
    let files = good_files(&f);
    let mut raw: Vec<RawEntry> = files.iter().map(|(n, d)| RawEntry::file(n, d)).collect();
    raw.push(entry);
    let path = f.signed_raw("unsafe.edrpack", &raw_tar(&raw));
    let r = rejected(&f, &path);
    assert_eq!(r.reason_code(), "unsafe_path", "{r:?}");
    r
}

#[test]
fn parent_dir_path_is_unsafe() {
    let r = unsafe_entry(RawEntry::file("../x", b"escape"));
    assert!(matches!(&r, Rejection::UnsafePath { path, why } if path == "../x" && why.contains("..")), "{r:?}");
    let r = unsafe_entry(RawEntry::file("plugins/../../x", b"escape"));
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("..")), "{r:?}");
}

#[test]
fn absolute_path_is_unsafe() {
    let r = unsafe_entry(RawEntry::file("/etc/cron.d/x", b"* * * * * root sh"));
    assert!(matches!(&r, Rejection::UnsafePath { path, why } if path == "/etc/cron.d/x" && why.contains("absolute")), "{r:?}");
}

#[test]
fn symlink_and_hardlink_are_unsafe() {
    let r = unsafe_entry(RawEntry { name: b"rules/link", kind: tar::EntryType::Symlink, data: b"", link: Some(b"/etc/shadow") });
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("symbolic link")), "{r:?}");
    let r = unsafe_entry(RawEntry { name: b"rules/hard", kind: tar::EntryType::Link, data: b"", link: Some(b"pack.toml") });
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("hard link")), "{r:?}");
}

#[test]
fn device_and_fifo_entries_are_unsafe() {
    let r = unsafe_entry(RawEntry { name: b"dev/mem", kind: tar::EntryType::Char, data: b"", link: None });
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("character device")), "{r:?}");
    let r = unsafe_entry(RawEntry { name: b"dev/sda", kind: tar::EntryType::Block, data: b"", link: None });
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("block device")), "{r:?}");
    let r = unsafe_entry(RawEntry { name: b"fifo", kind: tar::EntryType::Fifo, data: b"", link: None });
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("FIFO")), "{r:?}");
}

#[test]
fn empty_path_is_unsafe() {
    let r = unsafe_entry(RawEntry::file("", b"x"));
    assert!(matches!(&r, Rejection::UnsafePath { why, .. } if why.contains("empty")), "{r:?}");
}

#[test]
fn too_many_files() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let mut p = policy();
    p.max_files = 3; // the pack has 4 entries
    let r = verify(&built.path, &signature_path(&built.path), &f.trust, &p).unwrap_err();
    assert_eq!(r, Rejection::TooManyFiles { limit: 3 });
    assert_eq!(r.reason_code(), "too_many_files");
}

#[test]
fn unpacked_size_limit() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let mut p = policy();
    p.max_unpacked_bytes = 64; // the manifest alone is bigger
    let r = verify(&built.path, &signature_path(&built.path), &f.trust, &p).unwrap_err();
    assert!(matches!(r, Rejection::DecompressionBomb { limit: 64, .. }), "{r:?}");
}

/// A tar whose one entry declares and holds `size` zero bytes, compressed
/// with zstd in a stream (never holding the expanded bytes in memory).
fn zero_bomb(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

#[test]
fn zstd_bomb_stops_at_the_limit() {
    let f = Fixture::new();
    // 64 MiB of zeros declared by an honest header, in a few KB.
    let bomb = zero_bomb("rules/bomb.bin", tar::EntryType::Regular, 64 << 20);
    assert!(bomb.len() < 16 * 1024, "the bomb is {} bytes", bomb.len());
    let path = f.signed_raw("bomb.edrpack", &bomb);
    let mut p = policy();
    p.max_unpacked_bytes = 1 << 20;
    let started = std::time::Instant::now();
    let r = verify(&path, &signature_path(&path), &f.trust, &p).unwrap_err();
    assert!(matches!(&r, Rejection::DecompressionBomb { limit, detail } if *limit == 1 << 20 && detail.contains("rules/bomb.bin")), "{r:?}");
    assert_eq!(r.reason_code(), "decompression_bomb");
    // Refused from the header, without expanding the 64 MiB.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn zstd_bomb_in_a_tar_extension_header_trips_the_stream_cap() {
    // A GNU long-name record is read whole by the tar parser: only the cap on
    // the decompressed stream stops it.
    let f = Fixture::new();
    let bomb = zero_bomb("././@LongLink", tar::EntryType::GNULongName, 64 << 20);
    let path = f.signed_raw("bomb2.edrpack", &bomb);
    let mut p = policy();
    p.max_unpacked_bytes = 1 << 20;
    p.max_files = 10;
    let r = verify(&path, &signature_path(&path), &f.trust, &p).unwrap_err();
    assert!(matches!(&r, Rejection::DecompressionBomb { detail, .. } if detail.contains("decompressed stream")), "{r:?}");
}

fn with_manifest(f: &Fixture, manifest: &str) -> std::path::PathBuf {
    let mut files = good_files(f);
    files[0].1 = manifest.as_bytes().to_vec();
    f.signed_raw("manifest.edrpack", &pack(&entries(&files)))
}

#[test]
fn bad_toml_is_a_malformed_manifest_with_the_line() {
    let f = Fixture::new();
    let path = with_manifest(&f, "id = \"com.example.x\"\nversion = = \"1.0.0\"\n");
    let r = rejected(&f, &path);
    assert_eq!(r.reason_code(), "malformed_manifest");
    let Rejection::MalformedManifest { message } = &r else { panic!("{r:?}") };
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn unknown_manifest_key_names_the_key_and_line() {
    let f = Fixture::new();
    let files = good_files(&f);
    let manifest = String::from_utf8(files[0].1.clone()).unwrap();
    let tampered = manifest.replacen("[[plugin]]\n", "[[plugin]]\nauto_update_url = \"http://x\"\n", 1);
    let line = tampered.lines().position(|l| l.starts_with("auto_update_url")).unwrap() + 1;
    let path = with_manifest(&f, &tampered);
    let r = rejected(&f, &path);
    let Rejection::MalformedManifest { message } = &r else { panic!("{r:?}") };
    assert!(message.contains("auto_update_url"), "{message}");
    assert!(message.contains(&format!("line {line}")), "{message}");
}

#[test]
fn manifest_rule_violation_is_malformed() {
    let f = Fixture::new();
    let files = good_files(&f);
    let manifest = String::from_utf8(files[0].1.clone()).unwrap();
    let path = with_manifest(&f, &manifest.replace("id = \"com.example.test-pack\"", "id = \"Not A Valid Id\""));
    let r = rejected(&f, &path);
    assert!(matches!(&r, Rejection::MalformedManifest { message } if message.contains("id `Not A Valid Id`")), "{r:?}");
}

#[test]
fn signed_comment_naming_another_version_is_refused() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    sign_raw(&built.path, &f.keys.secret, Some("timestamp:1\tpack:com.example.test-pack\tversion:2.0.0"));
    let r = rejected(&f, &built.path);
    assert_eq!(r, Rejection::SignedCommentMismatch { field: "version", signed: "2.0.0".into(), manifest: "1.0.0".into() });
    sign_raw(&built.path, &f.keys.secret, Some("timestamp:1\tpack:com.example.other"));
    assert_eq!(rejected(&f, &built.path).reason_code(), "signed_comment_mismatch");
    // minisign's default comment (no pack fields) is fine.
    sign_raw(&built.path, &f.keys.secret, Some("timestamp:1700000000\tfile:x.edrpack\thashed"));
    assert!(verify_default(&f, &built.path).is_ok());
}

#[test]
fn unsupported_contract() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let mut p = policy();
    p.supported_contracts = vec!["0.2".into(), "1.0".into()];
    let r = verify(&built.path, &signature_path(&built.path), &f.trust, &p).unwrap_err();
    assert_eq!(r, Rejection::UnsupportedContract { contract: "0.1".into(), supported: vec!["0.2".into(), "1.0".into()] });
    assert!(r.to_string().contains("0.2, 1.0"));
}

#[test]
fn too_new_min_agent_version() {
    let f = Fixture::new();
    let built = f.built_from(&manifest_template("1.0.0", "").replace("min_agent_version = \"0.1.0\"", "min_agent_version = \"0.3.0\""));
    let r = rejected(&f, &built.path);
    assert_eq!(r, Rejection::AgentTooOld { required: Version::new(0, 3, 0), agent: Version::new(0, 1, 0) });
    let mut p = policy();
    p.agent_version = Version::new(0, 3, 0);
    assert!(verify(&built.path, &signature_path(&built.path), &f.trust, &p).is_ok());
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn validity_window() {
    // 2026-01-01T00:00:00Z = 1767225600, 2027-01-01T00:00:00Z = 1798761600.
    let f = Fixture::new();
    let built = f.built("1.0.0", "not_before = \"2026-01-01T00:00:00Z\"\nexpires = \"2027-01-01T02:00:00+02:00\"");
    let check = |now: SystemTime| {
        let mut p = policy();
        p.now = now;
        verify(&built.path, &signature_path(&built.path), &f.trust, &p)
    };
    let r = check(at(1767225599)).unwrap_err();
    assert!(matches!(&r, Rejection::NotYetValid { not_before, .. } if not_before == "2026-01-01T00:00:00Z"), "{r:?}");
    assert_eq!(r.reason_code(), "not_yet_valid");
    assert!(check(at(1767225600)).is_ok());
    assert!(check(at(1798761599)).is_ok());
    let r = check(at(1798761600)).unwrap_err();
    assert!(matches!(&r, Rejection::Expired { .. }), "{r:?}");
    assert_eq!(r.reason_code(), "expired");
}

#[test]
fn anti_rollback() {
    let f = Fixture::new();
    let built = f.built("1.4.0", "");
    let check = |installed: Version| {
        let mut p = policy();
        p.installed_version = Some(installed);
        verify(&built.path, &signature_path(&built.path), &f.trust, &p)
    };
    let r = check(Version::new(1, 5, 0)).unwrap_err();
    assert_eq!(r, Rejection::Rollback { installed: Version::new(1, 5, 0), offered: Version::new(1, 4, 0) });
    assert_eq!(r.reason_code(), "rollback");
    assert!(!r.is_benign());
    let r = check(Version::new(1, 4, 0)).unwrap_err();
    assert_eq!(r, Rejection::AlreadyInstalled { version: Version::new(1, 4, 0) });
    assert_eq!(r.reason_code(), "already_installed");
    assert!(r.is_benign());
    assert!(check(Version::parse("1.4.0-rc.1").unwrap()).is_ok());
    assert!(check(Version::new(1, 3, 9)).is_ok());
}

#[test]
fn inspect_shows_an_unsigned_pack_as_unverified() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let seen = inspect(&built.path).unwrap();
    assert_eq!(seen.unverified_manifest, built.manifest);
    assert_eq!(seen.unverified_key_id, Some(f.keys.key_id));
    assert!(seen.unverified_trusted_comment.unwrap().contains("version:1.0.0"));
    assert_eq!(seen.archive_sha256, built.archive_sha256);
    let names: Vec<&str> = seen.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["pack.toml", "plugins/alpha.wasm", "plugins/beta.wasm", "rules/main.yml"]);
    assert!(seen.files.iter().skip(1).all(|f| f.pinned_sha256.as_deref() == Some(f.sha256.as_str())));

    // Without a signature, and with a hostile entry, inspect still behaves.
    fs::remove_file(signature_path(&built.path)).unwrap();
    assert_eq!(inspect(&built.path).unwrap().unverified_key_id, None);
    let hostile = f.path("hostile.edrpack");
    fs::write(&hostile, raw_tar(&[RawEntry::file("../../etc/passwd", b"x")])).unwrap();
    assert_eq!(inspect(&hostile).unwrap_err().reason_code(), "unsafe_path");
}

#[test]
fn pinned_public_key_from_file_or_line_verifies_alike() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let file_text = fs::read_to_string(&f.keys.public).unwrap();
    let trust = TrustStore::from_pinned([("from-file", file_text.clone())]).unwrap();
    let pack = verify(&built.path, &signature_path(&built.path), &trust, &policy()).unwrap();
    assert_eq!(pack.signer.name, "from-file");
    let line = file_text.lines().nth(1).unwrap();
    assert_eq!(PublicKey::from_base64(line).unwrap(), PublicKey::from_file(&f.keys.public).unwrap());
}

#[test]
fn data_hidden_after_the_end_of_the_tar_is_refused() {
    let f = Fixture::new();
    let files = good_files(&f);
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    let mut tar = b.into_inner().unwrap();
    // Zero padding after the end marker is normal...
    tar.extend_from_slice(&[0u8; 4096]);
    let path = f.signed_raw("padded.edrpack", &zstd::encode_all(&tar[..], 3).unwrap());
    assert!(verify_default(&f, &path).is_ok());
    // ... a smuggled header after it is not.
    let mut h = tar::Header::new_gnu();
    h.set_path("plugins/hidden.wasm").unwrap();
    h.set_size(0);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    let path = f.signed_raw("hidden.edrpack", &zstd::encode_all(&tar[..], 3).unwrap());
    let r = rejected(&f, &path);
    assert!(matches!(&r, Rejection::MalformedArchive { message } if message.contains("follows the end")), "{r:?}");
}

#[test]
fn long_paths_round_trip() {
    // Paths over tar's 100-byte name field use a GNU long-name record.
    let f = Fixture::new();
    let long = format!("rules/{}/main.yml", "deep-directory-name".repeat(8));
    assert!(long.len() > 100 && long.len() <= 255);
    let src = f.path("long-src");
    write_source(&src, &manifest_template("1.0.0", "").replace("rules/main.yml", &long));
    fs::create_dir_all(src.join(&long).parent().unwrap()).unwrap();
    fs::write(src.join(&long), RULES).unwrap();
    let built = edr_pack::build(&src, &f.path("out")).unwrap();
    edr_pack::sign(&built.path, &f.key, None).unwrap();
    let pack = verify_default(&f, &built.path).unwrap();
    assert_eq!(pack.plugins[0].data, vec![(long, RULES.to_vec())]);
}

#[test]
fn oversized_signature_text_is_malformed() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let bytes = fs::read(&built.path).unwrap();
    let huge = "untrusted comment: x\n".repeat(10_000);
    let r = verify_bytes(&bytes, &huge, &f.trust, &policy()).unwrap_err();
    assert!(matches!(r, Rejection::MalformedSignature { .. }), "{r:?}");
    // And through a file.
    fs::write(signature_path(&built.path), huge).unwrap();
    assert_eq!(rejected(&f, &built.path).reason_code(), "malformed_signature");
}

#[test]
fn expected_id_guards_anti_rollback_against_misnamed_packs() {
    let f = Fixture::new();
    let built = f.built("1.0.0", "");
    let mut p = policy();
    p.expected_id = Some("com.example.other-pack".into());
    p.installed_version = Some(Version::new(0, 1, 0));
    let r = verify(&built.path, &signature_path(&built.path), &f.trust, &p).unwrap_err();
    assert_eq!(r, Rejection::UnexpectedPack { expected: "com.example.other-pack".into(), found: PACK_ID.into() });
    assert_eq!(r.reason_code(), "unexpected_pack");
    p.expected_id = Some(PACK_ID.into());
    assert!(verify(&built.path, &signature_path(&built.path), &f.trust, &p).is_ok());
}
