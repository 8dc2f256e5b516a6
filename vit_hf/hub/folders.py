"""Write hub-ready folders whole or not at all, and check that a folder really loads as remote code.

A hub-ready folder holds `config.json` (with an `auto_map` for AutoConfig, AutoModel and
AutoModelForImageClassification), `model.safetensors`, `preprocessor_config.json` (with its own `auto_map`), the
copied `.py` files and a model card `README.md`. Not remote code: never imported by the modeling files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.image_processing_base import ImageProcessingMixin

REMOTE_FILES = (
    "configuration_vit_hf.py", "switches_vit_hf.py", "layers_vit_hf.py", "rope_vit_hf.py", "modeling_vit_hf.py",
    "image_processing_vit_hf.py", "naflex_vit_hf.py", "naflex_processing_vit_hf.py", "pixels_vit_hf.py",
)
HUB_FILE_NAMES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", *REMOTE_FILES)
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForImageClassification")
# what a consumer of the remote code has: transformers' own requirements plus einops, and the standard library
_ALLOWED_IMPORTS = {"torch", "einops", "transformers", "numpy", "PIL", *sys.stdlib_module_names}


class HubFolderError(RuntimeError):
    pass


def check_hub_folder(folder: str | Path) -> None:
    """Raise `HubFolderError` naming what is missing for `trust_remote_code` loading (the packaging doctor)."""
    folder = Path(folder)
    problems = []
    # The code files a load imports, not this version's list: a folder saved by an earlier vit_hf has fewer files.
    needed = code_files(folder)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", *sorted(needed)):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
    if (folder / "config.json").is_file():
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
        problems += [f"config.json auto_map has no {c}" for c in AUTO_CLASSES if c not in auto_map]
    if (folder / "preprocessor_config.json").is_file():
        auto_map = json.loads((folder / "preprocessor_config.json").read_text()).get("auto_map", {})
        if "AutoImageProcessor" not in auto_map:
            problems.append("preprocessor_config.json auto_map has no AutoImageProcessor")
    for name in sorted(needed):
        path = folder / name
        if path.is_file():
            problems += [f"{name} imports {m!r}, which a consumer machine may not have" for m in _foreign_imports(path)]
    if problems:
        raise HubFolderError(f"{folder} is not a loadable remote-code folder: " + "; ".join(problems))


def code_files(folder: Path) -> set[str]:
    """The `.py` files a remote-code load of `folder` imports: the modules its auto_maps name (values like
    "module.Class", lists or dicts of them; "repo--module.Class" lives in another repo) and, transitively, their
    relative imports (what transformers' `get_relative_import_files` follows)."""
    from transformers.dynamic_module_utils import get_relative_imports

    todo = [f"{ref.split('.')[0]}.py" for name in ("config.json", "preprocessor_config.json")
            for ref in _auto_map_refs(folder / name) if ref and "--" not in ref]
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        if (folder / name).is_file():
            todo += [f"{module}.py" for module in get_relative_imports(str(folder / name))]
    return found


def _auto_map_refs(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        auto_map = json.loads(path.read_text()).get("auto_map") or {}
    except (json.JSONDecodeError, AttributeError):
        return []
    refs, todo = [], [auto_map]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            refs.append(value)
        elif isinstance(value, (list, tuple)):
            todo += list(value)
        elif isinstance(value, dict):
            todo += list(value.values())
    return refs


def _foreign_imports(path: Path) -> list[str]:
    """The modules `path` imports that a consumer may lack, by transformers' own scan (every absolute import,
    indented ones included: what its check_imports enforces). A byte-for-byte copy of this package's own file is
    not re-scanned (tests/test_remote_code.py scans those): parsing the remote-code files costs ~0.3 s per folder."""
    own = Path(__file__).resolve().parent.parent / path.name
    if own.is_file() and own.read_bytes() == path.read_bytes():
        return []
    from transformers.dynamic_module_utils import get_imports

    return [module for module in get_imports(str(path)) if module not in _ALLOWED_IMPORTS]


def _apply_umask(folder: Path) -> None:
    """mkdtemp makes 0700 folders (and some writers 0600 files): give the result the permissions a plain mkdir /
    open would have had, so a model folder is as readable as any other file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for entry in folder.iterdir():
        entry.chmod(0o666 & ~umask)


def _is_previous_output(folder: Path) -> bool:
    """True for a folder holding only what `save_hub_folder` writes (safe to swap out as a whole)."""
    return all(
        entry.is_file() and (entry.name in HUB_FILE_NAMES or entry.suffix in (".py", ".png", ".md"))
        for entry in folder.iterdir()
    )


def save_hub_folder(
    model: PreTrainedModel,
    processor: ImageProcessingMixin,
    out_dir: str | Path,
    card_kwargs: dict | None = None,
    extra_files: dict[str, str | Path] | None = None,
) -> Path:
    """Save model + processor + model card into `out_dir`, never leaving a half-written folder and never deleting
    anything that is not ours.

    Everything is first written to a temporary sibling and checked with `check_hub_folder`. Then:
    - `out_dir` missing, or holding only a previous output of this function: the new folder is renamed into place
      as a whole (atomic);
    - `out_dir` holding other files too (checkpoints, logs, a source checkpoint): each hub file is moved in with an
      atomic rename, the weights last but one and the card last; nothing else in `out_dir` is touched.

    Args:
        card_kwargs: keyword arguments for `vit_hf.hub.render_model_card` (None: no card).
        extra_files: `{name: path}` copied into the folder (e.g. plots for the card).
    """
    from .cards import render_model_card

    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise HubFolderError(f"{out_dir} exists and is a file: choose a directory to write the model folder to")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        if card_kwargs is not None:
            # the card is rendered in the temporary folder: name it after the final one
            card_kwargs = {"model_name": out_dir.name, **card_kwargs}
            if not card_kwargs.get("repo_id"):
                card_kwargs["repo_id"] = f"<owner>/{card_kwargs['model_name']}"
            render_model_card(tmp, model.config, processor, **card_kwargs)
        check_hub_folder(tmp)
        _apply_umask(tmp)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
        elif _is_previous_output(out_dir):
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            # Config and code before the weights, the card last: a reader never sees new weights with old code.
            order = {"model.safetensors": 1, "README.md": 2}
            for entry in sorted(tmp.iterdir(), key=lambda e: (order.get(e.name, 0), e.name)):
                os.replace(entry, out_dir / entry.name)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
