"""timm `VisionTransformer` state dict -> vit_hf hub-ready folder.

    python -m convert.timm SRC OUT_DIR [--model-name NAME] [--num-heads H] [--global-pool {token,avg,map}]
                           [--image-size S|HxW] [--act {gelu,gelu_tanh,quick_gelu}] [--eps E] [--verify]
                           [--push-to-hub REPO] [--hub-token T] [--private]

SRC is a timm state dict: `.safetensors`, or a `torch.save` file read with `weights_only=True` (plain, or wrapped
under `model` / `state_dict`). The architecture comes from `--model-name` (a timm model name; only its model args
and `pretrained_cfg` are used, nothing is downloaded) or is read off the keys and shapes; what the shapes cannot
tell is an error naming the flag to pass (heads; and for a CLIP-style pre-norm tower, whose activation and LayerNorm
eps differ by origin, `--act` and `--eps`). Without `--model-name`, `--verify` builds timm from the same inferred
arguments, so it checks the key mapping, not the inferred activation or eps: the parity rows say so. Every key
must be consumed and every parameter written; anything the model cannot represent is refused with the feature's
name, and nothing is written to OUT_DIR then.

The parameter names of vit_hf *are* timm's keys (under `vit.`), so the key table below is a prefix plus the legacy
spellings timm's own `checkpoint_filter_fn` still accepts. Semantics: reference/conversion-formats.md §1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from convert.common import (
    ConversionError,
    add_hub_arguments,
    build_model,
    check_paths,
    check_state_dict,
    empty_model,
    fixed_batch,
    image_size_arg,
    load_torch_state_dict,
    parity_markdown,
    parse_image_size,
    positive_float,
    positive_int,
    push_if_requested,
    run_cli,
    square_side,
    write_folder,
)
from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor, resample_position_embedding

# ----------------------------------------------------------------------------------------------------------------------
# Declarative key tables
# ----------------------------------------------------------------------------------------------------------------------

# Older spellings, rewritten to timm's current keys before anything else looks at the state dict
# (timm `checkpoint_filter_fn`): (pattern, replacement, what it is).
LEGACY_RENAMES: list[tuple[str, str, str]] = [
    (r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma", "DeiT-3 layer scale `gamma_1/gamma_2`"),
]

# Keys of timm checkpoints whose feature vit_hf cannot represent: (pattern, feature). Checked before KEY_RULES so that
# the refusal names the feature, not just an unknown key.
UNSUPPORTED_KEYS: list[tuple[str, str]] = [
    (r"^blocks\.\d+\.attn\.norm\.", "scale_attn_norm (a LayerNorm inside attention, timm scale_attn_norm=True)"),
    (r"^blocks\.\d+\.mlp\.norm\.", "scale_mlp_norm (a LayerNorm inside the MLP, timm scale_mlp_norm=True)"),
    (r"^blocks\.\d+\.attn\.(lambda_|sub_norm)", "differential attention (timm attn_layer='diff')"),
    (r"^blocks\.\d+\.mlp\.(fc1_g|fc1_x|w12|w3|norm)", "a gated (SwiGLU/GLU) MLP"),
    (r"^patch_embed\.backbone\.", "a hybrid CNN patch embedding (VisionTransformerHybrid, patch_embed.backbone)"),
    (r"^patch_embed\.norm\.", "a norm inside the patch embedding (timm embed_norm_layer)"),
    (r"^(dist_token|head_dist\.)", "a distillation token (DeiT distilled, VisionTransformerDistilled)"),
    (r"^attn_pool\.(q_norm|k_norm|pos_embed)", "an attention pool with qk-norm or positions (AttentionPoolLatent)"),
    (
        r"^attn_pool\.(?!latent$|q\.|kv\.|proj\.|norm\.|mlp\.fc[12]\.)",
        "an attention pool other than timm's AttentionPoolLatent (e.g. global_pool='prr')",
    ),
    (
        r"^mask_token$",
        "a DINOv2-style checkpoint (mask_token): load it with timm.create_model(..., pretrained_cfg_"
        "overlay=dict(file=...)) and convert the resulting model's state_dict()",
    ),
    (
        r"^(module\.)?visual\.",
        "an OpenAI / OpenCLIP checkpoint layout (visual.*): load it into timm first (its "
        "checkpoint_filter_fn converts it) and convert the resulting state_dict()",
    ),
    (r"^rope\.|\.rope\.", "rotary position embeddings (EVA-style)"),
]

# timm key (current spelling) -> vit_hf key. Every key must match exactly one rule; nothing is dropped or invented.
KEY_RULES: list[tuple[str, str]] = [
    (r"^(cls_token|reg_token|pos_embed)$", r"vit.\1"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"vit.patch_embed.proj.\1"),
    (r"^(norm_pre|norm|fc_norm)\.(weight|bias)$", r"vit.\1.\2"),
    (
        r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.q_norm|attn\.k_norm|attn\.proj|mlp\.fc1|mlp\.fc2)"
        r"\.(weight|bias)$",
        r"vit.blocks.\1.\2.\3",
    ),
    (r"^blocks\.(\d+)\.(ls1|ls2)\.gamma$", r"vit.blocks.\1.\2.gamma"),
    (r"^attn_pool\.latent$", r"vit.attn_pool.latent"),
    (r"^attn_pool\.(q|kv|proj|norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", r"vit.attn_pool.\1.\2"),
    # timm <= 0.5 representation layer (tanh(Linear) before the head); timm >= 0.6 drops it, vit_hf keeps it.
    (r"^pre_logits\.fc\.(weight|bias)$", r"vit.pre_logits.fc.\1"),
    (r"^head\.(weight|bias)$", r"head.\1"),
]

# timm global_pool <-> vit_hf pooling
POOL_TO_HF = {"token": "token", "avg": "mean", "map": "map", "": "none"}
POOL_FROM_HF = {v: k for k, v in POOL_TO_HF.items()}
# timm activation names (timm.layers.get_act_layer) <-> transformers ACT2FN names
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
ACT_FROM_HF = {v: k for k, v in ACT_TO_HF.items()}
TIMM_EPS = 1e-6  # timm's LayerNorm default
# timm's defaults for ViTs whose pretrained_cfg is unknown (timm `_cfg` in vision_transformer.py)
DEFAULT_DATA_CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "crop_pct": 0.9}


def canonical_timm_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply LEGACY_RENAMES and refuse UNSUPPORTED_KEYS. Returns the state in current timm spelling (same tensors) and
    a description of each rename applied."""
    out: dict[str, torch.Tensor] = {}
    renamed: dict[str, int] = {}
    for key, value in state.items():
        for pattern, feature in UNSUPPORTED_KEYS:
            if re.search(pattern, key):
                raise ConversionError(f"key {key!r} belongs to {feature}, which vit_hf cannot represent")
        new = key
        for pattern, replacement, what in LEGACY_RENAMES:
            if re.match(pattern, key):
                new = re.sub(pattern, replacement, key)
                renamed[what] = renamed.get(what, 0) + 1
                break
        if new in out:
            raise ConversionError(f"key {key!r} and another key both map to {new!r}")
        out[new] = value
    return out, [f"{what} -> current timm names ({n} keys)" for what, n in renamed.items()]


