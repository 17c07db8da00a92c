//! What the agent puts behind the plugins' host imports.
//!
//! * `state`: per-plugin key-value state, keyed by pack id and plugin name
//!   (not version), so it survives a hot reload; kept in memory and written
//!   behind (at most a second late, and on shutdown) to
//!   `<data_dir>/state/`, so it survives a restart. Quota: 1 MiB per plugin.
//! * `process`: ancestry from the process tree (the exec events seen).
//! * `respond`: response requests go to the response engine's policy.
//!
//! Built in dependency order: the ancestry source (the collectors' process
//! tree) and the action handler (the response engine) exist before the
//! services and are given to them when they are made, never set later.

use edr_event::{Action, Decision, ProcessExec, ProcessInfo};
use edr_runtime::{HostServices, PluginIdentity};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// State quota per plugin, bytes (keys + values).
pub const STATE_QUOTA: usize = 1 << 20;

/// Decides on a plugin's action request (the response engine).
pub type ActionHandler = Arc<dyn Fn(&PluginIdentity, Action, String) -> Decision + Send + Sync>;

/// Source of ancestry lookups (the live process tree, when collectors run).
pub type AncestrySource = Arc<dyn Fn(u64) -> Vec<ProcessInfo> + Send + Sync>;

/// The agent's host services.
pub struct AgentServices {
    processes: Mutex<HashMap<u64, (ProcessInfo, u64)>>,
    declared: Arc<DeclaredActions>,
    /// The live process tree; `None`: ancestry from the exec events seen.
    ancestry: Option<AncestrySource>,
    state: Mutex<StateStore>,
    /// `None`: every action request is refused (no response engine).
    actions: Option<ActionHandler>,
}

/// The response actions each pack plugin's manifest declares, recorded when
/// its pack is activated. Shared by the services (which record) and the
/// response engine's gate (which checks, [`crate::response::action_handler`]).
#[derive(Debug, Default)]
pub struct DeclaredActions {
    /// (pack id, plugin) -> actions.
    by_plugin: Mutex<HashMap<(String, String), Vec<String>>>,
}

impl DeclaredActions {
    /// Replaces what `pack`'s plugins declare.
    pub fn declare(&self, pack: &str, declared: &[(String, Vec<String>)]) {
        let mut d = self.by_plugin.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|(p, _), _| p != pack);
        for (plugin, actions) in declared {
            d.insert((pack.to_string(), plugin.clone()), actions.clone());
        }
    }

    /// Whether a plugin's manifest declares `action` (plugins outside packs declare none).
    pub fn declares(&self, who: &PluginIdentity, action: &str) -> bool {
        let Some(pack) = &who.pack else { return false };
        self.by_plugin.lock().unwrap_or_else(|p| p.into_inner()).get(&(pack.id.clone(), who.plugin.clone())).is_some_and(|a| a.iter().any(|x| x == action))
    }
}

struct StateStore {
    dir: Option<PathBuf>,
    namespaces: HashMap<String, BTreeMap<String, Vec<u8>>>,
    dirty: HashSet<String>,
}

impl AgentServices {
    /// Services whose state persists under `state_dir` (`None`: memory only,
    /// as in `edr replay`), with ancestry from the exec events seen and
    /// every action request refused; see the `with_*` methods.
    pub fn new(state_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut namespaces = HashMap::new();
        if let Some(dir) = &state_dir {
            edr_datadir::private_dir_all(dir).map_err(|e| anyhow::anyhow!("plugin state directory: {e}"))?;
            for entry in std::fs::read_dir(dir)?.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "json") {
                    match read_namespace(&path) {
                        Ok((ns, map)) => {
                            namespaces.insert(ns, map);
                        }
                        Err(e) => tracing::error!(path = %path.display(), "plugin state file unreadable, ignored: {e}"),
                    }
                }
            }
        }
        Ok(Self {
            processes: Mutex::new(HashMap::new()),
            declared: Arc::new(DeclaredActions::default()),
            ancestry: None,
            state: Mutex::new(StateStore { dir: state_dir, namespaces, dirty: HashSet::new() }),
            actions: None,
        })
    }

    /// Answers ancestry lookups from `source` (the live process tree).
    pub fn with_ancestry(mut self, source: AncestrySource) -> Self {
        self.ancestry = Some(source);
        self
    }

    /// Sends action requests to `handler`, and records declared actions in
    /// `declared` (the registry the handler checks).
    pub fn with_actions(mut self, declared: Arc<DeclaredActions>, handler: ActionHandler) -> Self {
        self.declared = declared;
        self.actions = Some(handler);
        self
    }

    /// Records the response actions a pack's plugins declare (on activation).
    pub fn declare_actions(&self, pack: &str, declared: &[(String, Vec<String>)]) {
        self.declared.declare(pack, declared);
    }

    /// Remembers a process from its exec event (when no live tree is set).
    pub fn remember_exec(&self, e: &ProcessExec) {
        let info = ProcessInfo { pid: e.pid, entity_id: e.entity_id, exe: e.exe.clone(), argv: e.argv.clone(), uid: e.uid, start_time: e.start_time };
        let mut table = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a long replay must not grow without limit.
        if table.len() >= 200_000 {
            table.clear();
        }
        table.insert(e.entity_id, (info, e.parent_entity_id));
    }

    /// The process and its ancestors, parent first, for grouping alerts:
    /// the live process tree's answer, or, when it does not know the
    /// process, the exec events seen.
    pub fn lineage(&self, entity_id: u64) -> Vec<ProcessInfo> {
        if let Some(source) = &self.ancestry {
            let live = source(entity_id);
            if !live.is_empty() {
                return live;
            }
        }
        let table = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        edr_ancestry::walk(entity_id, |id| table.get(&id).map(|(info, parent)| (info.clone(), *parent)))
    }

    /// Writes state changed since the last flush. Returns namespaces written.
    pub fn flush_state(&self) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(dir) = st.dir.clone() else {
            st.dirty.clear();
            return 0;
        };
        let dirty: Vec<String> = st.dirty.drain().collect();
        for ns in &dirty {
            let empty = BTreeMap::new();
            let map = st.namespaces.get(ns).unwrap_or(&empty);
            if let Err(e) = write_namespace(&dir, ns, map) {
                tracing::error!(namespace = %ns, "cannot write plugin state: {e}");
            }
        }
        dirty.len()
    }
}

