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
//! Used by the agent's build script (the built-in plugins), by the
//! integration tests ([`fixtures`]: the testing, hostile and example
//! plugins), by `edr-bench`, and by `edr pack build` (a plugin author's
//! crate). Which guest crate is which is the one list in [`guests`].

#![deny(missing_docs)]

pub mod guests;

pub use guests::{Guest, GuestKind, GUESTS};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Cargo profile the workspace's guests build with (`plugin`: LTO, one
/// codegen unit; defined in the workspace's `Cargo.toml`).
pub const PROFILE: &str = "plugin";

/// The target plugins are compiled for.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// Why a build failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Wasm target is missing and could not be installed.
    #[error("the Rust target {TARGET} is not installed and `rustup target add {TARGET}` failed: {0}; install it by hand")]
    TargetMissing(String),
    /// Cargo could not be started.
    #[error("could not run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The nested `cargo build` failed.
    #[error("building plugins failed (`{cmd}`):\n{stderr}")]
    Cargo {
        /// The command line.
        cmd: String,
        /// What cargo said.
        stderr: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A core module could not be made a component.
    #[error("{path} could not be wrapped as a component: {reason} (is the crate a cdylib that calls `edr_sdk::export_detector!`?)")]
    Componentize {
        /// The core module.
        path: PathBuf,
        /// What `wit-component` said.
        reason: String,
    },
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

/// Writes only when the content differs, so dependants are not rebuilt for
/// nothing; through a temporary file renamed into place, so a reader in
/// another process (a parallel test binary) never sees half a component.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let io = |source| BuildError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The workspace's Cargo target directory: `CARGO_TARGET_DIR` (relative to
/// `root` when relative) or `<root>/target`.
pub fn workspace_target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// The build of some of the workspace's guests: with the [`PROFILE`]
/// profile, into `<target>/wasm` (apart from the host's target directory, so
/// the nested build never waits on the host build's lock).
pub fn workspace_build<'a>(root: &Path, guests: impl IntoIterator<Item = &'a Guest>) -> GuestBuild {
    GuestBuild {
        manifest_path: root.join("Cargo.toml"),
        packages: guests.into_iter().map(|g| g.package.to_string()).collect(),
        target_dir: workspace_target_dir(root).join("wasm"),
        profile: PROFILE.into(),
    }
}

/// Prints the `cargo:rerun-if-changed` lines a build script needs to rebuild
/// these guests when they change: their crate directories (but not their
/// `tests/`, which the Wasm build does not compile), the
/// [`guests::SHARED_SOURCES`] and `Cargo.lock`.
pub fn rerun_if_changed<'a>(root: &Path, guests: impl IntoIterator<Item = &'a Guest>) {
    let mut paths: Vec<PathBuf> = guests::SHARED_SOURCES.iter().chain(&["Cargo.lock"]).map(|p| root.join(p)).collect();
    for g in guests {
        let dir = root.join(g.dir);
        match std::fs::read_dir(&dir) {
            Ok(rd) => paths.extend(rd.flatten().filter(|e| e.file_name() != "tests").map(|e| e.path())),
            Err(_) => paths.push(dir),
        }
    }
    paths.sort();
    for p in paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// Builds the guests the integration tests use beside the built-ins (every
/// [`guests::test_fixtures`] crate) and returns the directory holding their
/// components, `<target>/wasm/fixtures/<package>.wasm`.
///
/// Incremental: after the first run it costs one no-op `cargo build`. Test
/// binaries that call it at the same time take turns on a lock file
/// (`<target>/wasm/fixtures.lock`), and components are renamed into place,
/// so none reads a component another is writing. Call it once per test
/// binary (e.g. behind a `OnceLock`).
pub fn fixtures(root: &Path) -> Result<PathBuf, BuildError> {
    let spec = workspace_build(root, guests::test_fixtures());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    std::fs::create_dir_all(&spec.target_dir).map_err(io(&spec.target_dir))?;
    let lock_path = spec.target_dir.join("fixtures.lock");
    let lock = std::fs::File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    let out = spec.target_dir.join("fixtures");
    build(&spec, &out)?;
    Ok(out)
}
