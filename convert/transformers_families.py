"""The transformers families the converter reads: for each `model_type`, where the backbone lives in the checkpoint,
its key table (`convert/transformers_keys.py`), how its config maps onto `VitHfConfig` switches, and which transformers
class is the oracle; model types of the ViT family that are refused, with the feature vit_hf lacks.

Used by `convert/transformers.py` (reading, mapping, writing) and `convert/transformers_verify.py` / `_resize.py`
(through the `Family` in the conversion's info); imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from convert.common import ConversionError, pair
from convert.siglip2 import siglip2_fields
from convert.transformers_keys import (
    CLIP_TOWER,
    DINOV2_BLOCKS,
    TIPSV2_TOWER,
    VIT_BLOCKS,
    VIT_EMBEDDINGS,
    Rule,
    aimv2_rules,
    dinov3_rules,
    sapiens2_rules,
)
from vit_hf import VitHfConfig


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
    # the source class can resample a stored position table (interpolate_pos_encoding); a model without one (RoPE,
    # AIMv2 native's sin-cos) runs at any size whatever this says
    resizable: bool = True

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
    projection; SwiGLU from separate gate/up weights; no class token; the attention-pooling head (learned query,
    key/value projections, output projection). Without the head (`use_head=false`) the source has no pooled output:
    the converted model averages the normed tokens. Positions: a learned table for the stored grid, or (`is_native`)
    MAE's 2-D sin-cos table in AIMv2's [sin w, cos w, sin h, cos h] order, built for every input grid as transformers
    builds it (float64, cast to the model's dtype), so a native model runs at any size, non-square included."""
    if hf.qkv_bias != hf.mlp_bias:
        raise ConversionError(
            f"AIMv2 with qkv_bias={hf.qkv_bias}, mlp_bias={hf.mlp_bias}: vit_hf's proj_bias covers the attention "
            f"output (which AIMv2 ties to qkv_bias) and both MLP layers together"
        )
    pooling = {"pooling": "map_kv"} if hf.use_head else {"pooling": "mean", "fc_norm": False}
    return {
        **_common_fields(hf), "norm_type": "rmsnorm_fp32", "embed_norm": True, "class_token": False,
        "qkv_bias": hf.qkv_bias, "proj_bias": hf.qkv_bias, "patch_bias": True, "mlp_layer": "glu", **pooling,
        "pos_embed_type": "sincos2d_mae" if hf.is_native else "learned",
    }


def _tipsv2_fields(hf, state) -> dict:
    """TIPSv2's vision tower: DINOv2 with registers (class token, registers without positions, LayerScale, optional
    SwiGLU), positions resampled at every call with bilinear antialiased interpolation in float32, skipped at the
    stored grid: the `F.interpolate` call `"timm_naflex"` makes. Pooled output = the normed class token; register 0,
    TIPSv2's second class token, is `last_hidden_state[:, 1]`."""
    (h, w), (ph, pw) = pair(hf.image_size), pair(hf.patch_size)
    gh, gw = h // ph, w // pw
    if gh != gw:
        raise ConversionError(
            f"TIPSv2 with image_size={hf.image_size}, patch_size={hf.patch_size}: a {gh}x{gw} position grid, which "
            f"transformers reshapes as a square to resample it (it fails), so there is no source behaviour to reproduce"
        )
    for flag in ("apply_layernorm", "reshape_hidden_states"):
        if not getattr(hf, flag):
            raise ConversionError(f"TIPSv2 with {flag}=false: VitHfBackbone's feature maps are always normed and laid "
                                  f"out as (b, hidden, h, w), Tipsv2VisionBackbone's would not be")
    return {**_dinov2_registers_fields(hf, state), "pos_embed_interpolation": "timm_naflex"}


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
                    {"none": "Aimv2VisionModel"}, "pooler_output", also=("last_hidden_state",), resizable=False),
    # NaFlex: fields, processor and --verify in convert/siglip2.py
    "siglip2": Family("SigLIP2 vision tower", ("vision_model.", ""), CLIP_TOWER, siglip2_fields,
                      {"none": "Siglip2VisionModel"}, "pooler_output", resizable=False),
    "tipsv2": Family("TIPSv2 vision tower", ("vision_encoder.", ""), TIPSV2_TOWER, _tipsv2_fields,
                     {"none": "Tipsv2VisionModel"}, "pooler_output", anchor="patch_embed.proj.",
                     also=("last_hidden_state",)),
}
# Full dual-encoder repos and their vision-only configs: the vision config is the one to read
VISION_CONFIG_OF = {
    "clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip",
    "metaclip_2": "metaclip_2", "metaclip_2_vision_model": "metaclip_2", "aimv2": "aimv2",
    "aimv2_vision_model": "aimv2", "siglip2": "siglip2", "siglip2_vision_model": "siglip2",
    "tipsv2": "tipsv2", "tipsv2_vision_model": "tipsv2",
}
# model types whose config.json nests a vision_config
DUAL_ENCODERS = ("clip", "siglip", "metaclip_2", "aimv2", "siglip2", "tipsv2")
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
