#!/usr/bin/env bash
# Side-by-side runs of `charging-ra load` variants against one simulator, interleaved (BENCHMARKS.md, "third
# measurement"). Usage: bench/compare.sh MODE RUNS "BIN [load args]" ["BIN [load args]" ...]
# Each variant is a binary and extra load arguments, e.g. "target/release/charging-ra --threads 1"; two builds are
# compared by passing two binaries. The simulator (the first variant's binary) is emptied before each run unless
# RESET=0, which lets its ledger grow across runs as it did before 2026-11-27's third measurement. SIM_EACH=1
# restarts the simulator from each variant's own binary before its run, for builds whose simulator differs (the
# allocator, BENCHMARKS.md "seventh measurement"). Leading NAME=value words set the environment of that variant's
# load runs (TMPDIR places `--replication sqlite`'s file). A run whose answers are not all 2001 fails the script.
set -euo pipefail
mode=$1 runs=$2
shift 2
sessions=${SESSIONS:-40000}
port=${PORT:-39884}
ctl=$((port + 1))
start_sim() { # binary
  "$1" ocs-sim --listen 127.0.0.1:$port --control 127.0.0.1:$ctl >/dev/null 2>&1 &
  sim=$!
  sleep 1
}
stop_sim() { kill $sim 2>/dev/null; wait $sim 2>/dev/null || true; }
# A variant may begin with environment assignments (e.g. TMPDIR=/dev/shm for the load's SQLite file): they apply
# to its load runs, not to the simulator.
split_env() { # variant words -> envs, cmd
  envs=() cmd=("$@")
  while [[ ${cmd[0]} == *=* ]]; do envs+=("${cmd[0]}"); cmd=("${cmd[@]:1}"); done
}
read -r -a first <<<"$1"
split_env "${first[@]}"
start_sim "${cmd[0]}"
trap stop_sim EXIT

reset() {
  exec 3<>"/dev/tcp/127.0.0.1/$ctl"
  printf 'POST /v1/reset HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' >&3
  cat <&3 >/dev/null
  exec 3<&-
}

for r in $(seq "$runs"); do
  for variant in "$@"; do
    read -r -a v <<<"$variant"
    split_env "${v[@]}"
    if [ "${SIM_EACH:-0}" = 1 ]; then
      stop_sim
      start_sim "${cmd[0]}"
    fi
    [ "${RESET:-1}" = 0 ] || reset
    out=$(env "${envs[@]}" "${cmd[0]}" load --ocs 127.0.0.1:$port --sessions "$sessions" --concurrency 100 \
      --updates 3 --replication "$mode" "${cmd[@]:1}" 2>&1)
    grep -q "^results: 2001: $((sessions * 5))\$" <<<"$out" || { echo "run failed: $variant: $out" >&2; exit 1; }
    cpu=$(sed -n 's/^cpu: .*, \([0-9.]*\) us per transaction/\1 us CPU per tx/p' <<<"$out")
    echo "run $r | $variant | $(sed -n 's/^throughput: //p' <<<"$out") | ${cpu:--} | $(sed -n 's/^latency: //p' <<<"$out")"
  done
done