def timm_to_hf_key(key: str) -> str:
    """timm key (current spelling) -> vit_hf key, by KEY_RULES; an unmatched key is a ConversionError naming it."""
    for pattern, replacement in KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise ConversionError(f"unknown key {key!r}: not part of a timm VisionTransformer that vit_hf can represent")


# ----------------------------------------------------------------------------------------------------------------------
# The architecture, in timm's vocabulary
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TimmArch:
    """A timm `VisionTransformer` architecture with every default resolved (the converter's pivot: read from a timm
    model, a state dict or a vit_hf config; turned into a vit_hf config or timm constructor kwargs)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int = 3
    num_classes: int = 0
    global_pool: str = "token"
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    pos_embed: str = "learn"
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_bias: bool = True
    init_values: float | None = None
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool = False
    pool_include_prefix: bool = False
    act: str = "gelu"
    eps: float = TIMM_EPS
    representation_size: int | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def mlp_ratio(self) -> float:
        """A ratio for which timm's `int(embed_dim * mlp_ratio)` gives `mlp_hidden` back (M / D can truncate to M - 1,
        reference/conversion-formats.md §1.1)."""
        ratio = self.mlp_hidden / self.embed_dim
        if int(self.embed_dim * ratio) != self.mlp_hidden:
            ratio = (self.mlp_hidden + 0.25) / self.embed_dim
        assert int(self.embed_dim * ratio) == self.mlp_hidden
        return ratio

    # -------------------------------------------------------------- vit_hf config
    def to_config(self, **kwargs) -> VitHfConfig:
        """The vit_hf config of this architecture (positions resampled the timm way at run time)."""
        h, w = self.img_size
        ph, pw = self.patch_size
        return VitHfConfig(
            hidden_size=self.embed_dim,
            num_hidden_layers=self.depth,
            num_attention_heads=self.num_heads,
            intermediate_size=self.mlp_hidden,
            hidden_act=ACT_TO_HF[self.act],
            layer_norm_eps=self.eps,
            image_size=h if h == w else [h, w],
            patch_size=ph if ph == pw else [ph, pw],
            num_channels=self.in_chans,
            qkv_bias=self.qkv_bias,
            proj_bias=self.proj_bias,
            patch_bias=not self.pre_norm,  # timm ties them: PatchEmbed(bias=not pre_norm)
            class_token=self.class_token,
            num_register_tokens=self.reg_tokens,
            no_embed_class=self.no_embed_class,
            pos_embed_type="learned" if self.pos_embed == "learn" else "none",
            pos_embed_interpolation="timm",
            pre_norm=self.pre_norm,
            final_norm=self.final_norm,
            pooling=POOL_TO_HF[self.global_pool],
            fc_norm=self.fc_norm,
            pool_include_prefix=self.pool_include_prefix,
            qk_norm=self.qk_norm,
            layer_scale_init_value=self.init_values,
            representation_size=self.representation_size,
            num_labels=self.num_classes,
            **kwargs,
        )

    @classmethod
    def from_config(cls, config: VitHfConfig) -> TimmArch:
        """The timm architecture of a vit_hf config; refuses (ConversionError) what timm's VisionTransformer lacks."""
        problems = []
        if config.representation_size:
            problems.append("representation_size (the tanh pre_logits representation layer; timm >= 0.6 has none)")
        if config.pos_embed_type == "sincos2d":
            problems.append("pos_embed_type='sincos2d' (timm's VisionTransformer has only learned or no positions)")
        if config.pooling == "token" and not config.class_token:
            problems.append("pooling='token' without a class token (timm asserts class_token for global_pool='token')")
        if config.patch_bias != (not config.pre_norm):
            problems.append(
                f"patch_bias={config.patch_bias} with pre_norm={config.pre_norm} (timm ties patch bias to not pre_norm)"
            )
        if config.hidden_act not in ACT_FROM_HF:
            problems.append(f"hidden_act={config.hidden_act!r} (timm names: {sorted(ACT_FROM_HF)})")
        if problems:
            raise ConversionError("timm's VisionTransformer cannot represent: " + "; ".join(problems))
        return cls(
            embed_dim=config.hidden_size,
            depth=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            mlp_hidden=config.intermediate_size,
            img_size=config.image_hw,
            patch_size=config.patch_hw,
            in_chans=config.num_channels,
            num_classes=config.num_labels,
            global_pool=POOL_FROM_HF[config.pooling],
            class_token=config.class_token,
            reg_tokens=config.num_register_tokens,
            no_embed_class=config.no_embed_class,
            pos_embed="learn" if config.pos_embed_type == "learned" else "none",
            qkv_bias=config.qkv_bias,
            qk_norm=config.qk_norm,
            proj_bias=config.proj_bias,
            init_values=config.layer_scale_init_value,
            pre_norm=config.pre_norm,
            final_norm=config.final_norm,
            fc_norm=bool(config.fc_norm),
            pool_include_prefix=config.pool_include_prefix,
            act=ACT_FROM_HF[config.hidden_act],
            eps=config.layer_norm_eps,
        )

    # -------------------------------------------------------------- timm
    def timm_kwargs(self, json_safe: bool = True) -> dict:
        """Keyword arguments of `timm.models.vision_transformer.VisionTransformer` for this architecture.

        `json_safe=True` gives plain values only (for OUT.json) and refuses what needs Python objects: a LayerNorm eps
        other than timm's 1e-6 needs `norm_layer=partial(timm.layers.LayerNorm, eps=...)`, which JSON cannot hold.
        Arguments newer than timm 1.0.3 (`final_norm`, `pool_include_prefix`, `proj_bias`) appear only when they differ
        from timm's default, so the kwargs also build on older timm.
        """
        if self.representation_size:
            raise ConversionError("timm >= 0.6 has no representation layer (pre_logits); the architecture needs one")
        h, w = self.img_size
        ph, pw = self.patch_size
        kwargs = dict(
            img_size=h if h == w else [h, w],
            patch_size=ph if ph == pw else [ph, pw],
            in_chans=self.in_chans,
            num_classes=self.num_classes,
            global_pool=self.global_pool,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            qk_norm=self.qk_norm,
            init_values=self.init_values,
            class_token=self.class_token,
            no_embed_class=self.no_embed_class,
            reg_tokens=self.reg_tokens,
            pre_norm=self.pre_norm,
            fc_norm=self.fc_norm,
        )
        if self.pos_embed != "learn":
            kwargs["pos_embed"] = self.pos_embed
        if not self.final_norm:
            kwargs["final_norm"] = False
        if self.pool_include_prefix:
            kwargs["pool_include_prefix"] = True
        if not self.proj_bias:
            kwargs["proj_bias"] = False
        if self.act != "gelu":
            kwargs["act_layer"] = self.act
        if self.eps != TIMM_EPS:
            if json_safe:
                raise ConversionError(
                    f"LayerNorm eps {self.eps} differs from timm's default {TIMM_EPS}: timm needs "
                    f"norm_layer=partial(timm.layers.LayerNorm, eps={self.eps}), which a JSON file of kwargs cannot "
                    f"hold"
                )
            from functools import partial

            from timm.layers import LayerNorm

            kwargs["norm_layer"] = partial(LayerNorm, eps=self.eps)
        return kwargs

    @classmethod
    def from_timm_model(cls, model: torch.nn.Module) -> TimmArch:
        """Read the architecture off a (meta-device) timm model; refuse module types vit_hf does not implement."""
        from timm.layers import AttentionPoolLatent, LayerScale, PatchEmbed
        from timm.layers.activations import GELU, GELUTanh, QuickGELU
        from timm.layers.attention import Attention
        from timm.layers.mlp import Mlp
        from timm.models.vision_transformer import Block, VisionTransformer

        name = type(model).__name__
        if type(model) is not VisionTransformer:
            raise ConversionError(
                f"timm model class {name} is not a plain VisionTransformer; vit_hf cannot represent it"
            )
        block = model.blocks[0]
        checks = [
            (all(type(b) is Block for b in model.blocks), "a block type other than timm's Block"),
            (type(block.attn) is Attention, f"attention {type(block.attn).__name__} (only timm's Attention)"),
            (type(block.mlp) is Mlp, f"MLP {type(block.mlp).__name__} (only timm's Mlp; no gated/SwiGLU MLPs)"),
            (isinstance(getattr(block.attn, "norm", torch.nn.Identity()), torch.nn.Identity), "scale_attn_norm"),
            (isinstance(getattr(block.mlp, "norm", torch.nn.Identity()), torch.nn.Identity), "scale_mlp_norm"),
            (type(model.patch_embed) is PatchEmbed, f"patch embedding {type(model.patch_embed).__name__}"),
            (isinstance(model.patch_embed.norm, torch.nn.Identity), "a norm inside the patch embedding"),
            (isinstance(block.norm1, torch.nn.LayerNorm), f"norm layer {type(block.norm1).__name__} (LayerNorm only)"),
            (model.global_pool in POOL_TO_HF, f"global_pool={model.global_pool!r}"),
            (model.attn_pool is None or type(model.attn_pool) is AttentionPoolLatent, "this attention pool"),
        ]
        refused = [what for ok, what in checks if not ok]
        pool = model.attn_pool
        if pool is not None and type(pool) is AttentionPoolLatent:
            if pool.latent_len != 1 or pool.pos_embed is not None or pool.mlp is None:
                refused.append("an AttentionPoolLatent with several latents, positions or no MLP")
            if not isinstance(pool.q_norm, torch.nn.Identity):
                refused.append("an AttentionPoolLatent with qk-norm")
        act = block.mlp.act
        if isinstance(act, GELUTanh) or (isinstance(act, torch.nn.GELU) and act.approximate == "tanh"):
            act_name = "gelu_tanh"
        elif isinstance(act, QuickGELU):
            act_name = "quick_gelu"
        elif isinstance(act, (GELU, torch.nn.GELU)):
            act_name = "gelu"
        else:
            act_name = ""
            refused.append(f"activation {type(act).__name__} (GELU, GELU-tanh or QuickGELU only)")
        if refused:
            raise ConversionError(f"timm model {name} uses features vit_hf cannot represent: " + "; ".join(refused))
        fc_norm = isinstance(model.fc_norm, torch.nn.LayerNorm)
        head = model.head
        return cls(
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=block.attn.num_heads,
            mlp_hidden=block.mlp.fc1.out_features,
            img_size=tuple(model.patch_embed.img_size),
            patch_size=tuple(model.patch_embed.patch_size),
            in_chans=model.patch_embed.proj.in_channels,
            num_classes=head.out_features if isinstance(head, torch.nn.Linear) else 0,
            global_pool=model.global_pool,
            class_token=model.cls_token is not None,
            reg_tokens=model.num_reg_tokens,
            no_embed_class=model.no_embed_class,
            pos_embed="learn" if model.pos_embed is not None else "none",
            qkv_bias=block.attn.qkv.bias is not None,
            qk_norm=isinstance(block.attn.q_norm, torch.nn.LayerNorm),
            proj_bias=block.attn.proj.bias is not None,
            init_values=block.ls1.init_values if isinstance(block.ls1, LayerScale) else None,
            pre_norm=isinstance(model.norm_pre, torch.nn.LayerNorm),
            final_norm=fc_norm or isinstance(model.norm, torch.nn.LayerNorm),
            fc_norm=fc_norm,
            pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)),
            act=act_name,
            eps=float(block.norm1.eps),
        )

    def expected_state(self) -> dict[str, torch.Tensor]:
        """timm key -> meta tensor (shape, dtype) of every parameter this architecture has (from a meta-device
        vit_hf model, whose keys are timm's under `vit.`)."""
        return {
            (key[len("vit.") :] if key.startswith("vit.") else key): value
            for key, value in empty_model(self.to_config()).state_dict().items()
        }


