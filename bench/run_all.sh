#!/bin/sh
# The earlier loaded-machine runs (1 torch thread each, several side by side); their results and logs are now in
# bench/results/loaded_runs/. The quiet-machine results in bench/README.md come from bench/run_quiet.sh (+ run_quiet2.sh).

set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export BENCH_THREADS=${BENCH_THREADS:-1}
L=bench/results/logs
mkdir -p $L
$PY -m bench.forward --quick > $L/forward.txt 2>&1
$PY -m bench.forward --compile --no-eager-cases --cases S/16-b8 --rounds 3 --out forward_compiled > $L/forward_compiled.txt 2>&1
$PY -m bench.proposals --cases overhead,S/16,B/16-b8-fp32,B/16-b8-bf16-weights,patch > $L/proposals.txt 2>&1
$PY -m bench.convert > $L/convert.txt 2>&1
$PY -m bench.train_loop --steps 4 > $L/train_loop.txt 2>&1
$PY -m bench.train_step --rounds 1 --steps 2 --cases S/16 > $L/train_step.txt 2>&1
$PY -m bench.preprocess > $L/preprocess.txt 2>&1
$PY -m bench.load > $L/load.txt 2>&1
$PY -m bench.report > bench/results/tables.md
$PY -m bench.plot
