//! Errors: [`Rejection`] (why the agent refuses a pack) and [`PackError`]
//! (why a publisher-side operation, such as building or signing, failed).

use std::path::PathBuf;

use crate::keys::KeyId;

/// Why a pack was refused by [`crate::verify`] (or could not be read by
/// [`crate::inspect`]).
///
/// There is one variant per reason; each message says what is wrong and what
/// to do about it. [`Rejection::reason_code`] gives a short stable string for
/// metrics and status reports. A refused pack must not be installed: the
/// agent keeps serving the version it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The archive (or its signature) could not be read from disk.
    #[error("cannot read {}: {message}; check that the file exists and is readable by the agent", path.display())]
    Unreadable {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },

    /// The archive file is bigger than the policy allows.
    #[error(
        "the archive is {size} bytes, more than the limit of {limit} bytes (max_archive_bytes); raise the limit only if the publisher confirms a pack this big"
    )]
    TooLarge {
        /// The archive's size in bytes (at least; reading stops past the limit).
        size: u64,
        /// `VerifyPolicy::max_archive_bytes`.
        limit: u64,
    },

    /// There is no signature file next to the archive.
    #[error("no signature at {}: a pack is installed only with its detached minisign signature `<archive>.minisig`; fetch it from the publisher", path.display())]
    MissingSignature {
        /// Where the signature was expected.
        path: PathBuf,
    },

    /// The signature file is not a minisign signature this verifier accepts.
    #[error("malformed signature: {message}; re-sign the pack with `minisign -S` (0.10 or later) or `edr pack sign`")]
    MalformedSignature {
        /// What is wrong with it.
        message: String,
    },

    /// The signature was made by a key that is not in the trust store.
    #[error("signed by key {key_id}, which is not a trusted pack key; pin the publisher's public key in the agent's configuration if you trust it")]
    UnknownKey {
        /// The signing key's id (as `minisign` prints it).
        key_id: KeyId,
    },

    /// The signature does not verify: the archive or the signature was altered,
    /// or the key's id collides with a pinned key of another publisher.
    #[error("the signature by key {key_id} ({signer}) does not verify: {message}; the archive or its signature was modified after signing, do not install it and fetch the pack again from the publisher")]
    BadSignature {
        /// The key id named by the signature.
        key_id: KeyId,
        /// The trust store's name for that key.
        signer: String,
        /// What failed.
        message: String,
    },

    /// The signed trusted comment names a different pack or version than the
    /// manifest.
    #[error("the signed trusted comment says {field} `{signed}` but the manifest says `{manifest}`; the signature belongs to another pack, fetch the matching signature")]
    SignedCommentMismatch {
        /// `pack` or `version`.
        field: &'static str,
        /// The value in the signed comment.
        signed: String,
        /// The value in the manifest.
        manifest: String,
    },

    /// The signed manifest names another pack than the one expected
    /// (`VerifyPolicy::expected_id`).
    #[error("the archive holds pack `{found}`, not the expected `{expected}`; it was misnamed or substituted, do not install it")]
    UnexpectedPack {
        /// `VerifyPolicy::expected_id`.
        expected: String,
        /// The manifest's id.
        found: String,
    },

    /// The (signed) archive is not a readable tar or zstd stream.
    #[error("malformed archive: {message}; the publisher signed a broken pack, report it to them")]
    MalformedArchive {
        /// What is wrong with it.
        message: String,
    },

    /// An entry's path or type is not allowed.
    #[error("unsafe archive entry `{path}`: {why}; packs hold only regular files under relative paths, report it to the publisher")]
    UnsafePath {
        /// The entry's path, lossily decoded.
        path: String,
        /// Why it is refused.
        why: String,
    },

    /// Two archive entries have the same path.
    #[error("the archive holds `{path}` twice; report it to the publisher")]
    DuplicateEntry {
        /// The repeated path.
        path: String,
    },

    /// The archive has more entries than the policy allows.
    #[error("the archive has more than {limit} entries (max_files); report it to the publisher")]
    TooManyFiles {
        /// `VerifyPolicy::max_files`.
        limit: usize,
    },

    /// The archive unpacks to more than the policy allows.
    #[error("the archive unpacks to more than {limit} bytes (max_unpacked_bytes): {detail}; refused as a possible decompression bomb, raise the limit only if the publisher confirms a pack this big")]
    DecompressionBomb {
        /// `VerifyPolicy::max_unpacked_bytes`.
        limit: u64,
        /// Where the limit was reached.
        detail: String,
    },

    /// A file the manifest names (or `pack.toml` itself) is not in the archive.
    #[error("`{file}` is missing from the archive; report the broken pack to the publisher")]
    MissingFile {
        /// The missing path.
        file: String,
    },

    /// A file's SHA-256 differs from the one pinned in the manifest.
    #[error("`{file}` has sha256 {actual} but the manifest pins {expected}; the pack was assembled wrongly, report it to the publisher")]
    HashMismatch {
        /// The file's path in the pack.
        file: String,
        /// The manifest's hash.
        expected: String,
        /// The hash of the file in the archive.
        actual: String,
    },

    /// The archive holds a file the manifest does not name.
    #[error(
        "the archive holds `{path}`, which the manifest does not name; packs may contain only pack.toml and the files it lists, report it to the publisher"
    )]
    UnlistedFile {
        /// The unlisted path.
        path: String,
    },

    /// `pack.toml` is not valid.
    #[error("malformed pack.toml: {message}")]
    MalformedManifest {
        /// What is wrong, with the line when known.
        message: String,
    },

    /// The pack targets a plugin contract this agent does not implement.
    #[error("the pack needs plugin contract {contract} but this agent supports {}; upgrade the agent or ask the publisher for a build for this contract", supported.join(", "))]
    UnsupportedContract {
        /// The manifest's `contract`.
        contract: String,
        /// `VerifyPolicy::supported_contracts`.
        supported: Vec<String>,
    },

    /// The agent is older than the pack's `min_agent_version`.
    #[error("the pack needs agent version {required} or later, this agent is {agent}; upgrade the agent first")]
    AgentTooOld {
        /// The manifest's `min_agent_version`.
        required: semver::Version,
        /// `VerifyPolicy::agent_version`.
        agent: semver::Version,
    },

    /// `now` is before the pack's `not_before`.
    #[error("the pack is valid only from {not_before} and it is now {now}; check the host's clock, or wait")]
    NotYetValid {
        /// The manifest's `not_before` (RFC 3339).
        not_before: String,
        /// The policy's `now` (RFC 3339).
        now: String,
    },

    /// `now` is at or after the pack's `expires`.
    #[error("the pack expired at {expires} and it is now {now}; install a newer pack from the publisher (or check the host's clock)")]
    Expired {
        /// The manifest's `expires` (RFC 3339).
        expires: String,
        /// The policy's `now` (RFC 3339).
        now: String,
    },

    /// The offered version is lower than the installed one (anti-rollback).
    #[error("version {offered} is older than the installed {installed}; refused to prevent a rollback to an older pack, remove the installed version by hand if a downgrade is really intended")]
    Rollback {
        /// The installed version.
        installed: semver::Version,
        /// The manifest's version.
        offered: semver::Version,
    },

    /// The offered version is the installed one: nothing to do.
    #[error("version {version} is already installed")]
    AlreadyInstalled {
        /// The version (installed and offered).
        version: semver::Version,
    },
}

