#!/bin/bash
# Confirmation of run_quiet4.sh's batch-1/8 eager forward cases (its forward step had the widest spreads, 17-48 %):
# the same cases with 8 rounds; written to results/forward/confirm_b1_b8.json, which bench.report prefers (newest
# file wins per case). Same rules: 2 threads, quiet-machine wait, bench.gate.
cd "$(dirname "$0")/.." || exit 1
PY=.venv/bin/python
export BENCH_THREADS=${BENCH_THREADS:-2}
L=bench/results/logs
while :; do
  l1=$(cut -d' ' -f1 /proc/loadavg)
  if awk "BEGIN{exit !($l1 < 1.3)}" && ! pgrep -f vit_hf.train >/dev/null && ! pgrep -x make >/dev/null; then break; fi
  echo "$(date +%T) waiting: load $l1"; sleep 15
done
$PY -m bench.gate $$ --log $L/gate5.txt &
GATE=$!
trap 'kill $GATE 2>/dev/null' EXIT
echo "$(date +%T) START forward_confirm load $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 1500 $PY -m bench.forward --batches 1,8 --rounds 8 --out forward/confirm_b1_b8 > $L/forward_confirm_b1_b8.txt 2>&1
echo "$(date +%T) END forward_confirm rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)"
