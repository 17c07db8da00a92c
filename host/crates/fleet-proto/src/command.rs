//! Signed remote commands.
//!
//! The operator's Ed25519 key signs the exact bytes of a [`CommandBody`]
//! (host id, command id, issue time, expiry, nonce, the command), prefixed
//! with a domain tag so the signature cannot be replayed as anything else.
//! The agent verifies against the keys it pinned at enrollment, refuses a
//! body for another host, one not yet valid or expired, or one living longer
//! than [`MAX_LIFETIME_SECS`], and (with its own nonce record) a replay. The
//! bus and the management server carry the envelope but cannot forge one.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Prefix of every signed message.
const DOMAIN: &[u8] = b"edr-fleet-command-v1\n";
/// The longest a command may be valid for (queued commands for offline hosts included).
pub const MAX_LIFETIME_SECS: u64 = 14 * 24 * 3600;
/// Clock skew tolerated between the operator and the host.
pub const MAX_SKEW_SECS: u64 = 300;

/// The version of command bodies this crate writes and understands: 1 had
/// `status` and `ls`; 2 added the response commands, `reason` and `query`; 3
/// added `pack_install` and `pack_rollback`; 4 added `connections`,
/// `suspend`, `resume`, `block`, `unblock` and `storyline`. A body
/// carries the lowest version its command needs ([`Command::min_version`]),
/// so an agent that knows only version 1 still runs `ls` and `status`, and
/// refuses a response command as "newer than this agent understands".
pub const COMMAND_VERSION: u32 = 4;

/// The largest file `fetch` returns (its content travels base64-encoded in
/// one NATS reply, and nats-server's default `max_payload` is 1 MiB).
pub const FETCH_MAX_BYTES: u64 = 512 << 10;

/// Rows a `query` returns when the operator gives no limit.
pub const QUERY_DEFAULT_ROWS: u32 = 1000;
/// The most rows a `query` returns (larger limits are refused).
pub const QUERY_MAX_ROWS: u32 = 10_000;
/// The longest SQL text a `query` carries, in bytes.
pub const QUERY_MAX_SQL_BYTES: usize = 64 << 10;

/// Every `op` this crate knows, in the order `edr fleet --help` lists them.
pub const KNOWN_OPS: &[&str] = &[
    "status",
    "ls",
    "processes",
    "connections",
    "kill",
    "suspend",
    "resume",
    "quarantine",
    "restore",
    "delete",
    "block",
    "unblock",
    "fetch",
    "isolate",
    "release",
    "query",
    "storyline",
    "pack_install",
    "pack_rollback",
];

/// Events a `storyline` answer carries when the operator gives no limit.
pub const STORYLINE_DEFAULT_EVENTS: u32 = 1000;
/// The most events a `storyline` answer carries (it travels in one NATS reply).
pub const STORYLINE_MAX_EVENTS: u32 = 5000;

/// The largest pack archive a `pack_install` may name (the agent's verifier has the same limit).
pub const PACK_MAX_BYTES: u64 = 64 << 20;

