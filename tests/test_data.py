"""Data loading and preprocessing for training: image folders offline, label maps, the imagefolder gotchas, tolerant
decoding of broken images, and augmentation seeding that makes resume exact. Real images (scikit-learn's bundled
digits), written to temporary folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import DIGIT_NAMES, add_odd_images, digit_images, make_digits_folder

from vit_hf import VitHfImageProcessor
from vit_hf.train.data import (
    INDEX_COLUMN,
    DataError,
    EpochShuffleSampler,
    ExampleTransform,
    _read_idx,
    collate_fn,
    load_image_classification_data,
    prepare_sklearn_digits,
)


def test_image_folder_offline_labels_from_class_dirs(tmp_path):
    root = make_digits_folder(tmp_path, {"train": 12, "validation": 6}, classes=(0, 1, 2))
    data = load_image_classification_data(train_dir=root / "train", validation_dir=root / "validation")
    assert data.labels == ["one", "two", "zero"]  # ClassLabel names: the sorted directory names
    assert len(data.train) == 12 and len(data.validation) == 6
    assert data.id2label == {0: "one", 1: "two", 2: "zero"} and data.label2id["zero"] == 2
    assert data.train[INDEX_COLUMN] == list(range(12))
    # every example's label matches its class folder
    for ex in data.validation:
        assert Path(ex["image"]["path"]).parent.name == data.labels[ex["label"]]


def test_validation_folder_missing_a_class_keeps_label_ids(tmp_path):
    make_digits_folder(tmp_path, {"train": 9}, classes=(0, 1, 2))
    make_digits_folder(tmp_path, {"validation": 4}, classes=(0, 1))
    data = load_image_classification_data(train_dir=tmp_path / "train", validation_dir=tmp_path / "validation")
    assert data.labels == ["one", "two", "zero"]
    names = {data.labels[ex["label"]] for ex in data.validation}
    assert names == {"zero", "one"}


def test_train_val_split_is_stratified(tmp_path):
    make_digits_folder(tmp_path, {"train": 60}, classes=(0, 1, 2))
    data = load_image_classification_data(train_dir=tmp_path / "train", train_val_split=0.2, seed=3)
    assert len(data.train) == 48 and len(data.validation) == 12
    assert sorted(np.bincount(data.validation["label"]).tolist()) == [4, 4, 4]


def test_max_samples_subsample(tmp_path):
    make_digits_folder(tmp_path, {"train": 30, "validation": 12})
    data = load_image_classification_data(
        train_dir=tmp_path / "train", validation_dir=tmp_path / "validation", max_train_samples=10, max_eval_samples=5
    )
    assert (len(data.train), len(data.validation)) == (10, 5)
    assert data.train[INDEX_COLUMN] == list(range(10))


def test_single_class_folder_is_a_clear_error(tmp_path):
    make_digits_folder(tmp_path, {"train": 6}, classes=(3,))
    with pytest.raises(DataError, match=r"one class subfolder \(three\); classification needs two or more.*--task mim"):
        load_image_classification_data(train_dir=tmp_path / "train")


def test_single_class_with_labels_is_a_clear_error(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    images = [PIL.Image.fromarray(a) for a, _ in digit_images(4, classes=(1,))]
    features = Features({"image": Image(), "label": ClassLabel(names=["one"])})
    ds = Dataset.from_dict({"image": images, "label": [0] * 4}, features=features)
    ds_dict = DatasetDict(train=ds, validation=ds)
    ds_dict.save_to_disk(str(tmp_path / "one_class"))
    with pytest.raises(DataError, match="only one class"):
        load_image_classification_data(dataset_name=str(tmp_path / "one_class"))


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "dog").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        load_image_classification_data(train_dir=tmp_path / "train")
    with pytest.raises(DataError, match="no such folder"):
        load_image_classification_data(train_dir=tmp_path / "nowhere")


def test_metadata_int_labels_are_cast_to_classlabel(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    rows = ["file_name,label"]
    for i, (array, label) in enumerate(digit_images(12, classes=(0, 1, 2))):
        PIL.Image.fromarray(array).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    data = load_image_classification_data(train_dir=folder, train_val_split=0.25)
    assert data.labels == ["0", "1", "2"]
    assert type(data.train.features["label"]).__name__ == "ClassLabel"


def test_string_labels_are_class_encoded(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Image, Value

    pairs = digit_images(12, classes=(0, 1, 2))
    features = Features({"img": Image(), "name": Value("string")})
    ds = Dataset.from_dict(
        {"img": [PIL.Image.fromarray(a) for a, _ in pairs], "name": [DIGIT_NAMES[c] for _, c in pairs]},
        features=features,
    )
    DatasetDict(train=ds, test=ds.select(range(6))).save_to_disk(str(tmp_path / "d"))
    data = load_image_classification_data(dataset_name=str(tmp_path / "d"), image_column="img", label_column="name")
    assert data.labels == ["one", "two", "zero"]
    assert len(data.validation) == 6  # a "test" split serves as validation
    with pytest.raises(DataError, match="no image column 'image'"):
        load_image_classification_data(dataset_name=str(tmp_path / "d"), label_column="name")


def test_corrupt_grey_palette_rgba_images(tmp_path):
    root = make_digits_folder(tmp_path, {"train": 6, "validation": 3}, classes=(0, 1))
    odd = add_odd_images(root / "train" / "zero")
    data = load_image_classification_data(train_dir=root / "train", validation_dir=root / "validation")
    processor = VitHfImageProcessor(size=16, crop_pct=1.0, num_channels=3)
    for train in (True, False):
        transform = ExampleTransform(processor, data.image_column, data.label_column, train=train, seed=0)
        batch = collate_fn(list(data.train.with_transform(transform)))
        assert batch["pixel_values"].shape == (9, 3, 16, 16)
        paths = [Path(ex["image"]["path"]).name for ex in data.train]
        bad = [paths[i] for i in batch["index"][~batch["valid"]].tolist()]
        assert bad == [odd["corrupt"].name]
        assert torch.isfinite(batch["pixel_values"]).all()
        assert batch["pixel_values"][~batch["valid"]].abs().sum() == 0
    # the grey, palette and RGBA versions of one digit become the same RGB pixels (alpha over white aside)
    eval_t = processor.eval_transforms()
    grey = eval_t(PIL.Image.open(odd["grey"]))
    assert torch.allclose(eval_t(PIL.Image.open(odd["palette"])), grey, atol=0.1)


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    root = make_digits_folder(tmp_path, {"train": 8}, classes=(0, 1))
    data = load_image_classification_data(train_dir=root / "train", train_val_split=0.25)
    processor = VitHfImageProcessor(size=16, num_channels=1, image_mean=[0.5], image_std=[0.5])
    transform = ExampleTransform(processor, data.image_column, data.label_column, train=True, seed=7)
    ds = data.train.with_transform(transform)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    forward = collate_fn([ds[i] for i in range(len(ds))])["pixel_values"]
    assert torch.equal(torch.random.get_rng_state(), before), "the transform must not consume the global RNG"
    torch.manual_seed(999)  # a different global state must not matter
    backward = collate_fn([ds[i] for i in reversed(range(len(ds)))])["pixel_values"].flip(0)
    assert torch.equal(forward, backward)
    transform.epoch = 1
    other_epoch = collate_fn([ds[i] for i in range(len(ds))])["pixel_values"]
    assert not torch.equal(forward, other_epoch)


def test_epoch_shuffle_sampler():
    a, b = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    first = list(a)
    assert sorted(first) == list(range(50)) and first == list(b)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(EpochShuffleSampler(50, seed=2)) != first


def test_read_idx_roundtrip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 5, 28, 28) + images.tobytes())
    assert np.array_equal(_read_idx(path), images)


def test_prepare_sklearn_digits(tmp_path):
    path = prepare_sklearn_digits(tmp_path)
    data = load_image_classification_data(dataset_name=str(path))
    assert data.labels == [str(i) for i in range(10)]
    assert len(data.train) + len(data.validation) == 1797
    assert prepare_sklearn_digits(tmp_path) == path  # cached
