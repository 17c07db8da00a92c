//! Errors of [`crate::Collectors::start`].

use std::path::PathBuf;

/// Why the collectors could not start.
///
/// A collector in `Auto` mode never fails to start: it degrades (and says so
/// in [`crate::CollectorStatus::mode`]). Only an explicitly requested mode
/// that is unavailable, an unreadable `/proc`, or a failure to spawn a thread
/// is an error.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file every collector relies on could not be read.
    #[error("cannot read {path}: {source} (is /proc mounted?)")]
    Proc {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A mode was asked for explicitly and this host cannot provide it.
    #[error("{collector} collector: mode `{mode}` was requested but is unavailable: {reason}; use mode `auto` to fall back automatically")]
    Unavailable {
        /// The collector (`process`, `file`, `network`, `login`).
        collector: &'static str,
        /// The mode that was requested.
        mode: String,
        /// What failed, with the OS error.
        reason: String,
    },
    /// A collector thread could not be spawned.
    #[error("cannot spawn the {collector} collector thread: {source}")]
    Thread {
        /// The collector.
        collector: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl From<edr_procfs::ProcError> for CollectError {
    fn from(e: edr_procfs::ProcError) -> CollectError {
        CollectError::Proc { path: e.path, source: e.source }
    }
}
