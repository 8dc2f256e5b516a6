"""`--streaming`: train from a `datasets` IterableDataset (a Hub id, a local folder of parquet shards, an image
folder, a `save_to_disk` folder) without ever writing an Arrow copy of the training split.

The pieces, and why each is shaped so:
- Each rank reads its own share of the stream (`split_dataset_by_node`: whole shards when their number divides the
  world size, else every N-th example) and cycles through it in *local epochs*, for as long as the run lasts. The run
  length is a number of optimizer steps (`--max_train_steps`, required), so every rank makes exactly the same number
  of micro-steps whatever the length of its share: ranks stay in step and DDP never waits at the end for a rank that
  ran dry. Shard order is reshuffled every local epoch (datasets does it for `set_epoch(e)`, e != 0; we pass a key
  mixed from the seed and the epoch). A local image folder is streamed one shard per file (datasets streams it as a
  single class-ordered shard), so that this reshuffles the files.
- Shuffling is a seeded window shuffle: `--shuffle_buffer_size` consecutive records of the rank's stream are held in
  memory, permuted by `(seed, rank, epoch, window)`, and yielded. Unlike datasets' rolling buffer (whose content a
  `state_dict` does not save, so a resumed run draws other examples), a window is a pure function of where it starts:
  a checkpoint stores the stream's `state_dict()` at the start of the current window plus an offset, and a resume
  reloads that state, re-reads one window of raw records (no decoding) and skips the offset. Resume is bit-exact and
  costs at most one window of reading.
- Only raw records (undecoded image bytes or paths, the label) are read in the training process, by the data
  loader's sampler; decoding and the train transform run in the loader's workers (`--dataloader_num_workers`). The
  sampler runs ahead of training, so the positions of the batches it has handed out wait in a queue and the
  checkpoint records the position of the last batch actually trained (gathered from every rank into
  `trainer_state.json`, written whole or not at all with the rest of the checkpoint).
- Unreadable images become invalid examples exactly as in the map-style path (`data.ExampleTransform`); they are
  counted once each by identity (the image's path, else a hash of its bytes), since a stream has no row index.
- The validation split is loaded map-style from its own data files only (never the training files), with the
  training stream's features, so the labels agree.

Not remote code: never imported by the modeling files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import (
    VALIDATION_SPLIT_NAMES,
    DataError,
    ExampleTransform,
    ImageClassificationData,
    _folder_data_files,
    collate_fn,
    encode_as_train,
    example_seed,
    finish_split,
)

logger = logging.getLogger("vit_hf.train")

STREAM_RECORD_KEY = "stream"  # trainer_state.json: one stream position per rank
SAVED_SHARDS = 64  # a `save_to_disk` folder streamed from its Arrow files is cut into this many shards (at most)


# ----------------------------------------------------------------------------------------------------------------------
# Loading: the training split as a stream, the validation split map-style
# ----------------------------------------------------------------------------------------------------------------------


def _saved_dataset(path: Path):
    """A `save_to_disk` folder as a DatasetDict (memory-mapped Arrow already on disk: streaming it copies nothing)."""
    import datasets

    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        return datasets.DatasetDict(train=datasets.load_from_disk(str(path)))
    return None


def _builder(args):
    """The dataset builder whose config knows every split's data files (resolving them reads no data)."""
    import datasets

    if args.dataset_name is not None:
        return datasets.load_dataset_builder(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir,
                                             token=args.hub_token)
    data_files = {"train": _folder_data_files(args.train_dir)}
    if args.validation_dir is not None:
        data_files["validation"] = _folder_data_files(args.validation_dir)
    return datasets.load_dataset_builder("imagefolder", data_files=data_files, cache_dir=args.cache_dir)


