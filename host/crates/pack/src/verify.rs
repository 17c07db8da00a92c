//! Verification (what the agent runs before installing a pack) and
//! inspection (showing a pack without trusting it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ct_codecs::{Base64, Decoder};
use edr_event::EventKind;
use semver::Version;
use sha2::{Digest, Sha256};

use crate::archive::{self, ReadLimits};
use crate::error::Rejection;
use crate::keys::{KeyId, TrustStore};
use crate::manifest::{ActionKind, Capability, DateTime, Limits, Manifest, Mode, MANIFEST_FILE};

/// Default `max_archive_bytes`: 64 MiB.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 64 * 1024 * 1024;
/// Default `max_unpacked_bytes`: 256 MiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;
/// Default `max_files`: 1000 entries.
pub const DEFAULT_MAX_FILES: usize = 1000;
/// The plugin contract plugins are built against today, as manifests name it
/// (`major.minor` of [`edr_event::versions::CURRENT`]).
pub const CURRENT_CONTRACT: &str = edr_event::versions::major_minor(edr_event::versions::CURRENT);
/// Largest signature file accepted (a minisign signature is ~300 bytes plus
/// its trusted comment).
pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;
/// Suffix of a detached signature file.
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// Suffix of a pack archive file.
pub const ARCHIVE_SUFFIX: &str = ".edrpack";

/// What the agent accepts. Build one with [`VerifyPolicy::new`] and adjust
/// fields as needed.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    /// The current time, for `not_before` and `expires`.
    pub now: SystemTime,
    /// The agent's own version, for `min_agent_version`.
    pub agent_version: Version,
    /// Contract versions (`MAJOR.MINOR`) the agent implements.
    pub supported_contracts: Vec<String>,
    /// The id of the pack the agent expects this archive to be. When set, a
    /// pack whose signed manifest has another id is refused
    /// (`unexpected_pack`). Set it together with `installed_version`: the
    /// id an agent reads from a file name or from [`inspect`] is not
    /// authenticated, and without this check a signed old version of pack A
    /// named like pack B would be compared with B's installed version.
    pub expected_id: Option<String>,
    /// The installed version of the pack being verified (of `expected_id`),
    /// if any (anti-rollback: only strictly greater versions are accepted).
    pub installed_version: Option<Version>,
    /// Largest archive file accepted, in bytes.
    pub max_archive_bytes: u64,
    /// Largest total of unpacked file bytes accepted.
    pub max_unpacked_bytes: u64,
    /// Most archive entries accepted.
    pub max_files: usize,
}

impl VerifyPolicy {
    /// The defaults for an agent of version `agent_version`: now, contract
    /// [`CURRENT_CONTRACT`], any pack id, nothing installed, 64 MiB archive, 256 MiB
    /// unpacked, 1000 entries.
    pub fn new(agent_version: Version) -> VerifyPolicy {
        VerifyPolicy {
            now: SystemTime::now(),
            agent_version,
            // Every version the runtime links side by side.
            supported_contracts: edr_event::versions::ALL.iter().map(|v| edr_event::versions::major_minor(v).to_string()).collect(),
            expected_id: None,
            installed_version: None,
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_files: DEFAULT_MAX_FILES,
        }
    }

    fn read_limits(&self) -> ReadLimits {
        ReadLimits { max_unpacked_bytes: self.max_unpacked_bytes, max_files: self.max_files }
    }
}

/// Who signed a verified pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The signing key's id.
    pub key_id: KeyId,
    /// The name the trust store gives that key.
    pub name: String,
}

/// One plugin of a verified pack, with everything the agent needs to load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackPlugin {
    /// The plugin's name.
    pub name: String,
    /// The wasm component's bytes (hash-checked).
    pub wasm: Vec<u8>,
    /// Lower-case hex SHA-256 of `wasm` (for compile caches and logs).
    pub wasm_sha256: String,
    /// Event kinds it subscribes to.
    pub subscriptions: Vec<EventKind>,
    /// Capabilities it requests.
    pub capabilities: Vec<Capability>,
    /// Response actions it requests.
    pub actions: Vec<ActionKind>,
    /// Resource limit overrides it requests.
    pub limits: Limits,
    /// Its default settings.
    pub settings: BTreeMap<String, String>,
    /// Its data files: (path in the pack, bytes), hash-checked, in manifest order.
    pub data: Vec<(String, Vec<u8>)>,
}

/// A pack that passed every check of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPack {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Who signed it.
    pub signer: Signer,
    /// The signature's trusted comment (signed).
    pub trusted_comment: String,
    /// Lower-case hex SHA-256 of the archive file.
    pub archive_sha256: String,
    /// The plugins, in manifest order.
    pub plugins: Vec<PackPlugin>,
}

