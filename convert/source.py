"""What a SOURCE argument is: a local file, a local folder, or a Hub repo id, and which format it holds.

The format is read from what is there, never from a flag:
- a folder with `config.json`: `model_type` -> transformers layout; `architecture` (with `pretrained_cfg`, or the
  legacy flat timm config) -> timm Hub layout (the same test transformers uses to spot a timm repo);
- a file: `.npz` (or `path.npz:subtree`) -> Google; `.safetensors` / `.pth` / `.pt` / `.bin` -> a timm state dict,
  `.pth.tar` -> a timm training checkpoint (read as a state dict, convert/common.py `load_checkpoint`),
  unless its keys are a transformers model's (then its folder, with config.json, is what converts);
- `owner/name[@REV]` that is not a local path -> the Hub (convert/hub.py), then as the downloaded folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convert.checkpoints import read_json_object
from convert.common import ConversionError
from convert.hub import download
from vit_hf.cli import hub_revision, parse_hub_ref

TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
TORCH_NAMES = (*TORCH_SUFFIXES, ".pth.tar")
# a vit_hf.train checkpoint (`step_N` / `epoch_N`) keeps its hub-ready model in this subfolder
TRAIN_MODEL_SUBDIR = "hf_model"  # timm's CheckpointSaver writes `last.pth.tar`, `model_best.pth.tar`
# first keys of transformers ViT-family state dicts, as stored on disk (legacy names; reference §2)
TRANSFORMERS_KEY_MARKS = ("embeddings.patch_embeddings.", "vision_model.embeddings.", "embeddings.patch_embedding.",
                          "encoder.layer.", "encoder.layers.")


@dataclass
class Source:
    """kind: 'timm-file', 'npz', 'timm-folder' or 'transformers-folder'; `repo` / `commit` for a Hub download."""

    kind: str
    path: Path
    text: str
    repo: str | None = None
    commit: str | None = None


def folder_kind(folder: Path, config: dict | None = None) -> str:
    """'timm-folder' or 'transformers-folder' from config.json; anything else is refused in one line."""
    if config is None:
        path = folder / "config.json"
        if not path.is_file() and (folder / TRAIN_MODEL_SUBDIR / "config.json").is_file():
            model = folder / TRAIN_MODEL_SUBDIR
            raise ConversionError(
                f"{folder} is a vit_hf.train checkpoint (for --resume_from_checkpoint): its model, {model}, is already "
                f"a vit_hf folder, nothing to convert: load it with from_pretrained({str(model)!r}, "
                f"trust_remote_code=True) or export it with python -m vit_hf.export {model} OUT_DIR"
            )
        if not path.is_file():
            weights = sorted(p.name for p in folder.iterdir() if p.suffix in (*TORCH_SUFFIXES, ".npz"))[:3]
            hint = f"; to convert a weights file in it, pass the file (e.g. {folder / weights[0]})" if weights else ""
            raise ConversionError(f"{folder} is a folder without config.json: not a timm or transformers model "
                                  f"folder{hint}")
        config = read_json_object(path)
    if "model_type" in config:
        return "transformers-folder"
    if "architecture" in config:
        return "timm-folder"
    raise ConversionError(
        f"{folder / 'config.json'} has neither `model_type` (transformers) nor `architecture` (timm): format unknown"
    )


def refuse_early(config: dict, repo: str) -> None:
    """What config.json alone refuses (an unknown format, an architecture or model_type that is not a plain ViT),
    checked before a repo's weights are downloaded."""
    kind = folder_kind(Path(repo), config)
    if kind == "timm-folder":
        from convert.timm_hub import check_architecture

        check_architecture(config["architecture"])
        return
    from convert.transformers import family_of

    family_of(config.get("model_type"))


def _sniff_transformers(path: Path) -> None:
    """A transformers model's weights file, passed alone: its config.json decides the architecture, so refuse and
    point at the folder (only .safetensors can be listed without loading the tensors)."""
    if path.suffix != ".safetensors":
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError):
        return  # unreadable: the loader reports it in its own words
    if any(k.startswith(TRANSFORMERS_KEY_MARKS) or k.startswith("vit." + TRANSFORMERS_KEY_MARKS[0]) for k in keys):
        raise ConversionError(
            f"{path} holds a transformers model's weights (keys such as {keys[0]!r}): convert the folder that holds it "
            f"with its config.json (python -m convert {path.parent} OUT_DIR), or the Hub repo id"
        )


def _file_kind(path: Path, text: str) -> Source:
    if path.suffix == ".npz":
        return Source("npz", path, text)
    if path.name.endswith(TORCH_NAMES):
        _sniff_transformers(path)
        return Source("timm-file", path, text)
    if path.name == "config.json":
        raise ConversionError(f"{path} is a config file: pass the folder that holds it ({path.parent})")
    raise ConversionError(
        f"{path}: unknown file type {path.suffix or '(no suffix)'}; a file source is .safetensors, .pth/.pt/.bin "
        f"(timm state dict), .pth.tar (timm training checkpoint) or .npz (Google)"
    )


def resolve(text: str, revision: str | None = None, offline: bool = False) -> Source:
    """SOURCE -> Source: local paths first (a path that exists is never a repo id), then `owner/name[@REV]`."""
    path = Path(text)
    if path.is_dir():
        if revision:
            raise ConversionError(f"--revision applies to a Hub repo id; {text} is a local folder: drop --revision")
        return Source(folder_kind(path), path, text)
    if path.is_file():
        return _file_kind(path, text)
    base, _, subtree = text.rpartition(":")
    if base.endswith(".npz") and Path(base).is_file() and subtree:
        return Source("npz", Path(base), text)  # `path.npz:img` selects a two-tower file's image tower
    if parse_hub_ref(text) is None:
        raise ConversionError(f"{text}: no such file or folder, and not a Hub repo id (owner/name or owner/name@REV)")
    try:
        repo, revision = hub_revision(text, revision)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    got = download(repo, revision, offline=offline, check=lambda config: refuse_early(config, repo))
    return Source(folder_kind(got.folder, got.config), got.folder, text, repo=repo, commit=got.commit)
