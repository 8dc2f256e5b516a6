#!/bin/sh
# The GPU comparison in one command: vit_hf vs timm vs transformers' ViT on one device, in one process (forward in
# every precision, SDPA kernels, training step, peak memory, torch.compile), written as one markdown table to
# bench/results/device_check_<device>.md. Options: --device cuda|cpu (default cuda), --quick (or BENCH_TINY=1: the
# tiny smoke-test config), --budget-s N. See bench/README.md.
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
case " $* " in
  *" --device"*) exec "$PY" -m bench device_check "$@" ;;
  *) exec "$PY" -m bench device_check --device cuda "$@" ;;
esac