/// A command a host can be asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// The agent's status snapshot.
    Status,
    /// A directory listing with sizes and sha256 of regular files.
    Ls {
        /// Absolute path.
        path: String,
    },
    /// The process list: pid, parent, executable, argv, user, and each
    /// process's lineage (its ancestors' pids, nearest first).
    Processes,
    /// Every TCP and UDP socket of the host with its state, addresses and
    /// owning process (version 4).
    Connections,
    /// SIGKILL a process (through the host's response engine).
    Kill {
        /// The process.
        pid: u32,
        /// Its descendants too.
        #[serde(default)]
        tree: bool,
    },
    /// SIGSTOP a process (version 4).
    Suspend {
        /// The process.
        pid: u32,
    },
    /// SIGCONT a suspended process (version 4).
    Resume {
        /// The process.
        pid: u32,
    },
    /// Move a file into the host's quarantine.
    Quarantine {
        /// Absolute path.
        path: String,
    },
    /// Put a quarantined file back.
    Restore {
        /// The quarantine id, or the file's original absolute path (the
        /// newest quarantine entry of that path).
        id: String,
        /// Replace a file now at the original path.
        #[serde(default)]
        force: bool,
    },
    /// Delete a file (its sha256 and metadata are audited first).
    Delete {
        /// Absolute path.
        path: String,
    },
    /// Block execution of a file on the host (version 4): `target` is an
    /// absolute path or a sha256 (64 hex digits) of the file's content.
    Block {
        /// Path or sha256.
        target: String,
    },
    /// Lift an execution block (version 4): the path or sha256 it was made with.
    Unblock {
        /// Path or sha256.
        target: String,
    },
    /// Copy a file into the host's evidence store and return its content
    /// (base64, with its sha256), at most [`FETCH_MAX_BYTES`].
    Fetch {
        /// Absolute path.
        path: String,
    },
    /// Isolate the host: only the fleet's NATS endpoints (and the host's
    /// configured management endpoints) stay reachable.
    Isolate,
    /// Release the host from isolation.
    Release,
    /// One read-only SQL statement over the host's record views (what
    /// `edr query` runs locally): columns, rows, and whether the row limit
    /// cut the result.
    Query {
        /// One SELECT (or WITH ... SELECT) statement.
        sql: String,
        /// Rows at most (default [`QUERY_DEFAULT_ROWS`], at most [`QUERY_MAX_ROWS`]).
        #[serde(default = "default_query_rows")]
        limit: u32,
    },
    /// An alert's storyline from the host's record (version 4; what `edr
    /// storyline --json` prints there): the alert, its trigger, the process
    /// tree (ancestors, the process, descendants) and their activity, at
    /// most `max_events` events (those nearest the alert's time).
    Storyline {
        /// The alert's id in the host's record.
        alert: u64,
        /// Events at most (default [`STORYLINE_DEFAULT_EVENTS`], at most [`STORYLINE_MAX_EVENTS`]).
        #[serde(default = "default_storyline_events")]
        max_events: u32,
        /// Include the ancestors' file and network activity too.
        #[serde(default)]
        ancestor_activity: bool,
    },
    /// Install a detection pack the fleet distributes: the host fetches the
    /// archive in chunks on its own subject (`edr.host.<id>.pack.get`),
    /// checks `size` and `sha256`, and offers it to its pack manager, which
    /// verifies the publisher's `signature` against the host's own trust
    /// store, stages, canaries and swaps it (the server vouches for nothing).
    PackInstall {
        /// Pack id (the manifest's `id`).
        name: String,
        /// Pack version.
        version: String,
        /// sha256 of the archive, lowercase hex.
        sha256: String,
        /// Archive size in bytes (at most [`PACK_MAX_BYTES`]).
        size: u64,
        /// The publisher's minisign signature over the archive (`.minisig` text).
        signature: String,
    },
    /// Roll pack `name` back to its previous good version on the host, when
    /// `version` is the one active there (otherwise nothing changes).
    PackRollback {
        /// Pack id.
        name: String,
        /// The version to roll back from.
        version: String,
    },
}

fn default_query_rows() -> u32 {
    QUERY_DEFAULT_ROWS
}

fn default_storyline_events() -> u32 {
    STORYLINE_DEFAULT_EVENTS
}

