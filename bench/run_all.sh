#!/bin/sh
# The runs behind bench/README.md. Two chains run side by side (2 cores, 1 torch thread each; see README "Noise").
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export BENCH_THREADS=${BENCH_THREADS:-1}
mkdir -p bench/results/logs
(
  $PY -m bench.forward --quick > bench/results/logs/forward.txt 2>&1
  $PY -m bench.proposals --cases overhead,S/16,B/16-b8-fp32,B/16-b8-bf16-weights,patch > bench/results/logs/proposals.txt 2>&1
  $PY -m bench.forward --compile --no-eager-cases --cases S/16-b8 --out forward_compiled > bench/results/logs/forward_compiled.txt 2>&1
) &
(
  $PY -m bench.preprocess > bench/results/logs/preprocess.txt 2>&1
  $PY -m bench.load > bench/results/logs/load.txt 2>&1
  $PY -m bench.convert > bench/results/logs/convert.txt 2>&1
  $PY -m bench.train_loop --steps 4 > bench/results/logs/train_loop.txt 2>&1
  $PY -m bench.train_step --rounds 1 > bench/results/logs/train_step.txt 2>&1
) &
wait
