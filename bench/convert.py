"""Checkpoint conversion time and peak memory for ViT-B/16 (timm -> vit_hf, Google npz -> vit_hf), fresh processes.

    python -m bench convert [--quick] [--rounds N] [--size B/16] [--device cpu]

Inputs (written once to a temp dir from one seeded timm model): `timm.safetensors` (timm state dict) and
`vit.npz` (vit_jax pre-Linen names, as in the original ViT-B_16.npz, float32). Each measurement is a fresh process:
imports, RSS recorded, then the timed work, then VmHWM (peak RSS). Candidates (rounds interleave them):
  timm_api       convert.timm.convert_timm_state_dict(load_torch_state_dict(src), num_heads=H)   (in memory)
  timm_cli       convert.timm.main([src, out, "--num-heads", H])        (load + convert + write the hub folder)
  npz_api        convert.google.convert_npz(np.load(src))                (in memory)
  npz_cli        convert.google.main([src, out])                         (load + convert + write the hub folder)
  tf_api         convert.transformers.convert_state + build_converted       (a transformers snapshot, in memory)
  tf_cli         python -m convert SNAPSHOT OUT                          (load + convert + write the hub folder)
Peers (what a user would otherwise do):
  hf_manual      safetensors.load_file + key rename + ViTForImageClassification(cfg).load_state_dict + save_pretrained
  timm_npz       timm's own npz loader: create_model(pretrained=False) + timm.models.vision_transformer._load_weights
  hf_load        ViTForImageClassification.from_pretrained(SNAPSHOT): maps the file and reads no weight until used,
                 so its peak is below one copy; hf_load_used adds one forward (every weight read once)
  hf_resave      from_pretrained(SNAPSHOT) + save_pretrained(OUT): the transformers way to a written folder
The transformers snapshot is `save_pretrained` of a ViTForImageClassification holding the same weights.
`copies` = peak RSS growth / the weights' size: 1.0 is one copy of the weights.
Conversion is file to file on the CPU: `--device cuda` is accepted (for `python -m bench all --device cuda`) and
measures the same CPU work. `--quick`: the toy size, 1 round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import device as dev
from bench.common import QUICK_SIZE, SIZES, environment, markdown, maxrss_mib, rss_mib, run_child, save

CANDS = ("timm_api", "timm_cli", "hf_manual", "npz_api", "npz_cli", "timm_npz", "tf_api", "tf_cli", "hf_load",
         "hf_load_used", "hf_resave")


def timm_to_npz(sd: dict, depth: int, heads: int) -> dict[str, np.ndarray]:
    """timm ViT state dict -> vit_jax (pre-Linen names) npz parameter dict."""

    def a(t) -> np.ndarray:
        return t.detach().float().numpy()

    d = sd["cls_token"].shape[-1]
    out = {
        "cls": a(sd["cls_token"]),
        "embedding/kernel": a(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
        "embedding/bias": a(sd["patch_embed.proj.bias"]),
        "Transformer/posembed_input/pos_embedding": a(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": a(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": a(sd["norm.bias"]),
        "head/kernel": a(sd["head.weight"].t()),
        "head/bias": a(sd["head.bias"]),
    }
    for i in range(depth):
        t, g = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[g + "LayerNorm_0/scale"], out[g + "LayerNorm_0/bias"] = a(sd[t + "norm1.weight"]), a(sd[t + "norm1.bias"])
        out[g + "LayerNorm_2/scale"], out[g + "LayerNorm_2/bias"] = a(sd[t + "norm2.weight"]), a(sd[t + "norm2.bias"])
        w = sd[t + "attn.qkv.weight"].reshape(3, heads, d // heads, d)  # (qkv h dh) x D
        b = sd[t + "attn.qkv.bias"].reshape(3, heads, d // heads)
        for j, name in enumerate(("query", "key", "value")):
            out[g + f"MultiHeadDotProductAttention_1/{name}/kernel"] = a(w[j].permute(2, 0, 1))  # D h dh
            out[g + f"MultiHeadDotProductAttention_1/{name}/bias"] = a(b[j])
        pw = sd[t + "attn.proj.weight"].reshape(d, heads, d // heads)  # D_out x (h dh)
        out[g + "MultiHeadDotProductAttention_1/out/kernel"] = a(pw.permute(1, 2, 0))  # h dh D
        out[g + "MultiHeadDotProductAttention_1/out/bias"] = a(sd[t + "attn.proj.bias"])
        for j in (0, 1):
            out[g + f"MlpBlock_3/Dense_{j}/kernel"] = a(sd[t + f"mlp.fc{j + 1}.weight"].t())
            out[g + f"MlpBlock_3/Dense_{j}/bias"] = a(sd[t + f"mlp.fc{j + 1}.bias"])
    return out


def transformers_snapshot(sd: dict, size: str, folder: Path) -> Path:
    """A transformers-format snapshot of the same weights, written by transformers' own `save_pretrained`."""
    import transformers

    from bench.common import hf_vit_config, timm_to_hf_vit_state

    model = transformers.ViTForImageClassification(hf_vit_config(size))
    model.load_state_dict(timm_to_hf_vit_state(sd, SIZES[size].depth), strict=True)
    model.save_pretrained(folder)
    side = SIZES[size].image
    transformers.ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    return folder


