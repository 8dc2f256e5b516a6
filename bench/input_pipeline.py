"""Input-pipeline throughput: JPEG decode + train transform, images/s in total and per data-loader worker.

    python -m bench input_pipeline [--quick] [--images 512] [--workers 0,1,2] [--batch 32]

The data: camera-sized JPEG photos (quality 90; `tests/images.py` photo(): gradients plus noise, so that decoding
and resampling do real work) in two class folders, and the same JPEG bytes as parquet shards (datasets' writer).
Every candidate applies the same train transform: RandomResizedCrop to 224 (scale 0.08-1, ratio 3/4-4/3, bicubic),
horizontal flip 0.5, to float, normalise; no colour jitter. Candidates:
  vit_hf          the map-style loader `vit_hf.train` builds (`classification.make_loaders`): an image folder Dataset,
                  per-example seeded `ExampleTransform`, `EpochShuffleSampler`, torch DataLoader
  timm            timm's own loader on the same folder: `create_dataset("", root)` + `create_loader(is_training=True,
                  use_prefetcher=False)` with the transform above (timm's RandomResizedCropAndInterpolation)
  vit_hf_parquet  `vit_hf.train`'s map-style loader on the parquet shards (Arrow prepared first; the preparation time is
                  reported apart, in `prepare_s`)
  vit_hf_stream   `vit_hf.train --streaming`'s loader on the parquet shards (`streaming.make_stream_loaders`: records
                  read in the training process, decoded in the workers; nothing prepared)
Each row iterates one pass over the images after a first batch (worker start-up) that is not timed; `per_worker` is
images/s divided by max(workers, 1). With 0 workers everything runs in the timing process. `--quick`: 64 small
photos, 0 and 1 workers (a smoke test).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import environment, markdown, save

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(640, 480), (480, 640), (500, 375), (1024, 768), (800, 600)]
QUICK_SIZES = [(320, 240), (240, 320), (250, 190)]
CLASSES = ("a", "b")


def write_photos(root: Path, n: int, sizes: list[tuple[int, int]]) -> tuple[Path, Path]:
    """`root/images/<class>/<i>.jpg` and `root/parquet/data/train-0000k-of-00004.parquet` (+ a small validation
    split, which the streaming loader needs) holding the same JPEG bytes."""
    from datasets import ClassLabel, Dataset, Features, Image

    photo = test_images().photo

    images, parquet = root / "images", root / "parquet" / "data"
    parquet.mkdir(parents=True)
    rows = []
    for i in range(n):
        buffer = io.BytesIO()
        photo(*sizes[i % len(sizes)], seed=i).save(buffer, format="JPEG", quality=90)
        path = images / CLASSES[i % 2] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        rows.append(({"bytes": buffer.getvalue(), "path": None}, i % 2))
    features = Features({"image": Image(), "label": ClassLabel(names=list(CLASSES))})
    table = Dataset.from_dict({"image": [r[0] for r in rows], "label": [r[1] for r in rows]}, features=features)
    for k in range(4):
        table.shard(4, k, contiguous=True).to_parquet(str(parquet / f"train-{k:05d}-of-00004.parquet"))
    table.select(range(min(8, n))).to_parquet(str(parquet / "validation-00000-of-00001.parquet"))
    return images, parquet.parent


def test_images():
    """tests/images.py, loaded from its file: sys.path stays as it was (the suite may run inside a test process)."""
    spec = importlib.util.spec_from_file_location("bench_test_images", ROOT / "tests" / "images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def processor():
    from vit_hf import VitHfImageProcessor

    return VitHfImageProcessor(size=224, resample="bicubic")


def train_args(workers: int, batch: int, **extra) -> SimpleNamespace:
    return SimpleNamespace(per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
                           dataloader_num_workers=workers, gradient_accumulation_steps=1, shuffle_buffer_size=256,
                           image_column_name="image", label_column_name="label", max_train_samples=None,
                           max_eval_samples=None, dataset_config_name=None, validation_dir=None, train_dir=None,
                           hub_token=None, streaming=False, **extra)


def vit_hf_loader(source: Path, workers: int, batch: int, cache: Path, folder: bool):
    from vit_hf.train.classification import make_loaders
    from vit_hf.train.data import ImageClassificationData, finish_split, load_raw_dataset

    raw = load_raw_dataset(train_dir=str(source), cache_dir=str(cache)) if folder else load_raw_dataset(
        str(source), cache_dir=str(cache))
    train = finish_split(raw["train"], "image", "label")
    data = ImageClassificationData(train, train, list(CLASSES), "image", "label")
    return make_loaders(train_args(workers, batch), data, processor(), seed=0)[0]


def stream_loader(source: Path, workers: int, batch: int, cache: Path, n: int):
    from vit_hf.train.streaming import load_streaming_data, make_stream_loaders

    steps = -(-n // batch) + 1
    args = train_args(workers, batch, dataset_name=str(source), cache_dir=str(cache), max_train_steps=steps)
    data = load_streaming_data(args, seed=0)
    state = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    return make_stream_loaders(args, data, processor(), 0, state)[0]


def timm_loader(folder: Path, workers: int, batch: int):
    from timm.data import create_dataset, create_loader

    p = processor()
    dataset = create_dataset("", root=str(folder), is_training=True)
    return create_loader(dataset, (3, 224, 224), batch, is_training=True, scale=tuple(p.train_crop_scale),
                         ratio=tuple(p.train_crop_ratio), hflip=p.train_hflip, color_jitter=0.0,
                         interpolation="bicubic", mean=tuple(p.image_mean), std=tuple(p.image_std),
                         num_workers=workers, use_prefetcher=False, persistent_workers=False,
                         device=torch.device("cpu"))


def _size(batch) -> int:
    return len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch["pixel_values"])


def images_per_second(loader, n: int) -> float:
    """One pass of `n` images, the first batch (worker start-up) untimed."""
    iterator = iter(loader)
    first, timed = _size(next(iterator)), 0
    start = time.perf_counter()
    for batch in iterator:
        timed += _size(batch)
        if first + timed >= n:
            break
    return timed / (time.perf_counter() - start)


def measure(name: str, make, workers: int, n: int) -> dict:
    t0 = time.perf_counter()
    loader = make()
    prepare = time.perf_counter() - t0
    ips = images_per_second(loader, n)
    row = {"candidate": name, "workers": workers, "img_s": ips, "per_worker": ips / max(workers, 1),
           "prepare_s": prepare}
    print(f"  {name:<15} workers {workers}: {ips:7.1f} images/s", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 small photos, 0 and 1 workers (a smoke test)")
    ap.add_argument("--images", type=int, default=None, help="photos per pass (default 512; --quick 64)")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 0,1,2; --quick 0,1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="input_pipeline")
    args = ap.parse_args(argv)
    n = args.images or (64 if args.quick else 512)
    workers = [int(w) for w in (args.workers or ("0,1" if args.quick else "0,1,2")).split(",")]
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import timm.data  # noqa: F401 - imported before any timing: prepare_s is the loaders' own set-up

    import vit_hf.train.classification  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        tmp = Path(tmp)
        folder, parquet = write_photos(tmp, n, QUICK_SIZES if args.quick else SIZES)
        rows = []
        for w in workers:
            rows.append(measure("vit_hf", lambda w=w: vit_hf_loader(folder, w, args.batch, tmp / f"c{w}", True), w, n))
            rows.append(measure("timm", lambda w=w: timm_loader(folder, w, args.batch), w, n))
            rows.append(measure("vit_hf_parquet", lambda w=w: vit_hf_loader(parquet, w, args.batch, tmp / f"p{w}",
                                                                            False), w, n))
            rows.append(measure("vit_hf_stream", lambda w=w: stream_loader(parquet, w, args.batch, tmp / f"s{w}", n),
                                w, n))
    for r in rows:
        peer = next(p["img_s"] for p in rows if p["candidate"] == "timm" and p["workers"] == r["workers"])
        r["vs_timm"] = r["img_s"] / peer
    print(markdown(rows, ["candidate", "workers", "img_s", "per_worker", "vs_timm", "prepare_s"]))
    env = environment("cpu")
    env["loadavg_end"] = os.getloadavg()
    print(f"wrote {save(args.out, {'env': env, 'args': vars(args), 'images': n, 'rows': rows})}")


if __name__ == "__main__":
    main()