# ----------------------------------------------------------------------------------------------------------------------
# Inference from shapes
# ----------------------------------------------------------------------------------------------------------------------


def _grid_for(n: int, hints: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The patch grid of `n` positions: a hinted grid with n cells (non-square sizes), else a square one."""
    for hint in hints:
        if hint[0] * hint[1] == n:
            return tuple(hint)
    side = square_side(n)
    return (side, side) if side else None


def _near_square_factors(n: int, max_aspect: float = 2.0) -> tuple[int, int] | None:
    """A non-square h x w = n with aspect ratio at most `max_aspect` (a grid someone might train at), if any."""
    for h in range(math.isqrt(n), 0, -1):
        if n % h == 0 and n // h != h:
            return (h, n // h) if n // h <= max_aspect * h else None
    return None


def infer_arch(
    state: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    global_pool: str | None = None,
    image_size: tuple[int, int] | None = None,
    source_image_size: tuple[int, int] | None = None,
    act: str | None = None,
    eps: float | None = None,
) -> tuple[TimmArch, list[str]]:
    """Read a timm VisionTransformer architecture off a state dict (current timm key spelling).

    `source_image_size` is the checkpoint's own size (the table must fit it). Without it, `image_size` (the output size)
    is a hint for a non-square table: a grid of that size with the table's number of positions wins over a square
    one. `act` / `eps` default to timm's (exact GELU, 1e-6), except for a CLIP-style pre-norm tower (`norm_pre.*`),
    where they must be given: CLIP towers differ by origin and the weights cannot tell. Returns the architecture at
    the checkpoint's own grid and notes saying what was inferred from which key.
    """
    notes: list[str] = []

    def need(key: str, what: str) -> torch.Tensor:
        if key not in state:
            raise ConversionError(f"missing key {key!r} ({what}); is this a timm VisionTransformer state dict?")
        return state[key]

    patch = need("patch_embed.proj.weight", "the patch embedding")
    if patch.ndim != 4:
        raise ConversionError(
            f"patch_embed.proj.weight has shape {tuple(patch.shape)}; a Conv2d kernel [D, C, P, P] is expected (old "
            f"pre-conv timm checkpoints: load them with timm's checkpoint_filter_fn first)"
        )
    dim, in_chans, ph, pw = patch.shape
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    if not blocks:
        raise ConversionError("no `blocks.{i}.*` keys: not a timm VisionTransformer state dict")
    if blocks != list(range(len(blocks))):
        gap = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise ConversionError(f"missing key(s) of block(s) {gap}: blocks must be numbered 0..{blocks[-1]}")
    mlp_hidden = need("blocks.0.mlp.fc1.weight", "the first MLP layer").shape[0]

    # Heads cannot be read off a fused qkv; qk-norm runs over the head dimension, so its width gives them.
    qk_norm = "blocks.0.attn.q_norm.weight" in state
    heads_from_norm = None
    if qk_norm:
        head_dim = state["blocks.0.attn.q_norm.weight"].shape[0]
        if dim % head_dim:
            raise ConversionError(f"blocks.0.attn.q_norm.weight has {head_dim} channels, which do not divide D={dim}")
        heads_from_norm = dim // head_dim
        notes.append(f"heads = D / q_norm width = {dim} / {head_dim} = {heads_from_norm}")
    if num_heads is not None and heads_from_norm is not None and num_heads != heads_from_norm:
        raise ConversionError(
            f"--num-heads {num_heads} disagrees with the checkpoint: blocks.0.attn.q_norm.weight has head_dim "
            f"{dim // heads_from_norm}, i.e. {heads_from_norm} heads"
        )
    heads = num_heads or heads_from_norm
    if heads is None:
        raise ConversionError(
            f"the number of attention heads cannot be read off a fused qkv weight: pass --num-heads (e.g. "
            f"{max(1, dim // 64)} for D={dim} with the usual head_dim 64) or --model-name"
        )
    if dim % heads:
        raise ConversionError(f"--num-heads {heads} does not divide the width D={dim}")

    class_token = "cls_token" in state
    reg_tokens = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = int(class_token) + reg_tokens

    # Grid and whether the position table has prefix slots (no_embed_class=False) or covers patches only.
    given = source_image_size or image_size
    hints = [(given[0] // ph, given[1] // pw)] if given else []
    no_embed_class = False
    if "pos_embed" in state:
        rows = state["pos_embed"].shape[1]
        options = []
        for nec, n in ((False, rows - prefix), (True, rows)) if prefix else ((False, rows),):
            grid = _grid_for(n, hints)
            if grid:
                options.append((nec, grid, bool(hints) and grid == hints[0]))
        if any(o[2] for o in options) or source_image_size:
            options = [o for o in options if o[2]]
        if not options and source_image_size:
            raise ConversionError(
                f"pos_embed has {rows} rows, which fit a {hints[0][0]}x{hints[0][1]} grid (--source-image-size "
                f"{given[0]}x{given[1]}) neither with nor without {prefix} prefix slot(s)"
            )
        if not options:
            raise ConversionError(
                f"pos_embed has {rows} rows ({prefix} prefix token(s)): not a square grid with or without prefix "
                f"slots; pass --source-image-size HxW (the checkpoint's own size) or --model-name"
            )
        if len(options) > 1:
            raise ConversionError(
                f"pos_embed has {rows} rows: both a {options[0][1]} grid with {prefix} prefix slot(s) and a "
                f"{options[1][1]} grid without fit; pass --source-image-size HxW (the checkpoint's own size) or "
                f"--model-name"
            )
        no_embed_class, grid, hinted = options[0]
        alternative = _near_square_factors(rows - prefix) if no_embed_class and not hinted else None
        if alternative:
            # s*s rows read as patches-only could as well be an (s-1)x(s+1)-like grid plus prefix slots: ask.
            raise ConversionError(
                f"pos_embed has {rows} rows: either a {grid[0]}x{grid[1]} grid without prefix slots (no_embed_class, "
                f"as DeiT-3 / FlexiViT) or a {alternative[0]}x{alternative[1]} grid with {prefix} prefix slot(s). Pass "
                f"--source-image-size {grid[0] * ph}x{grid[1] * pw} or {alternative[0] * ph}x{alternative[1] * pw} "
                f"(the checkpoint's own size), or --model-name"
            )
        notes.append(
            f"grid {grid[0]}x{grid[1]} from pos_embed ({rows} rows, {prefix} prefix token(s), "
            f"{'no ' if no_embed_class else ''}prefix slots)"
        )
        pos_embed = "learn"
    else:
        if not hints:
            raise ConversionError(
                "the checkpoint has no pos_embed, so the image size cannot be inferred: pass "
                "--image-size (or --model-name)"
            )
        grid, pos_embed = hints[0], "none"

    has_attn_pool = "attn_pool.latent" in state
    has_fc_norm = "fc_norm.weight" in state
    has_norm = "norm.weight" in state
    if global_pool is not None:
        if global_pool not in ("token", "avg", "map"):
            raise ConversionError(f"--global-pool must be token, avg or map, got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ConversionError("--global-pool token needs a class token, but the checkpoint has no cls_token")
        if global_pool == "map" and not has_attn_pool:
            raise ConversionError("--global-pool map needs the attention pool, but the checkpoint has no attn_pool.*")
        if global_pool != "map" and has_attn_pool:
            raise ConversionError(
                f"the checkpoint has an attention pool (attn_pool.*): its pooling is 'map', not "
                f"--global-pool {global_pool}"
            )
        pool = global_pool
    elif has_attn_pool:
        pool = "map"
        notes.append("pooling 'map' from attn_pool.*")
    elif has_fc_norm:
        pool = "avg"
        notes.append(
            "pooling 'avg' (mean of patch tokens, then fc_norm) from fc_norm.* (timm's default for avg); "
            "pass --global-pool token for a class-token model with fc_norm"
        )
    elif class_token:
        pool = "token"
        notes.append("pooling 'token' from cls_token")
    else:
        raise ConversionError(
            "the pooling cannot be read off the keys: no cls_token, no fc_norm and no attn_pool. Pass --global-pool "
            "avg (mean of the patch tokens after `norm`: timm global_pool='avg', fc_norm=False)"
        )

    representation = state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None
    if representation:
        notes.append(f"representation layer (timm <= 0.5 pre_logits, tanh) of width {representation}")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    if act is not None and act not in ACT_TO_HF:
        raise ConversionError(f"--act must be one of {sorted(ACT_TO_HF)}, got {act!r}")
    if eps is not None and not eps > 0:
        raise ConversionError(f"--eps must be a positive number, got {eps!r}")
    if "norm_pre.weight" in state and (act is None or eps is None):
        raise ConversionError(
            "norm_pre.* (pre-norm) marks a CLIP-style tower, whose MLP activation and LayerNorm eps depend on where "
            "it comes from (OpenAI CLIP: QuickGELU; most CLIP towers: eps 1e-5; timm's default: GELU, eps 1e-6) and "
            "cannot be read off the weights, nor checked by --verify without --model-name. Pass "
            f"--act quick_gelu|gelu|gelu_tanh and --eps 1e-5|1e-6 (missing: "
            f"{', '.join(f for f, v in (('--act', act), ('--eps', eps)) if v is None)}), or --model-name"
        )
    arch = TimmArch(
        embed_dim=dim,
        depth=len(blocks),
        num_heads=heads,
        mlp_hidden=mlp_hidden,
        img_size=(grid[0] * ph, grid[1] * pw),
        patch_size=(ph, pw),
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool=pool,
        class_token=class_token,
        reg_tokens=reg_tokens,
        no_embed_class=no_embed_class,
        pos_embed=pos_embed,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        qk_norm=qk_norm,
        proj_bias="blocks.0.attn.proj.bias" in state,
        init_values=1e-5 if "blocks.0.ls1.gamma" in state else None,  # only the init; the trained gammas are loaded
        pre_norm="norm_pre.weight" in state,
        final_norm=has_norm or has_fc_norm,
        fc_norm=has_fc_norm,
        act=act or "gelu",
        eps=eps or TIMM_EPS,
        representation_size=representation,
    )
    if act is None:
        notes.append("activation: exact GELU (timm's default; pass --act or --model-name for CLIP/SigLIP-2 towers)")
    else:
        notes.append(f"activation: {act} (--act)")
    notes.append(f"LayerNorm eps {eps:g} (--eps)" if eps else "LayerNorm eps 1e-6 (timm's default; --eps to change)")
    return arch, notes


# ----------------------------------------------------------------------------------------------------------------------
# timm model by name
# ----------------------------------------------------------------------------------------------------------------------


def _import_timm(why: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ConversionError(f"{why} needs timm (pip install timm)") from None
    return timm


def timm_model_by_name(name: str, **kwargs) -> torch.nn.Module:
    """`timm.create_model(name, pretrained=False)` on the meta device: architecture and pretrained_cfg, no weights."""
    timm = _import_timm("--model-name")
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "unknown model" in str(e).lower():
            raise ConversionError(f"--model-name {name!r}: {e}") from None
        raise


def _imagenet_labels(model: torch.nn.Module, num_classes: int) -> dict[int, str] | None:
    """ImageNet label names timm ships for this model's classifier, when its pretrained_cfg names a known subset."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        if info.num_classes() != num_classes:
            return None
        return {i: info.index_to_description(i) for i in range(num_classes)}
    except Exception:  # label names are a convenience; any failure leaves the generic LABEL_i names
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


def _processor(config: VitHfConfig, data_cfg: dict | None) -> tuple[VitHfImageProcessor, str]:
    """Eval preprocessing from timm's pretrained_cfg when known, else timm's ViT defaults; returns a description."""
    cfg = dict(DEFAULT_DATA_CFG)
    origin = "timm's defaults for ViT (no pretrained_cfg known; pass --model-name to use the model's own)"
    if data_cfg:
        cfg.update({k: data_cfg[k] for k in cfg if data_cfg.get(k) is not None})
        origin = f"timm pretrained_cfg of `{data_cfg.get('architecture')}.{data_cfg.get('tag')}`"
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if len(mean) != config.num_channels:
        mean, std = [sum(mean) / len(mean)] * config.num_channels, [sum(std) / len(std)] * config.num_channels
    crop_mode = (data_cfg or {}).get("crop_mode") or "center"
    if crop_mode not in ("center", "squash"):
        raise ConversionError(
            f"timm crop_mode={crop_mode!r} is not supported by the image processor (it has 'center' and 'squash')"
        )
    processor = VitHfImageProcessor.from_model_config(
        config, image_mean=mean, image_std=std, resample=cfg["interpolation"], crop_pct=cfg["crop_pct"],
        crop_mode=crop_mode,
    )
    text = (
        f"{origin}: mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}, {cfg['interpolation']}, "
        f"crop_pct {cfg['crop_pct']}, crop_mode {crop_mode}"
    )
    return processor, text


def self_check_label(arch: TimmArch, timm_version: str) -> str:
    """The parity rows' reference when timm is built from the converter's own (inferred or given) arguments: it then
    checks the key mapping only; an activation or eps that differs from the checkpoint's training goes unnoticed."""
    return (
        f"mapping self-check against timm built from the inferred arguments (activation {arch.act}, eps "
        f"{arch.eps:g} assumed), timm {timm_version} VisionTransformer"
    )


def _verify(
    arch: TimmArch,
    timm_state: Mapping[str, torch.Tensor],
    config: VitHfConfig,
    model_name: str | None,
    source_pos: tuple[torch.Tensor, tuple[int, int]] | None = None,
) -> list[dict]:
    """Compare vit_hf with timm on `fixed_batch` in float32 and float64; ConversionError if over tolerance.

    Both models adopt the same (cast) tensors, so a pass adds at most one copy of the weights per dtype. When the
    positions were resampled, `source_pos` (the stored table and its grid) is resampled for the timm model by timm's
    own `resample_abs_pos_embed`, so the check covers our resampling too. The timm reference for a representation layer
    (which timm >= 0.6 lacks) is timm's pooled features, then tanh(Linear) and the head applied here by hand.
    """
    timm = _import_timm("--verify")
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    rep = arch.representation_size
    ref_pos = None
    if source_pos is not None:
        table, old_grid = source_pos
        prefix = 0 if arch.no_embed_class else arch.num_prefix_tokens
        ref_pos = resample_abs_pos_embed(
            table, new_size=list(arch.grid), old_size=list(old_grid), num_prefix_tokens=prefix
        )
    if model_name:
        reference = f"timm {timm.__version__} `{model_name}`"
    else:
        reference = self_check_label(arch, timm.__version__)
    reference += " + pre_logits" if rep else ""
    has_head = config.num_labels > 0
    outputs = "logits" if has_head else "pooled features"

    def row(name: str, dtype: torch.dtype, got: torch.Tensor, expected: torch.Tensor, tol: float | None) -> dict:
        agree = (got.argmax(-1) == expected.argmax(-1)).double().mean().item() if has_head else None
        diff = (got.double() - expected.double()).abs().max().item()
        return dict(
            reference=name,
            dtype=str(dtype).replace("torch.", ""),
            max_abs_diff=diff,
            top1_agreement=agree,
            outputs=outputs,
            tolerance=tol,
        )

    rows, refs = [], {}
    # float64 first: its timm outputs are the exact values that measure float32's own rounding noise below
    for dtype in (torch.float64, torch.float32):
        cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in timm_state.items()}
        ref_state = {
            k: v for k, v in cast.items() if not k.startswith("pre_logits.") and not (rep and k.startswith("head."))
        }
        if ref_pos is not None:
            ref_state["pos_embed"] = ref_pos.to(dtype)
        with torch.device("meta"):
            if model_name:
                h, w = arch.img_size
                ref = timm.create_model(model_name, pretrained=False, img_size=h if h == w else (h, w))
            else:
                ref_arch = dataclasses.replace(
                    arch, representation_size=None, num_classes=0 if rep else arch.num_classes
                )
                ref = VisionTransformer(**ref_arch.timm_kwargs(json_safe=False))
        ref.load_state_dict(ref_state, strict=True, assign=True)
        ref.eval()
        ours = build_model(config, {timm_to_hf_key(k): v for k, v in cast.items()})
        x = fixed_batch(config, dtype=dtype)
        with torch.no_grad():
            expected = ref(x)
            if rep:
                expected = torch.tanh(F.linear(expected, cast["pre_logits.fc.weight"], cast["pre_logits.fc.bias"]))
                if "head.weight" in cast:
                    expected = F.linear(expected, cast["head.weight"], cast["head.bias"])
            got = ours(pixel_values=x).logits
        refs[dtype] = expected
        if dtype == torch.float64:
            rows.append(row(reference, dtype, got, expected, 1e-9))
        else:
            # float32 rounding grows with depth and activation size; two correct float32 implementations differ by
            # about twice timm's own float32-vs-float64 error, so that (reported as its own row) sets the bar when it
            # exceeds 1e-4. Mapping bugs are caught by the float64 row.
            noise = row(
                f"{reference} float32 vs its float64 (rounding noise)", dtype, expected, refs[torch.float64], None
            )
            rows.insert(0, row(reference, dtype, got, expected, max(1e-4, 4 * noise["max_abs_diff"])))
            rows.append(noise)
        del ref, ours, cast, ref_state
    if any(r["tolerance"] is not None and not r["max_abs_diff"] <= r["tolerance"] for r in rows):  # NaN fails too
        raise ConversionError(
            "verification against timm failed (tolerance float64 1e-9, float32 max(1e-4, 4x timm's own float32 "
            "rounding noise); nothing written):\n" + parity_markdown(rows)
        )
    return rows


