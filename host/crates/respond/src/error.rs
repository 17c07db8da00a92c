//! Errors of the response engine.

use std::io;
use std::path::PathBuf;

/// Why an action was refused or failed.
///
/// [`RespondError::is_refusal`] tells the two apart: a refusal means nothing
/// was attempted (the policy or a safety check said no) and is audited as
/// [`edr_event::Decision::Refused`] (a restore onto an occupied path is one:
/// nothing is touched); any other error happened while carrying
/// the action out and is audited as the outcome of an enforced action.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The requesting pack has no grant for this action.
    #[error("{requester} is not granted `{action}` (granted: {granted}); add it to the pack's grant in the response policy")]
    NotGranted {
        /// Who asked.
        requester: String,
        /// The action's policy name.
        action: &'static str,
        /// The pack's granted actions, comma-separated, or `nothing`.
        granted: String,
    },
    /// The plugin's pack manifest does not declare this action.
    #[error("`{action}` is not declared in the plugin's pack manifest")]
    NotDeclared {
        /// The action's policy name.
        action: &'static str,
    },
    /// Undo actions (restore, release, unblock) are for the operator only.
    #[error("`{action}` is an undo action and only the operator may request it")]
    OperatorOnly {
        /// The action's policy name.
        action: &'static str,
    },
    /// The target process must never be killed or suspended.
    #[error("pid {pid} is protected ({why}); it is never killed or suspended")]
    Protected {
        /// The target pid.
        pid: u32,
        /// Which protection applies.
        why: String,
    },
    /// The target file or executable is protected.
    #[error("{} is protected ({why})", path.display())]
    ProtectedFile {
        /// The target path (or the path of the protected executable).
        path: PathBuf,
        /// Which protection applies.
        why: String,
    },
    /// Only the operator may override path protection, explicitly.
    #[error("{requester} asked to override path protection; only the operator may, explicitly (`edr respond quarantine|delete PATH --override-protection`), and a pack never may")]
    OverrideRefused {
        /// Who asked.
        requester: String,
    },
    /// The pid now belongs to another process than the one the request named.
    #[error("pid {pid} is no longer the process the request named (expected {expected}, found {found}); the pid was reused, nothing was done")]
    PidReused {
        /// The target pid.
        pid: u32,
        /// The identity the request carried.
        expected: String,
        /// The identity of the process that has the pid now.
        found: String,
    },
    /// The request itself is malformed (relative path, not a regular file,
    /// bad sha256, unknown quarantine id, ...).
    #[error("invalid target {target}: {why}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        why: String,
    },
    /// No process has this pid (it may have exited already).
    #[error("no process with pid {pid} (it may have exited already)")]
    NoSuchProcess {
        /// The target pid.
        pid: u32,
    },
    /// Something exists at the path a quarantined file would be restored to.
    #[error("{} already exists; move it away or restore with force", path.display())]
    Occupied {
        /// The original path of the quarantined file.
        path: PathBuf,
    },
    /// A stored file no longer has the hash recorded for it.
    #[error("{} does not match its recorded sha256 (expected {expected}, found {found}); the store was tampered with or the disk is failing", path.display())]
    Integrity {
        /// The stored file.
        path: PathBuf,
        /// The recorded hash.
        expected: String,
        /// The hash found now.
        found: String,
    },
    /// A file is larger than the configured limit.
    #[error("{} is {size} bytes, more than the limit of {max} bytes (response.fetch_max_bytes)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot open".
        what: String,
        /// The path concerned.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A system call on a process or a kernel facility failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The `nft` binary is not installed.
    #[error("the `nft` binary was not found in /usr/sbin, /sbin or PATH; install the Debian package `nftables`")]
    NftMissing,
    /// `nft` refused a command or script.
    #[error("nft {what} failed: {stderr}")]
    Nft {
        /// What was being done.
        what: String,
        /// What nft printed.
        stderr: String,
    },
    /// fanotify is unavailable (not root, or the kernel lacks it).
    #[error(
        "cannot block execution: fanotify {what} failed: {source} (blocking needs root (CAP_SYS_ADMIN) and a kernel with CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
    )]
    Fanotify {
        /// The call that failed.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The configuration is unusable.
    #[error("response configuration: {0}")]
    Config(String),
    /// The worker queue is full: the request was not queued.
    #[error("the response queue is full ({0} requests waiting); the request was dropped")]
    QueueFull(usize),
    /// The response engine is shutting down.
    #[error("the response engine is shutting down")]
    ShuttingDown,
    /// A bug: the action panicked (caught; nothing else was affected).
    #[error("internal error while carrying out the action: {0}")]
    Panicked(String),
}

impl RespondError {
    /// True when nothing was attempted because the policy or a safety check
    /// said no (audited as refused), false for failures while acting.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RespondError::NotGranted { .. }
                | RespondError::NotDeclared { .. }
                | RespondError::OperatorOnly { .. }
                | RespondError::Protected { .. }
                | RespondError::ProtectedFile { .. }
                | RespondError::OverrideRefused { .. }
                | RespondError::PidReused { .. }
                | RespondError::InvalidTarget { .. }
                | RespondError::Occupied { .. }
                | RespondError::Config(_)
                | RespondError::QueueFull(_)
                | RespondError::ShuttingDown
        )
    }

    /// An [`RespondError::Io`] with its context.
    pub(crate) fn io(what: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RespondError::Io { what: what.into(), path: path.into(), source }
    }

    /// A [`RespondError::Sys`] from `errno`.
    pub(crate) fn sys(what: impl Into<String>) -> Self {
        RespondError::Sys { what: what.into(), source: io::Error::last_os_error() }
    }

    /// An [`RespondError::InvalidTarget`].
    pub(crate) fn invalid(target: impl std::fmt::Display, why: impl Into<String>) -> Self {
        RespondError::InvalidTarget { target: target.to_string(), why: why.into() }
    }
}
