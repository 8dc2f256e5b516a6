#!/bin/bash
# Second-session sequence (2026-11-25 16:40 UTC -): the issue-6 re-measurement after the processor backends, the
# in-round GEMM throughput, compile with freezing and the equal-footing memory method. Same rules as run_quiet.sh:
# 2 torch threads, waits for a quiet machine, bench.gate pauses the run while other processes use the CPU, every step
# time-boxed. Overwrites the result files bench.report reads; the previous run's files are in git history
# (commit e0f75f7) and quoted in bench/README.md where compared.
cd "$(dirname "$0")/.." || exit 1
source bench/quiet_lib.sh
wait_quiet
( while :; do echo "$(date +%T) $(cat /proc/loadavg)"; sleep 15; done ) > $L/loadavg.txt &
SAMPLER=$!
start_gate gate.txt
step preprocess 240 $PY -m bench.preprocess
step forward 900 $PY -m bench.forward --batches 1,8
step forward_b64 900 $PY -m bench.forward --batches 64 --rounds 2 --out forward_b64
step forward_compiled 1500 $PY -m bench.forward --compile --freezing --batches 8 \
  --compile-cases S/16-b8-fp32,S/16-b8-bf16-autocast,B/16-b8-fp32,B/16-b8-bf16-autocast \
  --cases S/16-b8-fp32,S/16-b8-bf16-autocast,B/16-b8-fp32,B/16-b8-bf16-autocast \
  --candidates vit_hf,timm,hf_sdpa --rounds 4 --out forward_compiled
step train_step_mem 900 $PY -m bench.train_step --sizes S/16,B/16 --batch 8 --rounds 1 --steps 0 \
  --candidates vit_hf,timm,hf_sdpa
step train_step_inproc_S16 400 $PY -m bench.train_step_inproc --sizes S/16 --batch 8 --rounds 3
step train_step_inproc_B16 600 $PY -m bench.train_step_inproc --sizes B/16 --batch 8 --rounds 3 --candidates vit_hf,timm
