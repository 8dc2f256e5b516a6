"""What several test modules share: real-digit data, the training-script launchers, the loopback-Hub client and
consumer set-up, the CLI runner and the small transformers configs. Test modules import from here, never from each
other; fixtures live in conftest.py.

Heavy libraries (datasets, scikit-learn, accelerate) are imported inside the functions that need them, so a subprocess
that imports this module to reuse one helper stays cheap.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vit_hf.hub import REMOTE_FILES

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
ACCELERATE = Path(sys.executable).parent / "accelerate"
# `accelerate launch` through its own module: the same parser and `launch_command`, without the CLI's other
# subcommands (`estimate-memory` imports timm and transformers' models: 2.4 s of CPU per launch). test_train.py's DDP
# run keeps the console script users type.
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


# ----------------------------------------------------------------------------------------------------------------------
# Real images: scikit-learn's bundled handwritten digits
# ----------------------------------------------------------------------------------------------------------------------

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_images(num: int, classes=(0, 1, 2), size: int = 16, offset: int = 0) -> list[tuple[np.ndarray, int]]:
    """`num` real handwritten digits of the given classes (round-robin), 8x8 upscaled to `size`, uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    by_class = {c: np.flatnonzero(digits.target == c) for c in classes}
    out = []
    for i in range(num):
        c = classes[i % len(classes)]
        idx = by_class[c][(offset + i // len(classes)) % len(by_class[c])]
        image = PIL.Image.fromarray((digits.images[idx] * 255 / 16).astype(np.uint8))
        out.append((np.asarray(image.resize((size, size), PIL.Image.Resampling.BICUBIC)), int(c)))
    return out


def make_digits_folder(
    root: Path, splits: dict[str, int], classes=(0, 1, 2), size: int = 16, names=DIGIT_NAMES
) -> Path:
    """An image folder `root/<split>/<class name>/<i>.png` of real digits (grey PNGs)."""
    for s, (split, num) in enumerate(splits.items()):
        for i, (array, label) in enumerate(digit_images(num, classes, size, offset=1000 * s)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(array).save(folder / f"{split}_{i:04d}.png")
    return root


def add_odd_images(folder: Path) -> dict[str, Path]:
    """A corrupt PNG (truncated), an RGB-palette image and an RGBA image next to the grey ones of `folder`."""
    grey = next(folder.glob("*.png"))
    good = np.asarray(PIL.Image.open(grey))
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(grey.read_bytes()[:40])  # header only: PIL opens it and fails on load()
    palette = folder / "palette.png"
    PIL.Image.fromarray(np.stack([good] * 3, -1)).convert("P", palette=PIL.Image.Palette.ADAPTIVE).save(palette)
    rgba = folder / "rgba.png"
    PIL.Image.fromarray(np.stack([good] * 3 + [np.full_like(good, 200)], -1), "RGBA").save(rgba)
    return {"corrupt": corrupt, "palette": palette, "rgba": rgba, "grey": grey}


def digits_dataset(num: int, offset: int, broken: tuple[int, ...] = ()):
    """Real digits as a `datasets.Dataset` of PNG bytes (the demo's own writer), classes round-robin; `broken` rows
    keep only the PNG header (PIL opens them and fails on load())."""
    from datasets import ClassLabel, Dataset, Features, Image

    from vit_hf.train.data import _png_bytes

    items = digit_images(num, classes=(0, 1, 2), offset=offset)
    images = [{"bytes": _png_bytes(a)[: 40 if i in broken else None], "path": None} for i, (a, _) in enumerate(items)]
    features = Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES[:3])})
    return Dataset.from_dict({"image": images, "label": [c for _, c in items]}, features=features)


# ----------------------------------------------------------------------------------------------------------------------
# The training script: arguments, in a subprocess, under `accelerate launch`, and its saved weights
# ----------------------------------------------------------------------------------------------------------------------

# A 16x16 grey digit, patch 4: 16 tokens + class token; the "test" preset's odd widths (head_dim != heads).
SMALL = ["--model_name_or_path", "test", "--image_size", "16", "--patch_size", "4", "--num_channels", "1",
         "--crop_pct", "1.0", "--logging_steps", "1"]


