#!/usr/bin/env bash
# Many ranges against one, side by side with etcd, 3 members each on this machine
# (loopback, fsync on commit), driven in turn by `shoal bench` with the same workloads:
#
#   etcd                 3 members
#   shoal, 1 range       3 nodes, one data range (every key)
#   shoal, 8 ranges      3 nodes, the benchmark's keys cut into 8 equal data ranges, their
#                        leaders spread over the nodes by the nodes themselves
#   shoal (BASELINE)     optional: an older shoal binary, one range, for regressions
#
# Workloads at 64 clients: put, linearizable get, and a Txn putting two keys half the
# key space apart (with 8 ranges: always two ranges, a two-phase commit).
#
#   bench/ranges.sh
#   DURATION=20 BASELINE=/path/to/old/shoal OUT=/tmp/ranges bench/ranges.sh
#
# Prints a markdown table and writes it to $OUT/ranges.md. Everything it starts is
# stopped when it exits, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
OUT=${OUT:-target/bench-ranges}
BASE_PORT=${BASE_PORT:-43379}
KEY_SPACE=10000
RANGES=8
BASELINE=${BASELINE:-}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd (Debian package etcd-server)"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server
fi
cargo build --release -q
SHOAL=target/release/shoal

MEMBERS=("m1 $BASE_PORT $((BASE_PORT + 1))" "m2 $((BASE_PORT + 10)) $((BASE_PORT + 11))" "m3 $((BASE_PORT + 20)) $((BASE_PORT + 21))")
CLUSTER=""
ENDPOINTS=""
for member in "${MEMBERS[@]}"; do
  read -r name client peer <<<"$member"
  CLUSTER+="${CLUSTER:+,}$name=http://127.0.0.1:$peer"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:$client"
done

# The bench's keys are "bench/" then the index zero-padded to 32 bytes: cut them into
# $RANGES equal parts.
SPLIT_KEYS=""
for part in $(seq 1 $((RANGES - 1))); do
  SPLIT_KEYS+="${SPLIT_KEYS:+,}$(printf 'bench/%026d' $((part * KEY_SPACE / RANGES)))"
done

wait_healthy() {
  for _ in $(seq 1 200); do
    if "$SHOAL" bench --endpoints "$ENDPOINTS" --total 1 --clients 1 --workload put --prefix health/ >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "cluster did not become healthy" >&2
  exit 1
}

run_workloads() {
  local system=$1
  local results="$OUT/$system.jsonl"
  : >"$results"
  local workloads=(
    "put|--workload put"
    "linearizable get|--workload get --preload"
    "txn of 2 keys|--workload txn"
  )
  for entry in "${workloads[@]}"; do
    local label=${entry%%|*}
    local args=${entry#*|}
    echo "  $system: $label" >&2
    # shellcheck disable=SC2086
    "$SHOAL" bench --endpoints "$ENDPOINTS" --duration "$DURATION" --warmup "$WARMUP" \
      --clients 64 --connections 8 --key-space "$KEY_SPACE" --value-size 256 --prefix "bench/" \
      $args --json 2>/dev/null |
      python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; print(json.dumps(r))' "$label" >>"$results"
  done
}

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
}

echo "== etcd $(etcd --version | head -1)"
for member in "${MEMBERS[@]}"; do
  read -r name client peer <<<"$member"
  etcd --name "$name" --data-dir "$WORK/etcd-$name" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$CLUSTER" --initial-cluster-token bench --initial-cluster-state new \
    --log-level error >"$WORK/etcd-$name.log" 2>&1 &
  PIDS+=($!)
done
wait_healthy
run_workloads etcd
stop_all

# run_shoal LABEL BINARY [server args...]
run_shoal() {
  local label=$1 binary=$2
  shift 2
  echo "== $label"
  for member in "${MEMBERS[@]}"; do
    read -r name client peer <<<"$member"
    "$binary" server --name "$name" --data-dir "$WORK/$label-$name" \
      --listen-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
      --listen-metrics-urls "" --initial-cluster "$CLUSTER" --initial-cluster-token bench "$@" \
      >"$WORK/$label-$name.log" 2>&1 &
    PIDS+=($!)
  done
  wait_healthy
  # Leaders spread within a few seconds of the start (one handover per node every 2 s).
  [ $# -gt 0 ] && sleep 10
  run_workloads "$label"
  stop_all
}

SYSTEMS=(etcd)
if [ -n "$BASELINE" ]; then
  run_shoal shoal-baseline "$BASELINE"
  SYSTEMS+=(shoal-baseline)
fi
run_shoal shoal-1-range "$SHOAL"
run_shoal shoal-8-ranges "$SHOAL" --experimental-initial-split-keys "$SPLIT_KEYS"
SYSTEMS+=(shoal-1-range shoal-8-ranges)

python3 - "$OUT" "${SYSTEMS[@]}" <<'EOF' | tee "$OUT/ranges.md"
import json, sys
from pathlib import Path
out, systems = Path(sys.argv[1]), sys.argv[2:]
rows = {system: [json.loads(line) for line in (out / f"{system}.jsonl").read_text().splitlines() if line.strip()] for system in systems}
labels = [row["label"] for row in rows[systems[0]]]
print("| workload, 64 clients | " + " | ".join(f"{s} ops/s (p99 ms)" for s in systems) + " |")
print("|---|" + "---:|" * len(systems))
for i, label in enumerate(labels):
    cells = []
    for system in systems:
        row = rows[system][i]
        errors = f", {row['errors']} errors" if row["errors"] else ""
        cells.append(f"{row['ops_per_second']:,.0f} ({row['latency_ms']['p99']:.1f}{errors})")
    print(f"| {label} | " + " | ".join(cells) + " |")
EOF
