#!/usr/bin/env bash
# What a big compaction does to writes: loads HISTORY versions (default 1 million) into a
# 3-member cluster, then runs puts at 16 clients for DURATION seconds and compacts all of
# that history AT seconds into the run. Reports put throughput, p99 and max latency, and
# the leader changes seen during the run, for Shoal and (SYSTEMS="shoal etcd") etcd.
#
#   bench/compaction-stall.sh
#   HISTORY=200000 DURATION=20 SYSTEMS="shoal etcd" bench/compaction-stall.sh
#
# Everything it starts is stopped when it exits, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

HISTORY=${HISTORY:-1000000}
DURATION=${DURATION:-30}
AT=${AT:-5}
SYSTEMS=${SYSTEMS:-shoal}
BASE_PORT=${BASE_PORT:-43379}
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# SHOAL=path/to/shoal measures another build (e.g. before a change).
if [ -z "${SHOAL:-}" ]; then
  cargo build --release -q
  SHOAL=target/release/shoal
fi
if [[ " $SYSTEMS " == *" etcd "* ]] && ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd (Debian package etcd-server)"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server
fi
command -v etcdctl >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-client; }

# name client-port peer-port metrics-port
MEMBERS=("m1 $BASE_PORT $((BASE_PORT + 1)) $((BASE_PORT + 2))"
  "m2 $((BASE_PORT + 10)) $((BASE_PORT + 11)) $((BASE_PORT + 12))"
  "m3 $((BASE_PORT + 20)) $((BASE_PORT + 21)) $((BASE_PORT + 22))")
CLUSTER=""
ENDPOINTS=""
METRICS=()
for member in "${MEMBERS[@]}"; do
  read -r name client peer metrics <<<"$member"
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

leader_changes() {
  local total=0
  for url in "${METRICS[@]}"; do
    local seen
    seen=$(curl -s "$url/metrics" | awk '/^etcd_server_leader_changes_seen_total/ {print $2}')
    total=$((total + ${seen:-0}))
  done
  echo "$total"
}

measure() {
  local system=$1
  echo "  $system: loading $HISTORY versions" >&2
  "$SHOAL" bench --endpoints "$ENDPOINTS" --workload put --clients 64 --connections 8 --key-space 10000 \
    --value-size 256 --prefix history/ --total "$HISTORY" --warmup 0 --json >/dev/null 2>&1
  local revision
  revision=$(etcdctl --endpoints="$ENDPOINTS" endpoint status -w json |
    python3 -c 'import json,sys; print(max(s["Status"]["header"]["revision"] for s in json.load(sys.stdin)))')
  local before
  before=$(leader_changes)
  echo "  $system: puts for ${DURATION}s, compacting to $revision at ${AT}s" >&2
  "$SHOAL" bench --endpoints "$ENDPOINTS" --workload put --clients 16 --connections 4 --warmup 0 \
    --duration "$DURATION" --value-size 256 --prefix bench/ --json >"$WORK/$system.json" 2>/dev/null &
  local bench=$!
  sleep "$AT"
  local started ended
  started=$(date +%s.%N)
  etcdctl --endpoints="$ENDPOINTS" --command-timeout=600s compact "$revision" --physical >/dev/null
  ended=$(date +%s.%N)
  wait "$bench"
  local after
  after=$(leader_changes)
  python3 - "$system" "$WORK/$system.json" "$((after - before))" "$(echo "$ended - $started" | bc)" <<'EOF'
import json, sys
system, path, changes, seconds = sys.argv[1:]
r = json.load(open(path))
l = r["latency_ms"]
print(f"| {system} | {r['ops_per_second']:.0f} | {l['p50']:.1f} | {l['p99']:.1f} | {l['max']:.0f} | {changes} | {float(seconds):.1f} |")
EOF
}

echo "| system | puts/s | p50 ms | p99 ms | max ms | leader changes | compaction s |"
echo "|---|---|---|---|---|---|---|"
for system in $SYSTEMS; do
  METRICS=()
  PIDS=()
  for member in "${MEMBERS[@]}"; do
    read -r name client peer metrics <<<"$member"
    if [ "$system" = etcd ]; then
      etcd --name "$name" --data-dir "$WORK/etcd-$name" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$CLUSTER" --initial-cluster-token bench --initial-cluster-state new \
        --quota-backend-bytes 8589934592 --log-level error >"$WORK/etcd-$name.log" 2>&1 &
      METRICS+=("http://127.0.0.1:$client")
    else
      "$SHOAL" server --name "$name" --data-dir "$WORK/shoal-$name" \
        --listen-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
        --listen-metrics-urls "http://127.0.0.1:$metrics" --initial-cluster "$CLUSTER" \
        --initial-cluster-token bench >"$WORK/shoal-$name.log" 2>&1 &
      METRICS+=("http://127.0.0.1:$metrics")
    fi
    PIDS+=($!)
  done
  wait_healthy
  measure "$system"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${PIDS[@]}" 2>/dev/null || true
done
