#!/usr/bin/env bash
# Memory per open session (BENCHMARKS.md): `load` opens 100,000 sessions at 5,000 per second and holds them. The
# load process's VmRSS at 1 s (its 100,000 worker tasks exist, a few thousand sessions are open) is subtracted from
# its VmRSS at 25 s (every session open), and divided by the sessions opened in between, as the simulator's ledger
# counts them. Usage: bench/memory.sh [BIN] [off|memory|sqlite]
set -euo pipefail
bin=${1:-target/release/charging-ra}
mode=${2:-off}
port=${PORT:-39894}
ctl=$((port + 1))
"$bin" ocs-sim --listen 127.0.0.1:$port --control 127.0.0.1:$ctl >/dev/null 2>&1 &
sim=$!
# The next run's simulator binds the same port: this one must be gone first.
trap 'kill $sim 2>/dev/null; wait $sim 2>/dev/null || true' EXIT
sleep 1
out=$(mktemp)
"$bin" load --ocs 127.0.0.1:$port --sessions 100000 --concurrency 100000 --updates 0 --hold 30s --rate 5000 \
  --replication "$mode" >"$out" 2>&1 &
load=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$load/status"; }
opened() { # sessions open at the simulator
  exec 3<>"/dev/tcp/127.0.0.1/$ctl"
  printf 'GET /v1/ledger/check HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
  sed -n 's/.*"open":\([0-9]*\).*/\1/p' <&3
  exec 3<&-
}
sleep 1
start=$(rss) n0=$(opened)
sleep 24
open=$(rss) n1=$(opened)
wait $load
grep -q '^results: 2001: 200000$' "$out" || { echo "run failed: $(cat "$out")" >&2; exit 1; }
rm -f "$out"
echo "$mode: RSS ${start} kB with $n0 sessions open, ${open} kB with $n1: $(((open - start) * 1024 / (n1 - n0))) B per session"