def _streams(args, source: str):
    """(train IterableDataset, map-style validation Dataset or None) without preparing the training split."""
    import datasets

    saved = _saved_dataset(Path(args.dataset_name)) if args.dataset_name and os.path.isdir(args.dataset_name) else None
    if saved is not None:
        if "train" not in saved:
            raise DataError(f"{source}: no 'train' split (splits: {list(saved)})")
        train = saved["train"]
        validation = next((saved[n] for n in VALIDATION_SPLIT_NAMES if n in saved), None)
        return train.to_iterable_dataset(num_shards=max(1, min(SAVED_SHARDS, len(train)))), validation
    builder = _builder(args)
    files = builder.config.data_files or {}
    if "train" not in files:
        raise DataError(f"{source}: no 'train' split (splits: {list(files)})")
    train = builder.as_streaming_dataset(split="train")
    if builder.name == "imagefolder":
        train = _folder_stream(builder, train)
    split = next((n for n in VALIDATION_SPLIT_NAMES if n in files), None)
    if split is None:
        return train, None
    # the validation files alone, typed like the stream (same ClassLabel names): an Arrow copy of validation only
    validation = datasets.load_dataset(builder.name, data_files={"validation": list(files[split])},
                                       features=train.features, cache_dir=args.cache_dir, token=args.hub_token)
    return train, validation["validation"]


def _folder_stream(builder, stream):
    """An image folder streamed one shard per file, so that shard-order shuffling shuffles the files (datasets streams
    an image folder as one shard, in class order, which no shuffle window could mix); labels as imagefolder infers
    them (class subfolders, names from both splits). Remote files, or a folder with a metadata file, keep datasets'
    own stream."""
    from datasets import ClassLabel, IterableDataset

    files = [str(f) for f in builder.config.data_files["train"]]
    label = (stream.features or {}).get("label")
    remote_or_metadata = any("://" in f or Path(f).name in builder.METADATA_FILENAMES for f in files)
    if not isinstance(label, ClassLabel) or remote_or_metadata:
        return stream
    images = [f for f in files if Path(f).suffix.lower() in builder.EXTENSIONS]
    return IterableDataset.from_generator(_folder_records, features=stream.features,
                                          gen_kwargs={"files": images, "names": tuple(label.names)})


def _folder_records(files: list[str], names: tuple[str, ...]) -> Iterator[dict]:  # a list is sharded, a tuple not
    ids = {name: i for i, name in enumerate(names)}
    for file in files:
        yield {"image": {"path": file, "bytes": None}, "label": ids[Path(file).parent.name]}


def _check_columns(features, image_column: str, label_column: str, source: str) -> list[str]:
    from datasets import ClassLabel, Image

    if features is None or image_column not in features or label_column not in features:
        columns = list(features or {})
        raise DataError(f"{source}: the stream has no {image_column!r} / {label_column!r} columns (columns: "
                        f"{columns}); pass --image_column_name / --label_column_name")
    if not isinstance(features[image_column], Image):
        raise DataError(f"{source}: column {image_column!r} is {features[image_column]}, not an Image feature")
    label = features[label_column]
    if not isinstance(label, ClassLabel):
        raise DataError(f"{source}: --streaming needs the class names before reading the data, i.e. a ClassLabel "
                        f"label column; {label_column!r} is {label}. Push the data with ClassLabel features, or "
                        f"train without --streaming")
    if len(label.names) < 2:
        raise DataError(f"{source}: only one class ({label.names}); classification needs at least two")
    return list(label.names)


def load_streaming_data(args, seed: int) -> ImageClassificationData:
    """The training split as an IterableDataset (raw records: images undecoded, two columns), the validation split
    map-style and prepared as `data.prepare_splits` prepares it."""
    from datasets import Image

    source = args.dataset_name or args.train_dir
    train, validation = _streams(args, source)
    image_column, label_column = args.image_column_name, args.label_column_name
    labels = _check_columns(train.features, image_column, label_column, source)
    if validation is None:
        raise DataError(f"{source}: --streaming needs a validation split (a 'validation'/'test' split in the data, "
                        f"or --validation_dir): a stream cannot be split without reading it")
    validation = encode_as_train(validation, label_column, labels, f"{source} validation")
    train = train.cast_column(image_column, Image(decode=False)).select_columns([image_column, label_column])
    if args.max_train_samples is not None:
        train = train.take(args.max_train_samples)
    if args.max_eval_samples is not None and args.max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(args.max_eval_samples))
    notes = [f"streaming the train split ({train.num_shards} shard(s)); validation map-style, {len(validation)} "
             f"examples; shuffle window {args.shuffle_buffer_size}"]
    return ImageClassificationData(train, finish_split(validation, image_column, label_column), labels, image_column,
                                   label_column, source, notes)


