#!/bin/bash
# Confirmation of run_quiet4.sh's batch-1/8 eager forward cases (its forward step had the widest spreads, 17-48 %):
# the same cases with 8 rounds; written to results/forward/confirm_b1_b8.json, which bench.report prefers (newest
# file wins per case). Same rules: 2 threads, quiet-machine wait, bench.gate.
cd "$(dirname "$0")/.." || exit 1
source bench/quiet_lib.sh
wait_quiet
start_gate gate5.txt
step forward_confirm_b1_b8 1500 $PY -m bench.forward --batches 1,8 --rounds 8 --out forward/confirm_b1_b8