impl Command {
    /// The `op` tag.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Ls { .. } => "ls",
            Command::Processes => "processes",
            Command::Connections => "connections",
            Command::Kill { .. } => "kill",
            Command::Suspend { .. } => "suspend",
            Command::Resume { .. } => "resume",
            Command::Quarantine { .. } => "quarantine",
            Command::Restore { .. } => "restore",
            Command::Delete { .. } => "delete",
            Command::Block { .. } => "block",
            Command::Unblock { .. } => "unblock",
            Command::Fetch { .. } => "fetch",
            Command::Isolate => "isolate",
            Command::Release => "release",
            Command::Query { .. } => "query",
            Command::Storyline { .. } => "storyline",
            Command::PackInstall { .. } => "pack_install",
            Command::PackRollback { .. } => "pack_rollback",
        }
    }

    /// The lowest body version that can carry this command.
    pub fn min_version(&self) -> u32 {
        match self {
            Command::Status | Command::Ls { .. } => 1,
            Command::PackInstall { .. } | Command::PackRollback { .. } => 3,
            Command::Connections
            | Command::Suspend { .. }
            | Command::Resume { .. }
            | Command::Block { .. }
            | Command::Unblock { .. }
            | Command::Storyline { .. } => 4,
            _ => 2,
        }
    }

    /// Whether it changes the host (a response action) rather than reads it.
    pub fn changes_host(&self) -> bool {
        !matches!(self, Command::Status | Command::Ls { .. } | Command::Processes | Command::Connections | Command::Query { .. } | Command::Storyline { .. })
    }
}

/// What the operator signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBody {
    /// Protocol version.
    pub v: u32,
    /// Unique id, echoed in the result.
    pub command_id: String,
    /// The only host that may run it.
    pub host_id: String,
    /// Issue time, seconds since the epoch.
    pub issued_at: u64,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// Random, hex; a host runs a nonce once.
    pub nonce: String,
    /// What to do.
    pub command: Command,
    /// Why, in the operator's words (version 2; kept in the host's audit
    /// and in the response engine's record).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The envelope on `edr.cmd.<host id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The [`CommandBody`] as JSON text: the signed bytes, verbatim.
    pub body: String,
    /// The signer's public key, hex.
    pub key: String,
    /// Ed25519 signature over the domain tag and `body`, hex.
    pub signature: String,
}

/// A host's answer to a command (the reply to the request on `edr.cmd.<host id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Protocol version.
    pub v: u32,
    /// The host that answered.
    pub host_id: String,
    /// The command's id (empty when the envelope could not be read).
    pub command_id: String,
    /// `done`, `failed` (it ran and failed) or `refused` (it did not run).
    pub status: String,
    /// What it produced (`done`), or why not.
    pub output: serde_json::Value,
}

/// Why a host refused a command (logged and sent back as the result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an envelope, or the body is not a command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// Signed by a key this host does not pin.
    #[error("signed by key {0}, which this host does not trust (pinned at enrollment)")]
    UnknownKey(String),
    /// The signature does not match the body.
    #[error("the signature does not verify: forged or altered in transit")]
    BadSignature,
    /// Meant for another host.
    #[error("the command is for host {found}, this is {expected}")]
    WrongHost {
        /// This host.
        expected: String,
        /// The body's.
        found: String,
    },
    /// Past its expiry.
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry.
        expires_at: u64,
        /// The host's clock.
        now: u64,
    },
    /// Issued in the future beyond the tolerated skew, or valid for too long.
    #[error("validity window refused: {0}")]
    BadWindow(String),
    /// This nonce has been run already.
    #[error("replayed: nonce {0} was already used")]
    Replayed(String),
    /// From a newer protocol.
    #[error("protocol version {0} is newer than this agent understands (it knows command version {COMMAND_VERSION}): upgrade the agent")]
    TooNew(u32),
    /// The host's own policy (`[fleet] refuse` in its configuration) refuses this class of command.
    #[error("this host's policy refuses `{op}` commands from the fleet ([fleet] refuse = {classes:?} in its configuration)")]
    HostPolicy {
        /// The op asked for.
        op: String,
        /// The classes the host refuses.
        classes: Vec<String>,
    },
    /// A command this agent does not know.
    #[error("unknown command op {op:?}: this agent runs {known}; upgrade the agent for newer commands")]
    UnknownOp {
        /// The op asked for.
        op: String,
        /// The ops this agent knows, comma-separated.
        known: String,
    },
}