impl Rejection {
    /// A short, stable, snake_case code for metrics and status reports
    /// (for example `bad_signature`). Codes are never renamed.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::Unreadable { .. } => "unreadable",
            Rejection::TooLarge { .. } => "archive_too_large",
            Rejection::MissingSignature { .. } => "missing_signature",
            Rejection::MalformedSignature { .. } => "malformed_signature",
            Rejection::UnknownKey { .. } => "unknown_key",
            Rejection::BadSignature { .. } => "bad_signature",
            Rejection::SignedCommentMismatch { .. } => "signed_comment_mismatch",
            Rejection::UnexpectedPack { .. } => "unexpected_pack",
            Rejection::MalformedArchive { .. } => "malformed_archive",
            Rejection::UnsafePath { .. } => "unsafe_path",
            Rejection::DuplicateEntry { .. } => "duplicate_entry",
            Rejection::TooManyFiles { .. } => "too_many_files",
            Rejection::DecompressionBomb { .. } => "decompression_bomb",
            Rejection::MissingFile { .. } => "missing_file",
            Rejection::HashMismatch { .. } => "hash_mismatch",
            Rejection::UnlistedFile { .. } => "unlisted_file",
            Rejection::MalformedManifest { .. } => "malformed_manifest",
            Rejection::UnsupportedContract { .. } => "unsupported_contract",
            Rejection::AgentTooOld { .. } => "agent_too_old",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::Expired { .. } => "expired",
            Rejection::Rollback { .. } => "rollback",
            Rejection::AlreadyInstalled { .. } => "already_installed",
        }
    }

    /// True for rejections that are not a problem: the pack is simply the one
    /// already installed. The agent can skip these without a warning.
    pub fn is_benign(&self) -> bool {
        matches!(self, Rejection::AlreadyInstalled { .. })
    }
}

