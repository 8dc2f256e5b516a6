"""Convert a transformers-format plain-ViT checkpoint folder (config.json with `model_type`) into vit_hf.

Families: ViT (ViTModel with or without the in21k pooler,
ViTForImageClassification), DeiT (DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher),
ViTMAE (the encoder of ViTMAEModel / ViTMAEForPreTraining), DINOv2 and DINOv2 with registers (Model and
ForImageClassification, SwiGLU giant included), CLIP, SigLIP and MetaCLIP 2 vision towers (alone or inside a full
dual-encoder repo), I-JEPA (IJepaModel, with or without its pooler, IJepaForImageClassification), ViT-MSN
(ViTMSNModel, ViTMSNForImageClassification), DINOv3 (DINOv3ViTModel / Backbone: 2-D RoPE, registers, gated MLP, a key
without bias), Sapiens2 (Sapiens2Model / Backbone: DINOv3's RoPE with RMSNorm, qk-norm, grouped-query attention,
attention-only LayerScale) and the AIMv2 vision tower (alone or in a full AIMv2 repo: RMSNorm, SwiGLU,
attention-pooling head). Each converted model reproduces the source class's own outputs: its norms and their eps,
activation, position layout and run-time position resampling, pooled output and heads; labels come from `id2label`.
Anything else is refused by name before anything is written.

Entry point for the front door (`python -m convert SOURCE OUT_DIR`): `convert_transformers_folder(folder, out_dir,
**options)`; `TRANSFORMERS_ALLOW_PATTERNS` are the files it reads.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from convert.common import (
    ConversionError,
    Options,
    build_model,
    check_paths,
    load_torch_state_dict,
    parity_markdown,
    read_privately,
)
from convert.siglip2 import siglip2_fields
from convert.transformers_keys import (
    CLIP_TOWER,
    DINOV2_BLOCKS,
    VIT_BLOCKS,
    VIT_EMBEDDINGS,
    Rule,
    aimv2_rules,
    dinov3_rules,
    map_keys,
    sapiens2_rules,
)
from convert.transformers_resize import resize_model, scale_processor
from vit_hf import VitHfConfig, VitHfForImageClassification

CONFIG, PREPROCESSOR, CARD = "config.json", "preprocessor_config.json", "README.md"
# Weight files in transformers' own order of preference (safetensors first; sharded checkpoints by their index).
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
SHARD_PATTERNS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
TRANSFORMERS_ALLOW_PATTERNS = [CONFIG, PREPROCESSOR, CARD, *WEIGHT_FILES, *SHARD_PATTERNS]


def files_to_download(repo_files: list[str]) -> list[str]:
    """The files of a repo listing that the conversion reads: the configs, the card, and the weights in the first
    format present (safetensors before pytorch_model.bin, so a repo holding both is not downloaded twice). The
    shards of a sharded checkpoint are named by its index, which must be read first: they are matched by pattern."""
    present = set(repo_files)
    wanted = [name for name in (CONFIG, PREPROCESSOR, CARD) if name in present]
    for name in WEIGHT_FILES:
        if name in present:
            shards = SHARD_PATTERNS[0] if name.startswith("model.") else SHARD_PATTERNS[1]
            extra = [f for f in repo_files if name.endswith(".index.json") and fnmatch.fnmatch(f, shards)]
            return wanted + [name, *sorted(extra)]
    return wanted


# ----------------------------------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One transformers model family: where its backbone lives, how its keys map, how its config maps."""

    name: str
    prefixes: tuple[str, ...]  # backbone prefixes a checkpoint may use ("" = saved bare)
    rules: list[Rule] | Callable[[object], list[Rule]]  # the key table, or a function of the vision config giving it
    fields: Callable[[object, Mapping[str, torch.Tensor]], dict]  # (vision config, mapped state) -> VitHfConfig fields
    classes: Mapping[str, str]  # head kind -> transformers class that is the oracle
    pooled: str  # what a headless source's comparable output is: "pooler_output" or "last_hidden_state"
    # top-level key prefixes that belong to the backbone even when it is saved under a prefix (transformers 5's
    # ViTMSNForImageClassification writes its blocks as `encoder.*` next to `vit.embeddings.*`)
    loose: tuple[str, ...] = ()
    anchor: str = "embeddings."  # a backbone key prefix that tells where the backbone starts
    also: tuple[str, ...] = ()  # further outputs of a headless source compared by --verify (e.g. last_hidden_state)
    # why the source's float64 forward still rounds to float32 somewhere ("" = it does not): --verify then holds its
    # float64 rows to float32 rounding, and the card says why
    float32_inside: str = ""
    resizable: bool = True  # the source class can run at another size (interpolate_pos_encoding or no table)

    def rules_for(self, hf) -> list[Rule]:
        return self.rules(hf) if callable(self.rules) else self.rules


