"""DDP vs FSDP2 training step: time and peak memory per process, 2 processes over gloo (CPU), as vit_hf.train does it.

    python -m bench train_fsdp [--quick] [--sizes S/16] [--batch 8] [--steps 3] [--rounds 2]

Each (round, mode) is a fresh pair of spawned processes (fresh address spaces, so VmHWM is that run's own) that build
the same vit_hf model (seed 0), wrap it as the trainer does (DDP: torch's DistributedDataParallel, which accelerate
uses; FSDP: `vit_hf.train.fsdp.shard`, fully_shard per block then the root, and its DTensor-aware clip), then time
1 warm-up + `--steps` steps of forward + cross-entropy + backward + clip + AdamW. Reported per mode: the step time
(median over steps of the slower rank), the peak RSS of the larger process, and the training state each rank holds
(parameters + AdamW moments, counted from the tensors: allocator-independent); the FSDP row carries fsdp/ddp ratios.
Rounds alternate the order (DDP first, then FSDP first). Children run with glibc's MALLOC_MMAP_THRESHOLD_=131072, as
bench.train_memory does, so the RSS follows the live tensors. `--quick`: the toy size, 1 round, 1 step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import QUICK_SIZE, environment, images, markdown, maxrss_mib, rss_mib, save, vit_hf_config

MODES = ("ddp", "fsdp")
WORLD = 2
COLUMNS = ["case", "mode", "step_s", "peak_rss_mib", "state_mib", "rss_before_mib", "step_ratio", "peak_ratio",
           "state_ratio"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrap(mode: str, model: torch.nn.Module):
    """The model as the trainer trains it, and its gradient clip."""
    from torch.nn.parallel import DistributedDataParallel

    from vit_hf.train import fsdp

    if mode == "ddp":
        return DistributedDataParallel(model), lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    rank = torch.distributed.get_rank()
    fsdp.shard(model, SimpleNamespace(device=torch.device("cpu"), num_processes=WORLD, mixed_precision="no",
                                      is_main_process=rank == 0))
    return model, lambda m: fsdp.clip_grad_norm_(m, 1.0)


def state_mib(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Parameters + optimizer state this rank holds (local shards for DTensors)."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    tensors = [local(p) for p in model.parameters()]
    tensors += [local(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def worker(rank: int, mode: str, size: str, batch: int, steps: int, port: int, out: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from vit_hf import VitHfForImageClassification

    torch.set_num_threads(1)  # 2 processes on a shared 2-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model, clip = wrap(mode, VitHfForImageClassification(vit_hf_config(size)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = images(size, batch, seed=rank), torch.arange(batch) % 1000
    rss_before, times = rss_mib(), []
    for _ in range(1 + steps):
        dist.barrier()
        start = time.perf_counter()
        F.cross_entropy(model(pixel_values=x).logits, y).backward()
        clip(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    result = {"times": times[1:], "peak_rss_mib": maxrss_mib(), "rss_before_mib": rss_before,
              "state_mib": state_mib(model, optimizer)}
    Path(out, f"{mode}_{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(mode: str, size: str, batch: int, steps: int) -> dict:
    """One fresh pair of processes; the job's numbers (the slower / larger rank)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(worker, args=(mode, size, batch, steps, _free_port(), out), nprocs=WORLD,
                           start_method="spawn")
        ranks = [json.loads(Path(out, f"{mode}_{r}.json").read_text()) for r in range(WORLD)]
    step_times = [max(t) for t in zip(*(r["times"] for r in ranks))]
    return {"step_s": statistics.median(step_times), "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
            "state_mib": max(r["state_mib"] for r in ranks),
            "rss_before_mib": max(r["rss_before_mib"] for r in ranks)}


def summarise(case: str, runs: dict[str, list[dict]]) -> list[dict]:
    """One row per mode (medians over rounds); the FSDP row carries its ratios to DDP (< 1: FSDP smaller/faster)."""
    rows = []
    for mode in MODES:
        row = {"case": case, "mode": mode, "rounds": len(runs[mode])}
        for key in ("step_s", "peak_rss_mib", "state_mib", "rss_before_mib"):
            row[key] = statistics.median(r[key] for r in runs[mode])
        rows.append(row)
    ddp, fsdp = rows
    for key, name in (("step_s", "step_ratio"), ("peak_rss_mib", "peak_ratio"), ("state_mib", "state_ratio")):
        fsdp[name] = fsdp[key] / ddp[key]
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the toy size, 1 round, 1 step (a smoke test)")
    ap.add_argument("--sizes", default="S/16")
    ap.add_argument("--batch", type=int, default=8, help="images per process per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process after 1 warm-up step")
    ap.add_argument("--rounds", type=int, default=2, help="fresh process pairs per mode (order alternates)")
    args = ap.parse_args(argv)
    sizes = [QUICK_SIZE] if args.quick else args.sizes.split(",")
    rounds, steps = (1, 1) if args.quick else (args.rounds, args.steps)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # inherited by the spawned children
    env, rows = environment("cpu"), []
    for size in sizes:
        case = f"{size}-b{args.batch}-fp32"
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for r in range(rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                runs[mode].append(measure(mode, size, args.batch, steps))
                print(f"{case} {mode} round {r}: {runs[mode][-1]}", flush=True)
        rows += summarise(case, runs)
    path = save("train_fsdp", {"rows": rows, "env": env, "world_size": WORLD, "steps": steps})
    print(markdown(rows, COLUMNS))
    print(f"results in {path.parent}")


if __name__ == "__main__":
    main()
