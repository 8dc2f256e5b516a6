"""Image preprocessing throughput: a list of PIL images -> one (B, 3, 224, 224) float tensor, images/s.

    python -m bench preprocess [--quick] [--device {cpu,cuda}] [--rounds N] [--batch 32]

Candidates:
  vit_hf          VitHfImageProcessor(size=224, crop_pct=0.9, resample="bicubic").preprocess(images, "pt")
                  (resize shorter side to 224/0.9 = 248, center crop 224, normalize: timm's eval transform, PIL,
                  bit-identical to timm; the batch is spread over torch.get_num_threads() threads)
  vit_hf_torch    the same with resize_backend="torch" (torch's antialiased uint8 resize, images of equal size in
                  one call; within 2/255 of PIL on these sizes)
  vit_hf_eval_tf  VitHfImageProcessor.eval_transforms() applied per image + torch.stack
  hf_torchvision  transformers ViTImageProcessor (torchvision backend), defaults: resize to 224x224 bilinear,
                  no crop (so it does a bit LESS work: one resize, no crop; semantics differ, noted in README)
  hf_pil          transformers ViTImageProcessorPil (PIL/numpy backend), same defaults as above
  hf_torchvision_crop / hf_pil_crop  the same two, configured to do timm's work: size={"shortest_edge": 248},
                  do_center_crop=True, crop_size 224, resample=BICUBIC (equal work; hf_pil_crop is bit-identical to
                  vit_hf here, hf_torchvision_crop within 2/255 after normalisation: tensor resize, not PIL)
  timm            timm eval transform (create_transform from vit_base_patch16_224's data config: bicubic resize
                  to 248, center crop 224, ToTensor, Normalize) per image + torch.stack
Inputs: JPEG-decoded RGB PIL images of mixed sizes (640x480, 500x375, 375x500, 1024x768), made from smooth random
noise so decoding artefacts look like photos. Rounds interleave the candidates. Preprocessing is CPU work for every
candidate; with `--device cuda` each call ends with the batch on the GPU (`.to("cuda")` and a synchronisation
included), what a GPU model waits for. `--quick`: 8 images, 2 rounds (a smoke test).
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import PIL.Image
import torch

from bench import device as dev
from bench.common import add_ratios, environment, interleaved, markdown, save

PEERS_PP = ("hf_torchvision_crop", "hf_pil_crop", "timm")  # equal-work peers for vs_best_peer


def make_images(n: int, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (500, 375), (375, 500), (1024, 768)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = PIL.Image.fromarray(small).resize((w, h), PIL.Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(PIL.Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def candidates() -> dict:
    import timm
    from timm.data import create_transform, resolve_data_config
    from transformers import ViTImageProcessor, ViTImageProcessorPil
    from transformers.image_utils import PILImageResampling

    from vit_hf import VitHfImageProcessor

    ours = VitHfImageProcessor(size=224, crop_pct=0.9, resample="bicubic")
    ours_torch = VitHfImageProcessor(size=224, crop_pct=0.9, resample="bicubic", resize_backend="torch")
    ours_tf = ours.eval_transforms()
    hf_tv = ViTImageProcessor()
    hf_pil = ViTImageProcessorPil()
    crop = dict(
        size={"shortest_edge": 248},
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        resample=PILImageResampling.BICUBIC,
    )
    hf_tv_crop, hf_pil_crop = ViTImageProcessor(**crop), ViTImageProcessorPil(**crop)
    tm = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    timm_tf = create_transform(**resolve_data_config({}, model=tm))
    del tm
    return {
        "vit_hf": lambda ims: ours.preprocess(ims, return_tensors="pt")["pixel_values"],
        "vit_hf_torch": lambda ims: ours_torch.preprocess(ims, return_tensors="pt")["pixel_values"],
        "vit_hf_eval_tf": lambda ims: torch.stack([ours_tf(im) for im in ims]),
        "hf_torchvision": lambda ims: hf_tv(ims, return_tensors="pt")["pixel_values"],
        "hf_pil": lambda ims: hf_pil(ims, return_tensors="pt")["pixel_values"],
        "hf_torchvision_crop": lambda ims: hf_tv_crop(ims, return_tensors="pt")["pixel_values"],
        "hf_pil_crop": lambda ims: hf_pil_crop(ims, return_tensors="pt")["pixel_values"],
        "timm": lambda ims: torch.stack([timm_tf(im) for im in ims]),
    }


def on_device(fns: dict, device: torch.device) -> dict:
    """Each candidate's batch delivered to `device` (unchanged on the CPU)."""
    if device.type == "cpu":
        return fns

    def moved(f):
        def call(ims):
            out = f(ims).to(device, non_blocking=True)
            dev.sync(device)
            return out

        return call

    return {n: moved(f) for n, f in fns.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="8 images, 2 rounds (smoke test)")
    ap.add_argument("--batch", type=int, default=None, help="images per call (default 32, --quick 8)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default="preprocess")
    args = ap.parse_args(argv)
    device = dev.resolve(args.device)
    args.batch = args.batch or (8 if args.quick else 32)
    env = environment(device)
    images = make_images(args.batch)
    fns = on_device(candidates(), device)
    shapes = {n: tuple(f(images[:2]).shape) for n, f in fns.items()}
    if any(s != (2, 3, 224, 224) for s in shapes.values()):
        raise RuntimeError(f"a candidate returned the wrong shape: {shapes}")
    # parity of the two timm-semantics pipelines (ours vs timm), for the record
    a, b = fns["vit_hf"](images[:4]).cpu(), fns["timm"](images[:4]).cpu()
    timm_maxdiff = (a - b).abs().max().item()
    torch_maxdiff = (fns["vit_hf_torch"](images[:4]).cpu() - b).abs().max().item()
    timings = interleaved(
        {n: (lambda f=f: f(images)) for n, f in fns.items()}, warmup=1, rounds=args.rounds or (2 if args.quick else 7),
        collect=not args.quick,
    )
    rows = [
        {
            "candidate": n,
            "img_s": args.batch / t.median,
            "img_s_best": args.batch / t.best,
            "ms_per_img": 1000 * t.median / args.batch,
            "spread": t.spread,
            "clean_rounds": t.n_clean,
            "rounds": len(t.times),
        }
        for n, t in timings.items()
    ]
    for r in rows:
        r["case"] = f"b{args.batch}"
    add_ratios(rows, "img_s", ("case",), peers=PEERS_PP)
    hf_pil = next(r["img_s"] for r in rows if r["candidate"] == "hf_pil")
    for r in rows:
        r["vs_hf_pil"] = r["img_s"] / hf_pil  # the preprocessing target is stated against this one
    cols = ["candidate", "img_s", "img_s_best", "ms_per_img", "spread", "clean_rounds", "vs_best_peer", "vs_hf_pil"]
    print(markdown(rows, cols))
    print(f"max |vit_hf - timm| over 4 images: {timm_maxdiff:.3g}; resize_backend='torch': {torch_maxdiff:.3g}")
    env["loadavg_end"] = os.getloadavg()
    payload = {"env": env, "args": vars(args), "timm_maxdiff": timm_maxdiff, "torch_maxdiff": torch_maxdiff}
    payload["rows"] = rows
    print(f"wrote {save(args.out, payload)}")


if __name__ == "__main__":
    main()
