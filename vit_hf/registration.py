"""vit_hf's classes in transformers' Auto classes: `import vit_hf` calls `register()`.

Where the package is installed, `AutoConfig`, `AutoModel`, `AutoModelForImageClassification`,
`AutoModelForMaskedImageModeling`, `AutoBackbone`, `AutoImageProcessor` and `pipeline(...)` then load a saved folder or
Hub repo of `model_type="vit_hf"` through these classes: no `trust_remote_code`, no downloaded code run. Without the
package, the folder's `auto_map` and its copied `.py` files (with `trust_remote_code=True`) still load it.

A registered class wins over a folder's `auto_map` even with `trust_remote_code=True` (transformers checks its own
registry first): with vit_hf installed, the installed version builds every vit_hf folder. It refuses, in one line
naming the version needed, a folder from a newer vit_hf that sets a switch it does not know
(`configuration_vit_hf._SavedByVersion`). `unregistered()` gives the folder's own code its turn back.

Not remote code: never imported by the `*_vit_hf.py` files.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoVideoProcessor,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

from .configuration_vit_hf import VitHfConfig
from .image_processing_vit_hf import VitHfImageProcessor
from .modeling_vit_hf import VitHfBackbone, VitHfForImageClassification, VitHfForMaskedImageModeling, VitHfModel

# Auto class -> the class it builds for a vit_hf config (the same pairs `save_pretrained` writes into `auto_map`)
MODELS = {
    AutoModel: VitHfModel,
    AutoModelForImageClassification: VitHfForImageClassification,
    AutoModelForMaskedImageModeling: VitHfForMaskedImageModeling,
    AutoBackbone: VitHfBackbone,
}
# One class for both of AutoImageProcessor's backends: its own `resize_backend` setting picks PIL or torch resizing.
PROCESSOR_BACKENDS = ("pil", "torchvision")


def register() -> None:
    """Register the config, the models and the image processor with the Auto classes (again is a no-op)."""
    AutoConfig.register(VitHfConfig.model_type, VitHfConfig, exist_ok=True)
    for auto_class, model_class in MODELS.items():
        auto_class.register(VitHfConfig, model_class, exist_ok=True)
    processors = dict.fromkeys(PROCESSOR_BACKENDS, VitHfImageProcessor)
    AutoImageProcessor.register(VitHfConfig, image_processor_classes=processors, exist_ok=True)
    # No video processor, said out loud: `pipeline` tries AutoVideoProcessor too, which reads the folder's
    # AutoImageProcessor entry as a video processor's and, with nothing registered, would ask whether to run the
    # folder's code (a prompt with a 15 s timeout in a terminal). Video processors need torchvision: without it
    # pipeline() looks for none, and the registration itself would raise.
    if importlib.util.find_spec("torchvision") is not None:
        AutoVideoProcessor.register(VitHfConfig, video_processor_classes={}, exist_ok=True)


def unregister() -> None:
    """Undo `register()`: the Auto classes then go by a folder's `auto_map` (remote code) again.

    transformers has no public way back; `register` adds to each mapping's `_extra_content`, so this removes from it.
    """
    CONFIG_MAPPING._extra_content.pop(VitHfConfig.model_type, None)
    for auto_class in MODELS:
        auto_class._model_mapping._extra_content.pop(VitHfConfig, None)
    IMAGE_PROCESSOR_MAPPING._extra_content.pop(VitHfConfig, None)
    VIDEO_PROCESSOR_MAPPING._extra_content.pop(VitHfConfig, None)


def is_registered() -> bool:
    return CONFIG_MAPPING._extra_content.get(VitHfConfig.model_type) is VitHfConfig


@contextlib.contextmanager
def unregistered() -> Iterator[None]:
    """Within the block, load vit_hf folders through their own code (`trust_remote_code=True`), as a machine without
    the package does: e.g. to check a folder before publishing it."""
    was = is_registered()
    unregister()
    try:
        yield
    finally:
        if was:
            register()
