//! Shared test helpers: a pack source directory, keys, repacking and
//! hand-written tar archives for tampered variants.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use edr_pack::semver::Version;
use edr_pack::{build, keygen, sign, BuiltPack, KeyPairPaths, PublicKey, SecretKey, TrustStore, VerifyPolicy};
use tempfile::TempDir;

/// Dummy component bytes (verification does not need real components).
pub const WASM_ALPHA: &[u8] = b"\0asm\x0d\0\x01\0alpha-plugin-bytes\xff\xfe";
/// Dummy component bytes of the second plugin.
pub const WASM_BETA: &[u8] = b"\0asm\x0d\0\x01\0beta-plugin-bytes";
/// A data file shared by both plugins.
pub const RULES: &[u8] = b"rules:\n  - id: r1\n    match: /dev/tcp\n";

/// The pack id of the fixture.
pub const PACK_ID: &str = "com.example.test-pack";

/// A manifest template; `extra` goes among the top-level keys.
pub fn manifest_template(version: &str, extra: &str) -> String {
    format!(
        r#"id = "{PACK_ID}"
version = "{version}"
min_agent_version = "0.1.0"
contract = "0.1"
publisher = "Example Security"
{extra}

[[data]]
path = "rules/main.yml"

[[plugin]]
name = "alpha"
file = "plugins/alpha.wasm"
subscriptions = ["process-exec", "network"]
capabilities = ["log", "clock", "respond"]
actions = ["kill-process", "quarantine-file"]
data = ["rules/main.yml"]

[plugin.limits]
call_deadline_ms = 50
memory_mb = 32

[plugin.settings]
threshold = "3"
mode = "strict"

[[plugin]]
name = "beta"
file = "plugins/beta.wasm"
sha256 = ""
subscriptions = ["file"]
data = ["rules/main.yml"]
"#
    )
}

/// Writes a pack source directory.
pub fn write_source(dir: &Path, manifest: &str) {
    fs::create_dir_all(dir.join("plugins")).unwrap();
    fs::create_dir_all(dir.join("rules")).unwrap();
    fs::write(dir.join("plugins/alpha.wasm"), WASM_ALPHA).unwrap();
    fs::write(dir.join("plugins/beta.wasm"), WASM_BETA).unwrap();
    fs::write(dir.join("rules/main.yml"), RULES).unwrap();
    fs::write(dir.join("pack.toml"), manifest).unwrap();
}

/// A temp dir with a trusted signing key and helpers to build packs.
pub struct Fixture {
    pub tmp: TempDir,
    pub keys: KeyPairPaths,
    pub key: SecretKey,
    pub trust: TrustStore,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let keys = keygen(&tmp.path().join("keys"), "vendor", None).unwrap();
        let key = SecretKey::from_file(&keys.secret, None).unwrap();
        let public = PublicKey::from_file(&keys.public).unwrap();
        let trust = TrustStore::from_pinned([("vendor", public.to_base64())]).unwrap();
        Fixture { tmp, keys, key, trust }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Builds and signs the fixture pack at `version` with extra top-level keys.
    pub fn built(&self, version: &str, extra: &str) -> BuiltPack {
        self.built_from(&manifest_template(version, extra))
    }

    /// Builds and signs a pack from a manifest template.
    pub fn built_from(&self, manifest: &str) -> BuiltPack {
        let src = self.tmp.path().join(format!("src-{}", unique()));
        write_source(&src, manifest);
        let built = build(&src, &self.path("out")).unwrap();
        sign(&built.path, &self.key, None).unwrap();
        built
    }

    /// Writes `bytes` as an archive and signs it with the trusted key (via the
    /// minisign crate, as a vendor's own tooling would: no content checks).
    pub fn signed_raw(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, bytes).unwrap();
        sign_raw(&path, &self.keys.secret, None);
        path
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Signs `path` with the unencrypted minisign secret key file `key_file`,
/// writing `<path>.minisig`, without any pack checks.
pub fn sign_raw(path: &Path, key_file: &Path, trusted_comment: Option<&str>) {
    let text = fs::read_to_string(key_file).unwrap();
    let sk = minisign::SecretKeyBox::from_string(&text).unwrap().into_unencrypted_secret_key().unwrap();
    let data = fs::read(path).unwrap();
    let sig = minisign::sign(None, &sk, Cursor::new(data), trusted_comment, None).unwrap();
    fs::write(edr_pack::signature_path(path), sig.into_string()).unwrap();
}

/// The default policy for agent 0.1.0.
pub fn policy() -> VerifyPolicy {
    VerifyPolicy::new(Version::new(0, 1, 0))
}

/// The files of a (zstd) pack archive, in archive order.
pub fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let tar = zstd::decode_all(bytes).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, data));
    }
    out
}

/// The files of an archive as a map.
pub fn unpack_map(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    unpack(bytes).into_iter().collect()
}

/// A zstd-compressed tar of regular files, in the order given.
pub fn pack(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// One hand-written tar entry, for entries the tar crate's builder refuses
/// to write (`..`, absolute paths) and special types.
pub struct RawEntry<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub data: &'a [u8],
    pub link: Option<&'a [u8]>,
}

impl<'a> RawEntry<'a> {
    pub fn file(name: &'a str, data: &'a [u8]) -> Self {
        RawEntry { name: name.as_bytes(), kind: tar::EntryType::Regular, data, link: None }
    }
}

/// A zstd-compressed tar written header by header.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let bytes = h.as_mut_bytes();
            bytes[..100].fill(0);
            bytes[..e.name.len()].copy_from_slice(e.name);
        }
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.data.len() as u64);
        if let Some(link) = e.link {
            h.set_link_name_literal(link).unwrap();
        }
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// True when the minisign CLI is installed.
pub fn minisign_cli() -> bool {
    std::process::Command::new("minisign").arg("-v").output().is_ok()
}
