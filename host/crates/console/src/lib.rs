//! `edr-console`: the web console `edr server run` serves beside the fleet API.
//!
//! * One back end: the pages are HTML shells ([`pages`]) whose script calls
//!   the same `/api/v1/...` JSON API the CLI uses. This crate adds only
//!   what a browser needs: login and logout ([`web`]), server-side
//!   [`session`]s whose cookie authenticates API requests (installed into
//!   the fleet server as its [`edr_fleet_server::api_session::SessionAuth`],
//!   so roles are enforced by the API itself), a CSRF check on every
//!   cookie-authenticated change, and the embedded assets (no CDN).
//! * Local [`users`] with Argon2id hashes (`edr server user add`).
//! * Signed commands stay the operator's: a responder loads the command key
//!   file into the page, which signs in the browser (WebCrypto Ed25519) and
//!   posts the envelope the CLI would; the server never sees the key.

#![deny(missing_docs)]

pub mod pages;
pub mod session;
pub mod users;
pub mod web;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What can go wrong in the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A console file is unreadable, malformed or cannot be written.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A password was refused.
    #[error("password refused: {0}")]
    Password(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The fleet server failed.
    #[error(transparent)]
    Fleet(#[from] edr_fleet_server::FleetError),
}

/// Settings of the console.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleOptions {
    /// How long sessions live.
    pub limits: session::SessionLimits,
}

/// `edr server run`: the fleet server with the console, until SIGINT or SIGTERM.
///
/// # Errors
/// As [`edr_fleet_server::run_blocking`].
pub fn run_blocking(dir: &Path, rebuild: bool) -> Result<(), ConsoleError> {
    Ok(edr_fleet_server::run_blocking_with(dir, rebuild, web::extend(ConsoleOptions::default()))?)
}

/// Starts the fleet server with the console (tests and embedders).
///
/// # Errors
/// As [`edr_fleet_server::start`].
pub async fn start(fleet: edr_fleet_server::Fleet, rebuild: bool, opts: ConsoleOptions) -> Result<edr_fleet_server::Running, ConsoleError> {
    Ok(edr_fleet_server::start_with(fleet, rebuild, web::extend(opts)).await?)
}

/// Adds a console user (`edr server user add`).
///
/// # Errors
/// When the fleet directory or the users file cannot be used, or the name or password is refused.
pub fn add_user(dir: &Path, name: &str, role: edr_fleet_server::api_auth::Role, password: &str) -> Result<(), ConsoleError> {
    let fleet = edr_fleet_server::Fleet::open(dir)?;
    users::add_user(&fleet.dir, name, role, password)
}

/// The shared state of the console's handlers.
#[derive(Debug)]
pub struct Console {
    /// The fleet server's state (its index, bus and fleet directory).
    pub app: Arc<edr_fleet_server::api::AppState>,
    /// The sessions.
    pub sessions: Arc<session::Sessions>,
    /// Whether cookies get the `Secure` flag (the public URL is `https://`).
    pub secure: bool,
    /// The cookie's `Max-Age` (the sessions' absolute limit), seconds.
    pub max_age: u64,
}