/// Reads a signed body: a newer version or an unknown op is refused with
/// what to do, before the typed parse (whose message would be less clear).
fn parse_body(text: &str) -> Result<CommandBody, Refusal> {
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let v = raw["v"].as_u64().ok_or_else(|| Refusal::Malformed("no protocol version `v`".into()))?;
    if v > u64::from(COMMAND_VERSION) {
        return Err(Refusal::TooNew(u32::try_from(v).unwrap_or(u32::MAX)));
    }
    match raw["command"]["op"].as_str() {
        Some(op) if !KNOWN_OPS.contains(&op) => return Err(Refusal::UnknownOp { op: op.chars().take(64).collect(), known: KNOWN_OPS.join(", ") }),
        None => return Err(Refusal::Malformed("the command has no `op`".into())),
        Some(_) => {}
    }
    let body: CommandBody = serde_json::from_value(raw).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if body.v < body.command.min_version() {
        return Err(Refusal::Malformed(format!("op {} needs command version {}, the body says {}", body.command.op(), body.command.min_version(), body.v)));
    }
    Ok(body)
}

fn message(body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body.as_bytes());
    m
}

/// Signs `body` with `key`.
pub fn sign(body: &CommandBody, key: &SigningKey) -> SignedCommand {
    let text = serde_json::to_string(body).unwrap_or_default();
    let sig = key.sign(&message(&text));
    SignedCommand { signature: hex::encode(sig.to_bytes()), key: hex::encode(key.verifying_key().to_bytes()), body: text }
}

