//! What this host remembers about its packs, across restarts:
//! `<data_dir>/packs/state.json`. The anti-rollback floors are kept in the
//! record (`events.db`, table `pack_floors`) too: the agent raises these to
//! the record's at start ([`PackState::raise_floor`]), so deleting this
//! file does not reset them.

use edr_pack::semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One pack's history on this host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackEntry {
    /// The version in use.
    pub active: String,
    /// The highest version ever activated: the anti-rollback floor.
    pub highest: String,
    /// Good versions kept on disk, oldest first.
    pub good: Vec<String>,
    /// Versions rolled back from, with why.
    pub bad: Vec<BadVersion>,
}

/// A version that was rolled back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BadVersion {
    /// The version.
    pub version: String,
    /// Why it was rolled back.
    pub reason: String,
    /// When (RFC 3339).
    pub time: String,
}

/// Every pack's history.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackState {
    /// By pack id.
    pub packs: BTreeMap<String, PackEntry>,
}

impl PackState {
    /// Reads the state; a missing file is an empty state. A corrupt file is
    /// an error: starting over would forget the anti-rollback floors.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{} is corrupt ({e}); it holds the anti-rollback versions, so the agent will not start over silently: restore it from a backup, or delete it to accept any version again", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the state durably (0600 temp file, fsync, rename, never
    /// through a link).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        Ok(edr_datadir::write_atomically_path(path, serde_json::to_string_pretty(self).expect("state serializes").as_bytes())?)
    }

    /// Installed pack ids (not the packs known only by their floor).
    pub fn ids(&self) -> Vec<String> {
        self.packs.iter().filter(|(_, e)| !e.active.is_empty()).map(|(id, _)| id.clone()).collect()
    }

    /// Whether `id` is known only by its anti-rollback floor (the floor came
    /// from the record; no version of it is installed).
    pub fn floor_only(&self, id: &str) -> bool {
        self.packs.get(id).is_some_and(|e| e.active.is_empty())
    }

    /// Raises `id`'s anti-rollback floor to `version` when it is higher (a
    /// floor from the record); a pack not installed gets an entry holding
    /// only its floor. Returns whether the floor changed.
    pub fn raise_floor(&mut self, id: &str, version: &Version) -> bool {
        let e = self.packs.entry(id.to_string()).or_default();
        let higher = Version::parse(&e.highest).map(|h| *version > h).unwrap_or(true);
        if higher {
            e.highest = version.to_string();
        }
        higher
    }

    /// One pack's history.
    pub fn get(&self, id: &str) -> Option<&PackEntry> {
        self.packs.get(id)
    }

    /// The anti-rollback floor of a pack.
    pub fn highest(&self, id: &str) -> Option<Version> {
        self.packs.get(id).and_then(|e| Version::parse(&e.highest).ok())
    }

    /// Records a newly activated version.
    pub fn activated(&mut self, id: &str, version: &Version, _keep: usize) {
        let e = self.packs.entry(id.to_string()).or_default();
        e.active = version.to_string();
        let higher = Version::parse(&e.highest).map(|h| *version > h).unwrap_or(true);
        if higher {
            e.highest = version.to_string();
        }
        if !e.good.contains(&e.active) {
            e.good.push(e.active.clone());
        }
    }

    /// Drops the oldest good versions beyond `keep`; returns them so their
    /// files can be deleted. The active version is never dropped.
    pub fn prune(&mut self, id: &str, keep: usize) -> Vec<String> {
        let Some(e) = self.packs.get_mut(id) else { return Vec::new() };
        let mut dropped = Vec::new();
        while e.good.len() > keep.max(1) {
            let pos = e.good.iter().position(|v| *v != e.active).expect("more than one good version");
            dropped.push(e.good.remove(pos));
        }
        dropped
    }

    /// Switches the active version (rollback).
    pub fn set_active(&mut self, id: &str, version: &Version) {
        if let Some(e) = self.packs.get_mut(id) {
            e.active = version.to_string();
        }
    }

    /// Marks a version bad: it leaves the good list.
    pub fn mark_bad(&mut self, id: &str, version: &Version, reason: &str) {
        if let Some(e) = self.packs.get_mut(id) {
            let v = version.to_string();
            e.good.retain(|g| *g != v);
            e.bad.push(BadVersion { version: v, reason: reason.to_string(), time: edr_event::time::to_rfc3339(edr_event::time::now()) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_pruning_and_rollback_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = PackState::default();
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
            s.activated("a.b", &Version::parse(v).unwrap(), 3);
        }
        assert_eq!(s.prune("a.b", 3), vec!["1.0.0"]);
        s.mark_bad("a.b", &Version::parse("1.3.0").unwrap(), "quarantined");
        s.set_active("a.b", &Version::parse("1.2.0").unwrap());
        s.save(&path).unwrap();
        let back = PackState::load(&path).unwrap();
        assert_eq!(back, s);
        let e = back.get("a.b").unwrap();
        assert_eq!(e.active, "1.2.0");
        assert_eq!(back.highest("a.b"), Some(Version::parse("1.3.0").unwrap()), "the floor stays at the highest ever activated");
        assert_eq!(e.good, vec!["1.1.0", "1.2.0"]);
    }

    #[test]
    fn a_floor_from_the_record_is_kept_and_only_raises() {
        let v = |s: &str| Version::parse(s).unwrap();
        // state.json deleted: only the record's floor is left.
        let mut s = PackState::default();
        assert!(s.raise_floor("a.b", &v("2.0.0")));
        assert_eq!(s.highest("a.b"), Some(v("2.0.0")));
        assert!(s.floor_only("a.b"));
        assert!(s.ids().is_empty(), "nothing to reactivate");
        assert!(!s.raise_floor("a.b", &v("1.0.0")), "a lower floor never lowers it");
        assert_eq!(s.highest("a.b"), Some(v("2.0.0")));
        // An installed pack whose state.json floor was lowered by hand.
        s.activated("c.d", &v("1.5.0"), 3);
        assert!(!s.floor_only("c.d"));
        assert!(s.raise_floor("c.d", &v("3.0.0")));
        assert_eq!(s.highest("c.d"), Some(v("3.0.0")));
        assert_eq!(s.get("c.d").unwrap().active, "1.5.0");
        assert_eq!(s.ids(), vec!["c.d".to_string()]);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{ not json").unwrap();
        let e = PackState::load(&path).unwrap_err().to_string();
        assert!(e.contains("anti-rollback"), "{e}");
    }
}
