//! Minisign keys: key ids, public keys (as pinned by agents), secret keys
//! (as held by publishers), key generation and the agent's trust store.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ct_codecs::{Base64, Decoder};

use crate::error::PackError;

/// Length of a public key's base64 line (2 algorithm bytes, 8 key id bytes,
/// 32 Ed25519 bytes).
const PUBLIC_KEY_B64_LEN: usize = 56;
/// Decoded length of a minisign public key.
const PUBLIC_KEY_BYTES: usize = 42;
/// Decoded length of a minisign secret key.
const SECRET_KEY_BYTES: usize = 158;
/// Ed25519 algorithm id of minisign keys.
const SIG_ALG_ED25519: &[u8; 2] = b"Ed";
/// Key derivation id of an unencrypted secret key.
const KDF_NONE: [u8; 2] = [0, 0];
/// Key derivation id of a scrypt-encrypted secret key.
const KDF_SCRYPT: &[u8; 2] = b"Sc";

/// A minisign key id: 8 bytes chosen at key generation, carried by every
/// signature so the verifier knows which key to check it with.
///
/// Displayed (and parsed) as minisign prints it: 16 upper-case hex digits of
/// the little-endian 64-bit number, e.g. `E2E0CB4A0C4E6C8F`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub(crate) fn from_slice(bytes: &[u8]) -> KeyId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = String;

    /// Parses 16 hex digits (either case), as `minisign` prints a key id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(format!("a key id is 16 hex digits, got {} characters", s.len()));
        }
        let n = u64::from_str_radix(s, 16).map_err(|e| format!("a key id is 16 hex digits: {e}"))?;
        Ok(KeyId(n.to_le_bytes()))
    }
}

/// A minisign public key: what an agent pins to trust a publisher.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub(crate) inner: minisign::PublicKey,
    id: KeyId,
    base64: String,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.base64 == other.base64
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Parses the bare base64 line of a minisign public key (`RWQ...`, 56
    /// characters), as pinned in an agent's configuration. Surrounding
    /// whitespace is ignored.
    pub fn from_base64(line: &str) -> Result<PublicKey, PackError> {
        Self::parse_line(line.trim(), "inline")
    }

    /// Parses either a whole minisign public key file (an `untrusted
    /// comment:` line then the base64 line) or the bare base64 line.
    /// `origin` names where the text came from, for error messages.
    pub fn from_minisign_text(text: &str, origin: &str) -> Result<PublicKey, PackError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or_else(|| invalid_public(origin, "the key is empty"))?;
        let line = if first.starts_with("untrusted comment:") {
            lines.next().ok_or_else(|| invalid_public(origin, "the comment line is not followed by the base64 key line"))?
        } else {
            first
        };
        if let Some(extra) = lines.next() {
            return Err(invalid_public(origin, &format!("unexpected extra line `{}` after the key", truncate(extra, 40))));
        }
        Self::parse_line(line, origin)
    }

    /// Reads a minisign public key file (such as `minisign.pub`, or the
    /// `<name>.pub` that [`keygen`] writes).
    pub fn from_file(path: &Path) -> Result<PublicKey, PackError> {
        let text = read_small_text(path, "public key")?;
        Self::from_minisign_text(&text, &path.display().to_string())
    }

    fn parse_line(line: &str, origin: &str) -> Result<PublicKey, PackError> {
        if line.len() != PUBLIC_KEY_B64_LEN {
            return Err(invalid_public(origin, &format!("the base64 key line must be {PUBLIC_KEY_B64_LEN} characters, got {}", line.len())));
        }
        let bytes = Base64::decode_to_vec(line, None).map_err(|e| invalid_public(origin, &format!("not base64: {e}")))?;
        if bytes.len() != PUBLIC_KEY_BYTES {
            return Err(invalid_public(origin, &format!("decodes to {} bytes, expected {PUBLIC_KEY_BYTES}", bytes.len())));
        }
        if &bytes[..2] != SIG_ALG_ED25519 {
            return Err(invalid_public(origin, "not an Ed25519 minisign key (algorithm bytes are not `Ed`)"));
        }
        let inner = minisign::PublicKey::from_bytes(&bytes).map_err(|e| invalid_public(origin, &e.to_string()))?;
        Ok(PublicKey { inner, id: KeyId::from_slice(&bytes[2..10]), base64: line.to_string() })
    }

    /// The key's id, as signatures name it.
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The base64 line, as pinned in an agent's configuration.
    pub fn to_base64(&self) -> String {
        self.base64.clone()
    }

    /// The contents of a minisign public key file for this key.
    pub fn to_minisign_file(&self) -> String {
        format!("untrusted comment: minisign public key {}\n{}\n", self.id, self.base64)
    }
}

