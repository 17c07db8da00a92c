#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it).
# Installs what the tests need, then runs every test of the workspace in
# release mode (the same build `cargo run --release` uses: one build, not two).
set -euo pipefail
cd "$(dirname "$0")/.."

# Plugins compile to wasm32-unknown-unknown (see host/crates/wasm-build).
rustup target add wasm32-unknown-unknown

cargo test --release --workspace "$@"
