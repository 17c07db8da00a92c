//! What `edr fleet pack ...` does before and after the API: choosing the
//! target hosts, signing one command per host with the operator key, and
//! rendering a rollout's status.

use crate::client::sign_command_with_reason;
use crate::FleetError;
use base64::Engine as _;
use edr_fleet_proto::command::Command;
use serde_json::{json, Value};
use sha2::Digest;
use std::path::Path;

/// Whether `--percent percent` selects `host_id` for pack `name`: the first
/// 8 bytes of sha256(`name` NUL `host_id`) modulo 100 are below `percent`.
/// Deterministic, and a higher percentage keeps every host a lower one chose.
pub fn selects(name: &str, host_id: &str, percent: u8) -> bool {
    let h = sha2::Sha256::digest(format!("{name}\0{host_id}").as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
    n % 100 < u64::from(percent.min(100))
}

/// The targets of a publish: `hosts` when given (each must be enrolled),
/// else every enrolled host `--percent` selects (all with neither), in
/// host id order. `hosts_listing` is `GET /api/v1/hosts`'s answer.
///
/// # Errors
/// An unknown host, a percentage over 100, or no host chosen.
pub fn targets(hosts_listing: &Value, name: &str, hosts: &[String], percent: Option<u8>) -> Result<Vec<String>, String> {
    let mut known: Vec<String> = hosts_listing["hosts"].as_array().into_iter().flatten().filter_map(|h| h["host_id"].as_str().map(String::from)).collect();
    known.sort();
    if let Some(p) = percent.filter(|p| *p > 100) {
        return Err(format!("--percent {p}: give 1 to 100"));
    }
    let chosen: Vec<String> = if hosts.is_empty() {
        known.into_iter().filter(|h| selects(name, h, percent.unwrap_or(100))).collect()
    } else {
        if let Some(h) = hosts.iter().find(|h| !known.contains(h)) {
            return Err(format!("no host {h:?} in this fleet: see `edr fleet hosts`"));
        }
        hosts.to_vec()
    };
    if chosen.is_empty() {
        return Err("no host chosen: none enrolled, or --percent selected none (raise it, or name hosts with --hosts)".into());
    }
    Ok(chosen)
}

/// A pack archive (with its `.minisig` beside it) read for publishing.
#[derive(Debug, Clone)]
pub struct PackFile {
    /// The manifest's id (not authenticated here: the hosts verify).
    pub name: String,
    /// Its version.
    pub version: String,
    /// The archive.
    pub bytes: Vec<u8>,
    /// The minisign signature text.
    pub signature: String,
}

impl PackFile {
    /// Reads `archive` and `archive.minisig`.
    ///
    /// # Errors
    /// When either cannot be read or the archive is not a pack.
    pub fn read(archive: &Path) -> Result<PackFile, String> {
        let inspected = edr_pack::inspect(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let sig_path = edr_pack::signature_path(archive);
        let signature = std::fs::read_to_string(&sig_path).map_err(|e| format!("{}: {e} (sign it with `edr pack sign`)", sig_path.display()))?;
        let bytes = std::fs::read(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        Ok(PackFile { name: inspected.unverified_manifest.id, version: inspected.unverified_manifest.version.to_string(), bytes, signature })
    }
}

/// The body of `POST /api/v1/packs`: the archive and one signed
/// `pack_install` per host (valid for `ttl_secs`).
///
/// # Errors
/// When the operator key cannot be used.
pub fn publish_request(key_file: &Path, pack: &PackFile, hosts: &[String], reason: &str, ttl_secs: u64) -> Result<Value, FleetError> {
    let sha256 = hex::encode(sha2::Sha256::digest(&pack.bytes));
    let mut commands = Vec::with_capacity(hosts.len());
    for h in hosts {
        let cmd = Command::PackInstall {
            name: pack.name.clone(),
            version: pack.version.clone(),
            sha256: sha256.clone(),
            size: pack.bytes.len() as u64,
            signature: pack.signature.clone(),
        };
        commands.push(serde_json::to_value(sign_command_with_reason(key_file, h, cmd, reason, ttl_secs)?).unwrap_or_default());
    }
    Ok(json!({"archive_base64": base64::engine::general_purpose::STANDARD.encode(&pack.bytes), "commands": commands}))
}

/// The body of `POST /api/v1/packs/NAME/rollback`: one signed
/// `pack_rollback` for each host of `status` (`GET /api/v1/packs/NAME`)
/// where the version was staged or is active.
///
/// # Errors
/// When the operator key cannot be used, or no host has the version.
pub fn rollback_request(key_file: &Path, status: &Value, reason: &str, ttl_secs: u64) -> Result<Value, String> {
    let (name, version) = (status["name"].as_str().unwrap_or_default(), status["version"].as_str().unwrap_or_default());
    let mut commands = Vec::new();
    for h in status["hosts"].as_array().into_iter().flatten().filter(|h| matches!(h["state"].as_str(), Some("staged" | "active"))) {
        let host = h["host"].as_str().unwrap_or_default();
        let cmd = Command::PackRollback { name: name.into(), version: version.into() };
        let signed = sign_command_with_reason(key_file, host, cmd, reason, ttl_secs).map_err(|e| e.to_string())?;
        commands.push(serde_json::to_value(signed).unwrap_or_default());
    }
    if commands.is_empty() {
        return Err(format!("no host has {name} {version} staged or active: nothing to roll back"));
    }
    Ok(json!({"commands": commands}))
}

/// `edr fleet pack status NAME` as a table (control characters shown as `?`).
pub fn render_status(v: &Value) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    let mut out = format!(
        "{} {}{} (sha256 {})\n{:<18} {:<16} {:<12} {}\n",
        clean(v["name"].as_str().unwrap_or("")),
        clean(v["version"].as_str().unwrap_or("")),
        if v["halted"] == true { " [halted]" } else { "" },
        v["sha256"].as_str().unwrap_or(""),
        "HOST",
        "STATE",
        "HEARTBEAT",
        "REASON"
    );
    for h in v["hosts"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<18} {:<16} {:<12} {}\n",
            clean(h["host"].as_str().unwrap_or("")),
            clean(h["state"].as_str().unwrap_or("")),
            clean(h["heartbeat_version"].as_str().unwrap_or("-")),
            clean(h["reason"].as_str().unwrap_or(""))
        ));
    }
    out
}

