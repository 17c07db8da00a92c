#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it).
# Installs what the tests need, then runs every test of the workspace in
# release mode (the same build `cargo run --release` uses: one build, not two).
set -euo pipefail
cd "$(dirname "$0")/.."

# Plugins compile to wasm32-unknown-unknown (see host/crates/wasm-build).
rustup target add wasm32-unknown-unknown

# Debian packages some tests use: minisign (pack signature interop),
# nftables (host isolation) and nats-server (the NATS JetStream output). Installed when we can (root with apt-get, as in
# CI); otherwise those tests print why they skip.
packages=(minisign nftables nats-server)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "scripts/test.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
            || echo "scripts/test.sh: could not install ${missing[*]}; the tests that need them will skip"
    else
        echo "scripts/test.sh: not root: ${missing[*]} not installed; the tests that need them will skip"
    fi
fi

cargo test --release --workspace "$@"