# ----------------------------------------------------------------------------------------------------------------------
# The per-rank record stream
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class StreamPosition:
    """Where a rank's stream stands: `offset` records of window `window` of local epoch `epoch` are consumed;
    `state` is the datasets `state_dict()` at the start of that window (None: the start of the epoch)."""

    epoch: int = 0
    window: int = 0
    offset: int = 0
    state: dict | None = None


def _epoch_key(seed: int, epoch: int) -> int:
    # datasets reshuffles shard order for any non-zero epoch, from the epoch alone: mix the seed in
    return 1 + example_seed(seed, epoch, -3) % (2**31 - 1)


def _permutation(seed: int, rank: int, epoch: int, window: int, n: int) -> list[int]:
    return np.random.default_rng([seed, rank, epoch, window]).permutation(n).tolist()


def records(stream, seed: int, rank: int, window_size: int, start: StreamPosition) -> Iterator[tuple[dict, tuple]]:
    """Raw records of this rank forever, each with its coordinates `(epoch, window, offset after it, window state)`:
    local epochs of the rank's share, each cut into windows of `window_size` permuted records."""
    position = start
    while True:
        stream.set_epoch(_epoch_key(seed, position.epoch))
        if position.state is not None:
            stream.load_state_dict(position.state)
        iterator, window, state, read = iter(stream), position.window, position.state, 0
        while True:
            buffer = [example for _, example in zip(range(window_size), iterator)]
            if not buffer:
                break
            read += len(buffer)
            order = _permutation(seed, rank, position.epoch, window, len(buffer))
            for offset in range(position.offset if window == position.window else 0, len(buffer)):
                yield buffer[order[offset]], (position.epoch, window, offset + 1, state)
            state, window = stream.state_dict(), window + 1
        if read == 0 and position.window == 0 and position.state is None:
            raise DataError(f"rank {rank}'s share of the training stream is empty: fewer examples (or shards) than "
                            f"processes")
        position = StreamPosition(position.epoch + 1)


class _Decode(torch.utils.data.Dataset):
    """Map-style only in name: the sampler hands over whole records, and each worker decodes and transforms one."""

    def __init__(self, transform: ExampleTransform):
        self.transform = transform

    def __getitem__(self, item: tuple[dict, int]) -> dict:
        record, key = item
        t = self.transform
        value = record[t.image_column]
        inputs, valid = t.inputs(value, key)  # the map-style path's own decode + seeded transform + skip-and-warn
        return {**inputs, "valid": valid, "labels": record[t.label_column], "index": image_identity(value)}


