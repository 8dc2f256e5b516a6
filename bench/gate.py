"""Pause the benchmark while other processes use the CPU (a 2-core machine shared with other jobs).

    .venv/bin/python -m bench.gate ROOT_PID [--threshold 0.3] [--log FILE]

Every 0.5 s: CPU time used by processes that are NOT descendants of ROOT_PID (nor this gate). When it exceeds
`--threshold` cores, SIGSTOP every python process under ROOT_PID; SIGCONT once others have stayed below the threshold
for 2 s. The timed call that was running when the pause began is recorded as unclean (its `foreign_load` is high:
the others ran while it was stopped), so the medians over clean rounds exclude it. Exits when ROOT_PID exits.
"""

from __future__ import annotations

import argparse
import os
import signal
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
    while os.path.exists(f"/proc/{args.root}"):
        time.sleep(0.5)
        snap, t = snapshot(), time.monotonic()
        mine = descendants(args.root, snap) | {os.getpid()}
        other = sum(v[1] - prev[p][1] for p, v in snap.items() if p not in mine and p in prev and v[1] >= prev[p][1])
        cores = other / TCK / (t - t_prev)
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
            for p in stopped:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            stopped = set()
            if log:
                print(f"{time.strftime('%T')} resume", file=log, flush=True)
    for p in stopped:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    main()
