"""Data for fine-tuning: `datasets` loading (Hub ids, image folders, saved datasets), label maps, preprocessing from
the image processor's transforms, tolerant decoding, and the offline real data sets used by the demo.

Decoding is lazy and tolerant: the image column is cast to `Image(decode=False)` and each image is opened with PIL
inside the transform, so a corrupt or unreadable file becomes an *invalid* example (zero pixels, `valid=False`)
instead of an exception. Batches keep their size, so data-parallel ranks always see the same number of batches and
`gather_for_metrics` stays exact; the training loss and the metrics ignore invalid examples, and their indices are
reported so that they can be counted once.

Augmentation randomness is a function of `(seed, epoch, example index)` (a forked torch RNG per example), not of
the global RNG: the data loader's one-batch look-ahead and `skip_first_batches` on resume therefore cannot change
which crop an example gets, and a resumed run sees exactly the pixels an uninterrupted one saw.

Not remote code: never imported by the modeling files.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..naflex_processing_vit_hf import NaFlexTransform, naflex_collate
from .errors import UserError

logger = logging.getLogger(__name__)

INDEX_COLUMN = "__index__"
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "test", "dev")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DataError(UserError):
    """A data set that cannot be trained on (missing labels, one class, an empty split, ...); the message names the
    flag or the step that fixes it."""


@dataclass
class ImageClassificationData:
    """Train/validation splits with integer labels in `[0, len(labels))`, plus the label names."""

    train: Any  # datasets.Dataset
    validation: Any  # datasets.Dataset
    labels: list[str]
    image_column: str
    label_column: str
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _folder_data_files(folder: str | Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder}: no such folder (--train_dir / --validation_dir)")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise DataError(
            f"image folder {folder} is empty: expected class subfolders with images (e.g. {folder}/cat/1.png)"
        )
    return str(folder / "**")


def load_raw_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
):
    """A `DatasetDict` from a Hub id, a local `save_to_disk` folder, a local data folder, or image folders.

    Image folders are loaded together (one `data_files` dict) so that the class names are inferred from the union of
    both splits' subfolders: a class missing from the validation folder keeps its label id.
    """
    import datasets

    if dataset_name is not None:
        path = Path(dataset_name)
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
            return datasets.DatasetDict(train=datasets.load_from_disk(str(path)))
        return datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, token=token)
    if train_dir is None:
        raise DataError("give --dataset_name (a Hub id or a local folder) or --train_dir (an image folder)")
    data_files = {"train": _folder_data_files(train_dir)}
    if validation_dir is not None:
        data_files["validation"] = _folder_data_files(validation_dir)
    return datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)


def _label_names(dataset, label_column: str, where: str) -> tuple[Any, list[str]]:
    """Make `label_column` a `ClassLabel` and return (dataset, names). Integer labels (e.g. from an imagefolder
    `metadata.csv`) are cast with their sorted values as names; string labels are class-encoded."""
    from datasets import ClassLabel, Value

    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return dataset, list(feature.names)
    if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        values = sorted(set(dataset.unique(label_column)))
        if values and values[0] >= 0 and values == list(range(values[-1] + 1)):
            names = [str(v) for v in values]
            return dataset.cast_column(label_column, ClassLabel(names=names)), names
        names = [str(v) for v in values]  # sparse ids: re-index them densely, keeping the original ids as names
        mapping = {v: i for i, v in enumerate(values)}
        dataset = dataset.map(lambda ex: {label_column: mapping[ex[label_column]]}, desc="re-indexing labels")
        return dataset.cast_column(label_column, ClassLabel(names=names)), names
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        dataset = dataset.class_encode_column(label_column)
        return dataset, list(dataset.features[label_column].names)
    raise DataError(f"{where}: label column {label_column!r} has type {feature}; expected ClassLabel, int or string")


def prepare_splits(
    raw,
    image_column: str = "image",
    label_column: str = "label",
    train_val_split: float = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    source: str = "",
) -> ImageClassificationData:
    """Pick train/validation splits, validate them, take labels from the `ClassLabel`, subsample, add an index."""
    from datasets import DatasetDict

    if not isinstance(raw, DatasetDict):
        raw = DatasetDict(train=raw)
    if "train" not in raw:
        raise DataError(f"{source}: no 'train' split (splits: {list(raw)})")
    train = raw["train"]
    columns = train.column_names
    if image_column not in columns:
        raise DataError(f"{source}: no image column {image_column!r} (columns: {columns}); pass --image_column_name")
    if label_column not in columns:
        raise DataError(_no_label_column(source, label_column, columns))
    validation = next((raw[name] for name in VALIDATION_SPLIT_NAMES if name in raw), None)
    notes = []
    train, labels = _label_names(train, label_column, f"{source} train")
    if validation is not None:
        validation = encode_as_train(validation, label_column, labels, f"{source} validation")
    if len(labels) < 2:
        raise DataError(f"{source}: only one class ({', '.join(labels)}); classification needs two or more (one "
                        f"subfolder per class), or train without labels with --task mim")
    if len(train) == 0:
        raise DataError(f"{source}: the train split is empty")
    if validation is None:
        if not 0 < train_val_split < 1:
            raise DataError(f"{source}: no validation split and --train_val_split {train_val_split} is not in (0, 1): "
                            f"pass --train_val_split 0.15 or a validation split (--validation_dir)")
        try:
            parts = train.train_test_split(train_val_split, seed=seed, stratify_by_column=label_column)
        except ValueError:  # a class too small to stratify: fall back to a plain random split
            parts = train.train_test_split(train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
        notes.append(f"validation split: {train_val_split:.0%} of train (seed {seed})")
    if len(validation) == 0:
        raise DataError(f"{source}: the validation split is empty")
    if max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(max_train_samples))
    if max_eval_samples is not None and max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(max_eval_samples))
    train, validation = (finish_split(split, image_column, label_column) for split in (train, validation))
    return ImageClassificationData(train, validation, labels, image_column, label_column, source, notes)


def _no_label_column(source: str, label_column: str, columns: list[str]) -> str:
    """The one line for a split without `label_column`: an image folder without class subfolders (flat) or with one,
    else the flag that names the column."""
    folder = Path(source)
    if folder.is_dir() and not (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        subfolders = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if not subfolders:
            return (f"{source}: no class subfolders (a flat folder of images): put each class's images in its own "
                    f"subfolder ({source}/cat/1.png, {source}/dog/2.png), or train without labels with --task mim")
        if len(subfolders) == 1:
            return (f"{source}: one class subfolder ({subfolders[0]}); classification needs two or more, or train "
                    f"without labels with --task mim")
        return (f"{source}: no labels: class subfolders must sit at the same depth ({source}/cat/1.png, "
                f"{source}/dog/2.png)")
    return f"{source}: no label column {label_column!r} (columns: {columns}): pass --label_column_name COLUMN"


def encode_as_train(validation, label_column: str, labels: list[str], where: str):
    """The validation split with its labels encoded as the train split's names (as transformers' example does): a
    validation split holding only some of the classes is valid; a class train does not have is refused."""
    from datasets import ClassLabel, Value

    validation, names = _label_names(validation, label_column, where)
    if names == labels:
        return validation
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise DataError(f"{where}: classes {', '.join(unknown)} are not in the train split ({', '.join(labels)}): "
                        f"remove them from the validation data or add training images for them")
    to_train = np.array([labels.index(n) for n in names], dtype=np.int64)
    validation = validation.cast_column(label_column, Value("int64"))
    validation = validation.map(lambda ids: {label_column: to_train[np.asarray(ids, dtype=np.int64)].tolist()},
                                batched=True, input_columns=[label_column], desc="train label ids")
    return validation.cast_column(label_column, ClassLabel(names=labels))


def finish_split(split, image_column: str, label_column: str):
    """Images undecoded, only the image and label columns, plus the row index (`INDEX_COLUMN`)."""
    from datasets import Image

    if isinstance(split.features[image_column], Image):
        # decode ourselves, inside the transform, so that a broken file is skipped instead of fatal
        split = split.cast_column(image_column, Image(decode=False))
    split = split.remove_columns([c for c in split.column_names if c not in (image_column, label_column)])
    return split.add_column(INDEX_COLUMN, list(range(len(split))))


def load_image_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_val_split: float = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    token: str | None = None,
) -> ImageClassificationData:
    """`load_raw_dataset` + `prepare_splits`: the one entry point the training script uses."""
    source = dataset_name or train_dir or "?"
    raw = load_raw_dataset(dataset_name, dataset_config_name, train_dir, validation_dir, cache_dir, token)
    return prepare_splits(
        raw, image_column, label_column, train_val_split, max_train_samples, max_eval_samples, seed, source
    )


# ----------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------------------


def decode_image(value: Any) -> PIL.Image.Image:
    """Open an undecoded `datasets` image (`{"bytes", "path"}`), a path, bytes, or pass PIL/arrays through; the pixels
    are loaded here so that a truncated file fails now, inside the caller's try/except."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        image = PIL.Image.open(io.BytesIO(data)) if data is not None else PIL.Image.open(path)
    elif isinstance(value, (str, os.PathLike)):
        image = PIL.Image.open(value)
    elif isinstance(value, (bytes, bytearray)):
        image = PIL.Image.open(io.BytesIO(value))
    else:
        return value  # PIL image / array / tensor: the processor converts it
    image.load()
    return image


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A per-example augmentation seed (splitmix64-style mix): independent of batch size, order and look-ahead."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return x ^ (x >> 29)