fn namespace_file(dir: &Path, ns: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    dir.join(format!("{}.json", &hex::encode(Sha256::digest(ns.as_bytes()))[..24]))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NamespaceFile {
    namespace: String,
    /// key -> hex of the value.
    entries: BTreeMap<String, String>,
}

fn write_namespace(dir: &Path, ns: &str, map: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    let file = NamespaceFile { namespace: ns.to_string(), entries: map.iter().map(|(k, v)| (k.clone(), hex::encode(v))).collect() };
    let path = namespace_file(dir, ns);
    // 0600, never through a link (issue 14).
    Ok(edr_datadir::write_atomically_path(&path, &serde_json::to_vec(&file).expect("state serializes"))?)
}

fn read_namespace(path: &Path) -> anyhow::Result<(String, BTreeMap<String, Vec<u8>>)> {
    let file: NamespaceFile = serde_json::from_slice(&std::fs::read(path)?)?;
    let map = file.entries.into_iter().map(|(k, v)| Ok((k, hex::decode(v)?))).collect::<anyhow::Result<_>>()?;
    Ok((file.namespace, map))
}

impl HostServices for AgentServices {
    fn ancestry(&self, entity_id: u64) -> Vec<ProcessInfo> {
        if let Some(source) = &self.ancestry {
            return source(entity_id);
        }
        let table = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        edr_ancestry::walk(entity_id, |id| table.get(&id).map(|(info, parent)| (info.clone(), *parent)))
    }

    fn state_get(&self, who: &PluginIdentity, key: &str) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.namespaces.get(&who.state_namespace())?.get(key).cloned()
    }

    fn state_set(&self, who: &PluginIdentity, key: &str, value: Vec<u8>) -> Result<(), String> {
        let ns = who.state_namespace();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let map = st.namespaces.entry(ns.clone()).or_default();
        let used: usize = map.iter().filter(|(k, _)| k.as_str() != key).map(|(k, v)| k.len() + v.len()).sum();
        if used + key.len() + value.len() > STATE_QUOTA {
            return Err(format!("state quota of {STATE_QUOTA} bytes exceeded ({used} bytes in use)"));
        }
        map.insert(key.to_string(), value);
        st.dirty.insert(ns);
        Ok(())
    }

    fn state_delete(&self, who: &PluginIdentity, key: &str) {
        let ns = who.state_namespace();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = st.namespaces.get_mut(&ns) {
            if map.remove(key).is_some() {
                st.dirty.insert(ns);
            }
        }
    }

    fn request_action(&self, who: &PluginIdentity, action: Action, reason: String) -> Decision {
        match &self.actions {
            Some(h) => h(who, action, reason),
            None => {
                tracing::warn!(plugin = %who.plugin, action = action.name(), %reason, "action refused: no response engine configured");
                Decision::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(pack: &str, version: &str) -> PluginIdentity {
        PluginIdentity { plugin: "p".into(), pack: Some(edr_event::PackRef { id: pack.into(), version: version.into(), signer: "k".into() }) }
    }

    #[test]
    fn state_survives_a_new_version_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = AgentServices::new(Some(dir.path().to_path_buf())).unwrap();
        s.state_set(&who("a.b", "1.0.0"), "seen", b"42".to_vec()).unwrap();
        // A new version of the same pack's plugin sees it (hot reload).
        assert_eq!(s.state_get(&who("a.b", "1.1.0"), "seen"), Some(b"42".to_vec()));
        assert_eq!(s.flush_state(), 1);
        drop(s);
        // A new agent process reads it back (restart).
        let s = AgentServices::new(Some(dir.path().to_path_buf())).unwrap();
        assert_eq!(s.state_get(&who("a.b", "2.0.0"), "seen"), Some(b"42".to_vec()));
        // Other packs do not see it.
        assert_eq!(s.state_get(&who("c.d", "1.0.0"), "seen"), None);
    }

    #[test]
    fn the_quota_is_enforced() {
        let s = AgentServices::new(None).unwrap();
        let big = vec![0u8; STATE_QUOTA / 2];
        s.state_set(&who("a.b", "1"), "x", big.clone()).unwrap();
        assert!(s.state_set(&who("a.b", "1"), "y", big.clone()).unwrap_err().contains("quota"));
        // Replacing a key counts only its new size.
        s.state_set(&who("a.b", "1"), "x", big).unwrap();
    }
}
