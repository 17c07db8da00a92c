//! The one list of the workspace's guest crates: every crate that builds to
//! a plugin component, what it is for, and (for the built-in plugins) what
//! its `edr.builtin` manifest entry subscribes to.
//!
//! The agent's build script builds and embeds [`GuestKind::Builtin`] only;
//! the integration tests build the rest with [`crate::fixtures`]; `edr-bench`
//! picks its plugins from here too. A crate directory with a `cdylib` under
//! `plugins/` or `examples/` that is missing from [`GUESTS`] fails this
//! crate's tests.

use edr_event::EventKind;
use EventKind::{File, Network, ProcessExec};
use GuestKind::{Example, Hostile, Testing};

/// What a guest crate is for, which decides who builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A built-in detection plugin: built by the agent's build script, packed
    /// as the signed `edr.builtin` pack and embedded in the binary.
    Builtin {
        /// The event kinds of its manifest entry. The plugin declares the
        /// same at init and the agent refuses a pack whose manifest differs,
        /// so `tests/plugins_wasm.rs` checks the two agree.
        subscriptions: &'static [EventKind],
    },
    /// A well-behaved plugin the tests and the benchmark use (`plugins/testing`).
    Testing,
    /// A plugin that abuses the sandbox, for the containment tests (`plugins/hostile`).
    Hostile,
    /// An example for plugin authors (`examples/`), built and run by the tests.
    Example,
}

/// One guest crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// The plugin's name (what it reports at init; a built-in's name in `edr.builtin`).
    pub name: &'static str,
    /// The Cargo package.
    pub package: &'static str,
    /// The crate directory, relative to the workspace root.
    pub dir: &'static str,
    /// What it is for.
    pub kind: GuestKind,
}

impl Guest {
    /// True for a built-in detection plugin.
    pub fn is_builtin(&self) -> bool {
        matches!(self.kind, GuestKind::Builtin { .. })
    }

    /// A built-in plugin's manifest subscriptions; `None` for other kinds.
    pub fn subscriptions(&self) -> Option<&'static [EventKind]> {
        match self.kind {
            GuestKind::Builtin { subscriptions } => Some(subscriptions),
            _ => None,
        }
    }
}

const fn builtin(name: &'static str, package: &'static str, dir: &'static str, subscriptions: &'static [EventKind]) -> Guest {
    Guest { name, package, dir, kind: GuestKind::Builtin { subscriptions } }
}

const fn guest(name: &'static str, package: &'static str, dir: &'static str, kind: GuestKind) -> Guest {
    Guest { name, package, dir, kind }
}

/// Every guest crate of the workspace; built-in plugins in `edr.builtin` order.
pub const GUESTS: &[Guest] = &[
    builtin("lineage", "edr-plugin-lineage", "plugins/lineage", &[ProcessExec]),
    builtin("reverse-shell", "edr-plugin-reverse-shell", "plugins/reverse-shell", &[ProcessExec, Network]),
    builtin("writable-exec", "edr-plugin-writable-exec", "plugins/writable-exec", &[ProcessExec]),
    builtin("persistence", "edr-plugin-persistence", "plugins/persistence", &[File]),
    builtin("sigma", "edr-plugin-sigma", "plugins/sigma", &[ProcessExec, File, Network]),
    guest("noop", "edr-test-noop", "plugins/testing/noop", Testing),
    guest("stateful", "edr-test-stateful", "plugins/testing/stateful", Testing),
    guest("contract-v0-1", "edr-test-contract-v0-1", "plugins/testing/contract-v0-1", Testing),
    guest("hostile-corrupt-after-trap", "edr-hostile-corrupt-after-trap", "plugins/hostile/corrupt-after-trap", Hostile),
    guest("hostile-deadline-overrun", "edr-hostile-deadline-overrun", "plugins/hostile/deadline-overrun", Hostile),
    guest("hostile-deep-recursion", "edr-hostile-deep-recursion", "plugins/hostile/deep-recursion", Hostile),
    guest("hostile-finding-flood", "edr-hostile-finding-flood", "plugins/hostile/finding-flood", Hostile),
    guest("hostile-huge-strings", "edr-hostile-huge-strings", "plugins/hostile/huge-strings", Hostile),
    guest("hostile-import-storm", "edr-hostile-import-storm", "plugins/hostile/import-storm", Hostile),
    guest("hostile-infinite-loop", "edr-hostile-infinite-loop", "plugins/hostile/infinite-loop", Hostile),
    guest("hostile-init-hang", "edr-hostile-init-hang", "plugins/hostile/init-hang", Hostile),
    guest("hostile-memory-bomb", "edr-hostile-memory-bomb", "plugins/hostile/memory-bomb", Hostile),
    guest("hostile-panic", "edr-hostile-panic", "plugins/hostile/panic", Hostile),
    guest("hostile-unknown-import", "edr-hostile-unknown-import", "plugins/hostile/unknown-import", Hostile),
    guest("hostile-wasi-import", "edr-hostile-wasi-import", "plugins/hostile/wasi-import", Hostile),
    guest("hello-detector", "hello-detector", "examples/hello-detector", Example),
    guest("kill-revshell", "edr-example-response", "examples/response-pack", Example),
];

