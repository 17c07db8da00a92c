//! Shared helpers for the integration tests: the compiled plugins and events.
#![allow(dead_code)]

pub mod agent;
pub mod fleet;

use edr_event::ecs::event_from_json;
use edr_event::Event;
use edr_runtime::{Limits, MemoryServices, Plugin, PluginSpec, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The component of a guest crate of `edr_wasm_build::GUESTS`: a built-in
/// from where the build script put it, any other from the test fixtures
/// (built on first use, once per test binary).
pub fn plugin_path(package: &str) -> PathBuf {
    let guest = edr_wasm_build::guests::by_package(package)
        .unwrap_or_else(|| panic!("{package} is not a guest crate of edr_wasm_build::GUESTS (host/crates/wasm-build/src/guests.rs)"));
    let dir = if guest.is_builtin() { PathBuf::from(env!("EDR_PLUGIN_DIR")) } else { fixtures_dir().to_path_buf() };
    dir.join(format!("{package}.wasm"))
}

/// The testing, hostile and example components, built once per test binary.
fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| edr_wasm_build::fixtures(&repo_root()).unwrap_or_else(|e| panic!("\n\nbuilding the test plugins failed:\n{e}\n")))
}

pub fn plugin_wasm(package: &str) -> Vec<u8> {
    let p = plugin_path(package);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One runtime shared by a test binary (one engine, one epoch ticker).
pub fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime")).clone()
}

pub fn load(package: &str, name: &str) -> Plugin {
    load_with(package, name, Limits::default())
}

pub fn load_with(package: &str, name: &str, limits: Limits) -> Plugin {
    let spec = PluginSpec { limits, ..PluginSpec::new(name, plugin_wasm(package)) };
    runtime().load(spec, Arc::new(MemoryServices::default())).unwrap_or_else(|e| panic!("{e}"))
}

/// Short deadlines so hostile plugins fail fast in tests.
pub fn fast_limits() -> Limits {
    Limits { call_deadline: Duration::from_millis(50), init_deadline: Duration::from_millis(500), ..Limits::default() }
}

/// ECS JSONL (with `#` comments) into events numbered from 1.
pub fn events(jsonl: &str) -> Vec<Event> {
    jsonl
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| {
            let mut e = event_from_json(l).unwrap_or_else(|err| panic!("{l}: {err}"));
            e.id = i as u64 + 1;
            e
        })
        .collect()
}

/// Runs events through a plugin the way the dispatcher does (subscribed kinds only).
pub fn run(plugin: &mut Plugin, events: &[Event]) -> edr_runtime::CallOutcome {
    plugin.run(events)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}