def child(name: str, src: str, out: str, size: str) -> dict:
    import torch

    if name.startswith("timm_") and name != "timm_npz":
        import convert.timm as ct
    if name.startswith("npz_"):
        import convert.google as cg
    if name == "hf_manual":
        import safetensors.torch
        import transformers  # noqa: F401
    if name == "timm_npz":
        import timm
        from timm.models.vision_transformer import _load_weights
    if name.startswith(("tf_", "hf_load", "hf_resave")):
        import transformers  # noqa: F401

        import convert.__main__ as front
        import convert.transformers as ctf
    heads = str(SIZES[size].heads)
    rss0 = rss_mib()
    t = time.perf_counter()
    if name == "timm_api":
        ct.convert_timm_state_dict(ct.load_torch_state_dict(src), num_heads=int(heads))
    elif name == "timm_cli":
        ct.main([src, out, "--num-heads", heads])
    elif name == "npz_api":
        cg.convert_npz(np.load(src))
    elif name == "npz_cli":
        cg.main([src, out])
    elif name == "hf_manual":
        from bench.common import hf_vit_config, timm_to_hf_vit_state

        m = transformers.ViTForImageClassification(hf_vit_config(size))
        m.load_state_dict(timm_to_hf_vit_state(safetensors.torch.load_file(src), SIZES[size].depth), strict=False)
        m.save_pretrained(out)
    elif name == "timm_npz":
        m = timm.create_model(SIZES[size].timm_name, pretrained=False, **SIZES[size].timm_kwargs())
        _load_weights(m, src)
    elif name == "tf_api":
        ctf.build_converted(ctf.convert_state(Path(src)))
    elif name == "tf_cli":
        front.main([src, out])
    else:  # hf_load, hf_load_used, hf_resave
        m = transformers.ViTForImageClassification.from_pretrained(src)
        if name == "hf_load_used":
            h, w = m.config.image_size, m.config.image_size
            with torch.no_grad():
                m(torch.zeros(1, 3, h, w))
        if name == "hf_resave":
            m.save_pretrained(out)
    dt = time.perf_counter() - t
    return {"s": dt, "maxrss_mib": maxrss_mib(), "rss_before_mib": rss0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, 1 round (smoke test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="B/16")
    ap.add_argument("--out", default="convert")
    ap.add_argument("--candidates", default=",".join(CANDS), help="comma-separated subset of: " + ", ".join(CANDS))
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return
    if dev.resolve(args.device).type == "cuda":
        print("convert: conversion is file to file on the CPU; measuring that (--device cuda changes nothing here)")
    if args.quick:
        args.size, args.rounds = QUICK_SIZE, 1
    import safetensors.torch

    from bench.common import timm_model

    env = environment()
    have = {"timm": Path("convert/timm.py").exists(), "google": Path("convert/google.py").exists()}
    wanted = args.candidates.split(",")
    if unknown := sorted(set(wanted) - set(CANDS)):
        ap.error(f"unknown candidate(s) {', '.join(unknown)}: choose from {', '.join(CANDS)}")
    cands = [c for c in CANDS if c in wanted and (have["timm"] or not c.startswith("timm_") or c == "timm_npz")]
    cands = [c for c in cands if have["google"] or not c.startswith("npz_")]
    with tempfile.TemporaryDirectory() as tmp:
        sd = timm_model(args.size).state_dict()
        st = Path(tmp) / "timm.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
        npz = Path(tmp) / "vit.npz"
        np.savez(npz, **timm_to_npz(sd, SIZES[args.size].depth, SIZES[args.size].heads))
        snapshot = transformers_snapshot(sd, args.size, Path(tmp) / "vit_tf")
        del sd
        src = {c: str(npz if ("npz" in c) else snapshot if c.startswith(("tf_", "hf_load", "hf_resave")) else st)
               for c in cands}
        res: dict[str, list[dict]] = {c: [] for c in cands}
        for r in range(args.rounds):
            for c in cands[r % len(cands) :] + cands[: r % len(cands)]:
                out = str(Path(tmp) / f"out_{c}_{r}")
                res[c].append(run_child(["-m", "bench.convert", "--child", c, src[c], out, args.size]))
        sizes = {"timm.safetensors": st.stat().st_size / 2**20, "vit.npz": npz.stat().st_size / 2**20,
                 "vit_tf/model.safetensors": (snapshot / "model.safetensors").stat().st_size / 2**20}
    rows = []
    for c, rs in res.items():
        t = [x["s"] for x in rs]
        rows.append(
            {
                "case": args.size,
                "candidate": c,
                "seconds": statistics.median(t),
                "seconds_best": min(t),
                "spread": (max(t) - min(t)) / statistics.median(t),
                "peak_rss_mib": statistics.median(x["maxrss_mib"] for x in rs),
                "delta_mib": statistics.median(x["maxrss_mib"] - x["rss_before_mib"] for x in rs),
            }
        )
        rows[-1]["copies"] = rows[-1]["delta_mib"] / sizes["timm.safetensors"]
    print(f"inputs: {sizes} MiB; converters present: {have}")
    print(markdown(rows, ["candidate", "seconds", "seconds_best", "spread", "peak_rss_mib", "delta_mib", "copies"]))
    env["loadavg_end"] = os.getloadavg()
    print(f"wrote {save(args.out, {'env': env, 'args': vars(args), 'inputs_mib': sizes, 'have': have, 'rows': rows})}")


if __name__ == "__main__":
    main()
