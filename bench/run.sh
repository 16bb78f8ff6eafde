#!/usr/bin/env bash
# End-to-end credit-control benchmarks (BENCHMARKS.md, "Credit-control engine"): the OCS simulator on one port and
# `charging-ra load` through the embedded engine, one connection, 100 sessions outstanding, CCR-I + 3 CCR-U + CCR-T
# per session. RUNS runs of each replication mode, interleaved, then one paced run of each at half its median peak.
# Prints a Markdown table; a run whose answers are not all 2001 fails the script (a dead simulator answers nothing,
# fast). The simulator's ledger is reset before every run: it keeps every session it served, and a ledger millions
# of sessions long slows the simulator, which would depress whichever run comes late. THREADS (default 1) is the
# load's worker threads: the simulator runs on one thread, so on a 2-CPU machine each process gets one CPU. BIN runs
# a given build (simulator and load) instead of building this tree, to compare two builds run by run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin charging-ra
  bin=./target/release/charging-ra
fi
port=${PORT:-39874}
runs=${RUNS:-3}
sessions=${SESSIONS:-40000}
threads=${THREADS:-1}
tx=$((sessions * 5))
ctl=$((port + 1))
$bin ocs-sim --listen 127.0.0.1:$port --control 127.0.0.1:$ctl 2>/dev/null >/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null; wait $sim 2>/dev/null || true' EXIT
sleep 1

reset() { # empties the simulator's ledger (POST /v1/reset on its control port)
  exec 3<>"/dev/tcp/127.0.0.1/$ctl"
  printf 'POST /v1/reset HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' >&3
  cat <&3 >/dev/null
  exec 3<&-
}

one() { # mode, sessions, [rate]
  local out
  reset
  out=$($bin load --ocs 127.0.0.1:$port --sessions "$2" --concurrency 100 --updates 3 --replication "$1" --threads "$threads" ${3:+--rate $3} 2>&1)
  if ! grep -q "^results: 2001: $(($2 * 5))\$" <<<"$out"; then
    echo "run $1 failed: $out" >&2
    exit 1
  fi
  local t p50 p99 w
  t=$(sed -n 's/^throughput: \([0-9]*\) tx\/s/\1/p' <<<"$out")
  p50=$(sed -n 's/^latency: p50 \([0-9]*\) us.*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*p99 \([0-9]*\) us.*/\1/p' <<<"$out")
  w=$(sed -n 's/^store: .* \([0-9.]*\) per session.*/\1/p' <<<"$out")
  c=$(sed -n 's/^cpu: .*, \([0-9.]*\) us per transaction/\1/p' <<<"$out")
  echo "$t $p50 $p99 ${w:--} ${c:--}"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A all
for r in $(seq "$runs"); do
  for m in off memory sqlite; do
    all[$m]+="$(one $m "$sessions")"$'\n'
  done
done

echo "| replication | throughput (runs) | median | p50 / p99 of the median run | records per session | CPU per transaction (median) | paced at half: rate, p50 / p99 |"
echo "|---|---|---|---|---|---|---|"
off_median=0 off_cpu=0
for m in off memory sqlite; do
  rows=$(printf '%s' "${all[$m]}" | sed '/^$/d')
  med=$(cut -d' ' -f1 <<<"$rows" | median)
  [ "$m" = off ] && off_median=$med
  row=$(awk -v t="$med" '$1 == t {print; exit}' <<<"$rows")
  cost=""
  [ "$m" != off ] && cost=" ($(awk -v a="$med" -v b="$off_median" 'BEGIN {printf "%+.0f%%", (a - b) * 100 / b}'))"
  cpu=$(cut -d' ' -f5 <<<"$rows" | median)
  [ "$m" = off ] && off_cpu=$cpu
  cpu_cost=""
  [ "$m" != off ] && cpu_cost=" ($(awk -v a="$cpu" -v b="$off_cpu" 'BEGIN {printf "%+.0f%%", (a - b) * 100 / b}'))"
  rate=$((med / 2))
  paced=$(one $m $((sessions / 2)) $rate)
  echo "| $m | $(cut -d' ' -f1 <<<"$rows" | paste -sd/ | sed 's#/# / #g') tx/s | **$med**$cost | $(cut -d' ' -f2 <<<"$row") / $(cut -d' ' -f3 <<<"$row") µs | $(cut -d' ' -f4 <<<"$row") | $cpu µs$cpu_cost | $rate tx/s: $(cut -d' ' -f2 <<<"$paced") / $(cut -d' ' -f3 <<<"$paced") µs |"
done
echo
echo "($runs runs of $tx transactions per mode, load on $threads worker thread(s); $(date -u +%F); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
