//! The benchmark measures the same plugins in Wasm: build their components
//! (incremental: shares target/wasm with the agent's build script).
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../..");
    let root = root.canonicalize().unwrap();
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    };
    for dir in ["plugins", "sdk/src", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("plugins");
    let packages =
        ["edr-plugin-lineage", "edr-plugin-reverse-shell", "edr-plugin-writable-exec", "edr-plugin-persistence", "edr-plugin-sigma", "edr-test-noop"];
    let spec = edr_wasm_build::GuestBuild {
        manifest_path: root.join("Cargo.toml"),
        packages: packages.iter().map(|s| s.to_string()).collect(),
        target_dir: target_dir.join("wasm"),
        profile: "plugin".into(),
    };
    if let Err(e) = edr_wasm_build::build(&spec, &out) {
        panic!("\n\nbuilding the Wasm plugins failed:\n{e}\n");
    }
    println!("cargo:rustc-env=EDR_BENCH_PLUGIN_DIR={}", out.display());
}