def image_identity(value: Any) -> int:
    """A stable 63-bit id of an image record (path, else bytes): counts a broken image once over epochs and ranks."""
    if isinstance(value, dict):
        data = (value.get("path") or "").encode() if value.get("bytes") is None else value["bytes"]
    else:
        data = str(value).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class _Batches:
    """The loader's batch sampler: lists of (record, augmentation key); notes each batch's end position."""

    def __init__(self, loader: StreamLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[list]:
        lo, batch = self.loader, []
        for record, (epoch, window, offset, state) in records(lo.stream, lo.seed, lo.rank, lo.window_size,
                                                              lo.position):
            # the augmentation key: unique per (rank, local epoch, place in the epoch); ExampleTransform mixes in
            # the seed
            batch.append((record, (((lo.rank << 24) + epoch) << 40) + window * lo.window_size + offset))
            if len(batch) == lo.batch_size:
                lo.pending.append(StreamPosition(epoch, window, offset, state))
                yield batch
                batch = []


class StreamLoader:
    """The training loader of a streaming run: `len()` micro-batches of this rank's stream, on the device.

    It has the attributes the loop uses on a map-style loader (`set_epoch`, `skip_first_batches`, `len`) and is not
    passed through `accelerator.prepare` (each rank's stream is already its own share)."""

    def __init__(self, stream, transform: ExampleTransform, batch_size: int, num_batches: int, num_workers: int,
                 device, seed: int, rank: int, window_size: int):
        self.stream, self.transform, self.batch_size, self.num_batches = stream, transform, batch_size, num_batches
        self.num_workers, self.device, self.seed, self.rank, self.window_size = (num_workers, device, seed, rank,
                                                                                 window_size)
        self.position, self.done, self.pending = StreamPosition(), 0, deque()

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        pass  # local epochs are counted by the stream itself

    def skip_first_batches(self, num_batches: int) -> StreamLoader:
        if num_batches != self.done:  # e.g. a checkpoint of a run without --streaming: it has no stream position
            raise ValueError(f"resuming at batch {num_batches}, but the checkpoint's stream position is at batch "
                             f"{self.done}: resume a --streaming run from a checkpoint that run wrote")
        return self

    def __iter__(self) -> Iterator[dict]:
        self.pending.clear()
        loader = torch.utils.data.DataLoader(_Decode(self.transform), batch_sampler=_Batches(self),
                                             collate_fn=collate_fn, num_workers=self.num_workers)
        for batch in loader:
            self.position, self.done = self.pending.popleft(), self.done + 1
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            if self.done >= self.num_batches:
                return

    def state(self) -> dict:
        return {"batches": self.done, **asdict(self.position)}

    def load_state(self, saved: list[dict], process_index: int, num_processes: int, where: Path) -> None:
        if len(saved) != num_processes:
            raise ValueError(f"{where} holds the stream positions of {len(saved)} processes, this run has "
                             f"{num_processes}: resume a streaming run with the same number of processes")
        mine = dict(saved[process_index])
        self.done = mine.pop("batches")
        self.position = StreamPosition(**mine)


def make_stream_loaders(args, data: ImageClassificationData, processor, seed: int, state=None):
    """(train StreamLoader of `--max_train_steps` optimizer steps, eval DataLoader, sampler stand-in, train transform):
    what `classification.make_loaders` returns. `state`: rank, world size and device (accelerate's PartialState by
    default)."""
    from accelerate import PartialState
    from datasets.distributed import split_dataset_by_node

    accelerator = state or PartialState()
    max_train_steps = args.max_train_steps
    train_transform = ExampleTransform(processor, data.image_column, data.label_column, train=True, seed=seed)
    eval_transform = ExampleTransform(processor, data.image_column, data.label_column, train=False, seed=seed)
    share = split_dataset_by_node(data.train, accelerator.process_index, accelerator.num_processes)
    train_dl = StreamLoader(share, train_transform, args.per_device_train_batch_size,
                            max_train_steps * args.gradient_accumulation_steps, args.dataloader_num_workers,
                            accelerator.device, seed, accelerator.process_index, args.shuffle_buffer_size)
    eval_dl = torch.utils.data.DataLoader(data.validation.with_transform(eval_transform),
                                          batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn,
                                          num_workers=args.dataloader_num_workers)
    return train_dl, eval_dl, train_dl, train_transform


def stream_record(train_dl) -> dict:
    """For a checkpoint's trainer_state.json: every rank's stream position (call on every rank: it gathers)."""
    from accelerate.utils import gather_object

    return {STREAM_RECORD_KEY: gather_object([train_dl.state()])}


__all__ = ["STREAM_RECORD_KEY", "StreamLoader", "StreamPosition", "image_identity", "load_streaming_data",
           "make_stream_loaders", "records", "stream_record"]
