//! Builds `edr` plugin crates into WebAssembly components.
//!
//! Plugins compile for `wasm32-unknown-unknown` (not `wasm32-wasip2`): the
//! resulting module imports only what the plugin's WIT world declares, so the
//! component imports nothing but `edr:plugin` interfaces. There is no WASI
//! surface to refuse or to stub, the files are smaller (~30 KB against ~70 KB)
//! and instantiation needs no WASI context. `wit-component` then wraps the
//! core module as a component using the type information `wit-bindgen`
//! embedded in it.
//!
//! Used by the agent's build script (the built-in plugins) and by
//! `edr pack build` (a plugin author's crate).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target plugins are compiled for.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// Why a build failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the Rust target {TARGET} is not installed and `rustup target add {TARGET}` failed: {0}; install it by hand")]
    TargetMissing(String),
    #[error("could not run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("building plugins failed (`{cmd}`):\n{stderr}")]
    Cargo { cmd: String, stderr: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} could not be wrapped as a component: {reason} (is the crate a cdylib that calls `edr_sdk::export_detector!`?)")]
    Componentize { path: PathBuf, reason: String },
}

/// What to build.
#[derive(Debug, Clone)]
pub struct GuestBuild {
    /// `Cargo.toml` of the workspace or crate that holds the plugin packages.
    pub manifest_path: PathBuf,
    /// Package names to build (`-p`); empty builds the manifest's package.
    pub packages: Vec<String>,
    /// Cargo target directory for the Wasm build (keep it apart from the
    /// host's so the two builds never wait on each other's lock).
    pub target_dir: PathBuf,
    /// Cargo profile (the workspace defines `plugin`: LTO, one codegen unit).
    pub profile: String,
}

/// One built plugin.
#[derive(Debug, Clone)]
pub struct BuiltPlugin {
    /// Cargo package name.
    pub package: String,
    /// The component file.
    pub component: PathBuf,
}

/// Makes sure the Wasm target is installed, installing it with rustup if not.
pub fn ensure_target() -> Result<(), BuildError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc).args(["--print", "target-libdir", "--target", TARGET]).output();
    if let Ok(out) = &libdir {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("libcore").exists() || has_rlib(&dir, "libcore-") {
            return Ok(());
        }
    }
    let out = Command::new("rustup").args(["target", "add", TARGET]).output().map_err(|e| BuildError::TargetMissing(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BuildError::TargetMissing(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

fn has_rlib(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir).map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix))).unwrap_or(false)
}

/// Environment variables a parent cargo (e.g. running a build script) sets
/// that must not leak into the nested Wasm build.
const SCRUB: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

/// Compiles the packages to core Wasm and wraps each as a component, written
/// to `out_dir/<package>.wasm`.
pub fn build(spec: &GuestBuild, out_dir: &Path) -> Result<Vec<BuiltPlugin>, BuildError> {
    ensure_target()?;
    let cargo: OsString = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&spec.manifest_path)
        .args(["--target", TARGET, "--profile", &spec.profile])
        .arg("--target-dir")
        .arg(&spec.target_dir)
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TERM_PROGRESS_WHEN", "never");
    for p in &spec.packages {
        cmd.args(["-p", p]);
    }
    for var in SCRUB {
        cmd.env_remove(var);
    }
    let printable = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| BuildError::Spawn { cmd: printable.clone(), source })?;
    if !out.status.success() {
        return Err(BuildError::Cargo { cmd: printable, stderr: String::from_utf8_lossy(&out.stderr).into_owned() });
    }
    std::fs::create_dir_all(out_dir).map_err(|source| BuildError::Io { path: out_dir.to_path_buf(), source })?;
    let packages = if spec.packages.is_empty() { vec![package_name(&spec.manifest_path)?] } else { spec.packages.clone() };
    let artifacts = spec.target_dir.join(TARGET).join(&spec.profile);
    packages
        .into_iter()
        .map(|package| {
            let core = artifacts.join(format!("{}.wasm", package.replace('-', "_")));
            let bytes = std::fs::read(&core).map_err(|source| BuildError::Io { path: core.clone(), source })?;
            let component = componentize(&bytes).map_err(|reason| BuildError::Componentize { path: core.clone(), reason })?;
            let dest = out_dir.join(format!("{package}.wasm"));
            write_if_changed(&dest, &component)?;
            Ok(BuiltPlugin { package, component: dest })
        })
        .collect()
}

/// Wraps a core module built with `wit-bindgen` as a component.
pub fn componentize(core_wasm: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default().module(core_wasm).map_err(|e| format!("{e:#}"))?.validate(true).encode().map_err(|e| format!("{e:#}"))
}

/// The `[package] name` of a crate manifest.
pub fn package_name(manifest: &Path) -> Result<String, BuildError> {
    let text = std::fs::read_to_string(manifest).map_err(|source| BuildError::Io { path: manifest.to_path_buf(), source })?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(rest) = line.strip_prefix("name") {
                if let Some(v) = rest.trim_start().strip_prefix('=') {
                    return Ok(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    Err(BuildError::Io { path: manifest.to_path_buf(), source: std::io::Error::other("no [package] name") })
}

/// Writes only when the content differs, so dependants are not rebuilt for nothing.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|source| BuildError::Io { path: path.to_path_buf(), source })
}
