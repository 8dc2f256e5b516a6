"""`from_pretrained` load time and peak memory, ViT-B/16: vit_hf vs transformers ViT, fresh subprocess each.

    .venv/bin/python -m bench.load [--rounds N] [--size B/16]

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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import add_ratios, environment, markdown, maxrss_mib, rss_mib, run_child, save

CANDS = ("vit_hf", "vit_hf_remote", "hf_vit")


def child(name: str, folder: str) -> dict:
    import torch  # noqa: F401
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
    rss0 = rss_mib()
    t = time.perf_counter()
    model = cls.from_pretrained(folder, **kw)
    dt = time.perf_counter() - t
    return {
        "load_s": dt,
        "maxrss_mib": maxrss_mib(),
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
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="B/16")
    ap.add_argument("--out", default="load")
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_HOME"] = str(Path(tmp) / "hf_home")  # remote-code module cache stays in the temp dir
        folders = write_folders(Path(tmp), args.size)
        size_mib = (Path(folders["vit_hf"]) / "model.safetensors").stat().st_size / 2**20
        res: dict[str, list[dict]] = {n: [] for n in CANDS}
        for r in range(args.rounds):
            for n in CANDS[r % len(CANDS) :] + CANDS[: r % len(CANDS)]:
                res[n].append(run_child(["-m", "bench.load", "--child", n, folders[n]]))
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
