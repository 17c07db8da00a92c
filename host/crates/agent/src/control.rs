//! The agent's local control API: a unix socket at `<data_dir>/control.sock`.
//!
//! One JSON request per connection, one JSON reply. Authentication: the
//! socket is created mode 0600 and every connection's peer credentials
//! (SO_PEERCRED) are checked: only root and the agent's own user may talk
//! to it. Every request is carried out by [`AgentHandle::execute`], the
//! transport-neutral handler another transport (a fleet link) calls too.

use crate::handle::{AgentHandle, Caller};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's path under a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// What a client can ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Everything `edr status` shows.
    Status,
    /// Roll a pack back to its previous good version.
    Rollback {
        /// The pack id.
        pack: String,
    },
    /// Lift a plugin's quarantine (`pack-id/plugin` or plugin name).
    Reenable {
        /// The plugin's key or name.
        plugin: String,
    },
    /// A response action (see `edr respond`): an `edr_respond::ResponseAction`.
    Respond {
        /// The action, in the form of `edr_respond::ResponseAction`.
        action: serde_json::Value,
        /// Why (kept in the audit record).
        reason: String,
    },
    /// Quarantined files, evidence, execution blocks and isolation state.
    RespondList,
    /// One read-only SELECT over the record's views (`edr query`); the
    /// result is an `edr_store::QueryResult`.
    Query {
        /// The statement.
        sql: String,
    },
    /// An alert's storyline (`edr storyline`): an `edr_store::Storyline`.
    Storyline {
        /// The alert id.
        alert: u64,
        /// Include the ancestors' file and network activity too.
        #[serde(default)]
        ancestors: bool,
    },
    /// Re-read the configuration file (what SIGHUP does); the reply comes
    /// once the agent has applied or refused it.
    Reload,
}

/// The reply: `ok` and either a result or an error message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded (a refused response action is not ok).
    pub ok: bool,
    /// The result, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A success carrying `v`.
    pub fn ok(v: impl Serialize) -> Self {
        Reply { ok: true, result: Some(serde_json::to_value(v).unwrap_or(serde_json::Value::Null)), error: None }
    }

    /// A failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Reply { ok: false, result: None, error: Some(msg.into()) }
    }
}

/// Serves the socket on a thread of its own until the process ends; every
/// request goes to `agent` ([`AgentHandle::execute`]), on a short-lived
/// thread per connection (an action such as isolation must not hold up
/// another client).
pub fn serve(data_dir: &Path, agent: AgentHandle) -> anyhow::Result<()> {
    let path = socket_path(data_dir);
    if path.exists() {
        // A live agent answers; a stale socket from a crash does not.
        if UnixStream::connect(&path).is_ok() {
            anyhow::bail!("another agent is already running with data_dir {} (its control socket answers)", data_dir.display());
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("cannot create control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let own_uid = unsafe { libc::geteuid() };
    std::thread::Builder::new().name("edr-control".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let agent = agent.clone();
            // One short-lived thread per connection: requests are rare.
            let _ = std::thread::Builder::new().name("edr-control-conn".into()).spawn(move || {
                if let Err(e) = handle(stream, own_uid, &agent) {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    })?;
    Ok(())
}

fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe { libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn handle(stream: UnixStream, own_uid: u32, agent: &AgentHandle) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let uid = peer_uid(&stream)?;
    let mut writer = stream.try_clone()?;
    let reply = if uid != 0 && uid != own_uid {
        tracing::warn!(uid, "control request refused: only root and the agent's user may use the control socket");
        Reply::err(format!("permission denied: uid {uid} may not control this agent"))
    } else {
        let mut line = String::new();
        BufReader::new(stream).take(1 << 20).read_line(&mut line)?;
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => agent.execute(Caller::local(uid), request),
            Err(e) => Reply::err(format!("bad request: {e}")),
        }
    };
    writer.write_all(serde_json::to_string(&reply)?.as_bytes())?;
    writer.write_all(b"\n")?;
    Ok(())
}

use std::io::Read as _;

/// Sends one request to the agent with this data dir.
pub fn call(data_dir: &Path, request: &Request) -> anyhow::Result<Reply> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path)
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {} ({e}); is `edr agent` running with this data dir?", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(130)))?;
    stream.write_all(serde_json::to_string(request)?.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
