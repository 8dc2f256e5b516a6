# Sourced by bench/run_quiet*.sh (after `cd` to the repository root): the pieces every sequence shares.
PY=.venv/bin/python
export BENCH_THREADS=${BENCH_THREADS:-2}
L=bench/results/logs
mkdir -p $L

wait_quiet() {  # until the 1-minute load average is < 1.3 and no training / make job runs
  local l1
  while :; do
    l1=$(cut -d' ' -f1 /proc/loadavg)
    if awk "BEGIN{exit !($l1 < 1.3)}" && ! pgrep -f vit_hf.train >/dev/null && ! pgrep -x make >/dev/null; then
      return
    fi
    echo "$(date +%T) waiting: load $l1"; sleep 15
  done
}

step() {  # step NAME TIMEOUT_S CMD...: one time-boxed step, its output in $L/NAME.txt, start/end/load on stdout
  local name=$1 to=$2; shift 2
  echo "$(date +%T) START $name (timeout ${to}s) load $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout "$to" "$@" > "$L/$name.txt" 2>&1
  echo "$(date +%T) END $name rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)"
}

start_gate() {  # start_gate LOGNAME: pause this sequence while others use the CPU (bench/gate.py), stopped on exit
  $PY -m bench.gate $$ --log "$L/$1" &
  GATE=$!
  trap 'kill $GATE ${SAMPLER:-} 2>/dev/null' EXIT
}
