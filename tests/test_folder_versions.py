"""A folder saved by an earlier vit_hf holds that version's remote files, fewer than today's: the packaging check and
the push take the files the folder's own code imports, not this version's list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_env

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
from vit_hf.hub import HubFolderError, check_hub_folder, hub_files

ROOT = Path(__file__).resolve().parent.parent
# the parent of the commit that added layers_vit_hf.py: vit_hf 0.1.x, three remote files
EARLIER = "2dd6493^"
SAVE = """
import sys
from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
config = VitHfConfig.from_preset("test", num_labels=2)
VitHfForImageClassification(config).save_pretrained(sys.argv[1])
VitHfImageProcessor.from_model_config(config).save_pretrained(sys.argv[1])
"""




def _in_history(commit: str) -> bool:
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    return found.returncode == 0


# the earlier version is read from git history: a clone has it (a shallow clone or an unpacked sdist does not)
needs_history = pytest.mark.skipif(not _in_history(EARLIER), reason=f"{EARLIER} is not in this checkout's history")


@pytest.fixture(scope="module")
def earlier_folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("earlier")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", EARLIER, "vit_hf"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    folder = tmp / "folder"
    subprocess.run([sys.executable, "-c", SAVE, str(folder)], cwd=tmp, env=child_env(PYTHONPATH=str(tmp)),
                   check=True, timeout=120)
    return folder


@needs_history
def test_a_folder_of_an_earlier_version_checks_and_publishes_its_own_files(earlier_folder):
    code = sorted(p.name for p in earlier_folder.glob("*.py"))
    assert code == ["configuration_vit_hf.py", "image_processing_vit_hf.py", "modeling_vit_hf.py"]
    check_hub_folder(earlier_folder)
    assert hub_files(earlier_folder) == sorted(["config.json", "model.safetensors", "preprocessor_config.json", *code])


@needs_history
def test_a_missing_file_the_folder_imports_is_named(earlier_folder, tmp_path):
    import shutil

    folder = Path(shutil.copytree(earlier_folder, tmp_path / "folder"))
    (folder / "configuration_vit_hf.py").unlink()
    with pytest.raises(HubFolderError, match="configuration_vit_hf.py is missing"):
        check_hub_folder(folder)


def test_todays_folder_needs_every_file_its_code_imports(tmp_path):
    """Today's processor imports its pixel steps from a sibling file that no auto_map names."""
    config = VitHfConfig.from_preset("test", num_labels=2)
    VitHfForImageClassification(config).save_pretrained(tmp_path)
    VitHfImageProcessor.from_model_config(config).save_pretrained(tmp_path)
    check_hub_folder(tmp_path)
    (tmp_path / "pixels_vit_hf.py").unlink()
    with pytest.raises(HubFolderError, match="pixels_vit_hf.py is missing"):
        check_hub_folder(tmp_path)