MODEL_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")  # what a batch hands the model


def image_transform(processor, train: bool):
    """The processor's per-image transform: an image tensor (C, H, W), or for a NaFlex processor (`max_num_patches`
    set) a dict of the image's patches padded to `max_num_patches`, their mask and grid (`NaFlexTransform`: aspect
    kept, no fixed-size resize or crop; in training timm's NaFlex crop and the flip)."""
    limit = getattr(processor, "max_num_patches", None)
    if train:
        return processor.train_transforms()  # a NaFlexTransform for a NaFlex processor
    return NaFlexTransform(processor.eval_transforms(), processor.patch_size, limit) if limit else \
        processor.eval_transforms()


def model_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """The batch's model inputs: `pixel_values`, and for NaFlex `pixel_attention_mask` and `spatial_shapes`."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class ExampleTransform:
    """The `with_transform` function: decode, apply the processor's train or eval transform, mark broken images.

    Returns per-example model inputs (`pixel_values` (C, H, W); NaFlex: patches, `pixel_attention_mask`,
    `spatial_shapes`), `labels`, `valid` and `index`. Set `epoch` before each epoch: it is part of the augmentation
    seed.
    """

    def __init__(self, processor, image_column: str, label_column: str, train: bool, seed: int = 0):
        self.transform = image_transform(processor, train)
        self.shape = (processor.num_channels, processor.size["height"], processor.size["width"])
        self.naflex = getattr(processor, "max_num_patches", None), getattr(processor, "patch_size", None)
        self.image_column, self.label_column = image_column, label_column
        self.train, self.seed, self.epoch = train, seed, 0

    def _one(self, value: Any, index: int) -> torch.Tensor | dict | None:
        try:
            image = decode_image(value)
            if not self.train:
                return self.transform(image)
            # The processor's train transform draws from torch's default CPU generator: seed it for this example and
            # put the caller's state back (get/set_state is ~30x cheaper than torch.random.fork_rng here).
            generator = torch.default_generator
            saved = generator.get_state()
            generator.manual_seed(example_seed(self.seed, self.epoch, index) % (2**63))
            try:
                return self.transform(image)
            finally:
                generator.set_state(saved)
        except Exception as err:  # noqa: BLE001 - any unreadable image is skipped and counted, never fatal
            where = value.get("path") if isinstance(value, dict) else None
            logger.warning("skipping unreadable image #%d%s: %s", index, f" ({where})" if where else "", err)
            return None

    def blank(self) -> dict[str, torch.Tensor]:
        """A broken image's inputs: zeros of the right shape (NaFlex: one zero patch on a 1x1 grid, a grid the
        model accepts); its loss and metrics weigh nothing."""
        limit, patch = self.naflex
        if not limit:
            return {"pixel_values": torch.zeros(self.shape)}
        mask = torch.zeros(limit, dtype=torch.int32)
        mask[0] = 1
        return {"pixel_values": torch.zeros(limit, patch * patch * self.shape[0]), "pixel_attention_mask": mask,
                "spatial_shapes": torch.tensor([1, 1])}

    def inputs(self, value: Any, index: int) -> tuple[dict[str, torch.Tensor], bool]:
        """(the example's model inputs, whether its image decoded): `blank()` for a broken image."""
        x = self._one(value, index)
        if x is None:
            return self.blank(), False
        return (x if isinstance(x, dict) else {"pixel_values": x}), True

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"valid": []}
        for value, index in zip(batch[self.image_column], batch[INDEX_COLUMN]):
            inputs, valid = self.inputs(value, index)
            for key, tensor in inputs.items():
                out.setdefault(key, []).append(tensor)
            out["valid"].append(valid)
        return {**out, "labels": batch[self.label_column], "index": batch[INDEX_COLUMN]}


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    """A batch: the model inputs stacked by the NaFlex collate (NaFlex examples come padded to the processor's
    `max_num_patches`, the rows its model was converted and evaluated with), labels, validity and indices."""
    return {
        **naflex_collate([{k: e[k] for k in MODEL_INPUTS if k in e} for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
        "valid": torch.tensor([e["valid"] for e in examples], dtype=torch.bool),
        "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
    }


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A permutation that is a pure function of `(seed, epoch)`: the same on every rank, after any resume, and for
    any batch size (so that one batch of 2B is exactly two consecutive batches of B)."""

    def __init__(self, num_examples: int, seed: int = 0):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, -1) % (2**63))
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


MAX_DEFAULT_WORKERS = 8


def default_num_workers(given: int | None, accelerator) -> int:
    """`--dataloader_num_workers`, resolved and logged. Given: as is. Training on CPU: 0 (decoding in worker
    processes would take the cores the model's own threads compute on). On an accelerator: the CPUs this process may
    use divided among the processes of this machine, one left for the training process itself, at most 8 (measured
    with `python -m bench input_pipeline`: one worker decodes and augments a few hundred photos a second)."""
    if given is not None:
        return given
    if accelerator.device.type == "cpu":
        workers, why = 0, "training on CPU: decoding in the training process leaves the cores to the model"
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or accelerator.num_processes
        workers = max(1, min(MAX_DEFAULT_WORKERS, cpus // local - 1))
        why = f"{cpus} CPUs, {local} process(es) here, one CPU kept for training, at most {MAX_DEFAULT_WORKERS}"
    logger.info("data loader workers per process: %d (%s; set --dataloader_num_workers to override)", workers, why)
    return workers


# ----------------------------------------------------------------------------------------------------------------------
# Offline real data for the demo
# ----------------------------------------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped): big-endian magic (dtype code, ndim), then the dims, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _arrays_to_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]):
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    encoded = [{"bytes": _png_bytes(a), "path": None} for a in images]
    return Dataset.from_dict({"image": encoded, "label": labels.astype(np.int64).tolist()}, features=features)


def prepare_fashion_mnist(root: str | Path = "data") -> Path:
    """Fashion-MNIST (60k train / 10k test, 28x28 grey, 10 classes) from Debian's `dataset-fashion-mnist`, fetched
    with `apt-get download` (no root needed) and unpacked with `dpkg-deb -x`, saved as a `DatasetDict` with
    `save_to_disk` under `root/fashion_mnist` (cached: a second call returns at once).

    Raises:
        RuntimeError: apt/dpkg is unavailable or the download failed (use `prepare_sklearn_digits` then).
    """
    out = Path(root) / "fashion_mnist"
    if (out / "dataset_dict.json").is_file():
        return out
    from datasets import DatasetDict

    Path(root).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fashion_mnist-", dir=root))
    try:
        for cmd in (["apt-get", "download", "dataset-fashion-mnist"],):
            if shutil.which(cmd[0]) is None:
                raise RuntimeError(f"{cmd[0]} is not available")
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        debs = sorted(work.glob("dataset-fashion-mnist_*.deb"))
        if not debs:
            raise RuntimeError("apt-get download produced no dataset-fashion-mnist .deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True, timeout=600)
        idx = work / "x" / "usr" / "share" / "datasets" / "fashion-mnist"
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _read_idx(idx / f"{prefix}-images-idx3-ubyte.gz")
            labels = _read_idx(idx / f"{prefix}-labels-idx1-ubyte.gz")
            splits[split] = _arrays_to_dataset(images, labels, list(FASHION_MNIST_LABELS))
        tmp_out = work / "fashion_mnist"
        DatasetDict(splits).save_to_disk(str(tmp_out))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp_out, out)  # whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def prepare_sklearn_digits(root: str | Path = "data", test_fraction: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), upscaled to 16x16 grey, as a saved `DatasetDict`
    (train/test, stratified) under `root/sklearn_digits`. The fallback when apt is unavailable."""
    out = Path(root) / "sklearn_digits"
    if (out / "dataset_dict.json").is_file():
        return out
    from datasets import DatasetDict
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 8x8 images with values 0..16 -> 8-bit 16x16 (the smallest size a patch-4 ViT makes a 4x4 grid of)
    bicubic = PIL.Image.Resampling.BICUBIC
    images = np.stack(
        [np.asarray(PIL.Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((16, 16), bicubic))
         for im in digits.images]
    )
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    names = [str(i) for i in range(10)]
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sklearn_digits-", dir=root))
    try:
        splits = DatasetDict(train=_arrays_to_dataset(x_tr, y_tr, names), test=_arrays_to_dataset(x_te, y_te, names))
        splits.save_to_disk(str(tmp / "d"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "d", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