/// A public key from its hex form.
///
/// # Errors
/// A description of what is wrong with it.
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key).map_err(|e| format!("not hex: {e}"))?.try_into().map_err(|_| "not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

impl SignedCommand {
    /// Checks signature, host and validity window; the caller then checks the nonce.
    ///
    /// # Errors
    /// The [`Refusal`] that applies first.
    pub fn verify(&self, pinned: &[VerifyingKey], host_id: &str, now: u64) -> Result<CommandBody, Refusal> {
        let key = parse_key(&self.key).map_err(|e| Refusal::Malformed(format!("key: {e}")))?;
        if !pinned.contains(&key) {
            return Err(Refusal::UnknownKey(self.key.clone()));
        }
        let sig: [u8; 64] = hex::decode(&self.signature).ok().and_then(|b| b.try_into().ok()).ok_or(Refusal::BadSignature)?;
        key.verify(&message(&self.body), &Signature::from_bytes(&sig)).map_err(|_| Refusal::BadSignature)?;
        let body = parse_body(&self.body)?;
        if body.host_id != host_id {
            return Err(Refusal::WrongHost { expected: host_id.to_string(), found: body.host_id });
        }
        if body.issued_at > now + MAX_SKEW_SECS {
            return Err(Refusal::BadWindow(format!("issued at {} is in the future (now {now})", body.issued_at)));
        }
        if body.expires_at <= body.issued_at || body.expires_at - body.issued_at > MAX_LIFETIME_SECS {
            return Err(Refusal::BadWindow(format!("valid from {} to {}: at most {MAX_LIFETIME_SECS} s", body.issued_at, body.expires_at)));
        }
        if now >= body.expires_at {
            return Err(Refusal::Expired { expires_at: body.expires_at, now });
        }
        if body.nonce.len() < 16 {
            return Err(Refusal::Malformed("nonce shorter than 8 bytes".into()));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "h0123456789abcdef";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body(now: u64) -> CommandBody {
        CommandBody {
            v: 1,
            command_id: "c1".into(),
            host_id: HOST.into(),
            issued_at: now,
            expires_at: now + 60,
            nonce: "0123456789abcdef".into(),
            command: Command::Ls { path: "/tmp".into() },
            reason: String::new(),
        }
    }

    /// Signs arbitrary body text (what a newer or a hostile operator tool might send).
    fn sign_text(text: &str, k: &SigningKey) -> SignedCommand {
        let sig = k.sign(&message(text));
        SignedCommand { body: text.into(), key: hex::encode(k.verifying_key().to_bytes()), signature: hex::encode(sig.to_bytes()) }
    }

    #[test]
    fn every_command_round_trips_and_carries_its_version() {
        let k = key(1);
        let all = [
            Command::Status,
            Command::Ls { path: "/tmp".into() },
            Command::Processes,
            Command::Connections,
            Command::Kill { pid: 42, tree: true },
            Command::Suspend { pid: 42 },
            Command::Resume { pid: 42 },
            Command::Quarantine { path: "/tmp/x".into() },
            Command::Restore { id: "ab".repeat(16), force: false },
            Command::Delete { path: "/tmp/x".into() },
            Command::Block { target: "/tmp/x".into() },
            Command::Unblock { target: "00".repeat(32) },
            Command::Fetch { path: "/tmp/x".into() },
            Command::Isolate,
            Command::Release,
            Command::Query { sql: "SELECT 1".into(), limit: 5 },
            Command::Storyline { alert: 7, max_events: 10, ancestor_activity: false },
            Command::PackInstall { name: "p".into(), version: "1.0.0".into(), sha256: "00".repeat(32), size: 5, signature: "sig".into() },
            Command::PackRollback { name: "p".into(), version: "1.0.0".into() },
        ];
        assert_eq!(all.iter().map(Command::op).collect::<Vec<_>>(), KNOWN_OPS);
        for c in all {
            let b = CommandBody { v: c.min_version(), command: c.clone(), reason: "case 7".into(), ..body(1000) };
            assert_eq!(sign(&b, &k).verify(&[k.verifying_key()], HOST, 1010).unwrap(), b);
            assert_eq!(serde_json::to_value(&c).unwrap()["op"], c.op());
        }
        assert!(!Command::Processes.changes_host() && Command::Release.changes_host());
        let q = Command::Query { sql: "SELECT 1".into(), limit: 5 };
        assert!(!q.changes_host() && q.min_version() == 2);
        let story: Command = serde_json::from_str(r#"{"op":"storyline","alert":3}"#).unwrap();
        assert_eq!(story, Command::Storyline { alert: 3, max_events: STORYLINE_DEFAULT_EVENTS, ancestor_activity: false });
        assert!(!story.changes_host() && story.min_version() == 4 && Command::Suspend { pid: 1 }.changes_host());
    }

    #[test]
    fn a_version_1_body_still_parses_and_newer_ones_are_refused_clearly() {
        let k = key(1);
        let pinned = [k.verifying_key()];
        let v1 = r#"{"v":1,"command_id":"c1","host_id":"h0123456789abcdef","issued_at":1000,"expires_at":1060,"nonce":"0123456789abcdef","command":{"op":"ls","path":"/tmp"}}"#;
        assert_eq!(sign_text(v1, &k).verify(&pinned, HOST, 1010).unwrap(), body(1000));
        let unknown = v1.replace(r#"{"op":"ls","path":"/tmp"}"#, r#"{"op":"format_disk"}"#);
        let e = sign_text(&unknown, &k).verify(&pinned, HOST, 1010).unwrap_err();
        assert!(matches!(&e, Refusal::UnknownOp { op, .. } if op == "format_disk"), "{e}");
        assert!(e.to_string().contains("kill") && e.to_string().contains("upgrade"), "{e}");
        let newer = v1.replace(r#""v":1"#, r#""v":5"#);
        let e = sign_text(&newer, &k).verify(&pinned, HOST, 1010).unwrap_err();
        assert_eq!(e, Refusal::TooNew(5));
        let pack_as_v2 = v1.replace(r#""v":1"#, r#""v":2"#).replace(r#"{"op":"ls","path":"/tmp"}"#, r#"{"op":"pack_rollback","name":"p","version":"1.0.0"}"#);
        assert!(matches!(sign_text(&pack_as_v2, &k).verify(&pinned, HOST, 1010), Err(Refusal::Malformed(m)) if m.contains("needs command version 3")));
        assert!(e.to_string().contains("upgrade the agent"), "{e}");
        let kill_as_v1 = v1.replace(r#"{"op":"ls","path":"/tmp"}"#, r#"{"op":"kill","pid":5}"#);
        assert!(matches!(sign_text(&kill_as_v1, &k).verify(&pinned, HOST, 1010), Err(Refusal::Malformed(m)) if m.contains("needs command version 2")));
        for hostile in [r#"{"v":"2"}"#, r#"{"v":2,"command":{"pid":1}}"#, r#"{"v":2,"command":{"op":"kill","pid":-1}}"#, "[]", "null"] {
            assert!(matches!(sign_text(hostile, &k).verify(&pinned, HOST, 1010), Err(Refusal::Malformed(_))), "{hostile}");
        }
        let query_as_v1 = v1.replace(r#"{"op":"ls","path":"/tmp"}"#, r#"{"op":"query","sql":"SELECT 1"}"#);
        assert!(matches!(sign_text(&query_as_v1, &k).verify(&pinned, HOST, 1010), Err(Refusal::Malformed(m)) if m.contains("needs command version 2")));
        let query_v2 = query_as_v1.replace(r#""v":1"#, r#""v":2"#);
        let b = sign_text(&query_v2, &k).verify(&pinned, HOST, 1010).unwrap();
        assert_eq!(b.command, Command::Query { sql: "SELECT 1".into(), limit: QUERY_DEFAULT_ROWS }, "the limit defaults");
        let long_op = v1.replace(r#""op":"ls""#, &format!(r#""op":"{}""#, "x".repeat(5000)));
        let e = sign_text(&long_op, &k).verify(&pinned, HOST, 1010).unwrap_err().to_string();
        assert!(e.len() < 400, "the refusal does not echo an unbounded op: {e}");
    }

    #[test]
    fn a_good_command_verifies() {
        let k = key(1);
        let c = sign(&body(1000), &k);
        assert_eq!(c.verify(&[k.verifying_key()], HOST, 1010).unwrap(), body(1000));
    }

    #[test]
    fn hostile_commands_are_refused_with_their_reason() {
        let (k, other) = (key(1), key(2));
        let pinned = [k.verifying_key()];
        let good = sign(&body(1000), &k);
        assert!(matches!(sign(&body(1000), &other).verify(&pinned, HOST, 1010), Err(Refusal::UnknownKey(_))));
        let mut forged = good.clone();
        forged.body = forged.body.replace("/tmp", "/etc");
        assert_eq!(forged.verify(&pinned, HOST, 1010), Err(Refusal::BadSignature));
        let mut resigned = sign(&body(1000), &other);
        resigned.key = good.key.clone();
        assert_eq!(resigned.verify(&pinned, HOST, 1010), Err(Refusal::BadSignature));
        assert!(matches!(good.verify(&pinned, "hffffffffffffffff", 1010), Err(Refusal::WrongHost { .. })));
        assert!(matches!(good.verify(&pinned, HOST, 1060), Err(Refusal::Expired { .. })));
        assert!(matches!(good.verify(&pinned, HOST, 100), Err(Refusal::BadWindow(_))));
        let long = CommandBody { expires_at: 1000 + MAX_LIFETIME_SECS + 1, ..body(1000) };
        assert!(matches!(sign(&long, &k).verify(&pinned, HOST, 1010), Err(Refusal::BadWindow(_))));
        let unsigned = SignedCommand { signature: String::new(), ..good.clone() };
        assert_eq!(unsigned.verify(&pinned, HOST, 1010), Err(Refusal::BadSignature));
        let garbage = SignedCommand { key: "zz".into(), ..good };
        assert!(matches!(garbage.verify(&pinned, HOST, 1010), Err(Refusal::Malformed(_))));
    }
}