/// A minisign secret key, decrypted and ready to sign.
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) inner: minisign::SecretKey,
    pub(crate) public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("key_id", &self.public.id).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Reads a minisign secret key file: an unencrypted one (written by
    /// [`keygen`] without a password or by `minisign -G -W`) when `password`
    /// is `None`, or a scrypt-encrypted one (written by `minisign -G` or by
    /// [`keygen`] with a password) with its password. Never prompts.
    pub fn from_file(path: &Path, password: Option<&str>) -> Result<SecretKey, PackError> {
        let text = read_small_text(path, "secret key")?;
        let invalid = |message: String| PackError::InvalidKey { kind: "secret", origin: path.display().to_string(), message };
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let comment = lines.next().ok_or_else(|| invalid("the file is empty".into()))?;
        if !comment.starts_with("untrusted comment:") {
            return Err(invalid("the first line must be an `untrusted comment:` line".into()));
        }
        let line = lines.next().ok_or_else(|| invalid("the base64 key line is missing".into()))?;
        let bytes = Base64::decode_to_vec(line, None).map_err(|e| invalid(format!("not base64: {e}")))?;
        if bytes.len() != SECRET_KEY_BYTES {
            return Err(invalid(format!("decodes to {} bytes, expected {SECRET_KEY_BYTES}", bytes.len())));
        }
        if &bytes[..2] != SIG_ALG_ED25519 {
            return Err(invalid("not an Ed25519 minisign key (algorithm bytes are not `Ed`)".into()));
        }
        let sk_box = minisign::SecretKeyBox::from_string(&format!("{comment}\n{line}\n")).map_err(|e| invalid(e.to_string()))?;
        let kdf = [bytes[2], bytes[3]];
        let inner = if kdf == KDF_NONE {
            if bytes[SECRET_KEY_BYTES - 32..].iter().all(|&b| b == 0) {
                // `minisign -G -W` (0.11) leaves the checksum of an
                // unencrypted key zeroed; the probe signature below catches
                // a corrupted key instead.
                minisign::SecretKey::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))?
            } else {
                sk_box.into_unencrypted_secret_key().map_err(|e| invalid(e.to_string()))?
            }
        } else if &kdf == KDF_SCRYPT {
            let Some(password) = password else {
                return Err(PackError::PasswordRequired { path: path.to_path_buf() });
            };
            match sk_box.into_secret_key(Some(password.to_string())) {
                Ok(sk) => sk,
                Err(e) if matches!(e.kind(), minisign::ErrorKind::Verify) => return Err(PackError::WrongPassword { path: path.to_path_buf() }),
                Err(e) => return Err(invalid(e.to_string())),
            }
        } else {
            return Err(invalid(format!("unsupported key derivation algorithm {kdf:02X?}")));
        };
        Self::from_minisign(inner, &path.display().to_string())
    }

    /// Wraps a decrypted key, checking that its secret and public halves
    /// match by making and verifying a probe signature.
    fn from_minisign(inner: minisign::SecretKey, origin: &str) -> Result<SecretKey, PackError> {
        let invalid = |message: String| PackError::InvalidKey { kind: "secret", origin: origin.to_string(), message };
        let pk = minisign::PublicKey::from_secret_key(&inner).map_err(|e| invalid(e.to_string()))?;
        minisign::sign(Some(&pk), &inner, &b"edr-pack key check"[..], None, None)
            .map_err(|e| invalid(format!("the key is corrupted (its probe signature does not verify: {e})")))?;
        let public = PublicKey::parse_line(&pk.to_base64(), origin)?;
        Ok(SecretKey { inner, public })
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        self.public.id
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

/// The files [`keygen`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairPaths {
    /// `<dir>/<name>.pub`: the public key, to publish and pin in agents.
    pub public: PathBuf,
    /// `<dir>/<name>.key`: the secret key (mode 0600), to keep offline.
    pub secret: PathBuf,
    /// The new key's id.
    pub key_id: KeyId,
}

/// Generates a minisign key pair and writes `<dir>/<name>.pub` and
/// `<dir>/<name>.key` (mode 0600), refusing to overwrite either.
///
/// With `password: None` the secret key is stored unencrypted (like
/// `minisign -G -W`), which suits a key kept in a hardware-protected or
/// offline signing host; with a password it is encrypted with scrypt (like
/// `minisign -G`). Both files are readable by the minisign CLI.
pub fn keygen(dir: &Path, name: &str, password: Option<&str>) -> Result<KeyPairPaths, PackError> {
    validate_key_name(name)?;
    fs::create_dir_all(dir).map_err(|e| PackError::io("cannot create directory", dir, e))?;
    let public_path = dir.join(format!("{name}.pub"));
    let secret_path = dir.join(format!("{name}.key"));
    for p in [&public_path, &secret_path] {
        if p.symlink_metadata().is_ok() {
            return Err(PackError::KeyExists { path: p.clone() });
        }
    }
    let crypto = |e: minisign::PError| PackError::Crypto { action: "key generation failed", message: e.to_string() };
    let pair = match password {
        None => minisign::KeyPair::generate_unencrypted_keypair().map_err(crypto)?,
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw.to_string())).map_err(crypto)?,
    };
    let public = PublicKey::parse_line(&pair.pk.to_base64(), "generated key")?;
    let comment = match password {
        None => format!("edr-pack secret key {name} {} (unencrypted)", public.id),
        Some(_) => format!("edr-pack secret key {name} {} (scrypt-encrypted)", public.id),
    };
    let secret_text = pair.sk.to_box(Some(&comment)).map_err(crypto)?.into_string();

    write_new(&secret_path, secret_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, public.to_minisign_file().as_bytes(), 0o644) {
        // Leave no half-written pair behind.
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    tracing::info!(key_id = %public.id, public = %public_path.display(), secret = %secret_path.display(), encrypted = password.is_some(), "generated pack signing key");
    Ok(KeyPairPaths { public: public_path, secret: secret_path, key_id: public.id })
}

