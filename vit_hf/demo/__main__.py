"""The main job (`make demo`): train a small ViT from scratch on real data, offline, and use the result.

1. Fashion-MNIST from Debian's `dataset-fashion-mnist` (`apt-get download`, no root), cached under `data/`;
   scikit-learn's bundled digits when apt is unavailable (the run says which one it used).
2. `accelerate launch --mixed_precision bf16 --num_processes 1 -m vit_hf.train ...` from scratch on the train split
   (fp32 on a CPU without native bf16),
   evaluated on the real test split (top-1 / top-5 / per-class accuracy, confusion matrix, curves).
3. The hub-ready output folder is reloaded in a fresh process through
   `pipeline("image-classification", model=out, trust_remote_code=True)`, which prints a few test predictions with
   their true labels.

The recipe is tuned for 2 CPU cores and a few minutes: patch 7 on 28x28 (16 tokens), width 128, depth 4, mean
pooling, AdamW 1e-3 with warmup and cosine, label smoothing, flips only (no crops: a 1-2 epoch run is underfitting,
not overfitting). One compute thread plus one data-loader worker: on a small shared machine, OpenMP threads that
wait on each other cost more than they give.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_ROOT = Path("data")
OUTPUT_DIR = Path("demo_out") / "vit_from_scratch"

RECIPES = {
    # data set -> training flags (model, schedule); the rest is COMMON
    "fashion_mnist": [
        "--model_name_or_path", "tiny/7", "--image_size", "28", "--num_channels", "1",
        "--config_overrides", "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256,"
        "pooling=mean",
        "--num_train_epochs", "3", "--per_device_train_batch_size", "32", "--learning_rate", "1e-3",
        "--num_warmup_steps", "200",
    ],
    "sklearn_digits": [
        "--model_name_or_path", "tiny/4", "--image_size", "16", "--num_channels", "1",
        "--config_overrides", "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256,"
        "pooling=mean",
        "--num_train_epochs", "15", "--per_device_train_batch_size", "32", "--learning_rate", "1e-3",
        "--num_warmup_steps", "50",
    ],
}
COMMON = [
    "--weight_decay", "0.05", "--lr_scheduler_type", "cosine", "--label_smoothing", "0.1", "--max_grad_norm", "1.0",
    "--crop_pct", "1.0", "--train_crop_scale", "1.0", "1.0", "--train_hflip", "0.5", "--attn_implementation", "eager",
    "--per_device_eval_batch_size", "500", "--dataloader_num_workers", "1", "--logging_steps", "100", "--seed", "0",
]

PREDICT = r"""
import json, sys
from datasets import load_from_disk
from transformers import pipeline

data_dir, model_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
test = load_from_disk(data_dir)["test"]
names = test.features["label"].names
pipe = pipeline("image-classification", model=model_dir, trust_remote_code=True)
rows = []
for i in range(0, len(test), max(1, len(test) // n))[:n]:
    example = test[i]
    top = pipe(example["image"], top_k=1)[0]
    rows.append({"index": i, "true": names[example["label"]], "predicted": top["label"], "score": top["score"]})
print(json.dumps(rows))
"""


def prepare_data() -> tuple[str, Path]:
    from ..train.data import prepare_fashion_mnist, prepare_sklearn_digits

    try:
        return "fashion_mnist", prepare_fashion_mnist(DATA_ROOT)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        print(f"[demo] Fashion-MNIST unavailable ({err}); falling back to scikit-learn's digits", flush=True)
        return "sklearn_digits", prepare_sklearn_digits(DATA_ROOT)


def accelerate_cmd() -> list[str]:
    script = Path(sys.executable).parent / "accelerate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def mixed_precision() -> str:
    """bf16 where the CPU computes it natively (AVX512-BF16 / AMX: about 2x fp32's matmul throughput); elsewhere
    fp32, because emulated bf16 matmuls measured 20-50x slower than fp32 on an AVX2-only machine."""
    from ..train.loop import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "no"


def main() -> None:
    start = time.perf_counter()
    name, data_dir = prepare_data()
    prep_seconds = time.perf_counter() - start
    print(f"[demo] data: {name} at {data_dir} ({prep_seconds:.0f} s)", flush=True)

    if OUTPUT_DIR.exists():
        shutil.rmtree(OUTPUT_DIR)
    threads = str(max(1, (os.cpu_count() or 2) - 1))
    env = dict(os.environ, OMP_NUM_THREADS=threads, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_UPDATE_DOWNLOAD_COUNTS="0", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    cmd = [
        *accelerate_cmd(), "launch", "--mixed_precision", mixed_precision(), "--num_processes", "1",
        "--num_machines", "1", "--dynamo_backend", "no", "-m", "vit_hf.train", "--dataset_name", str(data_dir),
        "--output_dir", str(OUTPUT_DIR), *RECIPES[name], *COMMON,
    ]
    print("[demo] " + " ".join(cmd), flush=True)
    train_start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    train_seconds = time.perf_counter() - train_start
    results = json.loads((OUTPUT_DIR / "all_results.json").read_text())

    # A fresh interpreter, from a temp dir: the folder must carry its own code (trust_remote_code).
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", PREDICT, str(data_dir.resolve()), str(OUTPUT_DIR.resolve()), "8"],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        )
    if proc.returncode != 0:
        raise SystemExit(f"[demo] reloading through pipeline failed:\n{proc.stderr[-4000:]}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])

    print("\n[demo] predictions of the reloaded pipeline on test images:")
    for row in rows:
        mark = "ok " if row["true"] == row["predicted"] else "MISS"
        print(f"  {mark} #{row['index']:>5}  true: {row['true']:<12} predicted: {row['predicted']:<12} "
              f"({row['score']:.2f})")
    print(f"\n[demo] data set: {name} ({results['train_samples']} train images, {results['eval_samples']} test images)")
    print(f"[demo] test accuracy: top-1 {results['eval_accuracy']:.2%}, top-5 {results['eval_top5_accuracy']:.2%}, "
          f"loss {results['eval_loss']:.4f}, mixed precision {results['mixed_precision']}")
    print(f"[demo] training throughput {results['train_images_per_second']:.0f} images/s; skipped images: "
          f"{results['skipped_images']}")
    print(f"[demo] wall time: {time.perf_counter() - start:.0f} s total (data {prep_seconds:.0f} s, "
          f"train+eval+save {train_seconds:.0f} s); output: {OUTPUT_DIR}")


if __name__ == "__main__":
    main()
