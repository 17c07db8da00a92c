//! Local console users in `DIR/users.json` (0600): name, role and an
//! Argon2id password hash (PHC string).
//!
//! Why `argon2` (RustCrypto): Argon2id is the password hash OWASP and RFC
//! 9106 recommend (memory-hard, so GPU guessing of a stolen `users.json` is
//! expensive), the crate is pure Rust, maintained with the other RustCrypto
//! hashes, and writes self-describing PHC strings, so the parameters can be
//! raised later without breaking stored hashes.

use crate::ConsoleError;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use edr_datadir::DataDir;
use edr_fleet_server::api_auth::Role;
use serde::{Deserialize, Serialize};

/// The users file in the fleet directory.
pub const USERS_FILE: &str = "users.json";
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (argon2 hashes any length; this bounds the work a login can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// One user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name (recorded as `console:NAME` in the audit).
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// Argon2id PHC string.
    pub hash: String,
}

fn file_err(dir: &DataDir, problem: impl Into<String>) -> ConsoleError {
    ConsoleError::File { path: dir.join(USERS_FILE), problem: problem.into() }
}

/// Reads `users.json` (empty when missing). Read on every login, so `edr
/// server user add` takes effect without a restart.
///
/// # Errors
/// When it is unreadable or malformed.
pub fn load_users(dir: &DataDir) -> Result<Vec<User>, ConsoleError> {
    let Some(bytes) = dir.read_limited(USERS_FILE, 4 << 20).map_err(|e| file_err(dir, e.to_string()))? else { return Ok(Vec::new()) };
    serde_json::from_slice(&bytes).map_err(|e| file_err(dir, e.to_string()))
}

/// Checks a login name: 1-64 letters, digits, `- _ . @`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Hashes `password` with Argon2id (default parameters, random salt).
///
/// # Errors
/// When the OS random source fails.
pub fn hash_password(password: &str) -> Result<String, ConsoleError> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| ConsoleError::Hash(e.to_string()))
}

/// Adds user `name` with `role` and `password`; refuses a taken or bad name and a short password.
///
/// # Errors
/// As said, or when the file cannot be written.
pub fn add_user(dir: &DataDir, name: &str, role: Role, password: &str) -> Result<(), ConsoleError> {
    if !valid_name(name) {
        return Err(file_err(dir, format!("user name {name:?}: use 1-64 letters, digits, - _ . @")));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(ConsoleError::Password(format!("use at least {MIN_PASSWORD_CHARS} characters (at most {MAX_PASSWORD_BYTES} bytes)")));
    }
    let mut users = load_users(dir)?;
    if users.iter().any(|u| u.name == name) {
        return Err(file_err(dir, format!("a user named {name:?} exists already")));
    }
    users.push(User { name: name.to_string(), role, hash: hash_password(password)? });
    let text = serde_json::to_vec_pretty(&users).unwrap_or_default();
    dir.write_atomically(USERS_FILE, &text).map_err(|e| file_err(dir, e.to_string()))
}

/// A hash of a random password, verified against when the name is unknown,
/// so an unknown name costs as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&edr_fleet_proto::random_hex(16).unwrap_or_default()).unwrap_or_default())
}

/// The role of `name` when `password` is theirs; `None` for an unknown
/// name or a wrong password (told apart by no one, not even the timing).
///
/// # Errors
/// When `users.json` cannot be read.
pub fn verify(dir: &DataDir, name: &str, password: &str) -> Result<Option<Role>, ConsoleError> {
    let users = load_users(dir)?;
    let user = users.iter().find(|u| u.name == name);
    let hash: &str = match user {
        Some(u) => &u.hash,
        None => dummy_hash(),
    };
    let ok = password.len() <= MAX_PASSWORD_BYTES && PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
    Ok(user.filter(|_| ok).map(|u| u.role))
}

/// The current role of `name` (`None` once removed from `users.json`).
///
/// # Errors
/// When `users.json` cannot be read.
pub fn role_of(dir: &DataDir, name: &str) -> Result<Option<Role>, ConsoleError> {
    Ok(load_users(dir)?.into_iter().find(|u| u.name == name).map(|u| u.role))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn users_are_hashed_checked_and_kept_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open_or_create(&tmp.path().join("fleet"), edr_datadir::agent_uid()).unwrap();
        add_user(&dir, "alice", Role::Responder, "correct horse battery").unwrap();
        let text = std::fs::read_to_string(dir.join(USERS_FILE)).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("correct horse"), "{text}");
        assert_eq!(std::fs::metadata(dir.join(USERS_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(verify(&dir, "alice", "correct horse battery").unwrap(), Some(Role::Responder));
        assert_eq!(verify(&dir, "alice", "correct horse batterY").unwrap(), None);
        assert_eq!(verify(&dir, "bob", "correct horse battery").unwrap(), None);
        assert_eq!(verify(&dir, "alice", &"x".repeat(MAX_PASSWORD_BYTES + 1)).unwrap(), None);
        assert!(add_user(&dir, "alice", Role::Admin, "another long one").is_err(), "names are unique");
        assert!(matches!(add_user(&dir, "bob", Role::Viewer, "short"), Err(ConsoleError::Password(_))));
        for bad in ["", "a b", "<script>", &"x".repeat(65)] {
            assert!(add_user(&dir, bad, Role::Viewer, "long enough password").is_err(), "{bad:?}");
        }
        assert_eq!(role_of(&dir, "alice").unwrap(), Some(Role::Responder));
    }
}
