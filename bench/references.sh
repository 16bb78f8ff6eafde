#!/usr/bin/env bash
# The two reference pairs issue #10 names, measured here side by side with ours in one run (BENCHMARKS.md,
# "thirteenth measurement"). Each round runs, one after the other:
#   - freeDiameter's own benchmark pair: two freeDiameterd daemons on loopback, one running freeDiameter's test_app
#     extension as a server (it echoes each request), the other running it in benchmark mode (100 requests
#     outstanding on one connection for 10 s, started by SIGUSR1);
#   - an Erlang/OTP `diameter` credit-control pair (bench/erlang/): a CCR-U with the shape of ours, answered with a
#     granted quota, 100 outstanding on one connection for 10 s; once with the VM's defaults (a scheduler per CPU)
#     and once with `+S 1` (one scheduler per VM, as our simulator and load each use one thread);
#   - the Erlang client against our OCS simulator (the VM's defaults): the two stacks interoperating at full rate;
#   - our client (examples/ocs_load.rs) against the Erlang server: the two OCSes driven by the same client;
#   - our pair on the same shape: the OCS simulator and the built-in client (examples/ocs_load.rs, 100 sessions
#     each with one CCR-U outstanding on one connection, 10 s);
#   - `charging-ra load` through the whole engine (100 sessions outstanding, CCR-I + 3 CCR-U + CCR-T each), once
#     per replication mode in MODES (default "off memory sqlite").
# RUNS rounds (default 3). Needs:
#   apt-get install freediameterd freediameter-extensions libfreediameter-dev bison flex gcc openssl curl \
#     erlang-base erlang-diameter erlang-dev
# Debian does not package test_app, so the script builds it once from the upstream source tarball Debian ships for
# the installed freeDiameter (its .orig.tar.gz on deb.debian.org, without Debian's patches, which do not touch
# test_app), against libfreediameter-dev, into target/bench-references/.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
port=${PORT:-39930}
work=target/bench-references
mkdir -p "$work"
work=$(cd "$work" && pwd)

for tool in freeDiameterd bison flex gcc openssl curl erl erlc diameterc; do
  command -v "$tool" >/dev/null || { echo "bench/references.sh needs $tool (see the header)" >&2; exit 1; }
done
[ -f /usr/include/freeDiameter/extension.h ] || { echo "bench/references.sh needs libfreediameter-dev" >&2; exit 1; }
acl_wl=/usr/lib/freeDiameter/acl_wl.fdx
[ -f $acl_wl ] || { echo "bench/references.sh needs freediameter-extensions ($acl_wl)" >&2; exit 1; }

# test_app.fdx, built from the source of the freeDiameter version installed (its extensions must match the daemon).
version=$(dpkg-query -W -f '${Version}' freediameterd)
upstream=${version%%-*}
fdx=$work/test_app-$upstream.fdx
if [ ! -f "$fdx" ]; then
  tarball=freediameter_$upstream.orig.tar.gz
  pool=http://deb.debian.org/debian/pool/main/f/freediameter
  [ -f "$work/$tarball" ] || curl -sSf -o "$work/$tarball" "$pool/$tarball"
  rm -rf "$work/src" && mkdir "$work/src" && tar xzf "$work/$tarball" -C "$work/src"
  src=$(echo "$work"/src/*/extensions/test_app)
  bison --name-prefix=ta_conf --defines --output-file="$work/ta_conf.tab.c" "$src/ta_conf.y" 2>/dev/null
  flex -Pta_conf -o"$work/lex.ta_conf.c" "$src/ta_conf.l"
  gcc -O2 -shared -fPIC -w -I"$src" -I"$work" -o "$fdx" "$src"/test_app.c "$src"/ta_dict.c "$src"/ta_cli.c \
    "$src"/ta_bench.c "$src"/ta_serv.c "$work/ta_conf.tab.c" "$work/lex.ta_conf.c"
fi

daemon_conf() { # name port test_app-conf [connect-port]
  # freeDiameter wants TLS credentials even with TLS off, and their subject must be its identity.
  [ -f "$work/$1.cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -subj "/CN=$1.bench.localdomain" \
    -days 3650 -keyout "$work/$1.key.pem" -out "$work/$1.cert.pem" 2>/dev/null
  cat >"$work/$1.test_app.conf" <<<"$3"
  cat >"$work/$1.conf" <<EOF
Identity = "$1.bench.localdomain";
Realm = "$1.localdomain";
Port = $2;
SecPort = 0;
No_SCTP;
No_IPv6;
ListenOn = "127.0.0.1";
TLS_Cred = "$work/$1.cert.pem", "$work/$1.key.pem";
TLS_CA = "$work/$1.cert.pem";
LoadExtension = "$fdx" : "$work/$1.test_app.conf";
EOF
  if [ -z "${4:-}" ]; then
    # The server accepts the client without TLS.
    echo "ALLOW_IPSEC client.bench.localdomain" >"$work/acl_wl.conf"
    echo "LoadExtension = \"$acl_wl\" : \"$work/acl_wl.conf\";" >>"$work/$1.conf"
  else
    echo "ConnectPeer = \"server.bench.localdomain\" { ConnectTo = \"127.0.0.1\"; Port = $4; No_TLS; };" \
      >>"$work/$1.conf"
  fi
}
daemon_conf server "$port" 'mode = server;'
daemon_conf client $((port + 1)) 'mode = client; Benchmark 10 100; dest-realm = "server.localdomain";' "$port"

# The Erlang pair: the dictionary compiled, then the module.
diameterc -o "$work" bench/erlang/cc_bench_dict.dia
erlc -o "$work" "$work/cc_bench_dict.erl" bench/erlang/cc_bench.erl

cargo build --release --quiet --bin charging-ra --example ocs_load

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
throughput() { sed -n 's/^throughput: \([0-9]*\) tx\/s/\1/p'; }

listening() { # port: waits up to 10 s for something to accept on it
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

# Each run sets `result`: run in the script's own shell, so that the trap stops what a failing run started.
freediameter_pair() { # the answers over the 10 s of sending, and test_app's own figure and error count
  pids=()
  freeDiameterd -c "$work/server.conf" >"$work/server.log" 2>&1 &
  pids+=($!)
  sleep 0.5
  freeDiameterd -c "$work/client.conf" >"$work/client.log" 2>&1 &
  pids+=($!)
  local client=$!
  for _ in $(seq 100); do
    grep -q "'STATE_OPEN'" "$work/client.log" 2>/dev/null && break
    sleep 0.1
  done
  if ! grep -q "'STATE_OPEN'" "$work/client.log"; then
    echo "the freeDiameter pair did not connect: see $work/client.log and $work/server.log" >&2
    exit 1
  fi
  kill -USR1 "$client"
  for _ in $(seq 300); do
    grep -q "Test Complete" "$work/client.log" && break
    sleep 0.1
  done
  if ! grep -q "Test Complete" "$work/client.log"; then
    echo "test_app's benchmark did not complete: $work/client.log" >&2
    exit 1
  fi
  # test_app divides the answers by the sending time plus the second it waits for the last ones; the answers over
  # the 10 s of sending are the figure comparable to ours.
  local t a e
  t=$(sed -n 's/.*Throughput: \([0-9]*\) messages \/ sec.*/\1/p' "$work/client.log" | tail -1)
  a=$(sed -n 's/.* \([0-9]*\) answer(s) received.*/\1/p' "$work/client.log" | tail -1)
  e=$(sed -n 's/.* \([0-9]*\) error(s) received.*/\1/p' "$work/client.log" | tail -1)
  cleanup
  pids=()
  [ -n "$t" ] && [ -n "$a" ] || { echo "no benchmark result in $work/client.log" >&2; exit 1; }
  result="$((a / 10)) ($t by test_app's count; $e errors)"
}


