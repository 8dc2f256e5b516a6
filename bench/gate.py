"""The quiet-machine gate: run a benchmark sequence only on a quiet machine, and pause it while others use the CPU.

The results in bench/README.md come from a 2-core VM shared with other jobs. `python -m bench all` (a full run)
uses the three parts of this module:
- `wait_quiet()`: start only once the 1-minute load average is below 1.3 and no training (`vit_hf.train`) or `make`
  process runs;
- `Gate`: a watcher process (`python -m bench.gate ROOT_PID`, below) that pauses the sequence while others use CPU;
- `run_step()`: every step a time-boxed subprocess, its output in logs/<step>.txt, its start / end time and the load
  average in the sequence log; `LoadSampler` records the load average every 15 s (logs/loadavg.txt).

The watcher, `python -m bench.gate ROOT_PID [--threshold 0.3] [--log FILE]`. Every 0.5 s: CPU time used by
processes that are NOT descendants of ROOT_PID (nor this gate). When it exceeds
`--threshold` cores, SIGSTOP every python process under ROOT_PID; SIGCONT once others have stayed below the threshold
for 2 s. The timed call that was running when the pause began is recorded as unclean (its `foreign_load` is high:
the others ran while it was stopped), so the medians over clean rounds exclude it. Exits when ROOT_PID exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TCK = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, utime + stime ticks, comm)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            s = (d / "stat").read_text()
        except OSError:
            continue
        comm = s[s.index("(") + 1 : s.rindex(")")]
        f = s.rsplit(")", 1)[1].split()
        out[int(d.name)] = (int(f[1]), int(f[11]) + int(f[12]), comm)
    return out


def descendants(root: int, snap: dict[int, tuple[int, int, str]]) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snap.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {root}, [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def others_ticks(prev: dict, snap: dict, mine: set[int]) -> int:
    """CPU ticks used between two snapshots by processes outside `mine` (those seen in both)."""
    return sum(v[1] - prev[p][1] for p, v in snap.items() if p not in mine and p in prev and v[1] >= prev[p][1])


def resume(stopped: set[int]) -> set[int]:
    for p in stopped:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return set()


def busy_jobs(snap: dict[int, tuple[int, int, str]], markers: tuple[str, ...] = ("vit_hf.train",)) -> list[int]:
    """Processes that make the machine unfit to start a sequence: a `make`, or a command line with a marker."""
    out = []
    for pid, (_, _, comm) in snap.items():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pid != os.getpid() and (comm == "make" or any(m in cmd for m in markers)):
            out.append(pid)
    return out


def wait_quiet(max_load: float = 1.3, poll_s: float = 15.0) -> None:
    """Block until the 1-minute load average is below `max_load` and no training / make job runs."""
    while True:
        load = os.getloadavg()[0]
        jobs = busy_jobs(snapshot())
        if load < max_load and not jobs:
            return
        print(f"{time.strftime('%T')} waiting: load {load:.2f}, jobs {jobs}", flush=True)
        time.sleep(poll_s)


class Gate:
    """The watcher below as a child process for as long as the `with` block runs (it pauses every python process
    under this one, this one included, while others use more than `threshold` cores)."""

    def __init__(self, log: Path, threshold: float = 0.3):
        self.argv = [sys.executable, "-m", "bench.gate", str(os.getpid()), "--threshold", str(threshold)]
        self.argv += ["--log", str(log)]

    def __enter__(self) -> Gate:
        self.proc = subprocess.Popen(self.argv, cwd=Path(__file__).resolve().parent.parent)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait()


class LoadSampler(threading.Thread):
    """Appends "HH:MM:SS <contents of /proc/loadavg>" to `path` every `every_s` seconds until stopped."""

    def __init__(self, path: Path, every_s: float = 15.0):
        super().__init__(daemon=True)
        self.path, self.every_s, self.done = path, every_s, threading.Event()

    def run(self) -> None:
        with open(self.path, "a") as f:
            while not self.done.is_set():
                print(time.strftime("%T"), Path("/proc/loadavg").read_text().strip(), file=f, flush=True)
                self.done.wait(self.every_s)


def load3() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_step(name: str, timeout_s: float, argv: list[str], logs: Path, env: dict | None = None) -> int:
    """One time-boxed step: `argv` with its output in logs/<name>.txt; start / end time and load on stdout."""
    print(f"{time.strftime('%T')} START {name} (timeout {timeout_s:.0f}s) load {load3()}", flush=True)
    with open(logs / f"{name}.txt", "w") as out:
        try:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124  # what timeout(1) returns
    print(f"{time.strftime('%T')} END {name} rc={rc} load {load3()}", flush=True)
    return rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=int)
    ap.add_argument("--threshold", type=float, default=0.3, help="cores used by others that trigger a pause")
    ap.add_argument("--log")
    args = ap.parse_args()
    log = open(args.log, "a") if args.log else None  # noqa: SIM115
    prev, t_prev = snapshot(), time.monotonic()
    stopped: set[int] = set()
    quiet_since = time.monotonic()
    # the watcher stops when its root exits, or when its parent (the Gate) terminates it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while os.path.exists(f"/proc/{args.root}"):
            time.sleep(0.5)
            snap, t = snapshot(), time.monotonic()
            mine = descendants(args.root, snap) | {os.getpid()}
            cores = others_ticks(prev, snap, mine) / TCK / (t - t_prev)
            prev, t_prev = snap, t
            if cores > args.threshold:
                quiet_since = t
                if not stopped:
                    stopped = {p for p in mine if p != os.getpid() and snap[p][2].startswith("python")}
                    for p in stopped:
                        os.kill(p, signal.SIGSTOP)
                    if log:
                        print(f"{time.strftime('%T')} pause: others use {cores:.2f} cores", file=log, flush=True)
            elif stopped and t - quiet_since > 2.0:
                stopped = resume(stopped)
                if log:
                    print(f"{time.strftime('%T')} resume", file=log, flush=True)
    finally:  # never leave the sequence stopped
        resume(stopped)


if __name__ == "__main__":
    main()