/// Sources outside the guests' own directories that guests compile from
/// (relative to the workspace root): a change to one rebuilds them.
pub const SHARED_SOURCES: &[&str] = &["sdk/src", "sdk/Cargo.toml", "wit", "host/crates/sigma-core/src", "host/crates/sigma-core/Cargo.toml"];

/// The built-in detection plugins, in `edr.builtin` order.
pub fn builtins() -> impl Iterator<Item = &'static Guest> {
    GUESTS.iter().filter(|g| g.is_builtin())
}

/// The guests the tests build on demand: every one but the built-ins.
pub fn test_fixtures() -> impl Iterator<Item = &'static Guest> {
    GUESTS.iter().filter(|g| !g.is_builtin())
}

/// The guest with this package name.
pub fn by_package(package: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.package == package)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
    }

    /// Plugin crates (a `cdylib`) directly under `dir`, relative to the root.
    fn plugin_crates(dir: &str) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")).flatten() {
            let manifest = entry.path().join("Cargo.toml");
            let text = std::fs::read_to_string(&manifest).unwrap_or_default();
            if text.contains("cdylib") {
                out.push(format!("{dir}/{}", entry.file_name().to_string_lossy()));
            }
        }
        out
    }

    #[test]
    fn every_plugin_crate_is_listed_once_with_its_package_name() {
        let on_disk: Vec<String> = ["plugins", "plugins/testing", "plugins/hostile", "examples"].iter().flat_map(|d| plugin_crates(d)).collect();
        for dir in &on_disk {
            assert!(GUESTS.iter().any(|g| g.dir == dir), "{dir} is a plugin crate missing from GUESTS (host/crates/wasm-build/src/guests.rs)");
        }
        for g in GUESTS {
            let manifest = root().join(g.dir).join("Cargo.toml");
            let package = crate::package_name(&manifest).unwrap_or_else(|e| panic!("{}: {e}", g.dir));
            assert_eq!(package, g.package, "{}", g.dir);
            assert_eq!(GUESTS.iter().filter(|o| o.package == g.package || o.dir == g.dir).count(), 1, "{} listed twice", g.package);
        }
    }

    #[test]
    fn kinds_sort_the_guests() {
        let builtin: Vec<&str> = builtins().map(|g| g.name).collect();
        assert_eq!(builtin, ["lineage", "reverse-shell", "writable-exec", "persistence", "sigma"]);
        assert!(builtins().all(|g| g.subscriptions().is_some_and(|s| !s.is_empty())), "a built-in subscribes to something");
        assert!(test_fixtures().all(|g| g.subscriptions().is_none()));
        assert!(test_fixtures().filter(|g| g.kind == GuestKind::Hostile).all(|g| g.dir.starts_with("plugins/hostile/")));
        assert_eq!(by_package("edr-test-noop").map(|g| g.kind), Some(GuestKind::Testing));
        assert_eq!(by_package("edr-plugin-unknown"), None);
    }
}