/// The path of the detached signature of `archive`: `<archive>.minisig`.
pub fn signature_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(SIGNATURE_SUFFIX);
    PathBuf::from(s)
}

/// The canonical archive file name of a pack: `<id>-<version>.edrpack`.
pub fn archive_file_name(id: &str, version: &Version) -> String {
    format!("{id}-{version}{ARCHIVE_SUFFIX}")
}

/// Verifies the pack at `archive_path` with the detached signature at
/// `signature_path` (normally [`signature_path`]`(archive_path)`), against
/// the pinned keys and the policy, in the order of FORMAT.md, failing closed.
///
/// The archive file is read once, into memory (bounded by
/// `max_archive_bytes`); every check runs on those bytes, so a file swapped
/// on disk during verification cannot slip through.
pub fn verify(archive_path: &Path, signature_path: &Path, trust: &TrustStore, policy: &VerifyPolicy) -> Result<VerifiedPack, Rejection> {
    let result = read_bounded(archive_path, policy.max_archive_bytes).and_then(|bytes| {
        let signature = read_signature(signature_path)?;
        verify_bytes(&bytes, &signature, trust, policy)
    });
    log_outcome(&archive_path.display().to_string(), &result);
    result
}

/// Verifies a pack held in memory (e.g. just downloaded) with its signature
/// file's text. Same checks and order as [`verify`].
pub fn verify_bytes(archive: &[u8], signature: &str, trust: &TrustStore, policy: &VerifyPolicy) -> Result<VerifiedPack, Rejection> {
    // 1. Size.
    if archive.len() as u64 > policy.max_archive_bytes {
        return Err(Rejection::TooLarge { size: archive.len() as u64, limit: policy.max_archive_bytes });
    }
    // 2. Signature, before anything in the archive is parsed.
    let (signer, trusted_comment) = check_signature(archive, signature, trust)?;
    let archive_sha256 = hex::encode(Sha256::digest(archive));

    // 3. Decompress and read the entries within the limits.
    let mut files = archive::read_files(archive, policy.read_limits())?;

    // 4. The manifest.
    let manifest = parse_manifest(&files)?;
    check_trusted_comment(&trusted_comment, &manifest)?;
    if let Some(expected) = &policy.expected_id {
        if *expected != manifest.id {
            return Err(Rejection::UnexpectedPack { expected: expected.clone(), found: manifest.id.clone() });
        }
    }

    // 5. Files: present, hashes, nothing unlisted.
    check_files(&files, &manifest)?;

    // 6. Contract and agent version.
    if !policy.supported_contracts.contains(&manifest.contract) {
        return Err(Rejection::UnsupportedContract { contract: manifest.contract.clone(), supported: policy.supported_contracts.clone() });
    }
    if manifest.min_agent_version > policy.agent_version {
        return Err(Rejection::AgentTooOld { required: manifest.min_agent_version.clone(), agent: policy.agent_version.clone() });
    }

    // 7. Validity window.
    let now = DateTime::from_system_time(policy.now);
    if let Some(nb) = manifest.not_before {
        if now < nb {
            return Err(Rejection::NotYetValid { not_before: nb.to_string(), now: now.to_string() });
        }
    }
    if let Some(ex) = manifest.expires {
        if now >= ex {
            return Err(Rejection::Expired { expires: ex.to_string(), now: now.to_string() });
        }
    }

    // 8. Anti-rollback.
    if let Some(installed) = &policy.installed_version {
        if manifest.version < *installed {
            return Err(Rejection::Rollback { installed: installed.clone(), offered: manifest.version.clone() });
        }
        if manifest.version == *installed {
            return Err(Rejection::AlreadyInstalled { version: installed.clone() });
        }
    }

    // Hand out the contents. Component paths are never data paths (the
    // manifest rules keep every path unique), so components move out of the
    // map while data files, which plugins may share, are copied.
    let mut plugins = Vec::with_capacity(manifest.plugins.len());
    for p in &manifest.plugins {
        let data = p.data.iter().map(|d| (d.clone(), files.get(d).cloned().unwrap_or_default())).collect();
        plugins.push(PackPlugin {
            name: p.name.clone(),
            wasm: files.remove(&p.file).unwrap_or_default(),
            wasm_sha256: p.sha256.clone(),
            subscriptions: p.subscriptions.clone(),
            capabilities: p.capabilities.clone(),
            actions: p.actions.clone(),
            limits: p.limits,
            settings: p.settings.clone(),
            data,
        });
    }
    Ok(VerifiedPack { manifest, signer, trusted_comment, archive_sha256, plugins })
}