/// `edr fleet pack status` (no name) as a table.
pub fn render_list(v: &Value) -> String {
    let mut out = format!("{:<32} {:<12} {:<8} {}\n", "PACK", "VERSION", "HALTED", "HOSTS");
    for p in v["packs"].as_array().into_iter().flatten() {
        let states: Vec<String> = p["states"].as_object().into_iter().flatten().map(|(k, n)| format!("{k}={n}")).collect();
        out.push_str(&format!(
            "{:<32} {:<12} {:<8} {}\n",
            p["name"].as_str().unwrap_or("").chars().filter(|c| !c.is_control()).collect::<String>(),
            p["version"].as_str().unwrap_or("").chars().filter(|c| !c.is_control()).collect::<String>(),
            p["halted"] == true,
            states.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_selection_is_deterministic_and_grows_monotonically() {
        let hosts: Vec<String> = (0..400).map(|i| format!("h{i:016x}")).collect();
        let pick = |p| hosts.iter().filter(|h| selects("com.acme.rules", h, p)).cloned().collect::<Vec<_>>();
        let (ten, fifty) = (pick(10), pick(50));
        assert_eq!(pick(10), ten, "the same hosts every time");
        assert!((20..=60).contains(&ten.len()), "about 10 %: {}", ten.len());
        assert!(ten.iter().all(|h| fifty.contains(h)), "raising the percentage keeps the earlier hosts");
        assert_eq!(pick(100).len(), 400);
        assert!(pick(0).is_empty());
        let listing = json!({"hosts": hosts.iter().map(|h| json!({"host_id": h})).collect::<Vec<_>>()});
        assert_eq!(targets(&listing, "com.acme.rules", &[], Some(10)).unwrap(), ten);
        assert!(targets(&listing, "p", &["hffffffffffffffff".into()], None).unwrap_err().contains("no host"));
        assert!(targets(&listing, "p", &[], Some(101)).unwrap_err().contains("1 to 100"));
        assert!(targets(&json!({"hosts": []}), "p", &[], None).is_err());
    }

    #[test]
    fn status_renders_without_control_characters() {
        let v = json!({"name": "p\u{1b}[31m", "version": "1.0.0", "halted": true, "hosts": [{"host": "h1", "state": "refused", "reason": "bad\nsig"}]});
        let t = render_status(&v);
        assert!(t.contains("[halted]") && t.contains("refused") && !t.contains('\u{1b}') && t.contains("bad?sig"), "{t}");
    }
}
