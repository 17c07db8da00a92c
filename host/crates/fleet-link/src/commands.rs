//! Signed commands from the fleet: verified here, against the operator keys
//! pinned at enrollment, before anything runs.
//!
//! Refused, with the reason logged, audited and answered: an envelope that
//! is not one, a key this host does not pin, a signature that does not
//! verify, a body for another host, one expired, not yet valid or valid for
//! too long, a nonce already used (nonces are kept, in
//! `fleet/nonces.json`, until their command expires, across restarts), and
//! a class of command the host's own policy refuses ([`crate::policy`]).
//! Every command, run or refused, is appended to `fleet/commands.jsonl`.

use crate::policy::CommandPolicy;
use edr_datadir::DataDir;
use edr_fleet_proto::command::{Command, CommandBody, CommandResult, Refusal, SignedCommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const NONCES: &str = "nonces.json";
const AUDIT: &str = "commands.jsonl";
/// Nonces remembered at most (each until its command expires).
const MAX_NONCES: usize = 100_000;
/// Entries a listing returns at most.
const MAX_ENTRIES: usize = 1000;
/// Files larger than this are listed without a hash.
const MAX_HASH_BYTES: u64 = 64 << 20;

/// Runs verified commands. The agent supplies its own (the response
/// commands go to its response engine); [`BuiltIn`] runs the read-only ones.
pub trait CommandExecutor: Send + Sync {
    /// Runs the verified `body` (its command, with its id and reason for
    /// the executor's own audit); `Err` is a failure the operator sees.
    ///
    /// # Errors
    /// Why the command failed.
    fn execute(&self, body: &CommandBody) -> Result<Value, String>;

    /// Offers the archive of a verified `pack_install` (its size and sha256
    /// already checked against the signed command) to the agent's pack
    /// manager, whose own trust store decides.
    ///
    /// # Errors
    /// Why the pack was not installed (the agent's verification or staging reason).
    fn install_pack(&self, body: &CommandBody, archive: Vec<u8>) -> Result<Value, String> {
        let _ = (body, archive);
        Err("this agent has no pack manager to install packs with".into())
    }

    /// Releases the host from isolation on the link's own decision (the
    /// isolation fallback, [`crate::fallback`]), with `reason` in the audit.
    ///
    /// # Errors
    /// Why the host could not be released.
    fn release_stranded(&self, reason: &str) -> Result<Value, String> {
        let _ = reason;
        Err("this agent has no response engine to release the host with".into())
    }
}

/// Fetches the archive a `pack_install` names, from the fleet.
pub trait PackFetcher: Send + Sync {
    /// The bytes of the archive with `sha256`, at most `size` of them.
    ///
    /// # Errors
    /// Why they could not be fetched.
    fn fetch(&self, sha256: &str, size: u64) -> Result<Vec<u8>, String>;
}

/// A fetcher for links without a connection (tests, `handle` callers that run no packs).
pub struct NoPacks;

impl PackFetcher for NoPacks {
    fn fetch(&self, _: &str, _: u64) -> Result<Vec<u8>, String> {
        Err("this link cannot fetch packs".into())
    }
}

/// A `pack_install`: the bytes come from the fleet, which is not trusted:
/// they must have the signed size and sha256 before the pack manager sees
/// them, and the pack manager then verifies the publisher's signature.
fn install_pack(body: &CommandBody, fetch: &dyn PackFetcher, exec: &dyn CommandExecutor) -> Result<Value, String> {
    use sha2::Digest;
    let Command::PackInstall { sha256, size, .. } = &body.command else { return exec.execute(body) };
    if *size > edr_fleet_proto::command::PACK_MAX_BYTES {
        return Err(format!("the pack is {size} bytes; at most {} are installed from the fleet", edr_fleet_proto::command::PACK_MAX_BYTES));
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("the command's sha256 is not 64 lowercase hex digits".into());
    }
    let bytes = fetch.fetch(sha256, *size)?;
    if bytes.len() as u64 != *size {
        return Err(format!("size mismatch: the signed command says {size} bytes, the fleet sent {}; not installed", bytes.len()));
    }
    let got = hex::encode(sha2::Sha256::digest(&bytes));
    if &got != sha256 {
        return Err(format!("sha256 mismatch: the signed command says {sha256}, the bytes the fleet sent hash to {got}; not installed"));
    }
    exec.install_pack(body, bytes)
}

/// The read-only commands: `status` (through the agent's status), `ls`,
/// `processes` and `connections`. Response commands fail: they need the agent's engine.
pub struct BuiltIn(pub std::sync::Arc<dyn crate::StatusProvider>);

impl CommandExecutor for BuiltIn {
    fn execute(&self, body: &CommandBody) -> Result<Value, String> {
        match &body.command {
            Command::Status => self.0.status(),
            Command::Ls { path } => list(Path::new(path)),
            Command::Processes => crate::processes::list(),
            Command::Connections => crate::connections::list(),
            other => Err(format!("`{}` needs the agent's response engine, which this link was not given", other.op())),
        }
    }
}

/// A directory listing: name, type, size, mode, owner, modification time,
/// and sha256 of regular files up to 64 MiB. Links are reported, not
/// followed. A path that is not a directory is listed alone (its hash and
/// metadata), with `"file": true`.
///
/// # Errors
/// A relative path, or one that cannot be read.
pub fn list(path: &Path) -> Result<Value, String> {
    if !path.is_absolute() {
        return Err(format!("{}: give an absolute path", path.display()));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    if !meta.is_dir() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(json!({"path": path, "entries": [entry(path, &name, &meta)], "truncated": false, "file": true}));
    }
    let dir = std::fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    let mut entries = Vec::new();
    let mut truncated = false;
    for item in dir.flatten() {
        if entries.len() == MAX_ENTRIES {
            truncated = true;
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(item.path()) else { continue };
        entries.push(entry(&item.path(), &item.file_name().to_string_lossy(), &meta));
    }
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json!({"path": path, "entries": entries, "truncated": truncated}))
}

/// One listed file: its metadata, and its sha256 when it is a regular file up to 64 MiB.
fn entry(path: &Path, name: &str, meta: &std::fs::Metadata) -> Value {
    use std::os::unix::fs::MetadataExt;
    let kind = if meta.is_dir() {
        "dir"
    } else if meta.file_type().is_symlink() {
        "symlink"
    } else if meta.is_file() {
        "file"
    } else {
        "other"
    };
    let sha256 = (meta.is_file() && meta.len() <= MAX_HASH_BYTES).then(|| hash_file(path)).flatten();
    json!({
        "name": name,
        "type": kind,
        "size": meta.len(),
        "mode": format!("{:o}", meta.mode() & 0o7777),
        "uid": meta.uid(),
        "gid": meta.gid(),
        "mtime": meta.mtime(),
        "sha256": sha256,
    })
}

fn hash_file(path: &Path) -> Option<String> {
    use sha2::Digest;
    // O_NOFOLLOW | O_NONBLOCK: never through a link swapped in, never stuck on a FIFO.
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(hex::encode(h.finalize()))
}

/// Nonces seen, each with its command's expiry.
pub struct NonceStore {
    dir: DataDir,
    seen: BTreeMap<String, u64>,
}

impl NonceStore {
    /// Loads `fleet/nonces.json` (a damaged file is logged and starts empty:
    /// expiry still bounds what could be replayed).
    pub fn load(dir: DataDir) -> NonceStore {
        let seen = match dir.read_limited(NONCES, 16 << 20) {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("fleet: {} unreadable ({e}); starting with no remembered nonces", dir.join(NONCES).display());
                BTreeMap::new()
            }),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!("fleet: {e}; starting with no remembered nonces");
                BTreeMap::new()
            }
        };
        NonceStore { dir, seen }
    }

    /// Records `nonce` until `expires_at`; `false` when it was seen already.
    pub fn use_once(&mut self, nonce: &str, expires_at: u64, now: u64) -> Result<bool, String> {
        self.seen.retain(|_, exp| *exp > now);
        if self.seen.contains_key(nonce) {
            return Ok(false);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(format!("{MAX_NONCES} unexpired commands remembered: refusing more until some expire"));
        }
        self.seen.insert(nonce.to_string(), expires_at);
        let bytes = serde_json::to_vec(&self.seen).unwrap_or_default();
        self.dir.write_atomically(NONCES, &bytes).map_err(|e| format!("cannot remember the nonce (refused, so it cannot be replayed): {e}"))?;
        Ok(true)
    }
}