def _common_fields(hf) -> dict:
    """ViTConfig-named fields every family shares; the source's eps and activation, never timm's defaults."""
    act = hf.hidden_act
    if not isinstance(act, str):
        raise ConversionError(f"hidden_act {act!r} is not an activation name: the config cannot be represented")
    return dict(
        hidden_size=hf.hidden_size, num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
        intermediate_size=getattr(hf, "intermediate_size", None), hidden_act=act,
        layer_norm_eps=hf.layer_norm_eps if hasattr(hf, "layer_norm_eps") else hf.rms_norm_eps,
        image_size=_size(hf.image_size), patch_size=_size(hf.patch_size), num_channels=hf.num_channels,
        qkv_bias=getattr(hf, "qkv_bias", True), crop_remainder=_has_remainder(hf.image_size, hf.patch_size),
    )


def _has_remainder(image_size, patch_size) -> bool:
    """transformers' patch convolution (padding "valid") ignores the pixels past the last whole patch: SigLIP
    so400m/14 at 384 px has a 27x27 grid."""
    (h, w), (ph, pw) = ((v, v) if isinstance(v, int) else tuple(v) for v in (image_size, patch_size))
    return bool(h % ph or w % pw)


def _size(value) -> int | list[int]:
    return value if isinstance(value, int) else [int(v) for v in value]


def _pooler_fields(hf, state: Mapping[str, torch.Tensor]) -> dict:
    """The ViT/DeiT pooler tanh(dense(cls)) is vit_hf's representation layer; another activation is refused."""
    if "vit.pre_logits.fc.weight" not in state:
        return {}
    act = getattr(hf, "pooler_act", "tanh")
    if act != "tanh":
        raise ConversionError(f"pooler_act={act!r}: only the tanh pooler can be represented (representation_size)")
    return dict(representation_size=state["vit.pre_logits.fc.weight"].shape[0])


def _vit_fields(hf, state) -> dict:
    return {**_common_fields(hf), **_pooler_fields(hf, state)}


def _deit_fields(hf, state) -> dict:
    fields = _vit_fields(hf, state)
    if "head_dist.weight" in state:
        return {**fields, "distilled": True}
    return {**fields, "num_register_tokens": 1}  # DeiTModel / DeiTForImageClassification: see convert_state