fn validate_key_name(name: &str) -> Result<(), PackError> {
    let bad = |why| Err(PackError::InvalidKeyName { name: name.to_string(), why });
    if name.is_empty() || name.len() > 64 {
        return bad("it must be 1 to 64 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it must not start with `.` or `-`");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("it may contain only letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PackError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PackError::KeyExists { path: path.to_path_buf() }
        } else {
            PackError::io("cannot create", path, e)
        }
    })?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| PackError::io("cannot write", path, e))
}

/// Reads a key file, refusing anything implausibly large for a key.
fn read_small_text(path: &Path, what: &'static str) -> Result<String, PackError> {
    use std::io::Read;
    const MAX_KEY_FILE: u64 = 16 * 1024;
    let too_big = |len: u64| PackError::InvalidKey {
        kind: if what == "public key" { "public" } else { "secret" },
        origin: path.display().to_string(),
        message: format!("the file is {len} bytes; a minisign key file is under 1 KiB"),
    };
    // The size of the opened file, then at most one byte past the limit.
    let file = fs::File::open(path).map_err(|e| PackError::io("cannot read", path, e))?;
    let len = file.metadata().map_err(|e| PackError::io("cannot read", path, e))?.len();
    if len > MAX_KEY_FILE {
        return Err(too_big(len));
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1).read_to_string(&mut text).map_err(|e| PackError::io("cannot read", path, e))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

fn invalid_public(origin: &str, message: &str) -> PackError {
    PackError::InvalidKey { kind: "public", origin: origin.to_string(), message: message.to_string() }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).chain("...".chars()).collect()
    }
}

/// The agent's pinned publisher keys, each with a name (for logs, alerts and
/// [`crate::VerifiedPack::signer`]), looked up by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<KeyId, (String, PublicKey)>,
}

impl TrustStore {
    /// An empty trust store (which trusts nothing: every pack is refused with
    /// `unknown_key`).
    pub fn new() -> TrustStore {
        TrustStore::default()
    }

    /// Pins `key` under `name`. Names and key ids must both be unique.
    pub fn add(&mut self, name: impl Into<String>, key: PublicKey) -> Result<(), PackError> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(PackError::TrustStore { message: format!("key {} has an empty name", key.id) });
        }
        if let Some((existing, _)) = self.keys.get(&key.id) {
            return Err(PackError::TrustStore { message: format!("key id {} is pinned twice (as `{existing}` and `{name}`)", key.id) });
        }
        if self.keys.values().any(|(n, _)| *n == name) {
            return Err(PackError::TrustStore { message: format!("two keys are named `{name}`; give each pinned key its own name") });
        }
        tracing::debug!(key_id = %key.id, name = %name, "pinned pack signing key");
        self.keys.insert(key.id, (name, key));
        Ok(())
    }

    /// Builds a trust store from `(name, key)` pairs as found in an agent
    /// configuration, each key being a base64 line or a whole `.pub` file's text.
    pub fn from_pinned<I, N, K>(pairs: I) -> Result<TrustStore, PackError>
    where
        I: IntoIterator<Item = (N, K)>,
        N: Into<String>,
        K: AsRef<str>,
    {
        let mut store = TrustStore::new();
        for (name, key) in pairs {
            let name = name.into();
            let key = PublicKey::from_minisign_text(key.as_ref(), &format!("pinned key `{name}`"))?;
            store.add(name, key)?;
        }
        Ok(store)
    }

    /// The name and key pinned for `key_id`.
    pub fn get(&self, key_id: &KeyId) -> Option<(&str, &PublicKey)> {
        self.keys.get(key_id).map(|(n, k)| (n.as_str(), k))
    }

    /// Number of pinned keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is pinned.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The pinned keys, by key id.
    pub fn iter(&self) -> impl Iterator<Item = (KeyId, &str, &PublicKey)> {
        self.keys.iter().map(|(id, (n, k))| (*id, n.as_str(), k))
    }
}
