//! The one error type of the crate.

use std::path::PathBuf;

/// What can go wrong when building an output or handing it an alert.
///
/// Every message names what it is about (the config key, the file, the
/// output) so that an operator can act on it without reading code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// A configuration value is missing or invalid. `key` is relative to the
    /// outputs section (`webhook.url`, `nats[1].subject`, ...): the caller
    /// prefixes it with the name of that section.
    #[error("{key}: {message}")]
    Config {
        /// The offending key, e.g. `syslog.address`.
        key: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// A file or directory operation failed, e.g.
    /// `webhook spool /x/y: cannot create: Permission denied (os error 13)`.
    #[error("{what} {}: {action}: {error}", path.display())]
    Io {
        /// What the file belongs to, e.g. `webhook spool`.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// What was being done, e.g. `cannot create`.
        action: String,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The output's disk spool holds `max_spool_mb` of undelivered alerts:
    /// the alert was not accepted (and is counted as dropped).
    #[error("{output}: spool full ({queued_bytes} bytes undelivered, limit {max_bytes}): alert {id} dropped")]
    SpoolFull {
        /// The output's name.
        output: String,
        /// The alert that was refused.
        id: u64,
        /// Undelivered bytes in the spool.
        queued_bytes: u64,
        /// The configured limit.
        max_bytes: u64,
    },
    /// The in-memory queue of a best-effort output (syslog) is full, because
    /// the receiver is unreachable or slower than the alerts: dropped.
    #[error("{output}: queue full ({capacity} messages waiting for the receiver): alert {id} dropped")]
    QueueFull {
        /// The output's name.
        output: String,
        /// The alert that was refused.
        id: u64,
        /// The configured queue length.
        capacity: usize,
    },
    /// One alert is larger than a spool record may be: dropped.
    #[error("{output}: alert {id} is {size} bytes, more than the {max} bytes one spool record may hold: dropped")]
    TooLarge {
        /// The output's name.
        output: String,
        /// The alert that was refused.
        id: u64,
        /// Its size in bytes.
        size: usize,
        /// The largest record accepted.
        max: usize,
    },
    /// `send` after `shutdown`.
    #[error("{output}: shut down: alert {id} dropped")]
    ShutDown {
        /// The output's name.
        output: String,
        /// The alert that was refused.
        id: u64,
    },
    /// The output could not start (a thread or its runtime), or its spool is
    /// unusable in a way that is not a plain I/O error.
    #[error("{output}: {message}")]
    Start {
        /// The output's name.
        output: String,
        /// What failed.
        message: String,
    },
}

impl OutputError {
    /// Shorthand for [`OutputError::Config`].
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        OutputError::Config { key: key.into(), message: message.into() }
    }

    /// Shorthand for [`OutputError::Io`].
    pub(crate) fn io(what: &str, path: impl Into<PathBuf>, action: &str, error: std::io::Error) -> Self {
        OutputError::Io { what: what.to_string(), path: path.into(), action: action.to_string(), error }
    }
}
