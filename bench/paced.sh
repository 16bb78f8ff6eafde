#!/usr/bin/env bash
# Paced latency, side by side (BENCHMARKS.md, "Paced latency"). Usage:
#   bench/paced.sh RATE RUNS "SIM_BIN LOAD_BIN" ["SIM_BIN LOAD_BIN" ...]
# Each variant is the binary the OCS simulator runs from and the binary `load` runs from, so that a simulator and a
# load generator from different builds can be compared. Variants are interleaved, RUNS rounds. Every run starts a
# fresh simulator, warms it with one unpaced run of 40,000 sessions, resets its ledger (as bench/run.sh does between
# runs), then runs RATE * 0.8 sessions of CCR-I + 3 CCR-U + CCR-T paced at RATE transactions per second (4 s).
# Prints the paced run's latency and CPU, the simulator's CPU per transaction in that run (from /proc), and how many
# requests the simulator took over 5 ms to process (its own histogram). MODE (default off) is the load's
# --replication. PIN=1 runs the simulator on CPU 1 and the load on CPU 0 (taskset). LOG=DIR keeps each run's
# --latency-log in DIR.
set -euo pipefail
rate=$1 runs=$2
shift 2
mode=${MODE:-off}
port=${PORT:-39894}
ctl=$((port + 1))
sim_cpu=() load_cpu=()
if [ "${PIN:-0}" = 1 ]; then
  sim_cpu=(taskset -c 1) load_cpu=(taskset -c 0)
fi
sim=
trap '[ -z "$sim" ] || { kill $sim 2>/dev/null; wait $sim 2>/dev/null || true; }' EXIT

http_post() { # path: a request on the simulator's control port, the answer discarded
  exec 3<>"/dev/tcp/127.0.0.1/$ctl"
  printf 'POST %s HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" >&3
  cat <&3 >/dev/null
  exec 3<&-
}

slow_requests() { # requests the simulator took over 5 ms to process: its histogram's count above the 5 ms bucket
  local metrics
  exec 3<>"/dev/tcp/127.0.0.1/$ctl"
  printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
  metrics=$(cat <&3)
  exec 3<&-
  awk '/^ocs_request_processing_seconds_bucket\{le="0.005"\}/ {b=$2} /^ocs_request_processing_seconds_count/ {c=$2}
       END {print c - b}' <<<"$metrics"
}

for r in $(seq "$runs"); do
  for variant in "$@"; do
    read -r simbin loadbin <<<"$variant"
    "${sim_cpu[@]}" "$simbin" ocs-sim --listen 127.0.0.1:$port --control 127.0.0.1:$ctl >/dev/null 2>&1 &
    sim=$!
    sleep 1
    "${load_cpu[@]}" "$loadbin" load --ocs 127.0.0.1:$port --sessions 40000 --concurrency 100 --updates 3 \
      --threads 1 >/dev/null
    http_post /v1/reset
    log=()
    [ -z "${LOG:-}" ] || log=(--latency-log "$LOG/paced-$r-$(basename "$simbin")-$(basename "$loadbin").log")
    sim_ticks() { awk '{print $14 + $15}' "/proc/$sim/stat"; }
    before=$(sim_ticks)
    out=$("${load_cpu[@]}" "$loadbin" load --ocs 127.0.0.1:$port --sessions $((rate * 4 / 5)) --concurrency 100 \
      --updates 3 --threads 1 --replication "$mode" --rate "$rate" "${log[@]}" 2>&1)
    if ! grep -q "^results: 2001: $((rate * 4 / 5 * 5))\$" <<<"$out"; then
      echo "run failed: $out" >&2
      exit 1
    fi
    sim_us=$(awk -v d=$(($(sim_ticks) - before)) -v hz="$(getconf CLK_TCK)" -v tx=$((rate * 4 / 5 * 5)) \
      'BEGIN {printf "%.1f", d * 1e6 / hz / tx}')
    echo "run $r | sim $simbin | load $loadbin | $mode at $rate/s | $(grep '^latency:' <<<"$out" | cut -d' ' -f2-) |" \
      "$(sed -n 's/^cpu: .*, \(.*\)/\1/p' <<<"$out") | simulator $sim_us us per transaction |" \
      "simulator requests over 5 ms: $(slow_requests)"
    kill $sim
    wait $sim 2>/dev/null || true
    sim=
  done
done
