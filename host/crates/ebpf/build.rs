//! Compiles bpf/edr.bpf.c (process hooks) and bpf/net.bpf.c (TCP hooks)
//! with clang (`-target bpf`, CO-RE) into OUT_DIR.
//!
//! When clang is missing and we run as root, installs Debian's `clang` with
//! apt-get (as host/build.rs adds the wasm target). An object that cannot be
//! built (no clang, or clang failed on it) is left out on its own: its
//! `EDR_EBPF_OBJECT` / `EDR_NET_OBJECT` names an empty file and the loader
//! reports why ("eBPF not built: ..."), so the agent runs on its fallback
//! collectors for that part.

use std::path::{Path, PathBuf};
use std::process::Command;

fn have_clang() -> bool {
    Command::new("clang").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    if !have_clang() && unsafe_free_is_root() {
        let _ = Command::new("apt-get").args(["install", "-y", "-q", "clang"]).env("DEBIAN_FRONTEND", "noninteractive").status();
    }
    let clang = have_clang();
    compile(&out, clang, "bpf/edr.bpf.c", "edr.bpf.o", "EDR_EBPF");
    compile(&out, clang, "bpf/net.bpf.c", "net.bpf.o", "EDR_NET");
}

/// Compiles one object; sets `{var}_OBJECT` (its path, or an empty file) and
/// `{var}_MISSING` (empty, or why there is no object). Each object falls
/// back on its own: a net hook that fails to build leaves the process hooks.
fn compile(out: &Path, clang: bool, src: &str, name: &str, var: &str) {
    println!("cargo:rerun-if-changed={src}");
    let obj = out.join(name);
    let built =
        clang && Command::new("clang").args(["-O2", "-g", "-target", "bpf", "-Wall", "-c", src, "-o"]).arg(&obj).status().map(|s| s.success()).unwrap_or(false);
    if built {
        println!("cargo:rustc-env={var}_OBJECT={}", obj.display());
        println!("cargo:rustc-env={var}_MISSING=");
    } else {
        let empty = out.join(format!("{name}.empty"));
        std::fs::write(&empty, b"").expect("write an empty object into OUT_DIR");
        let why = if clang { format!("eBPF not built: clang failed on {src}") } else { "eBPF not built: clang not found".to_string() };
        println!("cargo:warning={why}; the agent will use its fallback collectors");
        println!("cargo:rustc-env={var}_OBJECT={}", empty.display());
        println!("cargo:rustc-env={var}_MISSING={why}");
    }
}

/// Root check without libc: the effective uid from /proc/self/status.
fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
