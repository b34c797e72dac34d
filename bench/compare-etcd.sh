#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd cluster and a 3-node Shoal cluster on this
# machine (loopback), both fsyncing on commit, driven in turn by `shoal bench` with the
# same workloads. Prints a table, writes results and a plot under $OUT.
#
#   bench/compare-etcd.sh                 # 10 s per workload
#   DURATION=30 OUT=/tmp/cmp bench/compare-etcd.sh
#
# Everything it starts is stopped when it exits, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
OUT=${OUT:-target/compare-etcd}
BASE_PORT=${BASE_PORT:-42379}
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

# name client-port peer-port
MEMBERS=("m1 $BASE_PORT $((BASE_PORT + 1))" "m2 $((BASE_PORT + 10)) $((BASE_PORT + 11))" "m3 $((BASE_PORT + 20)) $((BASE_PORT + 21))")
CLUSTER=""
ENDPOINTS=""
for member in "${MEMBERS[@]}"; do
  read -r name client peer <<<"$member"
  CLUSTER+="${CLUSTER:+,}$name=http://127.0.0.1:$peer"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:$client"
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

# Peak RSS (kB) and CPU seconds of a process, from /proc.
usage() {
  local pid=$1
  local rss
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  awk -v rss="$rss" -v hz="$(getconf CLK_TCK)" '{print rss, ($14 + $15) / hz}' "/proc/$pid/stat"
}

run_workloads() {
  local system=$1
  local results="$OUT/$system.jsonl"
  : >"$results"
  # label | shoal bench arguments
  local workloads=(
    "put, 1 client|--workload put --clients 1 --connections 1"
    "put, 16 clients|--workload put --clients 16 --connections 4"
    "put, 64 clients|--workload put --clients 64 --connections 8"
    "linearizable get, 64 clients|--workload get --clients 64 --connections 8 --preload"
    "serializable get, 64 clients|--workload sget --clients 64 --connections 8"
    "50/50 put/get, 64 clients|--workload put:1,get:1 --clients 64 --connections 8"
    "txn compare-and-swap, 16 clients|--workload cas --clients 16 --connections 4 --key-space 1000"
  )
  for entry in "${workloads[@]}"; do
    local label=${entry%%|*}
    local args=${entry#*|}
    echo "  $system: $label" >&2
    # shellcheck disable=SC2086
    "$SHOAL" bench --endpoints "$ENDPOINTS" --duration "$DURATION" --warmup "$WARMUP" \
      --value-size 256 --prefix "bench/" $args --json 2>/dev/null |
      python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; print(json.dumps(r))' "$label" >>"$results"
  done
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
ETCD_PIDS=("${PIDS[@]}")
wait_healthy
run_workloads etcd
: >"$OUT/etcd.usage"
for pid in "${ETCD_PIDS[@]}"; do usage "$pid" >>"$OUT/etcd.usage"; done
for pid in "${ETCD_PIDS[@]}"; do kill "$pid"; done
wait "${ETCD_PIDS[@]}" 2>/dev/null || true
PIDS=()

echo "== shoal $("$SHOAL" --version)"
for member in "${MEMBERS[@]}"; do
  read -r name client peer <<<"$member"
  "$SHOAL" server --name "$name" --data-dir "$WORK/shoal-$name" \
    --listen-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
    --listen-metrics-urls "" --initial-cluster "$CLUSTER" --initial-cluster-token bench \
    >"$WORK/shoal-$name.log" 2>&1 &
  PIDS+=($!)
done
SHOAL_PIDS=("${PIDS[@]}")
wait_healthy
run_workloads shoal
: >"$OUT/shoal.usage"
for pid in "${SHOAL_PIDS[@]}"; do usage "$pid" >>"$OUT/shoal.usage"; done

python3 bench/report.py "$OUT"