# One pair: a server started on `port`, a client run against it, the server stopped. `result` gets the client's
# throughput; a client whose output lacks `check` (every answer a 2001) stops the script with that output, kept even
# when the client crashes. The commands are split into words (no path here has spaces).
pair() { # label port server-command client-command check
  $3 >"$work/server-$2.log" 2>&1 &
  pids=($!)
  listening "$2"
  local out
  out=$($4 2>&1) || true
  cleanup
  pids=()
  grep -q "$5" <<<"$out" || { echo "$1 failed: $out" >&2; exit 1; }
  result=$(throughput <<<"$out")
}

sim="./target/release/charging-ra ocs-sim --listen 127.0.0.1"
erlang="-noshell -pa $work -run cc_bench"
ocs_load="./target/release/examples/ocs_load --sessions 100 --duration 10 --ocs 127.0.0.1"
all_2001=", 0 not 2001$"

erlang_pair() { # erl flags (may be empty)
  pair "the Erlang pair" $((port + 4)) "erl $1 $erlang server $((port + 4))" \
    "erl $1 $erlang client $((port + 4)) 100 10" "$all_2001"
}

erlang_client_ours() { # the Erlang client against our simulator: an interoperability check at full rate too
  pair "the Erlang client against the simulator" $((port + 5)) "$sim:$((port + 5))" \
    "erl $erlang client $((port + 5)) 100 10" "$all_2001"
}

ocs_load_erlang() { # our client against the Erlang server: the two OCSes driven by the same client
  pair "ocs_load against the Erlang server" $((port + 4)) "erl $erlang server $((port + 4))" \
    "$ocs_load:$((port + 4))" "$all_2001"
}

ours_pair() {
  pair "ocs_load against the simulator" $((port + 2)) "$sim:$((port + 2))" "$ocs_load:$((port + 2))" "$all_2001"
}

ours_engine() { # replication mode
  pair "load --replication $1" $((port + 3)) "$sim:$((port + 3))" \
    "./target/release/charging-ra load --ocs 127.0.0.1:$((port + 3)) --sessions 40000 --concurrency 100 \
    --updates 3 --replication $1 --threads 1" "^results: 2001: 200000$"
}

modes=${MODES:-off memory sqlite}
header="| run | freeDiameter test_app pair, answers/s over 10 s | Erlang/OTP diameter pair, tx/s | the same, +S 1 |"
header+=" Erlang client + charging-ra simulator, tx/s | ocs_load + Erlang server, tx/s |"
header+=" charging-ra simulator + ocs_load, tx/s |"
rule="|---|---|---|---|---|---|---|"
for m in $modes; do
  header+=" charging-ra load, replication $m, tx/s |"
  rule+="---|"
done
echo "$header"
echo "$rule"
for r in $(seq "$runs"); do
  freediameter_pair
  row="| $r | $result |"
  erlang_pair ""
  row+=" $result |"
  erlang_pair "+S 1"
  row+=" $result |"
  erlang_client_ours
  row+=" $result |"
  ocs_load_erlang
  row+=" $result |"
  ours_pair
  row+=" $result |"
  for m in $modes; do
    ours_engine "$m"
    row+=" $result |"
  done
  echo "$row"
done
