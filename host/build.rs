//! Builds the built-in detection plugins (the [`GuestKind::Builtin`] entries
//! of `edr_wasm_build::GUESTS`) to Wasm components (once per change, into
//! target/wasm) and embeds them in the binary as a signed pack.
//!
//! The pack is `edr.builtin`, signed with a development key generated for
//! this build tree (kept in OUT_DIR, never committed); the binary embeds the
//! pack, its signature and the public key, and verifies them at start like
//! any other pack. Operators who want only their vendor's keys set
//! `packs.trust_builtin_key = false`.
//!
//! Nothing else is built here: the testing, hostile and example plugins are
//! built by the integration tests that use them (`edr_wasm_build::fixtures`)
//! and by `edr-bench`, so a change to a fixture does not rebuild the agent.
//! The components are also left in `EDR_PLUGIN_DIR` for the tests.
//!
//! [`GuestKind::Builtin`]: edr_wasm_build::GuestKind::Builtin

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edr_pack::{Capability, Manifest, PluginManifest};

/// The contract version the built-in pack declares (`MAJOR.MINOR` of the
/// runtime's `CONTRACT_VERSION`; the runtime is not a build dependency).
const CONTRACT: &str = "0.2";

/// What every built-in plugin may import.
const CAPABILITIES: &[Capability] = &[Capability::Log, Capability::Clock, Capability::State, Capability::Process];

fn main() {
    let host = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = host.parent().expect("host/ is inside the workspace").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let builtins: Vec<&edr_wasm_build::Guest> = edr_wasm_build::guests::builtins().collect();
    edr_wasm_build::rerun_if_changed(&root, builtins.iter().copied());
    println!("cargo:rerun-if-changed=build.rs");

    let spec = edr_wasm_build::workspace_build(&root, builtins.iter().copied());
    let plugin_dir = out.join("plugins");
    let built = match edr_wasm_build::build(&spec, &plugin_dir) {
        Ok(b) => b,
        Err(e) => panic!("\n\nbuilding the built-in Wasm plugins failed:\n{e}\n"),
    };

    let pack = builtin_pack(&out, &builtins, &built);
    let mut src = String::new();
    let _ = writeln!(src, "/// The built-in detection pack (`edr.builtin`), signed with this build's development key.");
    let _ = writeln!(src, "pub const BUILTIN_PACK: &[u8] = include_bytes!({:?});", pack.archive.display().to_string());
    let _ = writeln!(src, "/// Its minisign signature.");
    let _ = writeln!(src, "pub const BUILTIN_PACK_SIG: &str = include_str!({:?});", pack.signature.display().to_string());
    let _ = writeln!(src, "/// The development public key it was signed with (minisign .pub text).");
    let _ = writeln!(src, "pub const BUILTIN_DEV_KEY: &str = include_str!({:?});", pack.public_key.display().to_string());
    let generated = out.join("builtin_plugins.rs");
    std::fs::write(&generated, src).unwrap_or_else(|e| panic!("{}: {e}", generated.display()));
    println!("cargo:rustc-env=EDR_PLUGIN_DIR={}", plugin_dir.display());
}

struct BuiltinPack {
    archive: PathBuf,
    signature: PathBuf,
    public_key: PathBuf,
}

/// The `edr.builtin` manifest: one entry per built-in, its subscriptions
/// from the guest list.
fn manifest(builtins: &[&edr_wasm_build::Guest]) -> Manifest {
    let version: edr_pack::semver::Version =
        std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION").parse().expect("the crate version is semver");
    let plugins = builtins
        .iter()
        .map(|g| PluginManifest {
            name: g.name.to_string(),
            file: format!("plugins/{}.wasm", g.name),
            sha256: String::new(),
            subscriptions: g.subscriptions().expect("a built-in has subscriptions").to_vec(),
            capabilities: CAPABILITIES.to_vec(),
            actions: Vec::new(),
            data: Vec::new(),
            limits: Default::default(),
            settings: Default::default(),
        })
        .collect();
    Manifest {
        id: "edr.builtin".into(),
        min_agent_version: version.clone(),
        version,
        contract: CONTRACT.into(),
        publisher: "edr project (development build)".into(),
        description: Some("The detections built into the edr agent".into()),
        not_before: None,
        expires: None,
        data: Vec::new(),
        plugins,
    }
}

/// Packs the built-in plugins as `edr.builtin` and signs the archive.
fn builtin_pack(out: &Path, builtins: &[&edr_wasm_build::Guest], built: &[edr_wasm_build::BuiltPlugin]) -> BuiltinPack {
    let dir = out.join("builtin-pack");
    let _ = std::fs::remove_dir_all(&dir);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap_or_else(|e| panic!("{}: {e}", plugins.display()));
    for g in builtins {
        let b = built.iter().find(|b| b.package == g.package).expect("every built-in was built above");
        let dest = plugins.join(format!("{}.wasm", g.name));
        std::fs::copy(&b.component, &dest).unwrap_or_else(|e| panic!("{} -> {}: {e}", b.component.display(), dest.display()));
    }
    let manifest_path = dir.join(edr_pack::MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest(builtins).to_toml()).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    // One development key per build tree: generated once, reused so rebuilds
    // sign with the same key.
    let keys = out.join("dev-key");
    let (public, secret) = (keys.join("edr-dev.pub"), keys.join("edr-dev.key"));
    if !secret.exists() {
        std::fs::create_dir_all(&keys).unwrap_or_else(|e| panic!("{}: {e}", keys.display()));
        edr_pack::keygen(&keys, "edr-dev", None).unwrap_or_else(|e| panic!("generating the development key: {e}"));
    }
    let dist = out.join("builtin-dist");
    let _ = std::fs::remove_dir_all(&dist);
    let packed = edr_pack::build(&dir, &dist).unwrap_or_else(|e| panic!("packing the built-in plugins: {e}"));
    let key = edr_pack::SecretKey::from_file(&secret, None).unwrap_or_else(|e| panic!("{e}"));
    let signature = edr_pack::sign(&packed.path, &key, Some("edr development build")).unwrap_or_else(|e| panic!("signing the built-in pack: {e}"));
    BuiltinPack { archive: packed.path, signature, public_key: public }
}