/// Why a publisher-side operation (key generation, key loading, building,
/// signing, trust store setup) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A key file or key string is not a valid minisign key.
    #[error("invalid minisign {kind} key ({origin}): {message}")]
    InvalidKey {
        /// `public` or `secret`.
        kind: &'static str,
        /// Where the key came from (a path, or "inline").
        origin: String,
        /// What is wrong.
        message: String,
    },

    /// The secret key is encrypted and no password was given.
    #[error("the secret key {} is password-protected; give its password", path.display())]
    PasswordRequired {
        /// The key file.
        path: PathBuf,
    },

    /// The password does not decrypt the secret key.
    #[error("wrong password for the secret key {}", path.display())]
    WrongPassword {
        /// The key file.
        path: PathBuf,
    },

    /// `keygen` would overwrite an existing key file.
    #[error("{} already exists; refusing to overwrite a key, choose another name or directory", path.display())]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A key (file) name is not acceptable.
    #[error("invalid key name `{name}`: {why}")]
    InvalidKeyName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },

    /// A key cannot be added to a trust store: its key id or its name is
    /// already pinned, or its name is empty.
    #[error("trust store: {message}")]
    TrustStore {
        /// Which key or name, and why.
        message: String,
    },

    /// The manifest template given to the builder is invalid.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, with the line when known.
        message: String,
    },

    /// The manifest template pins a hash that the file no longer has.
    #[error("`{file}` has sha256 {actual} but pack.toml pins {pinned}; update the file or clear its sha256 field so the builder fills it in")]
    PinnedHashMismatch {
        /// The file's path in the pack.
        file: String,
        /// The hash in the template.
        pinned: String,
        /// The file's actual hash.
        actual: String,
    },

    /// The pack would be refused by agents running the default limits.
    #[error("the pack would exceed the agents' default limits: {message}")]
    ExceedsLimits {
        /// Which limit, by how much.
        message: String,
    },

    /// `sign` refused a file that is not a well-formed pack.
    #[error("refusing to sign {}: {reason}", path.display())]
    NotAPack {
        /// The archive.
        path: PathBuf,
        /// Why agents would refuse it.
        #[source]
        reason: Rejection,
    },

    /// The trusted comment cannot be used.
    #[error("invalid trusted comment: {why}")]
    InvalidComment {
        /// Why.
        why: &'static str,
    },

    /// The signing or key generation library failed.
    #[error("{action}: {message}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// The library's message.
        message: String,
    },
}

impl PackError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PackError::Io { action, path: path.into(), source }
    }
}
