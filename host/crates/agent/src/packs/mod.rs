//! Signed detection packs in the agent: trust, verification, staging,
//! activation, anti-rollback and rollback.
//!
//! A candidate pack (from the drop-in directory, the update URL, or the
//! binary's built-in pack) goes through:
//!
//! 1. verification by `edr-pack` against the pinned keys (fail closed);
//! 2. anti-rollback: its version must be above the highest version of that
//!    pack ever activated on this host (kept in `<data_dir>/packs/state.json`
//!    and in the record's `pack_floors` table across restarts: the agent
//!    takes the higher of the two, so deleting the file resets nothing);
//! 3. staging: every plugin is compiled, checked against its grants,
//!    instantiated and initialised, must subscribe to no more than its
//!    manifest says, and must get through a canary batch under its deadline;
//! 4. activation: the archive is kept under `<data_dir>/packs/<id>/`, the
//!    state is saved, and the plugins are handed to the dispatcher, which
//!    swaps them in between batches.
//!
//! Any failure leaves the active version untouched and is reported with its
//! reason. The last `keep_versions` good versions stay on disk: a version
//! whose plugin gets quarantined is rolled back to the previous good one
//! automatically, and an operator can roll back by hand.

mod canary;
mod sources;
mod state;
mod worker;

pub use sources::{poll_update_url, retire_dropped, watch_drop_dir, Candidate, DONE_DIR, REJECTED_DIR};
pub use state::{BadVersion, PackEntry, PackState};
pub(crate) use worker::{spawn_pack_thread, PackRequest, PackThread};

use crate::config::AgentConfig;
use crate::plugins;
use edr_event::{PackRef, PluginConfig};
use edr_pack::{semver::Version, Rejection, TrustStore, VerifiedPack, VerifyPolicy};
use edr_runtime::{HostServices, Plugin, PluginSpec, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The built-in detection pack (`edr.builtin`) a binary embeds, signed at
/// build time, with the development key it was signed with. The agent
/// verifies it at start like any other pack; the key is trusted unless
/// `packs.trust_builtin_key = false`.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinPack {
    /// The pack archive.
    pub archive: &'static [u8],
    /// Its minisign signature.
    pub signature: &'static str,
    /// The public key (minisign `.pub` text).
    pub public_key: &'static str,
}

/// The agent's version, checked against packs' `min_agent_version`.
pub fn agent_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate version is semver")
}

/// Why a candidate was not activated.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// Verification refused it.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// A plugin did not get through staging.
    #[error("plugin `{plugin}` of {pack} {version} failed staging: {reason}")]
    Staging {
        /// The pack id.
        pack: String,
        /// Its version.
        version: Version,
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// Storing or reading it failed.
    #[error("{0}")]
    Io(String),
}

impl OfferError {
    /// A short stable reason for status and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            OfferError::Rejected(r) => r.reason_code(),
            OfferError::Staging { .. } => "staging_failed",
            OfferError::Io(_) => "io_error",
        }
    }

    /// True for "already installed": not worth a warning.
    pub fn is_benign(&self) -> bool {
        matches!(self, OfferError::Rejected(r) if r.is_benign())
    }
}

/// A pack version ready to swap in.
pub struct Activation {
    /// The pack version.
    pub pack: PackRef,
    /// `(key, plugin)`: key is `pack-id/plugin-name`.
    pub plugins: Vec<(String, Plugin)>,
    /// Response actions each plugin's manifest declares: `(plugin name, actions)`.
    pub declared_actions: Vec<(String, Vec<String>)>,
    /// Every active pack once this activation is applied (for status).
    pub active_after: Vec<ActivePack>,
    /// Keys of plugins the previous version had and this one does not.
    pub removed: Vec<String>,
}

/// The version of a pack that is active.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActivePack {
    /// The pack id.
    pub id: String,
    /// The active version.
    pub version: String,
    /// Who signed it: key name (key id).
    pub signer: String,
    /// The manifest's publisher.
    pub publisher: String,
    /// Its plugins' keys.
    pub plugins: Vec<String>,
}

