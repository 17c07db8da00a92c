#!/usr/bin/env bash
# The fleet on one machine, from nothing (README "Fleet" quickstart):
# installs nats-server when missing (root, Debian), builds `edr` (the same
# release build the tests use), creates a fleet, starts `edr server run`
# (which starts `nats-server -js` as its child), enrolls this host's agent,
# shows it in `edr fleet hosts`, and with --isolate isolates and releases it.
#
#   scripts/fleet-quickstart.sh [--dir DIR] [--isolate] [--once]
#
#   --dir DIR   where the fleet and the agent keep their state (default ./edr-fleet)
#   --isolate   isolate this host through the fleet, list / on it while isolated, release it
#               (isolation cuts every connection but loopback and the fleet's NATS: run it
#               on a machine you reach through the console, or inside `ip netns exec`)
#   --once      stop the server and the agent after the walk (default: keep them running until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=./edr-fleet isolate=0 once=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --isolate) isolate=1; shift ;;
        --once) once=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "fleet-quickstart: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '\n== %s\n' "$*"; }

if ! command -v nats-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing nats-server (Debian package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server >/dev/null 2>&1 \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server >/dev/null; }
    else
        echo "fleet-quickstart: nats-server is not installed; run as root on Debian (it installs it), or: sudo apt-get install nats-server" >&2
        exit 1
    fi
fi
if [ "$(id -u)" != 0 ]; then
    echo "fleet-quickstart: run it as root: the agent's collectors and response engine need it" >&2
    exit 1
fi

say "building edr (cargo build --release)"
cargo build --release -q
edr=$PWD/target/release/edr
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
fleet_dir=$dir/server
fleet() { "$edr" fleet --dir "$fleet_dir" "$@"; }

pids=()
isolated_host=""
stop() {
    # Never leave this host isolated behind (the agent would release itself only after its fallback).
    if [ -n "$isolated_host" ]; then
        fleet release "$isolated_host" --reason "quickstart: stopped while isolated" >/dev/null 2>&1 || true
    fi
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT

if [ ! -e "$fleet_dir/fleet.toml" ]; then
    say "creating the fleet in $fleet_dir"
    "$edr" server init --dir "$fleet_dir" --heartbeat-secs 5
fi
say "starting the management server (log: $dir/server.log)"
"$edr" server run --dir "$fleet_dir" >"$dir/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do fleet hosts >/dev/null 2>&1 && break; sleep 0.5; done
fleet hosts >/dev/null || { echo "fleet-quickstart: the server did not start; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; }

say "enrolling this host's agent (data dir $dir/agent, log: $dir/agent.log)"
cat >"$dir/agent.toml" <<EOF
data_dir = "$dir/agent"
EOF
token=$(fleet enroll-token --ttl 10m)
"$edr" agent --config "$dir/agent.toml" --enroll "$token" >"$dir/agent.log" 2>&1 &
pids+=($!)
host=""
for _ in $(seq 120); do
    # The table's first host line: HOST NAME STATE ...
    read -r host _ state _ < <(fleet hosts 2>/dev/null | sed -n 2p) || true
    [ -n "$host" ] && [ "$state" = online ] && break
    sleep 0.5
done
[ "${state:-}" = online ] || { echo "fleet-quickstart: the agent did not come online; see $dir/agent.log" >&2; tail -20 "$dir/agent.log" >&2; exit 1; }

say "edr fleet --dir $fleet_dir hosts"
fleet hosts

if [ "$isolate" = 1 ]; then
    say "isolating $host through the fleet"
    isolated_host=$host
    fleet isolate "$host" --reason "quickstart: isolation walk-through" >/dev/null
    for _ in $(seq 30); do fleet hosts | grep -q isolated && break; sleep 1; done
    fleet hosts
    say "an isolated host still answers: edr fleet ls $host /"
    fleet ls "$host" / >"$dir/ls.json"
    head -12 "$dir/ls.json"
    say "releasing $host"
    fleet release "$host" --reason "quickstart: done" >/dev/null
    isolated_host=""
    for _ in $(seq 30); do fleet hosts | grep -q online && break; sleep 1; done
    fleet hosts
fi

cat <<EOF

The fleet runs: server $fleet_dir (API http://127.0.0.1:8480, console http://127.0.0.1:8480/console/), this host is $host.
  $edr fleet --dir $fleet_dir alerts
  $edr fleet --dir $fleet_dir ps $host
  $edr fleet --dir $fleet_dir connections $host
  $edr fleet --dir $fleet_dir query "SELECT exe, count(*) AS n FROM process GROUP BY exe ORDER BY n DESC LIMIT 10"
EOF
if [ "$once" = 1 ]; then
    exit 0
fi
echo "(Ctrl-C stops the server and the agent)"
wait
