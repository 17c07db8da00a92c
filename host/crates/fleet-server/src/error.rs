//! The server's errors.

use std::path::PathBuf;

/// What went wrong, with what to do about it where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The fleet directory is unusable.
    #[error("fleet directory: {0}")]
    Dir(#[from] edr_datadir::DataDirError),
    /// `init` on a directory that already holds a fleet.
    #[error("{0} already holds a fleet (fleet.toml exists); use `edr server run --dir {0}`, or choose another directory")]
    AlreadyInitialised(PathBuf),
    /// `run` on a directory without a fleet.
    #[error("{0} holds no fleet (no fleet.toml): create one with `edr server init --dir {0}`")]
    NotInitialised(PathBuf),
    /// A file of the fleet cannot be read or is malformed.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A key could not be made or read.
    #[error("key {name}: {problem}")]
    Key {
        /// Which key.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Signing a NATS JWT failed.
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtError),
    /// The NATS server could not be started or reached.
    #[error("NATS: {0}")]
    Nats(String),
    /// The index database failed.
    #[error("index {what}: {source}")]
    Index {
        /// What was being done.
        what: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Any other I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl FleetError {
    /// A NATS error with context.
    pub fn nats(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        FleetError::Nats(format!("{what}: {e}"))
    }

    /// An index error with context (for `map_err`).
    pub fn index(what: &str) -> impl FnOnce(rusqlite::Error) -> FleetError + '_ {
        move |source| FleetError::Index { what: what.to_string(), source }
    }
}