fn log_outcome(what: &str, result: &Result<VerifiedPack, Rejection>) {
    match result {
        Ok(p) => {
            tracing::info!(archive = %what, pack = %p.manifest.id, version = %p.manifest.version, signer = %p.signer.name, key_id = %p.signer.key_id, "pack verified")
        }
        Err(r) if r.is_benign() => tracing::debug!(archive = %what, reason = r.reason_code(), "pack already installed"),
        Err(r) => tracing::warn!(archive = %what, reason = r.reason_code(), "pack rejected: {r}"),
    }
}

/// Reads a file of at most `limit` bytes; a bigger file is `TooLarge`
/// without being read past the limit.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Rejection> {
    let unreadable = |e: std::io::Error| Rejection::Unreadable { path: path.to_path_buf(), message: e.to_string() };
    let file = File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len > limit {
        return Err(Rejection::TooLarge { size: len, limit });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        // The file grew while being read.
        return Err(Rejection::TooLarge { size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

fn read_signature(path: &Path) -> Result<String, Rejection> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Rejection::MissingSignature { path: path.to_path_buf() }),
        _ => {}
    }
    let bytes = match read_bounded(path, MAX_SIGNATURE_BYTES) {
        Ok(b) => b,
        Err(Rejection::TooLarge { size, .. }) => {
            return Err(Rejection::MalformedSignature {
                message: format!("the signature file is {size} bytes, more than the limit of {MAX_SIGNATURE_BYTES} bytes (a minisign signature is under 64 KiB); refused without reading it"),
            })
        }
        Err(e) => return Err(e),
    };
    String::from_utf8(bytes).map_err(|_| Rejection::MalformedSignature { message: "the signature file is not UTF-8 text".into() })
}

/// Parses a `.minisig` text, checking its shape first: the minisign crate's
/// parser assumes well-sized fields (and asserts on them in debug builds).
fn parse_signature(text: &str) -> Result<(minisign::SignatureBox, KeyId), Rejection> {
    let malformed = |m: &str| Rejection::MalformedSignature { message: m.to_string() };
    if text.trim().is_empty() {
        return Err(malformed("the signature file is empty"));
    }
    if text.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err(malformed(&format!("the signature is {} bytes, a minisign signature is under 64 KiB", text.len())));
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 4 || lines[4..].iter().any(|l| !l.trim().is_empty()) {
        return Err(malformed("a minisign signature has exactly four lines (untrusted comment, signature, trusted comment, global signature)"));
    }
    if !lines[0].starts_with("untrusted comment: ") {
        return Err(malformed("line 1 must start with `untrusted comment: `"));
    }
    let sig = Base64::decode_to_vec(lines[1].trim(), None).map_err(|_| malformed("line 2 (the signature) is not base64"))?;
    if sig.len() != 74 {
        return Err(malformed(&format!("line 2 decodes to {} bytes, a minisign signature is 74", sig.len())));
    }
    match &sig[..2] {
        b"ED" => {}
        b"Ed" => return Err(malformed("legacy (non-prehashed) minisign signature; sign with minisign 0.10 or later, which prehashes by default")),
        _ => return Err(malformed("unknown signature algorithm (expected `ED`, Ed25519 over a BLAKE2b prehash)")),
    }
    if !lines[2].starts_with("trusted comment: ") {
        return Err(malformed("line 3 must start with `trusted comment: `"));
    }
    let global = Base64::decode_to_vec(lines[3].trim(), None).map_err(|_| malformed("line 4 (the global signature) is not base64"))?;
    if global.len() != 64 {
        return Err(malformed(&format!("line 4 decodes to {} bytes, a global signature is 64", global.len())));
    }
    let sig_box = minisign::SignatureBox::from_string(text).map_err(|e| malformed(&e.to_string()))?;
    Ok((sig_box, KeyId::from_slice(&sig[2..10])))
}

/// Verifies the signature over the archive bytes with the pinned key it names.
fn check_signature(archive: &[u8], text: &str, trust: &TrustStore) -> Result<(Signer, String), Rejection> {
    let (sig_box, key_id) = parse_signature(text)?;
    let Some((name, key)) = trust.get(&key_id) else {
        return Err(Rejection::UnknownKey { key_id });
    };
    minisign::verify(&key.inner, &sig_box, Cursor::new(archive), true, false, false).map_err(|e| Rejection::BadSignature {
        key_id,
        signer: name.to_string(),
        message: e.to_string(),
    })?;
    let trusted_comment =
        sig_box.trusted_comment().map_err(|e| Rejection::MalformedSignature { message: format!("the trusted comment is unreadable: {e}") })?;
    Ok((Signer { key_id, name: name.to_string() }, trusted_comment))
}

