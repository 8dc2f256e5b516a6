"""ONNX Runtime (fp32, int8) vs PyTorch eager (fp32, bf16 autocast): inference images/s of one vit_hf model, and what
int8 costs in accuracy on real test images.

    python -m bench onnx [--quick] [--sizes S/16,B/16] [--batches 1,8,64] [--cases S/16-b1,B/16-b8]
                         [--candidates torch_fp32,torch_bf16,ort_fp32,ort_int8] [--rounds N] [--bf16-max-batch N]
                         [--no-digits] [--accuracy-model DIR] [--out onnx]

Per size, the vit_hf classifier of bench.common (seeded timm weights, SDPA attention) is exported with
`python -m vit_hf.export`'s own code: dynamic batch, opset 18, and its `--quantize int8` (onnxruntime's dynamic
quantisation of the linear layers, 7-bit per-channel weights). Candidates, on the same input, in the same process,
rounds interleaved (bench.common.interleaved), each call repeated to ~0.4 s:
  torch_fp32   PyTorch eager, float32, under inference_mode (the baseline: vs_torch_fp32 = images/s / its images/s)
  torch_bf16   the same under torch.autocast("cpu", torch.bfloat16)
  ort_fp32     model.onnx in onnxruntime's CPU provider (intra-op threads = torch's, every graph optimisation)
  ort_int8     model_int8.onnx, same session options
Every row also has the logits' max abs difference and top-1 agreement with torch_fp32 on the case's input (random
weights and pixels: parity, not accuracy). bf16: a CPU without AVX512-BF16 / AMX emulates bf16 matmuls (measured
6x slower than fp32 at ViT-S/16 batch 1 on an AVX2-only EPYC, 20-50x in large GEMMs): the table's header and the
JSON (`env.native_bf16`) say which kind of CPU measured it.

The int8 accuracy cost (`digits-*` rows): a small vit_hf (the demo's digits architecture: patch 4 on 16x16 grey,
width 128, depth 4, mean pooling) trained here on scikit-learn's digits train split, saved, then exported with
`vit_hf.export.export_model(..., quantize="int8", verify=True)`, whose check gives the accuracy of PyTorch, ONNX
fp32 and ONNX int8 on the 360 real test images (and int8's top-1 agreement); the same four candidates are timed on
those 360 images in one batch. `--accuracy-model DIR` takes a trained digits folder instead (a model whose labels
are not the digits gives agreement only). `--quick`: the toy size, batch 1 and 2, 2 short rounds, a 2-epoch tiny
digits model: a smoke test of the code paths, not a timing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import QUICK_SIZE, build, environment, images, interleaved, markdown, parse_cases, save, selected
from bench.forward import CALL_S, calibrate
from vit_hf.cli import no_transformers_bars

CANDIDATES = ("torch_fp32", "torch_bf16", "ort_fp32", "ort_int8")
BASELINE = "torch_fp32"
DIGITS = [str(d) for d in range(10)]
# the demo's digits model (vit_hf.demo RECIPES["sklearn_digits"]); quick: the "test" preset's width
DIGITS_ARCH = {"full": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256),
               "quick": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)}
DIGITS_EPOCHS = {"full": 12, "quick": 2}
COLUMNS = ["case", "candidate", "img_s", "img_s_best", "ms_per_batch", "spread", "clean_rounds", "vs_torch_fp32",
           "max_abs_diff", "top1_agreement", "accuracy"]  # fmt: skip


def native_bf16() -> bool | None:
    from vit_hf.train.loop import cpu_has_native_bf16  # the project's one check (AVX512-BF16 / AMX via oneDNN)

    return cpu_has_native_bf16()


def bf16_note(native: bool | None) -> str:
    if native:
        return "this CPU computes bf16 natively (AVX512-BF16 / AMX)"
    return ("this CPU has NO native bf16 (no AVX512-BF16 / AMX): torch_bf16 rows are emulated bf16 matmuls, "
            "not what bf16 gives on a CPU that has it")


# ----------------------------------------------------------------------------------------------------------------------
# The candidates
# ----------------------------------------------------------------------------------------------------------------------


def export_pair(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """model.onnx (dynamic batch, the export's default opset) and model_int8.onnx, by vit_hf.export's own code."""
    from vit_hf.export import DEFAULT_OPSET
    from vit_hf.export.graph import export_onnx, quantize_int8
    from vit_hf.export.run import ONNX_FILES

    folder.mkdir(parents=True, exist_ok=True)
    paths = {p: folder / name for p, name in ONNX_FILES.items()}
    export_onnx(model, paths["fp32"], DEFAULT_OPSET, dynamic_batch=True, dynamic_size=False)
    quantize_int8(paths["fp32"], paths["int8"])
    return paths


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # as many as torch uses: equal footing
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def forwards(model: torch.nn.Module, paths: dict[str, Path], names: list[str]) -> dict[str, Callable]:
    """candidate -> (pixel_values -> float32 logits as numpy)."""

    def torch_call(bf16: bool) -> Callable:
        def call(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model(x).logits.float().numpy()

        return call

    def ort_call(session) -> Callable:
        def call(x: torch.Tensor) -> np.ndarray:
            return session.run(None, {"pixel_values": x.numpy()})[0]

        return call

    threads = torch.get_num_threads()
    made = {"torch_fp32": lambda: torch_call(False), "torch_bf16": lambda: torch_call(True),
            "ort_fp32": lambda: ort_call(ort_session(paths["fp32"], threads)),
            "ort_int8": lambda: ort_call(ort_session(paths["int8"], threads))}  # fmt: skip
    return {n: made[n]() for n in names}


def repeated(fn: Callable, x: torch.Tensor, reps: int) -> Callable[[], None]:
    def call() -> None:
        for _ in range(reps):
            fn(x)

    return call


def time_case(fns: dict[str, Callable], x: torch.Tensor, case: str, rounds: int, call_s: float) -> list[dict]:
    """Interleaved rounds of every candidate on `x`; each candidate's call repeated to ~call_s (the calibration is per
    candidate: an emulated-bf16 call may take 50x an int8 one). Parity columns against the baseline's logits."""
    reference = fns[BASELINE](x) if BASELINE in fns else None
    reps = {n: calibrate(lambda f=fn: f(x), call_s) for n, fn in fns.items()}
    timings = interleaved({n: repeated(fn, x, reps[n]) for n, fn in fns.items()}, warmup=1, rounds=rounds,
                          collect=call_s >= CALL_S)
    batch, rows = len(x), []
    for n, t in timings.items():
        row = {"case": case, "candidate": n, "batch": batch, "reps": reps[n], "img_s": batch * reps[n] / t.median,
               "img_s_best": batch * reps[n] / t.best, "ms_per_batch": 1000 * t.median / reps[n], "spread": t.spread,
               "rounds": len(t.times), "clean_rounds": t.n_clean, "foreign_load": max(t.foreign)}  # fmt: skip
        if reference is not None:
            logits = fns[n](x)
            row["max_abs_diff"] = float(np.abs(logits - reference).max())
            row["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        rows.append(row)
    base = next((r["img_s"] for r in rows if r["candidate"] == BASELINE), None)
    for r in rows:
        r["vs_torch_fp32"] = r["img_s"] / base if base else None
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# The accuracy cost on real images
# ----------------------------------------------------------------------------------------------------------------------


def train_digits_folder(folder: Path, mode: str, seed: int = 0) -> Path:
    """Train the digits model on the train split (AdamW, one-cycle, batch 64) and save it as a hub-ready folder."""
    from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
    from vit_hf.export.verify import digits_split

    config = VitHfConfig(image_size=16, patch_size=4, num_channels=1, pooling="mean", **DIGITS_ARCH[mode],
                         id2label=dict(enumerate(DIGITS)), label2id={d: i for i, d in enumerate(DIGITS)})
    processor = VitHfImageProcessor.from_model_config(config, crop_pct=1.0)
    images_, labels = digits_split("train")
    x, y = processor(images_, return_tensors="pt").pixel_values, torch.as_tensor(labels)
    torch.manual_seed(seed)
    model = VitHfForImageClassification(config)
    model.set_attn_implementation("eager")  # SDPA's CPU backward is slow at small sizes (README); same numbers
    epochs, lr = DIGITS_EPOCHS[mode], 3e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * -(-len(y) // 64),
                                                   pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=g).split(64):
            loss = model(x[batch], labels=y[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.set_attn_implementation("sdpa")
    with no_transformers_bars():  # one "Writing model shards" bar in the middle of the tables
        model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def digits_rows(args: argparse.Namespace, work: Path, mode: str, rounds: int, call_s: float) -> tuple[list, dict]:
    """Export + verify (vit_hf.export) of the digits model, then its four candidates timed on the test images."""
    from vit_hf.export import export_model
    from vit_hf.export.source import load_folder
    from vit_hf.export.verify import digits_split

    t0 = time.perf_counter()
    folder = Path(args.accuracy_model) if args.accuracy_model else train_digits_folder(work / "digits", mode)
    trained_s = time.perf_counter() - t0
    out = work / "digits_onnx"
    report = export_model(str(folder), out, dynamic_batch=True, quantize="int8", verify=True, log=lambda s: None)
    model, processor = load_folder(folder)
    x = processor(digits_split("test")[0], return_tensors="pt").pixel_values
    paths = {"fp32": out / "model.onnx", "int8": out / "model_int8.onnx"}
    names = args.candidates.split(",")
    rows = time_case(forwards(model, paths, names), x, f"digits-b{len(x)}", rounds, call_s)
    verified = report["digits"]["models"]  # pytorch (= torch_fp32), fp32, int8 as vit_hf.export --verify measured
    for r in rows:
        key = {"torch_fp32": "pytorch", "ort_fp32": "fp32", "ort_int8": "int8"}.get(r["candidate"])
        if key:
            r["accuracy"] = verified[key]["accuracy"]
    summary = {"model": "trained here" if not args.accuracy_model else str(folder), "train_s": trained_s,
               "parameters": sum(p.numel() for p in model.parameters()), "verify": report}
    return rows, summary


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def run_size(size: str, args: argparse.Namespace, work: Path, batches: tuple[int, ...], call_s: float,
             done: Callable[[list[dict]], None]) -> None:
    """Export one size, then time each selected batch; `done(rows)` after every case (a stopped run keeps them)."""
    filters = parse_cases(args.cases)
    cases = [b for b in batches if selected(f"{size}-b{b}", filters)]
    if not cases:
        return
    model = build("vit_hf", size)
    t0 = time.perf_counter()
    paths = export_pair(model, work / size.replace("/", ""))
    print(f"\n{size}: exported fp32 + int8 in {time.perf_counter() - t0:.0f} s", flush=True)
    fns = forwards(model, paths, args.candidates.split(","))
    for b in cases:
        t0 = time.perf_counter()
        rounds = args.rounds or (2 if args.quick else 5 if b == 1 else 3 if b == 8 else 2)
        skip_bf16 = args.bf16_max_batch is not None and b > args.bf16_max_batch
        case_fns = {n: f for n, f in fns.items() if not (skip_bf16 and n == "torch_bf16")}
        case_rows = time_case(case_fns, images(size, b), f"{size}-b{b}", rounds, call_s)
        print(f"\n## {size}-b{b}  ({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})"
              + (f"; torch_bf16 skipped (--bf16-max-batch {args.bf16_max_batch})" if skip_bf16 else ""))
        print(markdown(case_rows, COLUMNS[1:-1]), flush=True)
        done(case_rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the toy size, batch 1 and 2, 2 short rounds (smoke test)")
    ap.add_argument("--sizes", default="S/16,B/16")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,64; --quick: 1,2)")
    ap.add_argument("--cases", help="comma-separated substrings of case names, e.g. 'S/16-b1,B/16-b8'")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--bf16-max-batch", type=int, default=None, metavar="N",
                    help="time torch_bf16 only up to batch N (without native bf16, B/16 batch 8 takes minutes a call)")
    ap.add_argument("--no-digits", action="store_true", help="skip the digits accuracy rows")
    ap.add_argument("--accuracy-model", metavar="DIR", help="a trained digits vit_hf folder (default: train one)")
    ap.add_argument("--out", default="onnx")
    args = ap.parse_args(argv)
    unknown = set(args.candidates.split(",")) - set(CANDIDATES)
    if unknown:
        ap.error(f"unknown candidate(s) {', '.join(sorted(unknown))}: choose from {', '.join(CANDIDATES)}")
    from vit_hf.export.common import EXPORT_PACKAGES, VERIFY_PACKAGES, ExportError, require_packages

    try:
        require_packages({**EXPORT_PACKAGES, **VERIFY_PACKAGES}, "bench onnx")
    except ExportError as e:
        ap.error(str(e))
    import onnxruntime

    mode = "quick" if args.quick else "full"
    env = {**environment("cpu"), "onnxruntime": onnxruntime.__version__, "native_bf16": native_bf16()}
    print(f"{bf16_note(env['native_bf16'])}; {env['cpu']}, {env['threads']} thread(s), "
          f"load average {' '.join(f'{v:.2f}' for v in env['loadavg_start'])}", flush=True)
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else (1, 2) if args.quick else (1, 8, 64)
    sizes = [QUICK_SIZE] if args.quick else args.sizes.split(",")
    call_s = 0.02 if args.quick else CALL_S
    rows: list[dict] = []
    digits: dict = {}

    def done(case_rows: list[dict]) -> None:
        rows.extend(case_rows)
        save(args.out, {"env": env, "args": vars(args), "rows": rows, "partial": True})

    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        for size in sizes:
            run_size(size, args, Path(tmp), batches, call_s, done)
        if not args.no_digits:
            t0 = time.perf_counter()
            digit_rows, digits = digits_rows(args, Path(tmp), mode, args.rounds or (2 if args.quick else 3), call_s)
            print(f"\n## {digit_rows[0]['case']}: int8 accuracy cost on the 360 real digits test images "
                  f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})")
            print(markdown(digit_rows, COLUMNS[1:]), flush=True)
            rows += digit_rows
    env["loadavg_end"] = os.getloadavg()
    print(f"\n{bf16_note(env['native_bf16'])}; load average at start {env['loadavg_start'][0]:.2f}, "
          f"at end {env['loadavg_end'][0]:.2f}\n" + markdown(rows, COLUMNS))
    path = save(args.out, {"env": env, "args": vars(args), "rows": rows, "digits": digits})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
