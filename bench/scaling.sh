#!/usr/bin/env bash
# What one operation costs each node: CPU seconds and fsyncs per operation, per node,
# on a 3-node Shoal cluster, with one data range and with the benchmark's keys cut into
# 8 ranges (leaders spread over the nodes). docs/scaling.md projects throughput for
# larger clusters from these figures.
#
#   bench/scaling.sh
#   DURATION=20 OUT=/tmp/scaling bench/scaling.sh
#
# For each workload it reads every node's CPU time (/proc/PID/stat, user + system) and
# fsync count (etcd_disk_wal_fsync_duration_seconds_count on /metrics) before and after
# the run, and divides by the operations the load generator completed. The load
# generator runs on the same machine; its own CPU is not counted. Writes
# $OUT/scaling.md and $OUT/scaling.json. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
OUT=${OUT:-target/bench-scaling}
BASE_PORT=${BASE_PORT:-44379}
KEY_SPACE=10000
RANGES=8
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

cargo build --release -q
SHOAL=target/release/shoal

NAMES=(m1 m2 m3)
CLUSTER=""
ENDPOINTS=""
for i in 0 1 2; do
  CLUSTER+="${CLUSTER:+,}${NAMES[$i]}=http://127.0.0.1:$((BASE_PORT + 10 * i + 1))"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:$((BASE_PORT + 10 * i))"
done

SPLIT_KEYS=""
for part in $(seq 1 $((RANGES - 1))); do
  SPLIT_KEYS+="${SPLIT_KEYS:+,}$(printf 'bench/%026d' $((part * KEY_SPACE / RANGES)))"
done

# sample: one JSON object per node with cpu seconds and fsync count.
sample() {
  python3 - "${PIDS[@]}" <<'EOF'
import json, os, sys, urllib.request
ticks = os.sysconf("SC_CLK_TCK")
nodes = []
for i, pid in enumerate(sys.argv[1:]):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    port = int(os.environ["BASE_PORT"]) + 10 * i + 2
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    fsyncs = sum(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("etcd_disk_wal_fsync_duration_seconds_count"))
    leaders = sum(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("shoal_range_leaders"))
    nodes.append({"cpu": cpu, "fsyncs": fsyncs, "leaders": leaders})
print(json.dumps(nodes))
EOF
}
export BASE_PORT

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

# run_setup LABEL [server args...]
run_setup() {
  local label=$1
  shift
  echo "== $label" >&2
  for i in 0 1 2; do
    "$SHOAL" server --name "${NAMES[$i]}" --data-dir "$WORK/$label-${NAMES[$i]}" \
      --listen-client-urls "http://127.0.0.1:$((BASE_PORT + 10 * i))" \
      --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 * i + 1))" \
      --listen-metrics-urls "http://127.0.0.1:$((BASE_PORT + 10 * i + 2))" \
      --initial-cluster "$CLUSTER" --initial-cluster-token scaling "$@" \
      >"$WORK/$label-${NAMES[$i]}.log" 2>&1 &
    PIDS+=($!)
  done
  wait_healthy
  # Leaders spread within a few seconds of the start (one handover per node every 2 s).
  sleep 10
  local workloads=("put|--workload put" "linearizable get|--workload get --preload" "txn of 2 keys|--workload txn")
  for entry in "${workloads[@]}"; do
    local name=${entry%%|*} args=${entry#*|}
    # Preloading is not part of the measured window: do it first.
    if [[ $args == *--preload* ]]; then
      "$SHOAL" bench --endpoints "$ENDPOINTS" --total 1 --clients 1 --key-space "$KEY_SPACE" \
        --value-size 256 --prefix "bench/" --workload get --preload >/dev/null 2>&1
      args=${args/--preload/}
    fi
    local before after result
    before=$(sample)
    # shellcheck disable=SC2086
    result=$("$SHOAL" bench --endpoints "$ENDPOINTS" --duration "$DURATION" --warmup 0 \
      --clients 64 --connections 8 --key-space "$KEY_SPACE" --value-size 256 --prefix "bench/" \
      $args --json 2>/dev/null)
    after=$(sample)
    python3 -c 'import json,sys; print(json.dumps({"setup": sys.argv[1], "workload": sys.argv[2], "bench": json.loads(sys.argv[3]), "before": json.loads(sys.argv[4]), "after": json.loads(sys.argv[5])}))' \
      "$label" "$name" "$result" "$before" "$after" >>"$OUT/scaling.jsonl"
  done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
}

: >"$OUT/scaling.jsonl"
run_setup "1 range"
run_setup "8 ranges" --experimental-initial-split-keys "$SPLIT_KEYS"

python3 - "$OUT" <<'EOF' | tee "$OUT/scaling.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "scaling.jsonl").read_text().splitlines() if line.strip()]
print("| setup | workload | ops/s | CPU ms/op, node 1 / 2 / 3 (leaders) | CPU ms/op, cluster | fsyncs/op, node 1 / 2 / 3 |")
print("|---|---|---:|---|---:|---|")
summary = []
for row in rows:
    ops = row["bench"]["operations"]
    cpu = [(a["cpu"] - b["cpu"]) * 1000 / ops for a, b in zip(row["after"], row["before"])]
    fs = [(a["fsyncs"] - b["fsyncs"]) / ops for a, b in zip(row["after"], row["before"])]
    leaders = [int(a["leaders"]) for a in row["after"]]
    print(f"| {row['setup']} | {row['workload']} | {row['bench']['ops_per_second']:,.0f} | "
          + " / ".join(f"{c:.3f} ({l})" for c, l in zip(cpu, leaders)) + f" | {sum(cpu):.3f} | "
          + " / ".join(f"{f:.3f}" for f in fs) + " |")
    summary.append({"setup": row["setup"], "workload": row["workload"], "ops_per_second": row["bench"]["ops_per_second"],
                    "cpu_ms_per_op": cpu, "fsyncs_per_op": fs, "leaders": leaders})
(out / "scaling.json").write_text(json.dumps(summary, indent=1))
EOF
