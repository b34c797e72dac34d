#!/usr/bin/env bash
# Redis against Shoal's Redis front-end, on this machine, driven by redis-benchmark:
#
#   redis, appendfsync always     one redis-server, AOF fsynced before each reply
#   redis, appendfsync everysec   one redis-server, AOF fsynced once a second
#   shoal                         3 nodes on loopback; redis-benchmark talks to node 1
#                                 (every write fsynced on a quorum before the reply)
#
# Each system gets the same tests (SET GET INCR LPUSH LPOP SADD HSET XADD), 50 clients,
# without and with 16-command pipelining (-P 16). redis-benchmark has no XADD test of
# its own: it runs `XADD bench:stream * field value` as a command.
#
#   bench/compare-redis.sh
#   REQUESTS=50000 OUT=/tmp/redis bench/compare-redis.sh
#
# Installs Debian's redis-server and redis-tools if missing. Prints a markdown table
# and writes it to $OUT/redis.md (raw CSV beside it). Everything it starts is stopped
# when it exits, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-set,get,incr,lpush,lpop,sadd,hset,xadd}
# The tests redis-benchmark knows by name (-t); xadd is run as a command.
BUILTIN=$(echo "$TESTS" | tr ',' '\n' | grep -vix xadd | paste -sd, - || true)
OUT=${OUT:-target/bench-redis}
BASE_PORT=${BASE_PORT:-47379}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
  echo "installing redis-server and redis-tools"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools
fi
cargo build --release -q
SHOAL=target/release/shoal

wait_redis() {
  for _ in $(seq 1 300); do
    if [ "$(redis-cli -p "$1" ping 2>/dev/null)" = "PONG" ] && redis-cli -p "$1" set health ok >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing answers on port $1; the logs end:" >&2
  tail -n 20 "$WORK"/*.log >&2 || true
  exit 1
}

# run_bench LABEL PORT: both pipelining settings, CSV rows tagged with the label.
run_bench() {
  local label=$1 port=$2
  for pipeline in 1 16; do
    echo "  $label, -P $pipeline" >&2
    if [ -n "$BUILTIN" ]; then
      redis-benchmark -p "$port" -c "$CLIENTS" -n "$REQUESTS" -P "$pipeline" -t "$BUILTIN" --csv 2>/dev/null |
        grep -v '^"test"' | sed "s/^/\"$label\",\"$pipeline\",/" >>"$OUT/redis.csv"
    fi
    if echo ",$TESTS," | grep -qi ",xadd,"; then
      redis-benchmark -p "$port" -c "$CLIENTS" -n "$REQUESTS" -P "$pipeline" --csv XADD bench:stream '*' field value 2>/dev/null |
        grep -v '^"test"' | sed 's/^"XADD[^"]*"/"XADD"/' | sed "s/^/\"$label\",\"$pipeline\",/" >>"$OUT/redis.csv"
    fi
  done
}

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
}

: >"$OUT/redis.csv"
echo "== $(redis-server --version | cut -d' ' -f1-3)"
for fsync in always everysec; do
  mkdir -p "$WORK/redis-$fsync"
  redis-server --port "$BASE_PORT" --dir "$WORK/redis-$fsync" --appendonly yes --appendfsync "$fsync" \
    --save "" --daemonize no --logfile "$WORK/redis-$fsync.log" &
  PIDS+=($!)
  wait_redis "$BASE_PORT"
  run_bench "redis $fsync" "$BASE_PORT"
  stop_all
done

echo "== shoal"
CLUSTER=""
for i in 0 1 2; do
  CLUSTER+="${CLUSTER:+,}n$i=http://127.0.0.1:$((BASE_PORT + 10 * i + 1))"
done
for i in 0 1 2; do
  "$SHOAL" server --name "n$i" --data-dir "$WORK/shoal-n$i" \
    --listen-client-urls "http://127.0.0.1:$((BASE_PORT + 10 * i))" \
    --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 * i + 1))" \
    --listen-redis-addr "127.0.0.1:$((BASE_PORT + 10 * i + 2))" \
    --initial-cluster "$CLUSTER" --initial-cluster-token bench-redis \
    >"$WORK/shoal-n$i.log" 2>&1 &
  PIDS+=($!)
done
wait_redis $((BASE_PORT + 2))
run_bench "shoal" $((BASE_PORT + 2))
stop_all

python3 - "$OUT" <<'EOF' | tee "$OUT/redis.md"
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = list(csv.reader((out / "redis.csv").read_text().splitlines()))
systems = list(dict.fromkeys(row[0] for row in rows))
tests = list(dict.fromkeys(row[2] for row in rows))
cell = {(row[0], row[1], row[2]): row for row in rows}
print("| test, 50 clients | " + " | ".join(f"{s} ops/s (p99 ms)" for s in systems) + " |")
print("|---|" + "---:|" * len(systems))
for pipeline in ("1", "16"):
    for test in tests:
        cells = []
        for system in systems:
            row = cell.get((system, pipeline, test))
            cells.append(f"{float(row[3]):,.0f} ({float(row[8]):.1f})" if row else "n/a")
        label = test if pipeline == "1" else f"{test}, -P 16"
        print(f"| {label} | " + " | ".join(cells) + " |")
EOF
