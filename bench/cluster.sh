#!/usr/bin/env bash
# Load through the HTTP fronts of a cluster (BENCHMARKS.md, "Load through the HTTP fronts"): the OCS simulator,
# NODES `charging-ra node` processes replicating to one SQLite file, and `charging-ra load --nodes`. Three runs of
# DURATION seconds: as fast as 100 sessions at a time go; then sessions held 200 ms (so that many are open at any
# moment), undisturbed; then the same with node 2 SIGKILLed KILL_AT seconds in. After each, the simulator's ledger
# check (clean, sessions open) is printed: a kill must cost latency, not sessions or charges.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin charging-ra
bin=$PWD/target/release/charging-ra
nodes=${NODES:-3}
base=${PORT:-39700}
duration=${DURATION:-8}
kill_at=${KILL_AT:-3}
concurrency=${CONCURRENCY:-60}
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

http() { # method, port, path: prints the body
  exec 3<>"/dev/tcp/127.0.0.1/$2"
  printf '%s %s HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" "$3" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}

$bin ocs-sim --listen 127.0.0.1:$base --control 127.0.0.1:$((base + 1)) >"$dir/sim.log" 2>&1 &
pids+=($!)
fronts=()
node_pid=()
for i in $(seq "$nodes"); do
  cat >"$dir/n$i.toml" <<TOML
[node]
id = "n$i"
origin_host = "n$i.bench.localdomain"
origin_realm = "bench.localdomain"
diameter_listen = "127.0.0.1:$((base + 10 + i))"
http_listen = "127.0.0.1:$((base + 20 + i))"

[[peers]]
host = "ocs.localdomain"
realm = "localdomain"
address = "127.0.0.1:$base"

[applications.ro]
destination_realm = "localdomain"

[applications.gx]
destination_realm = "localdomain"

[replication]
enabled = true
cluster = "bench"
lease_period = "250ms"
lease_ttl = "1s"

[store]
type = "sqlite"
path = "$dir/store.db"
TOML
  $bin node --config "$dir/n$i.toml" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
  node_pid[$i]=$!
  fronts+=("http://127.0.0.1:$((base + 20 + i))")
done
sleep 2
list=$(IFS=,; echo "${fronts[*]}")

run() { # label, concurrency, hold, [kill]
  http POST $((base + 1)) /v1/reset >/dev/null
  echo "## $1"
  $bin load --nodes "$list" --sessions 100000000 --duration "${duration}s" --concurrency "$2" --updates 3 \
    --hold "$3" --threads 1 >"$dir/load.out" 2>&1 &
  local load=$!
  if [ -n "${4:-}" ]; then
    sleep "$kill_at"
    kill -9 "${node_pid[2]}"
    echo "node 2 (pid ${node_pid[2]}) SIGKILLed ${kill_at} s into the run"
  fi
  wait $load
  cat "$dir/load.out"
  echo "ledger: $(http GET $((base + 1)) /v1/ledger/check | head -c 200)"
  echo
}
run "$nodes nodes, unpaced, no hold" 100 0s
run "$nodes nodes, sessions held 200 ms, undisturbed" "$concurrency" 200ms
run "$nodes nodes, sessions held 200 ms, node 2 SIGKILLed" "$concurrency" 200ms kill
