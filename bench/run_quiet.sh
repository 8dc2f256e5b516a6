#!/bin/bash
# Quiet-machine sequence behind bench/README.md's results: 2 torch threads (the machine's 2 cores), steps in priority
# order, each time-boxed, all of them inside BUDGET_S seconds (steps that would start past the budget are skipped).
# Waits until the 1-minute load average is < 1.3 and no `vit_hf.train` / `make` process runs. Logs (with the load
# average at the start and end of every step, and sampled every 15 s in loadavg.txt): bench/results/logs/.
cd "$(dirname "$0")/.." || exit 1
source bench/quiet_lib.sh
wait_quiet
( while :; do echo "$(date +%T) $(cat /proc/loadavg)"; sleep 15; done ) > $L/loadavg.txt &
SAMPLER=$!
trap 'kill $SAMPLER' EXIT
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-1800} ))
[ -n "$END_AT" ] && [ "$END_AT" -lt "$DEADLINE" ] && DEADLINE=$END_AT  # END_AT: epoch seconds, hard stop
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 to=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if [ $left -lt 60 ]; then echo "$(date +%T) SKIP $name (budget)"; return; fi
  [ "$to" -gt "$left" ] && to=$left
  echo "$(date +%T) START $name (timeout ${to}s) load $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout "$to" "$@" > "$L/$name.txt" 2>&1
  echo "$(date +%T) END $name rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)"
}
# 1. forward, batch 1 and 8, all precisions, 4 candidates, GEMM peak in the same run
step forward 540 $PY -m bench.forward --quick
# 2. training step: speed in-process interleaved (S/16: 3 candidates, B/16: vit_hf vs timm), memory fresh process
step train_step_inproc_S16 300 $PY -m bench.train_step_inproc --sizes S/16 --batch 8 --rounds 3
step train_step_inproc_B16 420 $PY -m bench.train_step_inproc --sizes B/16 --batch 8 --rounds 3 --candidates vit_hf,timm
step train_step_mem 300 $PY -m bench.train_step --sizes S/16,B/16 --batch 8 --rounds 1 --steps 0 --candidates vit_hf,timm
# 3. torch.compile (fullgraph=True), compile all candidates first, then time eager and compiled interleaved
step forward_compiled 420 $PY -m bench.forward --compile --batches 8 --cases S/16-b8-fp32,S/16-b8-bf16-autocast \
  --candidates vit_hf,timm,hf_sdpa --rounds 4 --out forward_compiled
# 4. preprocessing, load, conversion, fine-tuning loop
step preprocess 120 $PY -m bench.preprocess
step load 150 $PY -m bench.load --rounds 3
step convert 200 $PY -m bench.convert --rounds 1
step train_loop 300 $PY -m bench.train_loop --sizes S/16 --steps 4 --rounds 2
# batch 64 only if time remains
step forward_b64 400 $PY -m bench.forward --batches 64 --rounds 2 --cases S/16-b64 --out forward_b64
$PY -m bench.report > bench/results/tables.md
$PY -m bench.report --summary > bench/results/summary.md
$PY -m bench.plot
