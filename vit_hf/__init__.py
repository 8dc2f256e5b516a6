"""vit_hf: the einops Vision Transformer as a Hugging Face transformers model.

Importing the package registers its classes with transformers' Auto classes (`vit_hf.registration`): with vit_hf
installed, `AutoModel.from_pretrained(folder_or_repo)` and `pipeline(...)` build a saved folder with these classes, no
`trust_remote_code` needed and none of the folder's code run (the installed classes win even when
`trust_remote_code=True` is passed). A machine without the package loads the same folder through the code it carries
(`trust_remote_code=True`); a saved folder needs only torch, einops and transformers.
"""

from .configuration_vit_hf import PRESETS, VIT_HF_VERSION, VitHfConfig
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
from .registration import register

__version__ = VIT_HF_VERSION  # written into every saved config.json / preprocessor_config.json
register()

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
