#!/usr/bin/env bash
# Memory per open session (BENCHMARKS.md): `load` opens 100,000 sessions at 5,000 per second and holds them; the
# load process's VmRSS at 1 s (its 100,000 worker tasks exist, no session yet) is subtracted from its VmRSS at 25 s
# (every session open), divided by 100,000. Usage: bench/memory.sh [BIN] [off|memory|sqlite]
set -euo pipefail
bin=${1:-target/release/charging-ra}
mode=${2:-off}
port=${PORT:-39894}
"$bin" ocs-sim --listen 127.0.0.1:$port >/dev/null 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
sleep 1
out=$(mktemp)
"$bin" load --ocs 127.0.0.1:$port --sessions 100000 --concurrency 100000 --updates 0 --hold 30s --rate 5000 \
  --replication "$mode" >"$out" 2>&1 &
load=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$load/status"; }
sleep 1
start=$(rss)
sleep 24
open=$(rss)
wait $load
grep -q '^results: 2001: 200000$' "$out" || { echo "run failed: $(cat "$out")" >&2; exit 1; }
rm -f "$out"
echo "$mode: RSS ${start} kB at start, ${open} kB with 100,000 open: $(((open - start) * 1024 / 100000)) B per session"
