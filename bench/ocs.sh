#!/usr/bin/env bash
# OCS simulator throughput: the simulator (release build) on one port, the built-in client on one connection with
# 100 sessions outstanding, for 10 s. Prints the client's summary; the last line is "throughput: N tx/s". BIN runs
# the simulator from a given build instead of this tree's, to compare two builds with the same client.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin charging-ra --example ocs_load
port=${PORT:-39868}
"${BIN:-./target/release/charging-ra}" ocs-sim --listen 127.0.0.1:$port --origin-host ocs.localdomain --origin-realm localdomain 2>/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null; wait $sim 2>/dev/null || true' EXIT
sleep 0.5
./target/release/examples/ocs_load --ocs 127.0.0.1:$port --sessions "${SESSIONS:-100}" --duration "${DURATION:-10}"
