"""vit_hf: the einops Vision Transformer as a Hugging Face transformers model.

Import the classes from here in code that has the package installed; a saved folder needs only torch, einops and
transformers (`AutoModel.from_pretrained(folder, trust_remote_code=True)`).
"""

from .configuration_vit_hf import PRESETS, VitHfConfig
from .image_processing_vit_hf import VitHfImageProcessor
from .modeling_vit_hf import (
    VitHfBackbone,
    VitHfForImageClassification,
    VitHfForMaskedImageModeling,
    VitHfModel,
    VitHfPreTrainedModel,
    resample_position_embedding,
    sincos_2d_position_embedding,
)

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "VitHfConfig",
    "VitHfImageProcessor",
    "VitHfModel",
    "VitHfForImageClassification",
    "VitHfBackbone",
    "VitHfForMaskedImageModeling",
    "VitHfPreTrainedModel",
    "resample_position_embedding",
    "sincos_2d_position_embedding",
]
