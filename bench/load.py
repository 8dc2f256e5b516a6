"""`from_pretrained` load time and peak memory, ViT-B/16: vit_hf vs transformers ViT, fresh subprocess each.

    python -m bench load [--quick] [--device {cpu,cuda}] [--rounds N] [--size B/16]

Both folders are written once (safetensors, fp32, equal weights) to a temp dir. Each measurement is a fresh
process: import torch + transformers (+ the class), record RSS, then time `from_pretrained(folder)` and read
VmHWM (peak RSS of the process). Reported: load seconds (median over rounds), peak RSS, and peak minus the
pre-load RSS (= what loading costs: the model, plus any transient copies). Library imports (torch,
transformers.modeling_utils, the Auto classes) happen before the clock starts for every candidate; the
remote-code row therefore times only what remote code adds (copying the .py files to HF_MODULES_CACHE, import
checks, importing the copied module). Rounds interleave the candidates. Candidates:
  vit_hf           VitHfForImageClassification.from_pretrained(folder)  (class imported from the package)
  vit_hf_remote    AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True) (remote code)
  hf_vit           ViTForImageClassification.from_pretrained(folder)
With `--device cuda` every candidate loads with `device_map="cuda"` (weights go straight to the GPU) and the memory
columns are the CUDA allocator's (peak over the load, and its growth). `--quick`: the toy size, 1 round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import device as dev
from bench.common import QUICK_SIZE, add_ratios, environment, markdown, run_child, save

CANDS = ("vit_hf", "vit_hf_remote", "hf_vit")


def child(name: str, folder: str, device_name: str) -> dict:
    import torch
    import transformers
    import transformers.modeling_utils  # noqa: F401  (pay every import before the clock starts, for all candidates)
    from transformers import AutoModelForImageClassification, ViTForImageClassification  # noqa: F401

    if name == "vit_hf":
        from vit_hf import VitHfForImageClassification as cls
    elif name == "vit_hf_remote":
        cls = transformers.AutoModelForImageClassification
    else:
        cls = transformers.ViTForImageClassification
    kw = {"trust_remote_code": True} if name == "vit_hf_remote" else {}
    device = dev.resolve(device_name)
    if device.type == "cuda":
        kw["device_map"] = "cuda"
        torch.cuda.init()  # the CUDA context is not part of the load
    dev.reset_peak(device)
    rss0 = dev.current_mib(device)
    t = time.perf_counter()
    model = cls.from_pretrained(folder, **kw)
    dev.sync(device)
    dt = time.perf_counter() - t
    return {
        "load_s": dt,
        "maxrss_mib": dev.peak_mib(device),
        "rss_before_mib": rss0,
        "class": type(model).__name__,
        "attn": model.config._attn_implementation,
    }


def write_folders(root: Path, size: str) -> dict[str, str]:
    from bench.common import build_all

    models = build_all(["vit_hf", "hf_sdpa"], size)
    (root / "vit_hf").mkdir()
    models["vit_hf"].save_pretrained(root / "vit_hf")
    models["hf_sdpa"].save_pretrained(root / "hf_vit")
    return {"vit_hf": str(root / "vit_hf"), "vit_hf_remote": str(root / "vit_hf"), "hf_vit": str(root / "hf_vit")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, 1 round (smoke test)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="B/16")
    ap.add_argument("--out", default="load")
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return
    device = dev.resolve(args.device)
    if args.quick:
        args.size, args.rounds = QUICK_SIZE, 1
    env = environment(device)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_HOME"] = str(Path(tmp) / "hf_home")  # remote-code module cache stays in the temp dir
        folders = write_folders(Path(tmp), args.size)
        size_mib = (Path(folders["vit_hf"]) / "model.safetensors").stat().st_size / 2**20
        res: dict[str, list[dict]] = {n: [] for n in CANDS}
        for r in range(args.rounds):
            for n in CANDS[r % len(CANDS) :] + CANDS[: r % len(CANDS)]:
                res[n].append(run_child(["-m", "bench.load", "--child", n, folders[n], device.type]))
    rows = []
    for n, rs in res.items():
        t = [x["load_s"] for x in rs]
        rows.append(
            {
                "case": args.size,
                "candidate": n,
                "load_s": statistics.median(t),
                "load_s_best": min(t),
                "spread": (max(t) - min(t)) / statistics.median(t),
                "peak_rss_mib": statistics.median(x["maxrss_mib"] for x in rs),
                "load_delta_mib": statistics.median(x["maxrss_mib"] - x["rss_before_mib"] for x in rs),
                "attn": rs[0]["attn"],
            }
        )
    add_ratios(rows, "load_s", ("case",), higher_better=False, peers=("vit_hf", "hf_vit"))
    print(f"checkpoint: {size_mib:.0f} MiB safetensors fp32")
    print(
        markdown(
            rows,
            ["candidate", "load_s", "load_s_best", "spread", "vs_best_peer", "peak_rss_mib", "load_delta_mib", "attn"],
        )
    )
    env["loadavg_end"] = os.getloadavg()
    print(f"wrote {save(args.out, {'env': env, 'args': vars(args), 'checkpoint_mib': size_mib, 'rows': rows})}")


if __name__ == "__main__":
    main()