def data_args(root: Path) -> list[str]:
    return ["--train_dir", str(root / "train"), "--validation_dir", str(root / "validation")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: one thread per process (several run at once), this checkout first."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    env.update(extra)
    return env


def run_train(argv: list[str], timeout: int = 300, expect: int = 0, **env: str) -> subprocess.CompletedProcess:
    """`python -m vit_hf.train ARGV` in a subprocess; raise with its stderr unless it exits with `expect`."""
    proc = subprocess.run([sys.executable, "-m", "vit_hf.train", *argv], cwd=REPO, env=child_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != expect:
        raise AssertionError(f"exit {proc.returncode} (expected {expect})\nSTDERR:\n{proc.stderr[-6000:]}")
    return proc


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons (state, gradient state): clear them between in-process runs."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train_in_process(argv: list[str]) -> tuple[dict, str]:
    """`vit_hf.train.main(ARGV)` in this process, as a `run_train` child would run it (one thread: the same reduction
    order, so the same weights to the bit; fresh accelerate state): (its results, what it logged).

    For the runs of a test that need no process of their own (a reference, a resume); a run that is killed, or that
    has to start from a fresh interpreter, stays a `run_train` subprocess."""
    import io
    import logging

    from vit_hf import train as train_mod

    log, threads = io.StringIO(), torch.get_num_threads()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("vit_hf.train")
    logger.addHandler(handler)
    torch.set_num_threads(1)
    reset_accelerate()
    try:
        results = train_mod.main([str(a) for a in argv])
    finally:
        logger.removeHandler(handler)
        torch.set_num_threads(threads)
        reset_accelerate()
    return results, log.getvalue()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, exact: bool = True) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if exact:
            assert torch.equal(wa[key], wb[key]), f"{key} differs: max |d| = {(wa[key] - wb[key]).abs().max()}"
        else:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


# ----------------------------------------------------------------------------------------------------------------------
# The loopback Hub (tests/hub_server.py): tokens, this process's client, a consumer machine's environment
# ----------------------------------------------------------------------------------------------------------------------

TOKENS = {"hf_tester_write": "tester", "hf_bob_write": "bob"}
TOKEN = "hf_tester_write"
HUB_LABELS = ["sneaker", "bag", "coat"]
# What a pushed vit_hf folder holds on the Hub: the model, its processor, its card and the remote code.
HUB_FILES = {".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json",
             *REMOTE_FILES}


def go_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's huggingface_hub was imported offline (conftest): switch it online for the loopback Hub only.

    Both flags are read on every call. Xet off: the client then speaks the LFS batch protocol the server implements.
    """
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def point_client_at(monkeypatch: pytest.MonkeyPatch, hub, cache: Path) -> None:
    """`go_online`, and calls that take no `endpoint=` (hf_hub_download, timm's Hub loader) go to `hub`, with their
    own cache and the test token."""
    import huggingface_hub.constants as constants

    go_online(monkeypatch)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # transformers keeps one HfApi, made with the endpoint of its first use (an earlier test's, in the same xdist
    # worker): drop it so that push_to_hub makes one for this Hub
    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(transformers_hub, "_hf_api", None)


def consumer_env(hub, hf_home, offline: bool = False) -> dict:
    """A user's machine: its own cache, the loopback Hub as endpoint, a read token, LFS rather than Xet."""
    env = dict(os.environ)
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(hf_home), HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1",
               HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def publish_folder(api, folder: Path, repo: str) -> str:
    """Upload `folder` as it is (`HfApi.upload_folder`, the way repos of other libraries get there): the commit id."""
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=folder).oid


def repo_files(hub, repo_id: str, revision: str = "main") -> set[str]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    return {f.path for f in api.list_repo_tree(repo_id, revision=revision, recursive=True) if hasattr(f, "size")}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path: compare two to prove a step left the folder as it was."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_image(tmp_path: Path) -> tuple[PIL.Image.Image, Path]:
    image = PIL.Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype("uint8"))
    path = tmp_path / "image.png"
    image.save(path)
    return image, path


def make_model(seed: int):
    """A tiny random 3-class classifier with named labels, and its image processor."""
    from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor

    config = VitHfConfig.from_preset(
        "test", num_labels=3, id2label=dict(enumerate(HUB_LABELS)), label2id={n: i for i, n in enumerate(HUB_LABELS)}
    )
    torch.manual_seed(seed)
    model = VitHfForImageClassification(config).eval()
    return model, VitHfImageProcessor.from_model_config(config)


def local_logits(model, processor, image) -> list[float]:
    with torch.no_grad():
        return model(**processor(image, return_tensors="pt")).logits[0].tolist()


# ----------------------------------------------------------------------------------------------------------------------
# Command lines run in-process, and what they print
# ----------------------------------------------------------------------------------------------------------------------


def run_cli_captured(module, argv: list, capsys) -> tuple[int, str, str]:
    """A CLI module's entry point as `python -m` runs it (`convert.common.run_cli(module.main)`), in-process:
    (exit code, stdout, stderr)."""
    from convert.common import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(module.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def run_convert(argv: list, capsys) -> tuple[int, str, str]:
    """`python -m convert ARGV` (the front door), in-process: (exit code, stdout, stderr)."""
    import convert.__main__ as front_door

    return run_cli_captured(front_door, argv, capsys)


def float64_rows(stdout: str) -> list[float]:
    """The max |diff| of every float64 parity line a converter printed."""
    return [float(ln.split("max abs diff ")[1].split(",")[0]) for ln in stdout.splitlines()
            if ln.startswith("parity vs") and "(float64)" in ln]


# ----------------------------------------------------------------------------------------------------------------------
# Tiny transformers configurations, and visibly random weights
# ----------------------------------------------------------------------------------------------------------------------

TRANSFORMERS_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TRANSFORMERS_VIT = dict(TRANSFORMERS_SMALL, intermediate_size=37, layer_norm_eps=1e-12)
TRANSFORMERS_TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                         vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=1)
TRANSFORMERS_LABELS = {0: "cat", 1: "dog", 2: "eel"}


def save_random_family(families: dict, name: str, folder, safe_serialization: bool = True):
    """`families[name]` = (model builder, (processor class, kwargs) or None): a randomised model (seeded by the name)
    and its processor written by transformers' own `save_pretrained` into `folder` (returned)."""
    build, processor = families[name]
    model = randomize(build(), seed=len(name))
    model.save_pretrained(folder, safe_serialization=safe_serialization)
    if processor is not None:
        cls, kwargs = processor
        cls(**kwargs).save_pretrained(folder)
    return folder


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor visibly random (LayerNorm scales != 1, LayerScale != init), so no mapping hides at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            values = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
            if p.ndim == 1 and ("norm" in name or "lambda" in name) and name.endswith(("weight", "lambda1")):
                values = 1.0 + values
            p.copy_(values.to(p.dtype))
    return model
