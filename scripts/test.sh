#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it).
# Installs what the tests need, then runs every test of the workspace in
# release mode (the same build `cargo run --release` uses: one build, not two).
set -euo pipefail
cd "$(dirname "$0")/.."

# Plugins compile to wasm32-unknown-unknown (see host/crates/wasm-build).
rustup target add wasm32-unknown-unknown

# Formatting is checked first (rustfmt.toml): a second's work, before the build.
rustup component add rustfmt >/dev/null 2>&1 || true
cargo fmt --all --check || { echo "scripts/test.sh: run 'cargo fmt --all' (rustfmt.toml) and commit"; exit 1; }

# Debian packages some tests use: minisign (pack signature interop),
# nftables (host isolation), nats-server (the NATS JetStream output) and
# systemd (`systemd-analyze verify` of the unit). Installed when we can (root with apt-get, as in
# CI); otherwise those tests print why they skip.
# clang: compiles the eBPF program (host/crates/ebpf/build.rs; it also installs it itself when root).
# iproute2: `ip netns` for the eBPF TCP hooks' network-namespace test (host/crates/ebpf/tests/net.rs).
# chromium, chromium-driver: the web console's browser tests (host/crates/console/tests/browser.rs, host/tests/console_agent.rs: headless Chromium over WebDriver).
packages=(minisign nftables nats-server systemd clang iproute2 chromium chromium-driver)
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

# Every test that cannot run here says why in this file (edr-testkit); the
# summary below lists them, so a run shows what it did not test. With CI=true
# as root a skip fails its test instead.
export EDR_SKIP_LOG="$PWD/target/test-skips.tsv"
mkdir -p target
: > "$EDR_SKIP_LOG"

summarize_skips() {
    local n
    n=$(wc -l < "$EDR_SKIP_LOG")
    if [ "$n" -eq 0 ]; then
        echo "scripts/test.sh: every test ran (0 skipped)"
        return
    fi
    echo "scripts/test.sh: tests that did not run here: $n, by reason:"
    cut -f2,3 "$EDR_SKIP_LOG" | sort | uniq -c | sort -rn | sed 's/^/    /'
    echo "  (each test and its reason: $EDR_SKIP_LOG)"
}
trap summarize_skips EXIT

# Lints: clippy with warnings as errors, on the same release profile (its
# check artifacts sit beside the build's; the build scripts run once).
rustup component add clippy >/dev/null 2>&1 || true
cargo clippy --release --workspace --all-targets -- -D warnings \
    || { echo "scripts/test.sh: clippy found warnings (cargo clippy --release --workspace --all-targets)"; exit 1; }

cargo test --release --workspace "$@"

# The README's run command shares this build (the feature lines in
# host/Cargo.toml): after the tests it must find nothing to compile.
stale=$(cargo build --release --message-format=json 2>/dev/null | grep -c '"fresh":false' || true)
if [ "$stale" -ne 0 ]; then
    echo "scripts/test.sh: 'cargo build --release' (the run command) compiled $stale crates again after the tests:"
    echo "  the run and test commands no longer share one build; align the features in host/Cargo.toml (BENCHMARKS.md, Build)"
    exit 1
fi
echo "scripts/test.sh: the run command's build is the test build (nothing to compile)"