/// What a command is checked against on this host before it runs.
#[derive(Debug, Clone, Copy)]
pub struct HostGate<'a> {
    /// This host's id: a body for another host is refused.
    pub host_id: &'a str,
    /// The operator keys pinned at enrollment.
    pub pinned: &'a [ed25519_dalek::VerifyingKey],
    /// The classes of command this host refuses (`[fleet] refuse`).
    pub policy: &'a CommandPolicy,
}

/// Verifies, runs and audits one command message; returns the answer. The
/// archives of `pack_install` commands come through `fetch`.
pub fn handle(payload: &[u8], gate: &HostGate<'_>, nonces: &mut NonceStore, exec: &dyn CommandExecutor, fetch: &dyn PackFetcher, now: u64) -> CommandResult {
    let host_id = gate.host_id;
    let answer = |command_id: String, status: &str, output: Value| CommandResult {
        v: edr_fleet_proto::PROTO_VERSION,
        host_id: host_id.to_string(),
        command_id,
        status: status.into(),
        output,
    };
    let verified = serde_json::from_slice::<SignedCommand>(payload)
        .map_err(|e| Refusal::Malformed(format!("not a signed command envelope: {e}")))
        .and_then(|c| c.verify(gate.pinned, host_id, now))
        .and_then(|body| {
            if gate.policy.refuses(&body.command) {
                return Err(Refusal::HostPolicy { op: body.command.op().into(), classes: gate.policy.classes().to_vec() });
            }
            Ok(body)
        })
        .and_then(|body| match nonces.use_once(&body.nonce, body.expires_at, now) {
            Ok(true) => Ok(body),
            Ok(false) => Err(Refusal::Replayed(body.nonce)),
            Err(e) => Err(Refusal::Malformed(e)),
        });
    let mut reason = String::new();
    let result = match verified {
        Err(why) => {
            tracing::warn!(reason = %why, "fleet: command refused");
            answer(String::new(), "refused", json!({"reason": why.to_string()}))
        }
        Ok(body) => {
            tracing::info!(command_id = %body.command_id, command = ?body.command, reason = %body.reason, "fleet: running a signed command");
            reason = body.reason.clone();
            let run = if matches!(body.command, Command::PackInstall { .. }) { install_pack(&body, fetch, exec) } else { exec.execute(&body) };
            match run {
                Ok(v) => answer(body.command_id, "done", v),
                Err(e) => answer(body.command_id, "failed", json!({"error": e})),
            }
        }
    };
    audit(&nonces.dir, payload, &result, &reason, now);
    result
}

