"""Write hub-ready folders whole or not at all, and check that a folder really loads as remote code.

A hub-ready folder holds `config.json` (with an `auto_map` for AutoConfig, AutoModel and
AutoModelForImageClassification), `model.safetensors`, `preprocessor_config.json` (with its own `auto_map`), the
copied `.py` files and a model card `README.md`. Not remote code: never imported by the modeling files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

REMOTE_FILES = ("configuration_vit_hf.py", "modeling_vit_hf.py", "image_processing_vit_hf.py")
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForImageClassification")
_ALLOWED_IMPORTS = {"torch", "einops", "transformers", "numpy", "PIL", "math", "collections", "typing", "__future__"}


class HubFolderError(RuntimeError):
    pass


def check_hub_folder(folder: str | Path) -> None:
    """Raise `HubFolderError` naming what is missing for `trust_remote_code` loading (the packaging doctor)."""
    folder = Path(folder)
    problems = []
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_FILES):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
    if (folder / "config.json").is_file():
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
        problems += [f"config.json auto_map has no {c}" for c in AUTO_CLASSES if c not in auto_map]
    if (folder / "preprocessor_config.json").is_file():
        auto_map = json.loads((folder / "preprocessor_config.json").read_text()).get("auto_map", {})
        if "AutoImageProcessor" not in auto_map:
            problems.append("preprocessor_config.json auto_map has no AutoImageProcessor")
    for name in REMOTE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = re.match(r"^(?:from|import)\s+([\w.]+)", line)
            if m and not m.group(1).startswith(".") and m.group(1).split(".")[0] not in _ALLOWED_IMPORTS:
                problems.append(f"{name} imports {m.group(1)!r}, which a consumer machine may not have")
    if problems:
        raise HubFolderError(f"{folder} is not a loadable remote-code folder: " + "; ".join(problems))


def save_hub_folder(model, processor, out_dir: str | Path, card_kwargs: dict | None = None, extra_files=None) -> Path:
    """Save model + processor + model card into `out_dir` atomically: written to a temporary sibling, checked with
    `check_hub_folder`, then renamed into place. An existing `out_dir` is replaced only once the new one is complete.

    Args:
        card_kwargs: keyword arguments for `vit_hf.model_card.render_model_card` (None: no card).
        extra_files: `{name: path}` copied into the folder (e.g. plots for the card).
    """
    from .model_card import render_model_card

    out_dir = Path(out_dir).resolve()
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
            card_kwargs.setdefault("repo_id", f"<owner>/{card_kwargs['model_name']}")
            render_model_card(tmp, model.config, processor, **card_kwargs)
        check_hub_folder(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