/// The `key:value` fields of a trusted comment (tab-separated).
pub(crate) fn comment_fields(comment: &str) -> BTreeMap<&str, &str> {
    comment.split('\t').filter_map(|f| f.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect()
}

fn check_trusted_comment(comment: &str, manifest: &Manifest) -> Result<(), Rejection> {
    let fields = comment_fields(comment);
    if let Some(pack) = fields.get("pack") {
        if *pack != manifest.id {
            return Err(Rejection::SignedCommentMismatch { field: "pack", signed: pack.to_string(), manifest: manifest.id.clone() });
        }
    }
    if let Some(version) = fields.get("version") {
        if *version != manifest.version.to_string() {
            return Err(Rejection::SignedCommentMismatch { field: "version", signed: version.to_string(), manifest: manifest.version.to_string() });
        }
    }
    Ok(())
}

fn parse_manifest(files: &BTreeMap<String, Vec<u8>>) -> Result<Manifest, Rejection> {
    let bytes = files.get(MANIFEST_FILE).ok_or_else(|| Rejection::MissingFile { file: MANIFEST_FILE.to_string() })?;
    let text = std::str::from_utf8(bytes).map_err(|e| Rejection::MalformedManifest { message: format!("not UTF-8: {e}") })?;
    Manifest::parse(text, Mode::Final).map_err(|message| Rejection::MalformedManifest { message })
}

fn check_files(files: &BTreeMap<String, Vec<u8>>, manifest: &Manifest) -> Result<(), Rejection> {
    let mut listed = BTreeSet::new();
    listed.insert(MANIFEST_FILE);
    for (path, expected) in manifest.files() {
        listed.insert(path);
        let data = files.get(path).ok_or_else(|| Rejection::MissingFile { file: path.to_string() })?;
        let actual = hex::encode(Sha256::digest(data));
        if actual != expected {
            return Err(Rejection::HashMismatch { file: path.to_string(), expected: expected.to_string(), actual });
        }
    }
    if let Some(extra) = files.keys().find(|p| !listed.contains(p.as_str())) {
        return Err(Rejection::UnlistedFile { path: extra.clone() });
    }
    Ok(())
}

/// One file of an inspected pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedFile {
    /// Path in the pack.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// What the manifest pins for it: `None` if the manifest does not name
    /// the file (the manifest itself, or an unlisted file).
    pub pinned_sha256: Option<String>,
}

/// What [`inspect`] found. **Nothing here is verified**: the signature was
/// not checked, so anyone could have written this manifest. Use it to show a
/// pack to a person, never to decide whether to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedPack {
    /// The manifest, parsed and validated but NOT authenticated.
    pub unverified_manifest: Manifest,
    /// Lower-case hex SHA-256 of the archive file.
    pub archive_sha256: String,
    /// Size of the archive file.
    pub archive_bytes: u64,
    /// Every file in the archive.
    pub files: Vec<InspectedFile>,
    /// Key id named by `<archive>.minisig`, when that file exists and parses
    /// (NOT checked).
    pub unverified_key_id: Option<KeyId>,
    /// Trusted comment of `<archive>.minisig`, when it exists and parses (NOT checked).
    pub unverified_trusted_comment: Option<String>,
}

/// Reads a pack without checking its signature (with the default limits and
/// the same entry rules as [`verify`], so a hostile pack is safe to inspect).
pub fn inspect(archive_path: &Path) -> Result<UnverifiedPack, Rejection> {
    let bytes = read_bounded(archive_path, DEFAULT_MAX_ARCHIVE_BYTES)?;
    let limits = ReadLimits { max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES, max_files: DEFAULT_MAX_FILES };
    let files = archive::read_files(&bytes, limits)?;
    let manifest = parse_manifest(&files)?;
    let pinned: BTreeMap<&str, &str> = manifest.files().collect();
    let inspected = files
        .iter()
        .map(|(path, data)| InspectedFile {
            path: path.clone(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            pinned_sha256: pinned.get(path.as_str()).map(|s| s.to_string()),
        })
        .collect();
    let signature = read_signature(&signature_path(archive_path)).ok().and_then(|t| parse_signature(&t).ok());
    let (unverified_key_id, unverified_trusted_comment) = match signature {
        Some((sig_box, key_id)) => (Some(key_id), sig_box.trusted_comment().ok()),
        None => (None, None),
    };
    Ok(UnverifiedPack {
        unverified_manifest: manifest,
        archive_sha256: hex::encode(Sha256::digest(&bytes)),
        archive_bytes: bytes.len() as u64,
        files: inspected,
        unverified_key_id,
        unverified_trusted_comment,
    })
}

/// The content checks of [`verify`] without the signature and the policy
/// (default limits): what `sign` runs so a broken pack is never signed.
pub(crate) fn check_unsigned(bytes: &[u8]) -> Result<Manifest, Rejection> {
    let limits = ReadLimits { max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES, max_files: DEFAULT_MAX_FILES };
    let files = archive::read_files(bytes, limits)?;
    let manifest = parse_manifest(&files)?;
    check_files(&files, &manifest)?;
    Ok(manifest)
}