def convert_timm_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    model_name: str | None = None,
    num_heads: int | None = None,
    global_pool: str | None = None,
    image_size: int | str | tuple[int, int] | None = None,
    source_image_size: int | str | tuple[int, int] | None = None,
    act: str | None = None,
    eps: float | None = None,
    verify: bool = False,
) -> tuple[VitHfForImageClassification, VitHfImageProcessor, dict]:
    """Convert a timm VisionTransformer state dict into a vit_hf model and image processor.

    Returns `(model, processor, info)`; `info` holds the timm architecture (`arch`, at the output size), notes on
    what was inferred, renames applied, the source grid, whether positions were resampled, the processor's origin,
    the pretrained_cfg (if any) and, with `verify=True`, the parity rows. The model adopts `state`'s tensors (no copy)
    except for a resampled position table. Raises `ConversionError` for anything that cannot be converted exactly.
    """
    state, renames = canonical_timm_keys(state)
    target = parse_image_size(image_size)
    source_size = parse_image_size(source_image_size)
    notes: list[str] = []
    data_cfg = None
    labels = None
    if model_name:
        timm_model = timm_model_by_name(model_name)
        arch = TimmArch.from_timm_model(timm_model)
        data_cfg = dict(timm_model.pretrained_cfg or {})
        notes.append(f"architecture from timm.create_model({model_name!r}, pretrained=False)")
        if num_heads is not None and num_heads != arch.num_heads:
            raise ConversionError(f"--num-heads {num_heads} disagrees with {model_name} ({arch.num_heads} heads)")
        if global_pool is not None and global_pool != arch.global_pool:
            raise ConversionError(
                f"--global-pool {global_pool} disagrees with {model_name} (global_pool={arch.global_pool!r})"
            )
        if act is not None and act != arch.act:
            raise ConversionError(f"--act {act} disagrees with {model_name} (activation {arch.act})")
        if eps is not None and eps != arch.eps:
            raise ConversionError(f"--eps {eps:g} disagrees with {model_name} (LayerNorm eps {arch.eps:g})")
        k = state["head.weight"].shape[0] if "head.weight" in state else 0
        if k != arch.num_classes:
            raise ConversionError(
                f"head size mismatch: the checkpoint's head.weight has {k} classes but {model_name} has num_classes="
                f"{arch.num_classes}; drop --model-name to infer the architecture from the shapes"
            )
        if "pre_logits.fc.weight" in state:
            raise ConversionError(
                f"pre_logits.fc.* (representation layer) is not part of {model_name} in this timm; "
                f"drop --model-name to convert it with the layer"
            )
        # the checkpoint's own grid: the named model's, or (fine-tuned at another size) a square one
        if "pos_embed" in state and arch.pos_embed == "learn":
            rows = state["pos_embed"].shape[1]
            n = rows - (0 if arch.no_embed_class else arch.num_prefix_tokens)
            ph, pw = arch.patch_size
            if source_size:
                grid = (source_size[0] // ph, source_size[1] // pw)
                grid = grid if grid[0] * grid[1] == n else None
            else:
                grid = _grid_for(n, [arch.grid] + ([(target[0] // ph, target[1] // pw)] if target else []))
            if grid is None:
                raise ConversionError(
                    f"pos_embed has {rows} rows, which fit no grid of {model_name} "
                    f"({arch.num_prefix_tokens} prefix token(s), no_embed_class={arch.no_embed_class})"
                    + (f" at --source-image-size {source_size[0]}x{source_size[1]}" if source_size else "")
                )
            if grid != arch.grid and target is None:
                raise ConversionError(
                    f"pos_embed is for a {grid[0]}x{grid[1]} grid but {model_name} has {arch.grid[0]}x{arch.grid[1]}: "
                    f"pass --image-size to choose the output size (positions are resampled the timm way)"
                )
            arch = dataclasses.replace(arch, img_size=(grid[0] * arch.patch_size[0], grid[1] * arch.patch_size[1]))
        if arch.num_classes:
            labels = _imagenet_labels(timm_model, arch.num_classes)
        del timm_model
    else:
        arch, notes = infer_arch(
            state,
            num_heads=num_heads,
            global_pool=global_pool,
            image_size=target,
            source_image_size=source_size,
            act=act,
            eps=eps,
        )
    for key in state:
        timm_to_hf_key(key)  # a key the table has no rule for: refused by name
    check_state_dict(arch.expected_state(), state, target="architecture")

    source_grid = arch.grid
    resampled = False
    source_pos = None
    if target is not None and target != arch.img_size:
        ph, pw = arch.patch_size
        if target[0] % ph or target[1] % pw:
            raise ConversionError(f"--image-size {target[0]}x{target[1]} is not a multiple of the patch size {ph}x{pw}")
        new_grid = (target[0] // ph, target[1] // pw)
        if "pos_embed" in state:
            prefix = 0 if arch.no_embed_class else arch.num_prefix_tokens
            state = dict(state)
            source_pos = (state["pos_embed"], source_grid)
            state["pos_embed"] = resample_position_embedding(state["pos_embed"], source_grid, new_grid, prefix, "timm")
            resampled = True
        arch = dataclasses.replace(arch, img_size=target)

    if arch.global_pool in ("map", "avg") and arch.num_prefix_tokens and not arch.pool_include_prefix:
        notes.append(
            f"'{arch.global_pool}' pooling excludes the {arch.num_prefix_tokens} prefix token(s), as timm >= 1.0.16 "
            f"does (pool_include_prefix=False); timm <= 1.0.15 MAP pooling attended to them"
        )
    extra = {"id2label": labels} if labels else {}
    config = arch.to_config(**extra)
    parity = _verify(arch, state, config, model_name, source_pos) if verify else None
    model = build_model(config, {timm_to_hf_key(k): v for k, v in state.items()})
    processor, processor_origin = _processor(config, data_cfg)
    info = dict(
        arch=arch,
        notes=notes,
        renames=renames,
        source_grid=source_grid,
        resampled=resampled,
        processor=processor_origin,
        pretrained_cfg=data_cfg,
        parity=parity,
        model_name=model_name,
    )
    return model, processor, info


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kwargs_text(arch: TimmArch) -> str:
    if arch.representation_size:
        return "n/a: timm >= 0.6 has no representation layer"
    kwargs = arch.timm_kwargs(json_safe=False)
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = f"partial(timm.layers.LayerNorm, eps={arch.eps})"
    return "`" + json.dumps(kwargs) + "`"


def source_markdown(src: Path, info: dict) -> str:
    """The card's "Source and conversion" section."""
    arch: TimmArch = info["arch"]
    origin = (
        f"`{info['model_name']}` (timm model args)"
        if info["model_name"]
        else f"inferred from keys and shapes (activation {arch.act} and LayerNorm eps {arch.eps:g} assumed: with "
        f"`--verify` the parity rows are a self-check of the key mapping, not of these)"
    )
    lines = [
        f"Converted from the timm `VisionTransformer` state dict `{src.name}` (sha256 `{_sha256(src)}`) with "
        f"`python -m convert.timm`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| architecture | {origin} |",
        f"| timm kwargs | {_kwargs_text(arch)} |",
        f"| LayerNorm eps / activation | {arch.eps} / {ACT_TO_HF[arch.act]} |",
        f"| preprocessing | {info['processor']} |",
    ]
    grid = info["source_grid"]
    if info["resampled"]:
        lines.append(
            f"| positions | resampled from a {grid[0]}x{grid[1]} grid to {arch.grid[0]}x{arch.grid[1]} with "
            f"timm's algorithm (bicubic, antialias; `resample_abs_pos_embed` defaults) |"
        )
    else:
        lines.append(f"| positions | as stored ({grid[0]}x{grid[1]} grid) |")
    lines += [f"| key renames | {r} |" for r in info["renames"]]
    lines += [f"| note | {n} |" for n in info["notes"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m convert.timm", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="timm state dict: .safetensors or a torch.save file (.pth/.pt/.bin)")
    p.add_argument("out_dir", help="output folder (hub files written only on success; other files left alone)")
    p.add_argument("--model-name", default=None, help="timm model name giving the architecture and preprocessing")
    p.add_argument(
        "--num-heads", type=positive_int, default=None, help="attention heads (not readable off a fused qkv)"
    )
    p.add_argument("--global-pool", choices=("token", "avg", "map"), default=None, help="timm global_pool")
    p.add_argument(
        "--image-size", type=image_size_arg, default=None,
        help="output image size S or HxW; positions resampled the timm way",
    )
    p.add_argument(
        "--source-image-size",
        type=image_size_arg,
        default=None,
        help="the checkpoint's own image size S or HxW, when its position table does not tell",
    )
    p.add_argument("--act", choices=sorted(ACT_TO_HF), default=None, help="MLP activation (default: timm's GELU)")
    p.add_argument(
        "--eps", type=positive_float, default=None,
        help="LayerNorm epsilon (default: timm's 1e-6; CLIP-style pre-norm towers need it given, e.g. 1e-5)",
    )
    p.add_argument("--verify", action="store_true", help="compare logits with timm in float32 and float64")
    add_hub_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src = Path(args.src)
    check_paths(src, args.out_dir)
    state = load_torch_state_dict(src)
    model, processor, info = convert_timm_state_dict(
        state,
        model_name=args.model_name,
        num_heads=args.num_heads,
        global_pool=args.global_pool,
        image_size=args.image_size,
        source_image_size=args.source_image_size,
        act=args.act,
        eps=args.eps,
        verify=args.verify,
    )
    cfg = info["pretrained_cfg"] or {}
    card = dict(
        source=source_markdown(src, info),
        parity=parity_markdown(info["parity"]) if info["parity"] else None,
        tags=["timm"],
        base_model=cfg.get("hf_hub_id") if cfg.get("tag") else None,
        license=cfg.get("license") or "apache-2.0",
    )
    out = write_folder(model, processor, args.out_dir, card)
    print(f"wrote {out}")
    for row in info["parity"] or []:
        print(
            f"parity vs {row['reference']} ({row['dtype']}): max abs diff {row['max_abs_diff']:.3e}"
            + (f", top-1 agreement {100 * row['top1_agreement']:.1f}%" if row["top1_agreement"] is not None else "")
        )
    push_if_requested(out, args, f"Convert {src.name} from timm")
    return 0


if __name__ == "__main__":
    run_cli(main)
