//! The benchmark measures the same plugins in Wasm: build the components of
//! the built-in plugins and the no-op testing plugin, picked from the one
//! guest list (`edr_wasm_build::GUESTS`); incremental, sharing target/wasm
//! with the agent's build script.
use std::path::PathBuf;

/// The testing plugin the dispatch benchmark measures beside the built-ins.
const NOOP: &str = "edr-test-noop";

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("../../..");
    let root = root.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let guests: Vec<&edr_wasm_build::Guest> = edr_wasm_build::GUESTS.iter().filter(|g| g.is_builtin() || g.package == NOOP).collect();
    assert!(guests.iter().any(|g| g.package == NOOP), "{NOOP} is not in edr_wasm_build::GUESTS");
    edr_wasm_build::rerun_if_changed(&root, guests.iter().copied());
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("plugins");
    let spec = edr_wasm_build::workspace_build(&root, guests.iter().copied());
    if let Err(e) = edr_wasm_build::build(&spec, &out) {
        panic!("\n\nbuilding the Wasm plugins failed:\n{e}\n");
    }
    println!("cargo:rustc-env=EDR_BENCH_PLUGIN_DIR={}", out.display());
}
