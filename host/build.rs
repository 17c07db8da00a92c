//! Builds every guest crate of the workspace to a Wasm component (once per
//! change, into target/wasm) and embeds the built-in plugins in the binary.
//!
//! * built-in detection plugins: embedded, loaded by default;
//! * test and benchmark plugins (`plugins/testing/*`, `plugins/hostile/*`)
//!   and `examples/hello-detector`: written to `EDR_PLUGIN_DIR` for the
//!   integration tests and `edr bench`, never loaded by default.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// (plugin name, package) of the built-in detection plugins.
const BUILTIN: &[(&str, &str)] = &[
    ("lineage", "edr-plugin-lineage"),
    ("reverse-shell", "edr-plugin-reverse-shell"),
    ("writable-exec", "edr-plugin-writable-exec"),
    ("persistence", "edr-plugin-persistence"),
];

fn main() {
    let host = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    };
    for dir in ["plugins", "sdk/src", "wit", "examples/hello-detector/src", "examples/hello-detector/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut packages: Vec<String> = BUILTIN.iter().map(|(_, p)| p.to_string()).collect();
    for group in ["plugins/testing", "plugins/hostile"] {
        packages.extend(crates_in(&root.join(group)));
    }
    packages.push("hello-detector".into());

    let spec = edr_wasm_build::GuestBuild {
        manifest_path: root.join("Cargo.toml"),
        packages,
        target_dir: target_dir.join("wasm"),
        profile: "plugin".into(),
    };
    let plugin_dir = out.join("plugins");
    let built = match edr_wasm_build::build(&spec, &plugin_dir) {
        Ok(b) => b,
        Err(e) => panic!("\n\nbuilding the Wasm plugins failed:\n{e}\n"),
    };

    let mut src = String::from("/// Built-in detection plugins: (name, component bytes).\npub const BUILTIN_PLUGINS: &[(&str, &[u8])] = &[\n");
    for (name, package) in BUILTIN {
        let b = built.iter().find(|b| &b.package == package).expect("built above");
        writeln!(src, "    ({name:?}, include_bytes!({:?})),", b.component.display().to_string()).unwrap();
    }
    src.push_str("];\n");
    std::fs::write(out.join("builtin_plugins.rs"), src).unwrap();
    println!("cargo:rustc-env=EDR_PLUGIN_DIR={}", plugin_dir.display());
}

/// Package names of the crates directly under `dir`.
fn crates_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("Cargo.toml"))
                .filter(|m| m.exists())
                .filter_map(|m| edr_wasm_build::package_name(&m).ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
