#!/bin/bash
# Continuation of run_quiet.sh (same machine, same session): re-runs the S/16 batch-8 bf16 forward cases, whose
# first run had no clean round (another job ran during all of them), together with the B/16 batch-8 bf16 cases and
# a vit_hf-with-eager-attention variant (a candidate fix, not a peer); then the op profile of the batch-1 bf16 gap,
# and the lower-priority steps of run_quiet.sh (which was stopped after `convert` to make room for this).
# Same gate: the benchmark pauses while other processes use > 0.3 cores.
cd "$(dirname "$0")/.." || exit 1
source bench/quiet_lib.sh
$PY -m bench.gate $$ --log $L/gate.txt &
mkdir -p bench/results/forward
step forward_rerun_b8_bf16 300 $PY -m bench.forward --batches 8 --cases S/16-b8-bf16,B/16-b8-bf16 \
  --candidates vit_hf,timm,hf_sdpa,hf_eager,vit_hf_eager --out forward/rerun_b8_bf16
step profile_S16_b1_bf16 120 $PY -m bench.profile_case --size S/16 --batch 1 --precision bf16-autocast \
  --candidates vit_hf,timm --calls 10
step profile_B16_b8_bf16_train 150 $PY -m bench.profile_case --size B/16 --batch 8 --precision bf16-autocast \
  --candidates vit_hf,timm --calls 2 --train
step train_loop 300 $PY -m bench.train_loop --sizes S/16 --steps 4 --rounds 2
step forward_b64 300 $PY -m bench.forward --batches 64 --rounds 2 --cases S/16-b64 --out forward_b64
$PY -m bench.report > bench/results/tables.md
$PY -m bench.report --summary > bench/results/summary.md
$PY -m bench.plot
