"""Fine-tuning loop throughput and peak memory: `vit_hf.train` vs a plain timm loop.

    python -m bench train_loop [--quick] [--device {cpu,cuda}] [--sizes S/16,B/16] [--steps 6] [--rounds 2]

Same settings for both: image folder of JPEGs (2 classes, mixed sizes, made in a temp dir), batch (S/16: 16,
B/16: 8), `--steps` optimizer steps (one epoch), AdamW (lr 1e-4, wd 0.05, betas 0.9/0.999), linear LR decay, grad-norm
clip 1.0, bf16 autocast with fp32 weights, random-resized-crop + flip train transform, DataLoader num_workers=0 (2
cores: workers would steal compute from the model), equal starting weights (one timm init copied into a vit_hf
folder). Each run is a fresh process; rounds interleave the two. images/s = images / wall time of the training
epoch, first step and data loading included (that is how `vit_hf.train` reports `train_images_per_second`; the
timm loop is timed the same way). Peak memory = VmHWM of the process (CUDA: the allocator's peak).
On CUDA the timm loop moves model and batches to the GPU and autocasts there; vit_hf.train's accelerate picks the GPU
itself (and is kept on the CPU with ACCELERATE_USE_CPU=1 when `--device cpu` runs on a GPU machine).
`--quick`: the toy size (32 px), 2 steps, 1 round (a smoke test).
  vit_hf      `vit_hf.train.main([...])` in-process: accelerate, `--mixed_precision bf16`, the loss from the model's
              `labels` path, no eval of note (4 validation images), no checkpoints
  timm_loop   timm.create_model + timm.data.create_transform(is_training=True) + torchvision ImageFolder +
              torch.autocast("cpu", bfloat16) + nn.CrossEntropyLoss + AdamW + LambdaLR + clip_grad_norm_
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
from bench.common import QUICK_SIZE, SIZES, environment, markdown, run_child, save

BATCH = {"S/16": 16, "B/16": 8, QUICK_SIZE: 4}
CANDS = ("vit_hf", "timm_loop")


def make_folder(root: Path, n_per_class: int) -> None:
    from bench.preprocess import make_images

    for c in ("cat", "dog"):
        d = root / c
        d.mkdir(parents=True)
        for i, im in enumerate(make_images(n_per_class, seed=hash(c) % 1000)):
            im.save(d / f"{i}.jpg", quality=90)


def timm_loop(size: str, data: str, steps: int, batch: int, state: str, device) -> dict:
    import safetensors.torch
    import timm
    import torch
    import torchvision
    from timm.data import create_transform, resolve_data_config

    s = SIZES[size]
    torch.manual_seed(0)
    model = timm.create_model(s.timm_name, pretrained=False, num_classes=2, **s.timm_kwargs())
    model.load_state_dict(safetensors.torch.load_file(state))
    model.to(device)
    cfg = resolve_data_config({"input_size": (3, s.image, s.image)}, model=model)
    tf = create_transform(**cfg, is_training=True)
    ds = torchvision.datasets.ImageFolder(data, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    images, t0 = 0, time.perf_counter()
    for i, (x, y) in enumerate(dl):
        if i >= steps:
            break
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        images += x.shape[0]
    dev.sync(device)
    dt = time.perf_counter() - t0
    return {"img_s": images / dt, "seconds": dt, "images": images}


def vit_hf_run(size: str, data: str, steps: int, batch: int, folder: str, out: str) -> dict:
    from vit_hf.train import main as train_main

    res = train_main(
        [
            "--model_name_or_path", folder, "--train_dir", data, "--validation_dir", data + "_val",
            "--output_dir", out, "--max_train_steps", str(steps), "--per_device_train_batch_size", str(batch),
            "--per_device_eval_batch_size", str(batch), "--learning_rate", "1e-4", "--weight_decay", "0.05",
            "--mixed_precision", "bf16", "--seed", "0", "--report_to", "none",
        ]
    )  # fmt: skip
    return {"img_s": res["train_images_per_second"], "seconds": res["train_runtime"], "results": res}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, 2 steps, 1 round (smoke test)")
    ap.add_argument("--sizes", default="S/16,B/16")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="train_loop")
    args = ap.parse_args(argv)
    device = dev.resolve(args.device)
    if args.child:
        name, size, data, steps, work, out = args.child
        if name == "timm_loop":
            res = timm_loop(size, data, int(steps), BATCH[size], str(Path(work) / "timm.safetensors"), device)
        else:
            res = vit_hf_run(size, data, int(steps), BATCH[size], str(Path(work) / "vit_hf"), out)
        res["maxrss_mib"] = dev.peak_mib(device)
        print("RESULT " + json.dumps({k: v for k, v in res.items() if k != "results"}))
        return
    import safetensors.torch

    from bench.common import build, timm_model

    env = environment(device)
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # accelerate would take a GPU if there were one
    sizes, steps, rounds = ([QUICK_SIZE], 2, 1) if args.quick else (args.sizes.split(","), args.steps, args.rounds)
    rows = []
    peak_key = "peak_rss_mib" if device.type == "cpu" else "peak_mib"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_HOME"] = str(Path(tmp) / "hf_home")
        for size in sizes:
            work = Path(tmp) / size.replace("/", "_")
            data = work / "train"
            make_folder(data, BATCH[size] * steps // 2 + BATCH[size])
            make_folder(Path(str(data) + "_val"), 2)
            sd = timm_model(size, num_classes=2).state_dict()
            safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(work / "timm.safetensors"))
            from vit_hf import VitHfImageProcessor

            m = build("vit_hf", size, sd, num_classes=2)
            m.config.id2label, m.config.label2id = {0: "cat", 1: "dog"}, {"cat": 0, "dog": 1}
            m.save_pretrained(work / "vit_hf")
            processor = VitHfImageProcessor(size=SIZES[size].image, crop_pct=0.9, resample="bicubic")
            processor.save_pretrained(work / "vit_hf")
            res: dict[str, list[dict]] = {c: [] for c in CANDS}
            for r in range(rounds):
                for c in CANDS[r % 2 :] + CANDS[: r % 2]:
                    argv_c = ["-m", "bench.train_loop", "--device", device.type, "--child", c, size, str(data),
                              str(steps), str(work)]  # fmt: skip
                    res[c].append(run_child(argv_c + [str(work / f"out_{c}_{r}")], timeout=1800))
            case_rows = []
            for c, rs in res.items():
                ips = [x["img_s"] for x in rs]
                case_rows.append(
                    {
                        "case": f"{size}-b{BATCH[size]}-bf16-{steps}steps",
                        "candidate": c,
                        "img_s": statistics.median(ips),
                        "img_s_best": max(ips),
                        "spread": (max(ips) - min(ips)) / statistics.median(ips),
                        peak_key: statistics.median(x["maxrss_mib"] for x in rs),
                    }
                )
            best = case_rows[1]
            for r in case_rows:
                r["vs_timm"] = r["img_s"] / best["img_s"]
                r["mem_vs_timm"] = r[peak_key] / best[peak_key]
            print(markdown(case_rows, ["case", "candidate", "img_s", "img_s_best", "spread", "vs_timm", peak_key,
                                       "mem_vs_timm"]))  # fmt: skip
            rows += case_rows
    env["loadavg_end"] = os.getloadavg()
    print(
        markdown(rows, ["case", "candidate", "img_s", "img_s_best", "spread", "vs_timm", peak_key, "mem_vs_timm"])
    )
    print(f"wrote {save(args.out, {'env': env, 'args': vars(args), 'batch': BATCH, 'rows': rows})}")


if __name__ == "__main__":
    main()
