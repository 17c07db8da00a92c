//! Builds every guest crate of the workspace to a Wasm component (once per
//! change, into target/wasm) and embeds the built-in plugins in the binary
//! as a signed pack.
//!
//! * built-in detection plugins: packed as `edr.builtin` and signed with a
//!   development key generated for this build tree (kept in OUT_DIR, never
//!   committed); the binary embeds the pack, its signature and the public
//!   key, and verifies them at start like any other pack. Operators who want
//!   only their vendor's keys set `packs.trust_builtin_key = false`;
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
    ("sigma", "edr-plugin-sigma"),
];

/// What each built-in plugin subscribes to (its manifest entry must match
/// what the plugin declares at init; the agent checks).
const SUBSCRIPTIONS: &[(&str, &str)] = &[
    ("lineage", "[\"process-exec\"]"),
    ("reverse-shell", "[\"process-exec\", \"network\"]"),
    ("writable-exec", "[\"process-exec\"]"),
    ("persistence", "[\"file\"]"),
    ("sigma", "[\"process-exec\", \"file\", \"network\"]"),
];

fn main() {
    let host = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    };
    for dir in [
        "plugins",
        "sdk/src",
        "wit",
        "examples/hello-detector/src",
        "examples/hello-detector/Cargo.toml",
        "examples/response-pack/src",
        "examples/response-pack/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut packages: Vec<String> = BUILTIN.iter().map(|(_, p)| p.to_string()).collect();
    for group in ["plugins/testing", "plugins/hostile"] {
        packages.extend(crates_in(&root.join(group)));
    }
    packages.push("hello-detector".into());
    packages.push("edr-example-response".into());

    let spec = edr_wasm_build::GuestBuild { manifest_path: root.join("Cargo.toml"), packages, target_dir: target_dir.join("wasm"), profile: "plugin".into() };
    let plugin_dir = out.join("plugins");
    let built = match edr_wasm_build::build(&spec, &plugin_dir) {
        Ok(b) => b,
        Err(e) => panic!("\n\nbuilding the Wasm plugins failed:\n{e}\n"),
    };

    let pack = builtin_pack(&out, &built);
    let mut src = String::new();
    writeln!(src, "/// The built-in detection pack (`edr.builtin`), signed with this build's development key.").unwrap();
    writeln!(src, "pub const BUILTIN_PACK: &[u8] = include_bytes!({:?});", pack.archive.display().to_string()).unwrap();
    writeln!(src, "/// Its minisign signature.").unwrap();
    writeln!(src, "pub const BUILTIN_PACK_SIG: &str = include_str!({:?});", pack.signature.display().to_string()).unwrap();
    writeln!(src, "/// The development public key it was signed with (minisign .pub text).").unwrap();
    writeln!(src, "pub const BUILTIN_DEV_KEY: &str = include_str!({:?});", pack.public_key.display().to_string()).unwrap();
    std::fs::write(out.join("builtin_plugins.rs"), src).unwrap();
    println!("cargo:rustc-env=EDR_PLUGIN_DIR={}", plugin_dir.display());
}

struct BuiltinPack {
    archive: PathBuf,
    signature: PathBuf,
    public_key: PathBuf,
}

/// Packs the built-in plugins as `edr.builtin` and signs the archive.
fn builtin_pack(out: &Path, built: &[edr_wasm_build::BuiltPlugin]) -> BuiltinPack {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap();
    let dir = out.join("builtin-pack");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let mut manifest = format!(
        "id = \"edr.builtin\"\nversion = \"{version}\"\nmin_agent_version = \"{version}\"\ncontract = \"0.1\"\npublisher = \"edr project (development build)\"\ndescription = \"The detections built into the edr agent\"\n"
    );
    for (name, package) in BUILTIN {
        let b = built.iter().find(|b| &b.package == package).expect("built above");
        std::fs::copy(&b.component, dir.join("plugins").join(format!("{name}.wasm"))).unwrap();
        let subs = SUBSCRIPTIONS.iter().find(|(n, _)| n == name).map(|(_, s)| *s).expect("subscriptions listed");
        writeln!(
            manifest,
            "\n[[plugin]]\nname = \"{name}\"\nfile = \"plugins/{name}.wasm\"\nsha256 = \"\"\nsubscriptions = {subs}\ncapabilities = [\"log\", \"clock\", \"state\", \"process\"]"
        )
        .unwrap();
    }
    std::fs::write(dir.join("pack.toml"), manifest).unwrap();
    // One development key per build tree: generated once, reused so rebuilds
    // sign with the same key.
    let keys = out.join("dev-key");
    let (public, secret) = (keys.join("edr-dev.pub"), keys.join("edr-dev.key"));
    if !secret.exists() {
        std::fs::create_dir_all(&keys).unwrap();
        edr_pack::keygen(&keys, "edr-dev", None).unwrap_or_else(|e| panic!("generating the development key: {e}"));
    }
    let dist = out.join("builtin-dist");
    let _ = std::fs::remove_dir_all(&dist);
    let packed = edr_pack::build(&dir, &dist).unwrap_or_else(|e| panic!("packing the built-in plugins: {e}"));
    let key = edr_pack::SecretKey::from_file(&secret, None).unwrap_or_else(|e| panic!("{e}"));
    let signature = edr_pack::sign(&packed.path, &key, Some("edr development build")).unwrap_or_else(|e| panic!("signing the built-in pack: {e}"));
    BuiltinPack { archive: packed.path, signature, public_key: public }
}

/// Package names of the crates directly under `dir`.
fn crates_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path().join("Cargo.toml")).filter(|m| m.exists()).filter_map(|m| edr_wasm_build::package_name(&m).ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}