fn audit(dir: &DataDir, payload: &[u8], result: &CommandResult, operator_reason: &str, now: u64) {
    let line = json!({
        "time": now,
        "command": String::from_utf8_lossy(&payload[..payload.len().min(8192)]),
        "command_id": result.command_id,
        "status": result.status,
        "reason": result.output.get("reason"),
        "operator_reason": operator_reason,
        "error": result.output.get("error"),
    });
    let write = dir.open_append(AUDIT).map_err(|e| e.to_string()).and_then(|mut f| writeln!(f, "{line}").map_err(|e| e.to_string()));
    if let Err(e) = write {
        tracing::error!("fleet: cannot audit a command in {}: {e}", dir.join(AUDIT).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Serves(Vec<u8>);
    impl PackFetcher for Serves {
        fn fetch(&self, _: &str, _: u64) -> Result<Vec<u8>, String> {
            Ok(self.0.clone())
        }
    }

    /// Records what reached the pack manager.
    struct Manager(std::sync::Mutex<Vec<Vec<u8>>>);
    impl CommandExecutor for Manager {
        fn execute(&self, _: &CommandBody) -> Result<Value, String> {
            Err("not used".into())
        }
        fn install_pack(&self, _: &CommandBody, archive: Vec<u8>) -> Result<Value, String> {
            self.0.lock().unwrap().push(archive);
            Ok(json!({"state": "staged"}))
        }
    }

    fn install(bytes: &[u8], sha256: String, size: u64) -> CommandBody {
        CommandBody {
            v: 3,
            command_id: "c".into(),
            host_id: "h0123456789abcdef".into(),
            issued_at: 0,
            expires_at: 60,
            nonce: "0123456789abcdef".into(),
            command: Command::PackInstall { name: "p".into(), version: "1.0.0".into(), sha256, size, signature: String::from_utf8_lossy(bytes).into() },
            reason: String::new(),
        }
    }

    #[test]
    fn a_pack_whose_bytes_differ_from_the_signed_command_never_reaches_the_pack_manager() {
        use sha2::Digest;
        let good = b"the archive".to_vec();
        let sha = hex::encode(sha2::Sha256::digest(&good));
        let m = Manager(Default::default());
        assert!(install_pack(&install(&good, sha.clone(), good.len() as u64), &Serves(good.clone()), &m).is_ok());
        let swapped = b"the archivf".to_vec();
        let e = install_pack(&install(&good, sha.clone(), good.len() as u64), &Serves(swapped), &m).unwrap_err();
        assert!(e.contains("sha256 mismatch"), "{e}");
        let e = install_pack(&install(&good, sha.clone(), good.len() as u64 + 1), &Serves(good.clone()), &m).unwrap_err();
        assert!(e.contains("size mismatch"), "{e}");
        let e = install_pack(&install(&good, "ZZ".repeat(32), good.len() as u64), &Serves(good.clone()), &m).unwrap_err();
        assert!(e.contains("64 lowercase hex"), "{e}");
        let e = install_pack(&install(&good, sha, edr_fleet_proto::command::PACK_MAX_BYTES + 1), &Serves(good.clone()), &m).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        assert_eq!(m.0.lock().unwrap().len(), 1, "only the matching archive was offered");
    }
}
