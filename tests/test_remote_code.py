"""A saved folder loads as remote code on a machine that has torch, einops and transformers but not vit_hf."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from isolated import last_json_line, run_isolated

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
from vit_hf.hub import HubFolderError, check_hub_folder

LABELS = ["sneaker", "bag", "coat"]


def save_folder(path, seed: int = 0):
    config = VitHfConfig.from_preset(
        "test", num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    torch.manual_seed(seed)
    model = VitHfForImageClassification(config).eval()
    processor = VitHfImageProcessor.from_model_config(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


@pytest.mark.slow
def test_folders_load_in_a_process_without_vit_hf(tmp_path):
    """Two folders, one named with dots and dashes (transformers makes a module name of it), in one consumer process:
    each loads through every Auto class and the pipeline as its own remote code and gives its own model's logits."""
    image = PIL.Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype("uint8"))
    image.save(tmp_path / "image.png")
    expected = {}
    for seed, dirname in enumerate(["plain", "my.model-v1.0"]):
        folder = tmp_path / dirname
        model, processor = save_folder(folder, seed)
        check_hub_folder(folder)
        with torch.no_grad():
            expected[str(folder)] = model(**processor(image)).logits[0].tolist()
    assert not np.allclose(*expected.values())  # otherwise one folder's model standing in for the other would pass

    proc = run_isolated(
        f"""
        import json, PIL.Image, torch
        from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                                  pipeline)
        image = PIL.Image.open({str(tmp_path / "image.png")!r})
        out = {{}}
        for folder in {list(expected)!r}:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            base = AutoModel.from_pretrained(folder, trust_remote_code=True)
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            fast = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, resize_backend="torch")
            with torch.no_grad():
                logits = model(**processor(image, return_tensors="pt")).logits[0].tolist()
            preds = pipeline("image-classification", model=folder, trust_remote_code=True)(image)
            out[folder] = dict(
                modules=[type(o).__module__ for o in (config, base, model, processor)],
                base=type(base).__name__, logits=logits, scores=dict((p["label"], p["score"]) for p in preds),
                backends=[processor.resize_backend, fast.resize_backend],
            )
        print(json.dumps(out))
        """,
        cwd=tmp_path,
    )
    results = last_json_line(proc)
    assert results.keys() == expected.keys()
    for folder, out in results.items():
        assert all(m.startswith("transformers_modules.") for m in out["modules"]), out["modules"]
        assert out["base"] == "VitHfModel"
        assert out["backends"] == ["pil", "torch"]  # the kwarg reaches the remote processor through AutoImageProcessor
        np.testing.assert_allclose(out["logits"], expected[folder], rtol=0, atol=1e-6)
        assert sorted(out["scores"]) == sorted(LABELS)
        probabilities = torch.tensor(expected[folder]).softmax(-1).tolist()
        for i, label in enumerate(LABELS):  # the pipeline's scores are this model's probabilities under our labels
            assert abs(out["scores"][label] - probabilities[i]) < 1e-6


def test_saved_config_names_every_auto_class(tmp_path):
    save_folder(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_vit_hf.VitHfConfig",
        "AutoModel": "modeling_vit_hf.VitHfModel",
        "AutoModelForImageClassification": "modeling_vit_hf.VitHfForImageClassification",
        "AutoBackbone": "modeling_vit_hf.VitHfBackbone",
        "AutoModelForMaskedImageModeling": "modeling_vit_hf.VitHfForMaskedImageModeling",
    }
    processor_map = json.loads((tmp_path / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoImageProcessor": "image_processing_vit_hf.VitHfImageProcessor"}


def test_packaging_check_names_what_is_missing(tmp_path):
    save_folder(tmp_path)
    (tmp_path / "modeling_vit_hf.py").unlink()
    with pytest.raises(HubFolderError, match="modeling_vit_hf.py is missing"):
        check_hub_folder(tmp_path)


def test_packaging_check_refuses_third_party_imports_but_not_the_standard_library(tmp_path):
    save_folder(tmp_path)
    modeling = tmp_path / "modeling_vit_hf.py"
    source = modeling.read_text()
    modeling.write_text("import concurrent.futures\nimport itertools\n" + source)
    check_hub_folder(tmp_path)  # standard library: every consumer has it
    modeling.write_text("import timm\n" + source)
    with pytest.raises(HubFolderError, match="modeling_vit_hf.py imports 'timm'"):
        check_hub_folder(tmp_path)


def test_the_shipped_remote_files_import_only_what_a_consumer_has():
    """check_hub_folder trusts byte-for-byte copies of these files without parsing them: this is where they are
    scanned, with transformers' own scan."""
    from transformers.dynamic_module_utils import get_imports

    import vit_hf
    from vit_hf.hub.folders import _ALLOWED_IMPORTS, REMOTE_FILES

    package = Path(vit_hf.__file__).parent
    for name in REMOTE_FILES:
        imports = set(get_imports(str(package / name)))
        assert imports and imports <= _ALLOWED_IMPORTS, (name, imports - _ALLOWED_IMPORTS)


def test_save_hub_folder_merges_into_a_folder_with_other_files(tmp_path):
    """Writing into a folder that holds other things (a source checkpoint, notes) replaces only the hub files."""
    from vit_hf.hub import save_hub_folder

    config = VitHfConfig.from_preset("test", num_labels=3)
    model, processor = VitHfForImageClassification(config), VitHfImageProcessor.from_model_config(config)
    out = tmp_path / "work"
    out.mkdir()
    (out / "ckpt.pth").write_bytes(b"source weights")
    (out / "notes.txt").write_text("mine")
    save_hub_folder(model, processor, out, card_kwargs={"repo_id": None})
    assert 'repo = "<owner>/work"' in (out / "README.md").read_text()  # named after the folder, not the temp dir
    assert (out / "ckpt.pth").read_bytes() == b"source weights" and (out / "notes.txt").read_text() == "mine"
    check_hub_folder(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    previous = out.with_name("previous")
    save_hub_folder(model, processor, previous, card_kwargs={})
    umask = os.umask(0)
    os.umask(umask)
    assert previous.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (previous / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    save_hub_folder(model, processor, previous, card_kwargs={})  # a previous output is swapped whole
    check_hub_folder(previous)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(HubFolderError, match="is a file"):
        save_hub_folder(model, processor, tmp_path / "a_file")


@pytest.mark.slow
def test_wheel_ships_the_model_card_template(tmp_path):
    """A wheel install (not only a checkout) can write model cards: the top-level template is package data."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ next to the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("vit_hf", "convert"):
        shutil.copytree(root / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "model_card.md"):
        shutil.copy(root / name, src / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    out = subprocess.run([*command, str(src)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("vit_hf-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("vit_hf/hub/model_card.md") == (root / "model_card.md").read_bytes()
