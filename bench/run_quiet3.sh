#!/bin/bash
# Confirmation runs for the two gaps left by run_quiet.sh / run_quiet2.sh (more rounds, same gate, 2 threads):
# B/16 batch-8 bf16 training step (vit_hf vs timm) and B/16 batch-8 bf16-weights forward (+ vit_hf eager attention).
cd "$(dirname "$0")/.." || exit 1
PY=.venv/bin/python
export BENCH_THREADS=${BENCH_THREADS:-2}
L=bench/results/logs
$PY -m bench.gate $$ --log $L/gate.txt &
echo "$(date +%T) START confirm load $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 200 $PY -m bench.train_step_inproc --sizes B/16 --batch 8 --cases B/16-b8-bf16 --rounds 8 \
  --candidates vit_hf,timm --out train_step_inproc_confirm > $L/train_step_inproc_confirm.txt 2>&1
timeout 200 $PY -m bench.forward --batches 8 --cases B/16-b8-bf16-weights --rounds 8 \
  --candidates vit_hf,timm,hf_sdpa,hf_eager,vit_hf_eager --out forward_confirm > $L/forward_confirm.txt 2>&1
echo "$(date +%T) END confirm load $(cut -d' ' -f1-3 /proc/loadavg)"