def _dinov2_fields(hf, state) -> dict:
    """DINOv2: LayerScale, MLP width from mlp_ratio, SwiGLU for giant, positions resampled at every call from the
    stored (518-px) grid in float32, as transformers does (its processor crops 224)."""
    fields = _common_fields(hf)
    width = int(hf.hidden_size * hf.mlp_ratio)
    if hf.use_swiglu_ffn:  # transformers' Dinov2SwiGLUFFN: two thirds of the width, rounded up to a multiple of 8
        fields.update(mlp_layer="glu", hidden_act="silu", intermediate_size=(int(width * 2 / 3) + 7) // 8 * 8)
    else:
        fields.update(intermediate_size=width)
    fields.update(
        layer_scale_init_value=float(hf.layerscale_value), dynamic_img_size=True, pos_embed_interpolation="hf_dinov2"
    )
    if "head.weight" in state:
        fields.update(pooling="token_mean")  # classifier(cat[cls, mean(patches)])
    return fields


def _dinov2_registers_fields(hf, state) -> dict:
    fields = _dinov2_fields(hf, state)
    return {
        **fields, "num_register_tokens": hf.num_register_tokens, "no_embed_registers": True,
        "pos_embed_interpolation": "hf_dinov2_reg",
    }


def _ijepa_fields(hf, state) -> dict:
    """I-JEPA: a ViT without class token. Its classifier reads the mean of the normed tokens; a pooler (IJepaModel
    built with add_pooling_layer) reads the first patch token, as vit_hf's `"token"` pooling does without a class
    token; without either the pooled output is the mean of the normed tokens (the paper's linear probe input)."""
    fields = {**_common_fields(hf), "class_token": False}
    if "vit.pre_logits.fc.weight" in state:
        return {**fields, **_pooler_fields(hf, state), "pooling": "token"}
    return {**fields, "pooling": "mean", "fc_norm": False}


def _clip_fields(hf, state) -> dict:
    """CLIP: ln_pre, no patch bias, quick_gelu (from the config); pooled = post_layernorm(cls) = our norm, token 0."""
    return {**_common_fields(hf), "pre_norm": True, "patch_bias": False}


def _siglip_fields(hf, state) -> dict:
    """SigLIP: no class token, MAP head (transformers' SiglipMultiheadAttentionPoolingHead)."""
    if not getattr(hf, "vision_use_head", True):
        raise ConversionError(
            "SigLIP with vision_use_head=false has no pooled output (and no MAP head): converting it is not supported"
        )
    return {**_common_fields(hf), "class_token": False, "pooling": "map", "patch_bias": True}


def _dinov3_biases(hf) -> str:
    """How DINOv3's q/k/v biases map: all fused, q and v beside a key without bias (the released models), or none."""
    flags = (hf.query_bias, hf.key_bias, hf.value_bias)
    kinds = {(True, True, True): "fused", (True, False, True): "split", (False, False, False): "none"}
    if flags not in kinds:
        raise ConversionError(
            f"DINOv3 with query_bias={hf.query_bias}, key_bias={hf.key_bias}, value_bias={hf.value_bias}: vit_hf's "
            f"attention has query and value biases together (with or without a key bias), or none"
        )
    return kinds[flags]


def _dinov3_rules(hf) -> list[Rule]:
    return dinov3_rules(gated=bool(hf.use_gated_mlp), biases=_dinov3_biases(hf))


def _dinov3_fields(hf, state) -> dict:
    """DINOv3: 2-D RoPE on the patch centres in [-1, 1] (rotate-half, rope_theta; the table computed in float32 as
    transformers computes it), no position table, so any input size; class token + registers, LayerScale, a key
    without bias, optional gated MLP; pooled output = the normed class token. The coordinate shift / jitter / rescale
    of training carry over (applied in train mode only, as in transformers)."""
    if hf.proj_bias != hf.mlp_bias:
        raise ConversionError(
            f"DINOv3 with proj_bias={hf.proj_bias}, mlp_bias={hf.mlp_bias}: vit_hf's proj_bias covers the attention "
            f"output and both MLP layers together"
        )
    biases = _dinov3_biases(hf)
    return {
        **_common_fields(hf), "qkv_bias": biases != "none", "key_bias": biases == "fused", "proj_bias": hf.proj_bias,
        "patch_bias": True, "crop_remainder": True, "num_register_tokens": hf.num_register_tokens,
        "pos_embed_type": "none", "rope_type": "dinov3", "rope_theta": float(hf.rope_theta),
        "rope_numerics": "transformers", "rope_shift_coords": hf.pos_embed_shift,
        "rope_jitter_coords": hf.pos_embed_jitter, "rope_rescale_coords": hf.pos_embed_rescale,
        "layer_scale_init_value": float(hf.layerscale_value), "mlp_layer": "glu" if hf.use_gated_mlp else "mlp",
        "pooling": "token",
    }


def _sapiens2_rules(hf) -> list[Rule]:
    return sapiens2_rules(biases=_dinov3_biases(hf))


def _sapiens2_fields(hf, state) -> dict:
    """Sapiens2: DINOv3's RoPE, class token and registers, with RMSNorm computed in float32 (T5-style) everywhere, an
    RMSNorm qk-norm, LayerScale on the attention branch only, grouped-query attention per block, SwiGLU."""
    if not hf.use_gated_mlp:
        raise ConversionError(
            "Sapiens2 with use_gated_mlp=false: transformers 5.25 cannot read such a checkpoint back itself (its "
            "loader splits ffn.w12 into a gate and an up projection), so there is no source behaviour to reproduce"
        )
    fields = _dinov3_fields(hf, state)
    kv = [int(k) for k in hf.num_key_value_heads_per_layer]
    return {
        **fields, "norm_type": "rmsnorm_fp32", "qk_norm": bool(hf.use_qk_norm), "layer_scale_attn_only": True,
        "num_key_value_heads": None if set(kv) == {hf.num_attention_heads} else kv,
    }


def _aimv2_rules(hf) -> list[Rule]:
    return aimv2_rules(biases="fused" if hf.qkv_bias else "none")


def _aimv2_fields(hf, state) -> dict:
    """AIMv2: RMSNorm computed in float32 (transformers' Aimv2RMSNorm) everywhere, also right after the patch
    projection; SwiGLU from separate gate/up weights; no class token; learned positions; the attention-pooling head
    (learned query, key/value projections, output projection). Without the head (`use_head=false`) the source has no
    pooled output: the converted model averages the normed tokens."""
    if hf.is_native:
        raise ConversionError(
            "AIMv2 native (is_native=true) is not supported: its 2-D sin-cos positions (frequencies "
            "10000^-(k/(D/4)), bands [sin w, cos w, sin h, cos h], computed per input size) are not a vit_hf "
            "pos_embed_type"
        )
    if hf.qkv_bias != hf.mlp_bias:
        raise ConversionError(
            f"AIMv2 with qkv_bias={hf.qkv_bias}, mlp_bias={hf.mlp_bias}: vit_hf's proj_bias covers the attention "
            f"output (which AIMv2 ties to qkv_bias) and both MLP layers together"
        )
    pooling = {"pooling": "map_kv"} if hf.use_head else {"pooling": "mean", "fc_norm": False}
    return {
        **_common_fields(hf), "norm_type": "rmsnorm_fp32", "embed_norm": True, "class_token": False,
        "qkv_bias": hf.qkv_bias, "proj_bias": hf.qkv_bias, "patch_bias": True, "mlp_layer": "glu", **pooling,
    }


_VIT_RULES = VIT_EMBEDDINGS + VIT_BLOCKS
_DINO_RULES = VIT_EMBEDDINGS + DINOV2_BLOCKS
FAMILIES = {
    "vit": Family("ViT", ("vit.", ""), _VIT_RULES, _vit_fields,
                  {"head": "ViTForImageClassification", "none": "ViTModel"}, "last_hidden_state"),
    "deit": Family("DeiT", ("deit.", ""), _VIT_RULES, _deit_fields,
                   {"distilled": "DeiTForImageClassificationWithTeacher", "head": "DeiTForImageClassification",
                    "none": "DeiTModel"}, "last_hidden_state"),
    "vit_mae": Family("ViTMAE", ("vit.", ""), _VIT_RULES, _vit_fields, {"none": "ViTMAEModel"}, "last_hidden_state"),
    "dinov2": Family("DINOv2", ("dinov2.", ""), _DINO_RULES, _dinov2_fields,
                     {"head": "Dinov2ForImageClassification", "none": "Dinov2Model"}, "pooler_output"),
    "dinov2_with_registers": Family(
        "DINOv2 with registers", ("dinov2_with_registers.", ""), _DINO_RULES, _dinov2_registers_fields,
        {"head": "Dinov2WithRegistersForImageClassification", "none": "Dinov2WithRegistersModel"}, "pooler_output"),
    "ijepa": Family("I-JEPA", ("ijepa.", ""), _VIT_RULES, _ijepa_fields,
                    {"head": "IJepaForImageClassification", "none": "IJepaModel"}, "last_hidden_state",
                    also=("last_hidden_state",)),
    "vit_msn": Family("ViT-MSN", ("vit.", ""), _VIT_RULES, _vit_fields,
                      {"head": "ViTMSNForImageClassification", "none": "ViTMSNModel"}, "last_hidden_state",
                      loose=("encoder.",)),
    "clip": Family("CLIP vision tower", ("vision_model.", ""), CLIP_TOWER, _clip_fields,
                   {"none": "CLIPVisionModel"}, "pooler_output"),
    "siglip": Family("SigLIP vision tower", ("vision_model.", ""), CLIP_TOWER, _siglip_fields,
                     {"none": "SiglipVisionModel"}, "pooler_output"),
    "metaclip_2": Family("MetaCLIP 2 vision tower", ("vision_model.", ""), CLIP_TOWER, _clip_fields,
                         {"none": "MetaClip2VisionModel"}, "pooler_output"),
    "dinov3_vit": Family("DINOv3", ("",), _dinov3_rules, _dinov3_fields, {"none": "DINOv3ViTModel"},
                         "pooler_output", also=("last_hidden_state",)),
    "sapiens2": Family("Sapiens2", ("", "backbone."), _sapiens2_rules, _sapiens2_fields, {"none": "Sapiens2Model"},
                       "pooler_output", anchor="patch_embed.projection.", also=("last_hidden_state",)),
    "aimv2": Family("AIMv2 vision tower", ("vision_model.", ""), _aimv2_rules, _aimv2_fields,
                    {"none": "Aimv2VisionModel"}, "pooler_output", also=("last_hidden_state",),
                    float32_inside="transformers' Aimv2RMSNorm normalises in float32 whatever the model's dtype",
                    resizable=False),
    # NaFlex: fields, processor and --verify in convert/siglip2.py
    "siglip2": Family("SigLIP2 vision tower", ("vision_model.", ""), CLIP_TOWER, siglip2_fields,
                      {"none": "Siglip2VisionModel"}, "pooler_output", resizable=False),
}
# Full dual-encoder repos and their vision-only configs: the vision config is the one to read
VISION_CONFIG_OF = {
    "clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip",
    "metaclip_2": "metaclip_2", "metaclip_2_vision_model": "metaclip_2", "aimv2": "aimv2",
    "aimv2_vision_model": "aimv2", "siglip2": "siglip2", "siglip2_vision_model": "siglip2",
}
# model types whose config.json nests a vision_config
DUAL_ENCODERS = ("clip", "siglip", "metaclip_2", "aimv2", "siglip2")
HEAD_KEYS = ("classifier.", "cls_classifier.", "distillation_classifier.")
# ViT-family model types that are refused, with the feature vit_hf lacks
NOT_SUPPORTED = {
    "beit": "relative position bias (per block or shared)",
    "data2vec-vision": "relative position bias (per block or shared)",
    "mlcd_vision_model": "rotary embeddings with a learned rotation for the class token (class_pos_emb), q/k rotated "
                         "in float32",
    "radio": "several class tokens and a cropped, resampled position table",
    "dinov3_convnext": "a ConvNeXt, not a ViT",
}


def family_of(model_type: str | None) -> tuple[str, Family]:
    """(family key, Family) for a config.json `model_type`; anything that is not a plain ViT is refused by name."""
    key = VISION_CONFIG_OF.get(model_type, model_type)
    if model_type == VitHfConfig.model_type:
        raise ConversionError(
            "this folder is already a vit_hf model: nothing to convert, load it with from_pretrained(..., "
            "trust_remote_code=True)"
        )
    if key not in FAMILIES:
        if not model_type:
            raise ConversionError("config.json has no model_type: not a transformers model folder")
        if model_type in NOT_SUPPORTED:
            raise ConversionError(f"{model_type} is not supported: {NOT_SUPPORTED[model_type]}")
        supported = ", ".join(sorted(set(FAMILIES) | set(VISION_CONFIG_OF)))
        raise ConversionError(f"{model_type} is not a plain ViT: model_type must be one of {supported}")
    return key, FAMILIES[key]


# ----------------------------------------------------------------------------------------------------------------------
# Reading the folder
# ----------------------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return value


def _read(path: Path, fused: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """One weight file, for one copy of the weights at most: `.safetensors` is mapped (tensors adopted as they are
    are never copied) except the `fused` ones (q/k/v), read privately, so they can be freed once concatenated; a
    `torch.save` file is read into private memory whole (it cannot be read in part)."""
    if path.suffix != ".safetensors":
        return load_torch_state_dict(path, mapped=False)
    state = load_torch_state_dict(path)
    state.update(read_privately(path, [k for k in state if fused(k)]))
    return state


def load_weights(folder: Path, fused: Callable[[str], bool] = lambda key: False) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's tensors (safetensors first, then pytorch_model.bin; sharded ones through their index) and
    the file name they came from. `fused(key)`: the tensor is rebuilt by the mapping (see `_read`)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read(path, fused), name
        weight_map = read_json(path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{path}: has no weight_map: re-download the checkpoint")
        state = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ConversionError(f"{path} names the shard {shard}, which is not in {folder}: download it too")
            state.update(_read(folder / shard, fused))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ConversionError(f"{path}: key(s) listed but not in the shards: {', '.join(missing[:5])}")
        return state, name
    raise ConversionError(f"{folder} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def vision_config(folder: Path, raw: dict):
    """The transformers config object (class defaults for absent fields, as transformers reads it), the vision
    config for dual-encoder repos."""
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(folder)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ConversionError(f"{folder / CONFIG}: transformers cannot read it ({str(e).splitlines()[0]})") from None
    if raw.get("model_type") in DUAL_ENCODERS:
        return hf.vision_config
    return hf


def split_backbone(
    state: Mapping[str, torch.Tensor], family: Family
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone prefix, backbone tensors with the prefix removed, top-level tensors: heads, other towers)."""
    anchor = family.anchor
    prefix = next((p for p in family.prefixes if any(k.startswith(p + anchor) for k in state)), None)
    if prefix is None:
        raise ConversionError(
            f"no {family.name} embeddings in the weights (looked for "
            f"{' or '.join(p + anchor + '*' for p in family.prefixes)}): is config.json from the same checkpoint?"
        )
    backbone, top = {}, {}
    for key, tensor in state.items():
        if prefix and key.startswith(prefix):
            backbone[key[len(prefix) :]] = tensor
        elif prefix and key.startswith(family.loose):
            backbone[key] = tensor
        elif not prefix and not key.startswith(HEAD_KEYS):
            backbone[key] = tensor
        else:
            top[key] = tensor
    return prefix, backbone, top


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


def head_kind(state: Mapping[str, torch.Tensor]) -> str:
    if "head_dist.weight" in state:
        return "distilled"
    return "head" if "head.weight" in state else "none"


def labels(hf, num_labels: int) -> dict:
    """num_labels and id2label from the source (only when they describe the classifier that is there)."""
    if not num_labels:
        return dict(num_labels=0)
    id2label = {int(k): str(v) for k, v in (getattr(hf, "id2label", None) or {}).items()}
    if sorted(id2label) != list(range(num_labels)):
        return dict(num_labels=num_labels)
    return dict(num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()})


def _vit_hf_config(family: Family, fields: dict) -> VitHfConfig:
    """The VitHfConfig; a switch this vit_hf does not know would be kept as a bare attribute and do nothing, so it
    is refused by name instead."""
    known = set(inspect.signature(VitHfConfig.__init__).parameters) | {"num_labels", "id2label", "label2id"}
    missing = sorted(set(fields) - known)
    if missing:
        raise ConversionError(
            f"{family.name} needs the vit_hf config switch(es) {', '.join(missing)}, which this version of vit_hf "
            f"does not have: update vit_hf"
        )
    try:
        return VitHfConfig(**fields)
    except ValueError as e:
        raise ConversionError(f"{family.name} config cannot be represented: {e}") from None


def convert_state(folder: Path) -> dict:
    """Read and map a transformers folder: returns the pieces `convert_transformers_folder` writes (and tests use).

    Keys: family, family_key, hf (the transformers vision config), config (VitHfConfig), state (vit_hf tensors),
    kind (head kind), source_class, compared (the output --verify compares; `also`: further ones), weights_file,
    dropped, raw (config.json), preprocessor (dict or None).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a folder (a transformers checkpoint is a folder with {CONFIG})")
    if not (folder / CONFIG).is_file():
        raise ConversionError(f"{folder} has no {CONFIG}: not a transformers model folder")
    raw = read_json(folder / CONFIG)
    key, family = family_of(raw.get("model_type"))
    hf = vision_config(folder, raw)
    rules = family.rules_for(hf)
    fused = [rule.pattern() for rule in rules if rule.parts > 1]  # on-disk keys end with the rule's source
    source, weights_file = load_weights(folder, lambda k: any(p.search(k) for p in fused))
    prefix, backbone, top = split_backbone(source, family)
    del source  # map_keys consumes backbone and top: the last references to the source tensors go with them
    state, unknown, dropped, origin = map_keys(backbone, top, rules)
    if "vit.reg_token" in state and not state["vit.reg_token"].numel():  # DINOv3 saves (1, 0, D) without registers
        del state["vit.reg_token"]
    # messages name the tensors as they are on disk
    origin = {k: ", ".join(prefix + n for n in v.split(", ")) if k.startswith("vit.") else v for k, v in origin.items()}
    if unknown:
        raise ConversionError(
            f"{family.name} checkpoint has tensor(s) with no place in a plain ViT (a family feature that cannot be "
            f"represented): {', '.join(sorted(unknown)[:8])}"
        )
    kind = head_kind(state)
    if kind not in family.classes:
        names = ", ".join(raw.get("architectures") or []) or "the checkpoint"
        raise ConversionError(
            f"{names}: a {family.name} with a classification head on averaged tokens is not supported (only the "
            f"tower's own pooled output is): convert the tower without its classifier"
        )
    if key == "deit" and kind != "distilled" and "vit.dist_token" in state:
        # only the class token is read: the distillation token is a register (positions cover it, as DeiT's do)
        state["vit.reg_token"] = state.pop("vit.dist_token")
        origin["vit.reg_token"] = origin.pop("vit.dist_token")
    num_labels = state["head.weight"].shape[0] if kind != "none" else 0
    fields = {**family.fields(hf, state), **labels(hf, num_labels)}
    if fields.get("intermediate_size") is None:
        raise ConversionError(f"{family.name} config has no intermediate_size: the MLP width is unknown")
    config = _vit_hf_config(family, fields)
    preprocessor = read_json(folder / PREPROCESSOR) if (folder / PREPROCESSOR).is_file() else None
    compared = "logits" if kind != "none" else family.pooled
    if key in ("vit", "deit", "ijepa") and kind == "none" and "representation_size" in fields:
        compared = "pooler_output"  # the in21k pooler tanh(dense(cls)) (I-JEPA's: of the first patch token)
    also = tuple(o for o in family.also if o != compared) if kind == "none" else ()
    if key == "aimv2" and not hf.use_head:  # no pooled output: the tokens are all the source gives
        compared, also = "last_hidden_state", ()
    return dict(
        family=family, family_key=key, hf=hf, config=config, state=state, kind=kind, origin=origin,
        source_class=family.classes[kind], compared=compared, also=also, weights_file=weights_file, dropped=dropped,
        raw=raw, preprocessor=preprocessor,
    )


def build_converted(info: dict) -> VitHfForImageClassification:
    """The vit_hf model adopting the mapped tensors (their dtype; no copy), keys spelled as the source's in errors."""
    origin = info["origin"]
    try:
        return build_model(info["config"], info["state"], name=lambda k: origin.get(k, k))
    except ConversionError as e:
        raise ConversionError(f"{info['family'].name} weights do not fit the config: {e}") from None


def make_processor(info: dict, config: VitHfConfig, args: Options):
    """The source's preprocessing (its preprocessor_config.json), with --crop-pct/--interpolation/--mean/--std over
    it; without one, the flags over timm's ViT defaults (the note says which were assumed)."""
    flags = {k: getattr(args, k, None) for k in ("crop_pct", "interpolation", "mean", "std")}
    if info["family_key"] == "siglip2":  # NaFlex
        from convert.siglip2 import processor_from_siglip2
        return processor_from_siglip2(info["preprocessor"], config, flags)
    try:
        from convert.preprocessing import processor_from_flags, processor_from_transformers
    except ImportError:  # pragma: no cover - engineer C's module not there: the model's own defaults
        from vit_hf import VitHfImageProcessor

        return VitHfImageProcessor.from_model_config(config), "preprocessing: vit_hf defaults (no converter support)"
    base, note, given = None, None, any(v is not None for v in flags.values())
    if info["preprocessor"] is not None:
        try:
            base, note = processor_from_transformers(info["preprocessor"], config)
        except ConversionError as e:  # e.g. Sapiens2's box-cropping processor: the flags may state what to use
            if not given:
                raise ConversionError(f"{e}: state the preprocessing with --crop-pct, --interpolation, --mean and "
                                      f"--std instead") from None
            base, note = processor_from_flags(config, **flags)
            return base, f"{note}; the source's processor is not reproduced ({e})"
    if base is None or given:
        base, note = processor_from_flags(config, **flags, base=base)
    return base, note


def source_license(folder: Path) -> str:
    """The license the source's model card states (its YAML front matter), else "other": weights keep their
    source's license (CLIP MIT, ViTMAE CC-BY-NC, ...), so none is assumed."""
    try:
        from huggingface_hub import ModelCard

        license = ModelCard.load(folder / CARD).data.license if (folder / CARD).is_file() else None
    except Exception:  # a card that does not parse says nothing about the license
        license = None
    return license if isinstance(license, str) and license else "other"


def _switches_text(config: VitHfConfig) -> str:
    """The config switches a family turned on that the card's architecture table does not show."""
    parts = []
    if config.dynamic_img_size:
        h, w = config.image_hw
        parts.append(f"positions stored for {h}x{w}, resampled to every input at run time (`dynamic_img_size`, "
                     f"`{config.pos_embed_interpolation}`)")
    parts += [text for on, text in (
        (config.distilled, "distillation token and head, logits averaged (`distilled`)"),
        (config.no_embed_registers, "registers without positions (`no_embed_registers`)"),
        (config.pooling == "token_mean", "head on [class token; mean of patches] (`pooling='token_mean'`)"),
        (config.mlp_layer == "glu", f"gated MLP, {config.hidden_act} gate (`mlp_layer='glu'`)"),
        (config.rope_type != "none", f"2-D rotary position embeddings on q/k (`rope_type='{config.rope_type}'`, "
                                     f"theta {config.rope_theta}, `rope_numerics='{config.rope_numerics}'`)"),
        (config.pos_embed_type == "none", "no position table: any input size, nothing resampled"),
        (config.norm_type != "layernorm", f"RMSNorm (`norm_type='{config.norm_type}'`)"),
        (config.embed_norm, "a norm right after the patch projection (`embed_norm`)"),
        (config.qkv_bias and not config.key_bias, "query and value biases, none on the key (`key_bias=False`)"),
        (config.pooling == "map_kv", "attention pooling with a learned query and key/value projections "
                                     "(`pooling='map_kv'`)"),
    ) if on]
    return "; ".join(parts)


def source_markdown(folder: Path, info: dict, args: Options, processor_note: str) -> str:
    repo, commit = getattr(args, "source_repo", None), getattr(args, "source_commit", None)
    where = f"`{repo}`" + (f" at commit `{commit}`" if commit else "") if repo else f"the local folder `{folder}`"
    import transformers

    architectures = ", ".join(info["raw"].get("architectures") or [])
    outputs = ", ".join((info["compared"], *info.get("also", ())))
    rows = [
        ("format", f"transformers `{info['raw'].get('model_type')}` ({architectures})"),
        ("weights", f"`{info['weights_file']}`"),
        ("reproduces", f"transformers {transformers.__version__} `{info['source_class']}` ({outputs})"),
        ("preprocessing", processor_note.removeprefix("preprocessing: ")),
    ]
    rows += [("family switches", _switches_text(info["config"]))] if _switches_text(info["config"]) else []
    rows += [("not converted", reason) for reason in info["dropped"]]
    rows += [("note", n) for n in info.get("notes", [])]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"Converted from {where} ({info['family'].name}).\n\n| | |\n| --- | --- |\n{table}"


def convert_transformers_folder(folder: str | Path, out_dir: str | Path, **options) -> Path:
    """Convert the transformers folder `folder` into a hub-ready vit_hf folder `out_dir` (returned).

    `options` (`convert.common.Options`): verify (compare with the transformers class in float64 and float32 first;
    refuse over tolerance), image_size, crop_pct / interpolation / mean / std (override the source's preprocessing),
    push_to_hub / hub_token / private, source_repo / source_commit (named in the card). Every refusal is a
    `ConversionError` raised before writing.
    """
    from convert.common import check_push, make_options, push_if_requested, write_folder

    args = make_options("convert_transformers_folder", options)
    folder, out_dir = Path(folder), Path(out_dir)
    check_paths(folder, out_dir)
    check_push(args)
    info = convert_state(folder)
    model = build_converted(info)
    resized = resize_model(model, info, getattr(args, "image_size", None))
    processor, note = make_processor(info, model.config, args)
    scaled = None
    if resized:  # the source's processor made the source's size; a dynamic DINOv2 keeps its processor's crop
        processor, scaled = scale_processor(processor, model.config.image_hw)
    inside = info["family"].float32_inside
    inside = inside and f"float64 parity is held to float32 rounding (1e-5): {inside}"
    info["notes"] = [n for n in (resized, scaled, inside) if n]
    parity = None
    if getattr(args, "verify", False):
        from convert.transformers_verify import verify
        if info["family_key"] == "siglip2":  # NaFlex inputs
            from convert.siglip2 import verify_siglip2 as verify

        parity = verify(folder, info, processor)
    card = dict(
        source=source_markdown(folder, info, args, note),
        parity=parity_markdown(parity) if parity else None,
        tags=["transformers", info["family_key"]],
        base_model=getattr(args, "source_repo", None),
        license=source_license(folder),
    )
    out = write_folder(model, processor, out_dir, card)
    print(f"wrote {out} ({info['family'].name}, {info['source_class']})")
    print("\n".join([note, *info["notes"]]))
    for row in parity or []:
        print(f"parity vs {row['reference']} ({row['dtype']}, {row['outputs']}): max abs diff "
              f"{row['max_abs_diff']:.3e}")
    push_if_requested(out, args, f"Convert {args.source_repo or folder.name} from transformers")
    return out