/// The agent's packs.
pub struct PackManager {
    /// `<data_dir>/packs`; `None` for an ephemeral manager (`edr replay`)
    /// that stores nothing and remembers nothing.
    root: Option<PathBuf>,
    trust: TrustStore,
    state: PackState,
    keep: usize,
    runtime: Runtime,
    services: Arc<dyn HostServices>,
    cfg: Arc<AgentConfig>,
    active: BTreeMap<String, ActivePack>,
    /// The record's copy of the anti-rollback floors, when the store is on.
    floors: Option<edr_store::PackFloors>,
    /// The binary's built-in pack, offered at startup when `plugins.builtin`.
    builtin: Option<BuiltinPack>,
}

impl PackManager {
    /// Loads the trust store from the config and the state from disk.
    pub fn new(cfg: Arc<AgentConfig>, runtime: Runtime, services: Arc<dyn HostServices>, builtin: Option<BuiltinPack>) -> anyhow::Result<Self> {
        let root = cfg.data_dir.join("packs");
        edr_datadir::private_dir_all(&root)?;
        let trust = trust_store(&cfg, builtin.as_ref())?;
        let state = PackState::load(&root.join("state.json"))?;
        Ok(Self { root: Some(root), trust, state, keep: cfg.packs.keep_versions, runtime, services, cfg, active: BTreeMap::new(), floors: None, builtin })
    }

    /// A manager that verifies and stages packs but writes nothing to disk
    /// and applies no anti-rollback floor (for `edr replay`).
    pub fn ephemeral(cfg: Arc<AgentConfig>, runtime: Runtime, services: Arc<dyn HostServices>, builtin: Option<BuiltinPack>) -> anyhow::Result<Self> {
        let trust = trust_store(&cfg, builtin.as_ref())?;
        Ok(Self {
            root: None,
            trust,
            state: PackState::default(),
            keep: cfg.packs.keep_versions,
            runtime,
            services,
            cfg,
            active: BTreeMap::new(),
            floors: None,
            builtin,
        })
    }

