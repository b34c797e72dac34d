#!/bin/bash
# Profile a 3-node Shoal playground under redis-benchmark SET (50 clients): perf on
# every server for 12 s; the tables land in /tmp/prof (top.txt, dso.txt).
# Needs: cargo build --release, perf, redis-tools.
set -u
BIN=${SHOAL_BIN:-$(dirname "$0")/../target/release/shoal}
DIR=/tmp/prof; rm -rf $DIR; mkdir -p $DIR
$BIN playground --data-dir $DIR --client-port-base 43379 --peer-port-base 43380 --metrics-port-base 49190 --redis-port-base 46479 > $DIR/pg.out 2>&1 &
PG=$!
trap 'kill $PG 2>/dev/null; wait $PG 2>/dev/null' EXIT
for i in $(seq 1 100); do redis-cli -p 46479 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
PIDS=$(pgrep -P $PG -d, shoal)
echo "servers: $PIDS"
redis-benchmark -p 46479 -c 50 -n ${REQUESTS:-250000} -t set -q > $DIR/bench.txt 2>&1 &
B=$!
sleep 3
perf record -F 499 -g -p $PIDS -o $DIR/perf.data -- sleep 12 > $DIR/perf.log 2>&1
wait $B
cat $DIR/bench.txt | tr '\r' '\n' | tail -2
perf report -i $DIR/perf.data --no-children --sort symbol -g none --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | grep "%" | head -45 > $DIR/top.txt
perf report -i $DIR/perf.data --no-children --sort comm,dso -g none --stdio 2>/dev/null | grep "%" | head -15 > $DIR/dso.txt
