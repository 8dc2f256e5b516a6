#!/bin/bash
# torch.compile vs eager with vit_hf's eager module timed inside the same interleaved rounds as the compiled
# candidates (`vit_hf@eager` rows), the cases of run_quiet4.sh's forward_compiled step; overwrites forward_compiled.json.
cd "$(dirname "$0")/.." || exit 1
source bench/quiet_lib.sh
wait_quiet
start_gate gate6.txt
step forward_compiled 1800 $PY -m bench.forward --compile --freezing --batches 8 \
  --compile-cases S/16-b8-fp32,S/16-b8-bf16-autocast,B/16-b8-fp32,B/16-b8-bf16-autocast \
  --cases S/16-b8-fp32,S/16-b8-bf16-autocast,B/16-b8-fp32,B/16-b8-bf16-autocast \
  --candidates vit_hf,timm,hf_sdpa --rounds 6 --out forward_compiled