    /// Keeps the anti-rollback floors in the record as well: raises the
    /// state's floors to the record's (state.json may have been deleted or
    /// replaced), then writes the merged floors back to both.
    pub fn with_record(mut self, floors: edr_store::PackFloors) -> anyhow::Result<Self> {
        let recorded = floors.all().map_err(|e| {
            anyhow::anyhow!(
                "cannot read the anti-rollback floors from the record: {e}; the agent does not start without them (fix or move the store aside knowingly)"
            )
        })?;
        let mut restored = false;
        for (id, version) in &recorded {
            match Version::parse(version) {
                Ok(v) if self.state.raise_floor(id, &v) => {
                    tracing::warn!(pack = %id, floor = %v, "packs/state.json lacked the anti-rollback floor the record holds (deleted or replaced?): restored; older versions stay refused");
                    restored = true;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(pack = %id, version, "unreadable anti-rollback floor in the record ({e}); state.json's is used"),
            }
        }
        if restored {
            self.save_state();
        }
        self.floors = Some(floors);
        // Floors only state.json had (a store older than the floors table, or a new one).
        let missing: Vec<String> =
            self.state.packs.iter().filter(|(id, e)| !recorded.iter().any(|(r, v)| r == *id && *v == e.highest)).map(|(id, _)| id.clone()).collect();
        for id in missing {
            self.record_floor(&id);
        }
        Ok(self)
    }

    /// Writes `id`'s floor (the state's highest) to the record.
    fn record_floor(&self, id: &str) {
        let (Some(floors), Some(e)) = (&self.floors, self.state.get(id)) else { return };
        if let Err(err) = floors.record(id, &e.highest) {
            tracing::error!(pack = %id, floor = %e.highest, "cannot record the anti-rollback floor in the store: {err}; state.json still holds it");
        }
    }

    /// Checks packs offered from now on against `trust`.
    pub fn set_trust(&mut self, trust: TrustStore) {
        self.trust = trust;
    }

    /// The active packs.
    pub fn active(&self) -> Vec<ActivePack> {
        self.active.values().cloned().collect()
    }

    /// The persisted per-pack history.
    pub fn state(&self) -> &PackState {
        &self.state
    }

    /// Activates what was active before the restart, then offers the built-in pack.
    pub fn startup(&mut self) -> Vec<Activation> {
        let mut out = Vec::new();
        let ids: Vec<String> = self.state.ids();
        for id in ids {
            match self.load_installed(&id) {
                Ok(a) => out.push(a),
                Err(e) => tracing::error!(pack = %id, "cannot reactivate installed pack: {e}"),
            }
        }
        if let Some(builtin) = self.builtin.filter(|_| self.cfg.plugins.builtin) {
            match self.offer(builtin.archive, builtin.signature, "built-in") {
                Ok(a) => out.push(a),
                Err(e) if e.is_benign() => {}
                // A newer edr.builtin installed from a vendor outranks the embedded one.
                Err(OfferError::Rejected(Rejection::Rollback { .. })) => {}
                Err(e) => tracing::error!("the built-in pack was not activated: {e}"),
            }
        }
        out
    }

    /// The newest good version of `id` on disk, verified again (files under
    /// the data dir could have been tampered with) and staged.
    fn load_installed(&mut self, id: &str) -> Result<Activation, OfferError> {
        let Some(entry) = self.state.get(id).cloned() else { return Err(OfferError::Io(format!("pack {id} is not installed"))) };
        let mut candidates: Vec<Version> = entry.good.iter().filter_map(|v| Version::parse(v).ok()).collect();
        candidates.sort();
        let active = Version::parse(&entry.active).ok();
        // Try the active version first, then older good ones.
        candidates.retain(|v| Some(v) <= active.as_ref());
        let mut last_err = OfferError::Io(format!("no good version of {id} on disk"));
        while let Some(v) = candidates.pop() {
            match self.activate_stored(id, &v) {
                Ok(a) => {
                    if Some(&v) != active.as_ref() {
                        self.state.set_active(id, &v);
                        self.save_state();
                    }
                    return Ok(a);
                }
                Err(e) => {
                    tracing::error!(pack = %id, version = %v, "stored version unusable: {e}");
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    fn stored_paths(&self, id: &str, version: &Version) -> (PathBuf, PathBuf) {
        let root = self.root.clone().unwrap_or_default();
        let archive = root.join(id).join(edr_pack::archive_file_name(id, version));
        let sig = edr_pack::signature_path(&archive);
        (archive, sig)
    }

    fn activate_stored(&mut self, id: &str, version: &Version) -> Result<Activation, OfferError> {
        let (archive, sig) = self.stored_paths(id, version);
        let mut policy = self.policy();
        policy.expected_id = Some(id.to_string());
        let pack = edr_pack::verify(&archive, &sig, &self.trust, &policy)?;
        if &pack.manifest.version != version {
            return Err(OfferError::Io(format!("{} holds version {}, not {version}", archive.display(), pack.manifest.version)));
        }
        self.stage_and_record(pack)
    }

    fn policy(&self) -> VerifyPolicy {
        VerifyPolicy::new(agent_version())
    }

    /// Verifies, checks anti-rollback, stores, stages and records a candidate.
    pub fn offer(&mut self, archive: &[u8], signature: &str, origin: &str) -> Result<Activation, OfferError> {
        // First pass learns the (authenticated) id; the second applies the
        // anti-rollback floor for that id.
        let pack = edr_pack::verify_bytes(archive, signature, &self.trust, &self.policy())?;
        let id = pack.manifest.id.clone();
        // A pack known only by its floor (state.json was lost) may come back
        // at that very version; anything older is a rollback.
        let floor_only = self.state.floor_only(&id) && self.state.highest(&id).as_ref() == Some(&pack.manifest.version);
        if let Some(highest) = self.state.highest(&id).filter(|_| !floor_only) {
            let mut policy = self.policy();
            policy.expected_id = Some(id.clone());
            policy.installed_version = Some(highest);
            edr_pack::verify_bytes(archive, signature, &self.trust, &policy)?;
        }
        let version = pack.manifest.version.clone();
        tracing::info!(pack = %id, %version, origin, signer = %pack.signer.name, "pack verified; staging");
        if self.root.is_none() {
            return self.stage_and_record(pack);
        }
        let (path, sig_path) = self.stored_paths(&id, &version);
        write_atomically(&path, archive).map_err(|e| OfferError::Io(format!("cannot store {}: {e}", path.display())))?;
        write_atomically(&sig_path, signature.as_bytes()).map_err(|e| OfferError::Io(format!("cannot store {}: {e}", sig_path.display())))?;
        match self.stage_and_record(pack) {
            Ok(a) => {
                self.state.activated(&id, &version, self.keep);
                for dropped in self.state.prune(&id, self.keep) {
                    if let Ok(v) = Version::parse(&dropped) {
                        let (a, s) = self.stored_paths(&id, &v);
                        let _ = std::fs::remove_file(a);
                        let _ = std::fs::remove_file(s);
                    }
                }
                self.save_state();
                self.record_floor(&id);
                Ok(a)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(&sig_path);
                Err(e)
            }
        }
    }

    /// Stages a verified pack and, on success, marks it active in memory.
    fn stage_and_record(&mut self, pack: VerifiedPack) -> Result<Activation, OfferError> {
        let id = pack.manifest.id.clone();
        let version = pack.manifest.version.clone();
        let pack_ref = PackRef { id: id.clone(), version: version.to_string(), signer: format!("{} ({})", pack.signer.name, pack.signer.key_id) };
        let mut plugins = Vec::new();
        for p in &pack.plugins {
            let plugin = self.stage_plugin(&pack, p, &pack_ref).map_err(|reason| OfferError::Staging {
                pack: id.clone(),
                version: version.clone(),
                plugin: p.name.clone(),
                reason,
            })?;
            plugins.push((format!("{id}/{}", p.name), plugin));
        }
        let keys: Vec<String> = plugins.iter().map(|(k, _)| k.clone()).collect();
        let removed = self.active.get(&id).map(|a| a.plugins.iter().filter(|k| !keys.contains(k)).cloned().collect()).unwrap_or_default();
        self.active.insert(
            id.clone(),
            ActivePack {
                id: id.clone(),
                version: version.to_string(),
                signer: pack_ref.signer.clone(),
                publisher: pack.manifest.publisher.clone(),
                plugins: keys,
            },
        );
        let declared_actions = pack.plugins.iter().map(|p| (p.name.clone(), p.actions.iter().map(|a| a.as_str().to_string()).collect())).collect();
        Ok(Activation { pack: pack_ref, plugins, removed, declared_actions, active_after: self.active() })
    }

    fn stage_plugin(&self, pack: &VerifiedPack, p: &edr_pack::PackPlugin, pack_ref: &PackRef) -> Result<Plugin, String> {
        // Settings: the pack's defaults, then the operator's overrides.
        let mut settings: BTreeMap<String, String> = p.settings.clone();
        settings.extend(self.cfg.plugin_settings(&p.name));
        let mut files: Vec<edr_event::DataFile> =
            p.data.iter().map(|(name, content)| edr_event::DataFile { name: name.clone(), content: content.clone() }).collect();
        // The operator's own data files for this plugin come after the pack's.
        files.extend(plugins::data_files(&self.cfg, &p.name).map_err(|e| format!("{e:#}"))?);
        let allowed = self.cfg.plugin_grants(&p.name);
        let respond_granted = self.cfg.respond_grants_pack(&pack.manifest.id);
        let grants = edr_runtime::Grants::only(
            p.capabilities.iter().copied().filter(|c| allowed.allows(*c) || (*c == edr_runtime::Capability::Respond && respond_granted)),
        );
        let mut limits = plugins::limits(&self.cfg, &p.name);
        if !self.cfg.plugins.limits.contains_key(&p.name) {
            // The pack's requests, within the operator's ceilings.
            if let Some(ms) = p.limits.call_deadline_ms {
                limits.call_deadline = std::time::Duration::from_millis(ms.min(self.cfg.packs.max_call_deadline_ms));
            }
            if let Some(mb) = p.limits.memory_mb {
                limits.memory_bytes = (mb as usize).min(self.cfg.packs.max_memory_mb) << 20;
            }
            if let Some(n) = p.limits.max_findings_per_batch {
                limits.max_findings_per_batch = n as usize;
            }
        }
        let spec = PluginSpec {
            name: p.name.clone(),
            wasm: p.wasm.clone(),
            config: PluginConfig { settings: settings.into_iter().collect(), files },
            limits,
            grants,
            pack: Some(pack_ref.clone()),
        };
        let mut plugin = self.runtime.load(spec, self.services.clone()).map_err(|e| e.to_string())?;
        let declared = &pack.manifest.plugin(&p.name).map(|m| m.subscriptions.clone()).unwrap_or_default();
        if let Some(extra) = plugin.info().subscriptions.iter().find(|k| !declared.contains(k)) {
            return Err(format!("subscribes to `{extra}` at init, which its manifest does not declare (declared: {declared:?})"));
        }
        canary::run(&mut plugin)?;
        Ok(plugin)
    }

    /// Rolls `id` back to its previous good version; the current version is
    /// marked bad (it will not be activated again; only a newer one will).
    pub fn rollback(&mut self, id: &str, reason: &str) -> Result<Activation, OfferError> {
        let Some(entry) = self.state.get(id).cloned() else { return Err(OfferError::Io(format!("pack `{id}` is not installed"))) };
        let current = Version::parse(&entry.active).map_err(|e| OfferError::Io(e.to_string()))?;
        let mut older: Vec<Version> = entry.good.iter().filter_map(|v| Version::parse(v).ok()).filter(|v| *v < current).collect();
        older.sort();
        let mut last_err = OfferError::Io(format!("pack `{id}` has no good version older than {current} on disk to roll back to"));
        while let Some(v) = older.pop() {
            match self.activate_stored(id, &v) {
                Ok(a) => {
                    self.state.mark_bad(id, &current, reason);
                    self.state.set_active(id, &v);
                    self.save_state();
                    tracing::warn!(pack = %id, from = %current, to = %v, reason, "pack rolled back");
                    return Ok(a);
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn save_state(&self) {
        let Some(root) = &self.root else { return };
        if let Err(e) = self.state.save(&root.join("state.json")) {
            tracing::error!("cannot save pack state: {e}");
        }
    }
}

/// The pinned keys: `[[trust.keys]]`, plus the built-in pack's development key
/// (when there is a built-in pack) unless `packs.trust_builtin_key = false`.
pub fn trust_store(cfg: &AgentConfig, builtin: Option<&BuiltinPack>) -> anyhow::Result<TrustStore> {
    let mut trust = TrustStore::new();
    for k in &cfg.trust.keys {
        let key = match (&k.public_key, &k.public_key_file) {
            (Some(b64), _) => edr_pack::PublicKey::from_base64(b64)?,
            (None, Some(path)) => edr_pack::PublicKey::from_file(path)?,
            (None, None) => anyhow::bail!("trust key `{}` has neither public_key nor public_key_file", k.name),
        };
        trust.add(k.name.clone(), key)?;
    }
    if let Some(builtin) = builtin.filter(|_| cfg.packs.trust_builtin_key && cfg.plugins.builtin) {
        let key = edr_pack::PublicKey::from_minisign_text(builtin.public_key, "built-in development key")?;
        trust.add("edr-dev", key)?;
    }
    Ok(trust)
}

/// Stores `bytes` at `path` (0600, never through a link) in its 0700 directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = edr_datadir::private_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    Ok(dir.write_atomically(&path.file_name().unwrap_or_default().to_string_lossy(), bytes)?)
}
