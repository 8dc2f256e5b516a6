"""Configuration of the einops Vision Transformer (`model_type="vit_hf"`).

Field names follow transformers' `ViTConfig` (hidden_size, num_hidden_layers, ...) so HF tooling and readers
know them; the switches that ViTConfig lacks use timm's / big_vision's vocabulary, and together they cover every
plain-ViT checkpoint family (original ViT, AugReg, DeiT, DeiT-3, CLIP towers, SigLIP, big_vision, registers).

This file is copied flat next to the weights by `save_pretrained` (remote code): it imports only transformers and its
sibling `switches_vit_hf.py` (the values each switch takes and the checks of their combinations).
"""

from __future__ import annotations

import inspect
import json
import re

from transformers import PretrainedConfig

try:
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # transformers < 5.2 kept it under utils
    from transformers.utils.backbone_utils import BackboneConfigMixin

from .switches_vit_hf import (  # noqa: F401 (the switches' vocabularies are this module's public names too)
    MLP_LAYERS,
    NORM_TYPES,
    POOLINGS,
    POS_EMBED_INTERPOLATIONS,
    POS_EMBED_TYPES,
    ROPE_NUMERICS,
    ROPE_TYPES,
    check_config,
)

# Size presets: (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size).
# Ti/S/B/L/H from the ViT and DeiT papers; "test" is odd on purpose (head_dim != heads, mlp != 4 * width)
# so that a swapped (h d) axis or an mlp/width mix-up cannot go unnoticed.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "test": (32, 2, 4, 37),
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}
_PRESET_ALIASES = {"ti": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge", "mu": "test"}

# Activation names are transformers' ACT2FN keys; the timm / JAX spellings people type are accepted too.
_ACT_ALIASES = {"gelu_tanh": "gelu_pytorch_tanh", "gelu_exact": "gelu", "quickgelu": "quick_gelu"}


def _pair(x: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"expected an int or a (height, width) pair, got {x}")
    return x


# ------------------------------------------------------------------ files written by another version of vit_hf
# With vit_hf installed, `import vit_hf` registers these classes with transformers' Auto classes, and a registered class
# wins over a folder's own code (its `auto_map`), even with trust_remote_code=True. So a file written by a newer vit_hf
# that sets a switch this version does not know is refused instead of being built as a different model. To tell "a
# switch at its default" from "a switch in use", a saved file holds only the fields a load without them would not give
# back: transformers' `to_diff_dict` drops only PretrainedConfig's own defaults and writes every field of a subclass.
# A switch added later and left at its default is then absent, and an older version loads the folder unchanged.
VIT_HF_VERSION = "0.2.0"


def _release(version: str) -> tuple[int, ...]:
    """`"0.2.1"` -> `(0, 2, 1)`; a pre-release counts as its release (`"0.2.1.dev0"` -> `(0, 2, 1)`)."""
    numbers = re.match(r"\d+(\.\d+)*", str(version))
    return tuple(int(n) for n in numbers.group().split(".")) if numbers else ()


def _init_fields(cls: type) -> dict[str, inspect.Parameter]:
    """The settings `cls.__init__` takes by name, this package's subclasses' included (transformers' own base classes
    excluded): read from the signatures, so a field added there is known here without being listed anywhere else."""
    fields = {}
    for klass in cls.__mro__:
        if klass.__module__.startswith("transformers."):
            break
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                    fields.setdefault(p.name, p)
    return fields


class _SavedByVersion:
    """Loading: a file from a newer vit_hf that sets a field this version does not know, or that this version's checks
    refuse, is refused in one line naming the version needed. Saving: the version, and only the non-default fields."""

    saved_file = "config.json"

    @classmethod
    def from_dict(cls, saved: dict, **kwargs):
        saved = dict(saved)
        version = saved.pop("vit_hf_version", None)
        if version is None or _release(version) <= _release(VIT_HF_VERSION):
            return super().from_dict(saved, **kwargs)
        known = {*_init_fields(cls), *cls().to_dict(), "auto_map"}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise ValueError(cls._newer(version, f"sets {', '.join(unknown)}, which this version does not know"))
        try:
            return super().from_dict(saved, **kwargs)
        except (TypeError, ValueError) as e:  # a value this version's checks refuse (a new pooling, say)
            raise ValueError(cls._newer(version, f"does not load here ({' '.join(str(e).split())})")) from None

    @classmethod
    def _newer(cls, version: str, problem: str) -> str:
        return (
            f"{cls.saved_file} was saved by vit_hf {version} and {problem} (vit_hf {VIT_HF_VERSION}): "
            f"pip install -U 'vit_hf>={version}'"
        )

    def _saved_fields(self, saved: dict) -> dict:
        """`saved` without the fields a load would give back anyway, plus the version that writes it. A field is kept
        when it differs from the default, when another field would change it on load (fc_norm=False with mean
        pooling), and, for a `None` default (derived from other fields), only when a load would derive another value."""
        cls = type(self)
        fields = [k for k in _init_fields(cls) if k in saved]

        def lost(kept: set[str]) -> set[str]:  # the fields a load of `kept` alone would not give back
            try:
                rebuilt = cls(**{k: saved[k] for k in kept}).to_dict()
            except (TypeError, ValueError):
                return set(fields)
            return {k for k in fields if rebuilt.get(k) != saved[k]}

        defaults = cls().to_dict()
        kept = {k for k in fields if saved[k] != defaults.get(k)}
        while back := lost(kept) - kept:
            kept |= back
        derived = {k for k, p in _init_fields(cls).items() if p.default is None}
        for k in sorted(kept & derived):
            if not lost(kept - {k}):
                kept.remove(k)
        written = {k: v for k, v in saved.items() if k not in fields or k in kept}
        return {**written, "vit_hf_version": VIT_HF_VERSION}


class ConfigSavedByVersion(_SavedByVersion):
    def to_diff_dict(self) -> dict:
        """What `save_pretrained` writes to config.json."""
        return self._saved_fields(super().to_diff_dict())


class ProcessorSavedByVersion(_SavedByVersion):
    saved_file = "preprocessor_config.json"

    def to_json_string(self) -> str:
        """What `save_pretrained` writes to preprocessor_config.json."""
        written = self._saved_fields(json.loads(super().to_json_string()))
        return json.dumps(written, indent=2, sort_keys=True) + "\n"


class VitHfConfig(ConfigSavedByVersion, BackboneConfigMixin, PretrainedConfig):
    r"""Configuration of [`VitHfModel`] / [`VitHfForImageClassification`] / [`VitHfBackbone`].

    Args:
        hidden_size: token width D.
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: heads per attention layer (D must be divisible by it).
        intermediate_size: MLP hidden width (with `mlp_layer="glu"`: the width after gating, i.e. `fc2`'s input).
        hidden_act: MLP activation, an `ACT2FN` name: `"gelu"` (exact erf, timm/PyTorch), `"gelu_pytorch_tanh"`
            (tanh approximation, JAX/Flax's `nn.gelu`), `"quick_gelu"` (OpenAI CLIP); the gate's activation with
            `mlp_layer="glu"` (`"silu"`: SwiGLU).
        mlp_layer: `"mlp"` (fc1 -> act -> fc2) or `"glu"`: `fc1` makes `[gate; up]` (2 x intermediate_size rows),
            `fc2(act(gate) * up)` (timm `GluMlp(gate_last=False)`; with `hidden_act="silu"` timm's `SwiGLUPacked`,
            the MLP of DINOv2-giant).
        hidden_dropout_prob: dropout after the attention and MLP projections and on the embeddings.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        initializer_range: std of the truncated normal used for Linear/Conv weights and learned positions.
        layer_norm_eps: LayerNorm epsilon; 1e-6 for ViT/timm/Flax (not torch's 1e-5 nor ViTConfig's 1e-12).
        image_size: `int` or `(height, width)`; the size the position table is made for.
        patch_size: `int` or `(height, width)`.
        crop_remainder: accept image sizes that are not a multiple of the patch size and ignore the bottom rows and
            right columns that do not fill a whole patch, as a stride-P convolution does (timm's and transformers'
            patch embedding: SigLIP so400m/14 at 384 px uses a 27x27 grid of 378 px). `False` refuses such sizes.
        num_channels: input channels.
        qkv_bias: bias on the fused qkv projection.
        proj_bias: bias on the attention output projection and both MLP layers (timm `proj_bias`).
        patch_bias: bias on the patch projection; `None` means `not pre_norm` (timm ties them).
        class_token: prepend a learned class token.
        num_register_tokens: learned register tokens after the class token (Darcet et al., timm `reg_tokens`).
        no_embed_class: positions cover the patches only and are added before the prefix tokens are concatenated
            (big_vision, DeiT-3, FlexiViT, DINOv2-style); `False` is the original ViT (concat, then add).
        no_embed_registers: with `no_embed_class=False`, the table covers the class (and distillation) token and
            the patches but not the registers, which are inserted after the positions are added (transformers'
            DINOv2-with-registers layout; timm folds `pos[0]` into the class token instead, which rounds).
        distilled: a distillation token after the class token and a second head (`head_dist`) on it; the logits
            are the average of both heads (DeiT distilled; timm `VisionTransformerDistilled` at inference).
            `pooler_output` stays the class token's features.
        pos_embed_type: `"learned"`, `"sincos2d"` (fixed MoCo-v3 / big_vision table, not stored), `"sincos2d_mae"`
            (the MAE-style fixed table with frequencies 10000^-(k / (D/4)), bands `[sin x, cos x, sin y, cos y]`:
            AIMv2's "native" variant) or `"none"`.
        pos_embed_interpolation: algorithm used to resample the position table at run time
            (`interpolate_pos_encoding=True`) and by `resize_position_embeddings`: one of `"timm"`, `"timm_npz"`,
            `"google"`, `"hf"`, `"hf_dinov2"`, `"hf_dinov2_reg"`, `"hf_siglip2"`, `"timm_naflex"` (see
            `POS_EMBED_INTERPOLATIONS`); NaFlex inputs resample with it per image (naflex_vit_hf.py).
        dynamic_img_size: resample the stored position table to every input's grid at run time, as if
            `interpolate_pos_encoding=True` were always passed (timm `dynamic_img_size`; transformers' DINOv2
            does this at every call). `image_size` stays the stored table's size.
        pre_norm: LayerNorm on the tokens before the first block (CLIP `ln_pre`, timm `norm_pre`).
        final_norm: LayerNorm after the last block (`norm`, or `fc_norm` after pooling when `fc_norm` is set).
        pooling: `"token"` (first token after the final norm: the class token, or big_vision `pool_type='0'`
            without one), `"mean"` (average of the patch tokens), `"map"` (multi-head attention pooling with a
            learned probe, SigLIP), `"map_kv"` (AIMv2's head: the learned query `attn_pool.latent` used as is, key
            and value projections `attn_pool.kv` with `qkv_bias`, an output projection, no norm, no MLP),
            `"token_mean"` (`[class token; mean of the patch tokens]`, 2 x hidden_size wide, transformers'
            Dinov2ForImageClassification), or `"none"` (no pooled output; the head is then unavailable).
        fc_norm: apply the final LayerNorm after pooling instead of on all tokens (timm `fc_norm`, MAE / BEiT
            style). `None` picks timm's default: `True` for `"mean"` pooling, else `False`. Google GAP models
            normalise before averaging: convert those with `fc_norm=False`.
        pool_include_prefix: let `"mean"` / `"map"` / `"map_kv"` pooling see the class/register tokens (timm <= 1.0.15
            `map` behaviour; timm's EVA-family `map` pooling).
        qk_norm: LayerNorm over the head dimension of queries and keys.
        layer_scale_init_value: enables LayerScale (`ls1.gamma`, `ls2.gamma`) initialised to this value.
        representation_size: tanh(Linear) "pre-logits" layer of this width between pooling and head (original
            ImageNet-21k ViT releases, big_vision `rep_size`).
        drop_path_rate: stochastic depth, linearly increasing over the blocks up to this rate.
        classifier_dropout: dropout before the classification head.
        encoder_stride: upsampling factor of [`VitHfForMaskedImageModeling`]'s decoder (transformers' ViTConfig
            field); `None` means the patch size, which SimMIM's masked loss needs.
        norm_type: every norm of the model (block, final, pre, fc, qk, inner, embedding and pooling norms):
            `"layernorm"`, `"rmsnorm"` (x * rsqrt(mean(x^2) + eps) * weight in the input's precision, timm `RmsNorm`)
            or `"rmsnorm_fp32"` (the same computed in float32 and cast back before the weight: transformers'
            T5-style RMSNorm of AIMv2 and most LLM-era towers).
        embed_norm: a norm right after the patch projection, before positions and prefix tokens
            (`patch_embed.norm`; AIMv2, timm `embed_norm_layer`).
        attn_inner_norm: a norm on the merged attention heads before `attn.proj` (`attn.norm`; EVA02-CLIP, timm
            `scale_attn_inner` / `scale_attn_norm`).
        mlp_inner_norm: a norm on the MLP hidden activations before `fc2` (`mlp.norm`; EVA02-B/L, timm `scale_mlp`).
        post_norm: residual post-norm blocks, `x + norm1(attn(x))` then `x + norm2(mlp(x))` (EVA02-E CLIP, timm
            `EvaBlockPostNorm` / `ResPostBlock`); the default is pre-norm, `x + attn(norm1(x))`.
        key_bias: with `qkv_bias`, whether the key projection has a bias. `False` keeps the query and value biases
            as `attn.q_bias` / `attn.v_bias` and a fixed zero key bias (EVA, DINOv3 `key_bias=False`, timm
            `EvaAttention`); it matters with RoPE, where a key bias is not cancelled by the softmax.
        layer_scale_attn_only: with `layer_scale_init_value`, scale the attention branch only (`ls1`; Sapiens2,
            timm `attn_only_layer_scale`).
        pool_num_heads / pool_intermediate_size: heads and MLP width of the `"map"` pooling head; `None` takes the
            trunk's (PE uses 8 heads whatever the width).
        rope_type: rotary position embeddings on the queries and keys of the patch tokens (the prefix tokens are
            not rotated): `"none"`, `"cat"` (integer patch indices, frequencies theta^-(4k/head_dim): EVA02, PE,
            timm's RoPE ViTs, Naver RoPE-ViT axial; timm `RotaryEmbeddingCat`), `"dinov3"` (patch centres scaled to
            [-1, 1], periods theta^(4k/head_dim): DINOv3, Sapiens2, LingBot) or `"mixed"` (learned frequencies per
            block and head, `rope.freqs`: Naver RoPE-Mixed). Combines with learned positions (`pos_embed_type`,
            RoPE + APE). Tables are built for every input's grid (no interpolation) and cached per grid.
        rope_theta: the frequency base (timm `rope_temperature`); `None` takes the kind's default (cat 10000,
            dinov3 100, mixed 10).
        rope_rotate_half: rotate the two halves of each head (`[-x2, x1]`: DINOv3) instead of interleaved pairs
            (`[-x1, x0, ...]`: EVA02, PE, RoPE-ViT); `None` takes the kind's default (True for dinov3 only).
        rope_grid_indexing: `"ij"` (channel 0 follows the rows) or `"xy"` (the columns first: PE, RoPE-ViT).
        rope_grid_offset: added to the patch coordinates (PE: 1.0; dinov3: to the centres before normalising).
        rope_ref_grid: `(h, w)`; `"cat"` coordinates are rescaled so that any grid spans this one (EVA02's
            `ref_feat_shape`: 16x16 for 224 px / 14).
        rope_numerics: whose float rounding of the table is reproduced (the maths is the same): `"timm"` ('cat' and
            'mixed' tables computed in float32, 'dinov3' in the model's precision from float32 coordinates and periods)
            or `"transformers"` ('dinov3' only: float32 throughout, as `DINOv3ViTRopePositionEmbedding`).
        rope_shift_coords / rope_jitter_coords / rope_rescale_coords: DINOv3's training-time coordinate augmentation
            (uniform shift in [-s, s]; log-uniform per-axis scale in [1/j, j]; log-uniform shared scale in [1/r, r]);
            `None` disables each; never applied in eval mode.
        num_key_value_heads: grouped-query attention: key/value heads shared by groups of query heads (an int, or
            one per block: Sapiens2 keeps full attention in its first and last blocks); `None` is multi-head
            attention. `attn.qkv` rows are then `[q (heads); k (kv heads); v (kv heads)]`.
        out_features / out_indices: the stages [`VitHfBackbone`] returns (transformers' backbone convention):
            `stage_names` are `"stem"` (the embeddings) then `"stage1"` ... `"stageL"` (block i's output is stage
            i + 1); the default is the last stage.
    """

    model_type = "vit_hf"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-6,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        crop_remainder: bool = False,
        num_channels: int = 3,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        patch_bias: bool | None = None,
        class_token: bool = True,
        num_register_tokens: int = 0,
        no_embed_class: bool = False,
        no_embed_registers: bool = False,
        distilled: bool = False,
        pos_embed_type: str = "learned",
        pos_embed_interpolation: str = "timm",
        dynamic_img_size: bool = False,
        pre_norm: bool = False,
        final_norm: bool = True,
        pooling: str = "token",
        fc_norm: bool | None = None,
        pool_include_prefix: bool = False,
        qk_norm: bool = False,
        layer_scale_init_value: float | None = None,
        representation_size: int | None = None,
        mlp_layer: str = "mlp",
        drop_path_rate: float = 0.0,
        classifier_dropout: float = 0.0,
        encoder_stride: int | None = None,
        norm_type: str = "layernorm",
        embed_norm: bool = False,
        attn_inner_norm: bool = False,
        mlp_inner_norm: bool = False,
        post_norm: bool = False,
        key_bias: bool = True,
        layer_scale_attn_only: bool = False,
        pool_num_heads: int | None = None,
        pool_intermediate_size: int | None = None,
        rope_type: str = "none",
        rope_theta: float | None = None,
        rope_rotate_half: bool | None = None,
        rope_grid_indexing: str = "ij",
        rope_grid_offset: float = 0.0,
        rope_ref_grid: int | list[int] | tuple[int, int] | None = None,
        rope_numerics: str = "timm",
        rope_shift_coords: float | None = None,
        rope_jitter_coords: float | None = None,
        rope_rescale_coords: float | None = None,
        num_key_value_heads: int | list[int] | None = None,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = _ACT_ALIASES.get(hidden_act, hidden_act)
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        # Stored as lists so config.json round-trips to the same value; `_pair` gives tuples to the model.
        self.image_size = image_size if isinstance(image_size, int) else list(_pair(image_size))
        self.patch_size = patch_size if isinstance(patch_size, int) else list(_pair(patch_size))
        self.crop_remainder = crop_remainder
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.proj_bias = proj_bias
        self.patch_bias = (not pre_norm) if patch_bias is None else patch_bias
        self.class_token = class_token
        self.num_register_tokens = num_register_tokens
        self.no_embed_class = no_embed_class
        self.no_embed_registers = no_embed_registers
        self.distilled = distilled
        self.pos_embed_type = pos_embed_type
        self.pos_embed_interpolation = pos_embed_interpolation
        self.dynamic_img_size = dynamic_img_size
        self.pre_norm = pre_norm
        self.final_norm = final_norm
        self.pooling = pooling
        self.fc_norm = (pooling == "mean") if fc_norm is None else fc_norm
        self.pool_include_prefix = pool_include_prefix
        self.qk_norm = qk_norm
        self.layer_scale_init_value = layer_scale_init_value
        self.representation_size = representation_size
        self.mlp_layer = mlp_layer
        self.drop_path_rate = drop_path_rate
        self.classifier_dropout = classifier_dropout
        self.encoder_stride = encoder_stride
        self.norm_type = norm_type
        self.embed_norm = embed_norm
        self.attn_inner_norm = attn_inner_norm
        self.mlp_inner_norm = mlp_inner_norm
        self.post_norm = post_norm
        self.key_bias = key_bias
        self.layer_scale_attn_only = layer_scale_attn_only
        self.pool_num_heads = pool_num_heads
        self.pool_intermediate_size = pool_intermediate_size
        self.rope_type = rope_type
        self.rope_theta = ROPE_TYPES.get(rope_type) if rope_theta is None else float(rope_theta)
        self.rope_rotate_half = (rope_type == "dinov3") if rope_rotate_half is None else rope_rotate_half
        self.rope_grid_indexing = rope_grid_indexing
        self.rope_grid_offset = float(rope_grid_offset)
        self.rope_ref_grid = None if rope_ref_grid is None else list(_pair(rope_ref_grid))
        self.rope_numerics = rope_numerics
        self.rope_shift_coords = rope_shift_coords
        self.rope_jitter_coords = rope_jitter_coords
        self.rope_rescale_coords = rope_rescale_coords
        self.num_key_value_heads = list(num_key_value_heads) if isinstance(num_key_value_heads, (list, tuple)) else (
            num_key_value_heads)
        # Checked before PretrainedConfig's own validators run (they read `head_dim`, which needs heads > 0).
        self.check_fields()
        kwargs.pop("stage_names", None)  # derived from num_hidden_layers (see the property)
        self.set_output_features_output_indices(
            out_features=kwargs.pop("out_features", None), out_indices=kwargs.pop("out_indices", None)
        )
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ derived quantities
    @property
    def image_hw(self) -> tuple[int, int]:
        return _pair(self.image_size)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return _pair(self.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        return (h // ph, w // pw)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation, registers (in that order)."""
        return int(self.class_token) + int(self.distilled) + self.num_register_tokens

    @property
    def num_pos_prefix_tokens(self) -> int:
        """How many of the prefix tokens the learned position table has rows for (they come first in the table)."""
        if self.no_embed_class:
            return 0
        if self.no_embed_registers:
            return self.num_prefix_tokens - self.num_register_tokens
        return self.num_prefix_tokens

    @property
    def stage_names(self) -> list[str]:
        """Backbone stages: `"stem"` (embeddings), then one `"stage{i}"` per block (transformers' convention)."""
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def kv_heads(self, layer: int) -> int:
        """Key/value heads of block `layer` (grouped-query attention), the query heads without it."""
        kv = self.num_key_value_heads
        if kv is None:
            return self.num_attention_heads
        return kv[layer] if isinstance(kv, list) else kv

    @property
    def pooled_size(self) -> int:
        """Width of `pooler_output`, i.e. the classification head's input."""
        if self.pooling == "token_mean":
            return 2 * self.hidden_size
        return self.representation_size or self.hidden_size

    def check_fields(self) -> None:
        """Raise a `ValueError` that names the field and the fix for any inconsistent setting."""
        check_config(self)

    @staticmethod
    def parse_preset(name: str) -> tuple[str, int | None]:
        """`(size, patch size or None)` of a preset name (`"base"`, `"B/16"`, `"small/16"`, `"mu"`); ValueError when
        `name` is not one. The one parser of preset names: `from_preset` and the training script's checks use it."""
        size, _, patch = name.strip().lower().partition("/")
        size = _PRESET_ALIASES.get(size, size)
        if size not in PRESETS:
            raise ValueError(
                f"unknown preset {name!r}: choose one of {sorted(PRESETS)} (optionally with a patch size, e.g. "
                f"'base/16')"
            )
        if patch and not patch.isdigit():
            raise ValueError(f"preset {name!r}: the part after '/' must be a patch size, e.g. 'base/16'")
        return size, int(patch) if patch else None

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> VitHfConfig:
        """Build a config from a size preset: `"base"`, `"small"`, ..., or big_vision's `"B/16"` / `"base/16"`.

        Keyword arguments override any field (e.g. `image_size=384, num_labels=10`).
        """
        size, patch = cls.parse_preset(name)
        d, depth, heads, mlp = PRESETS[size]
        fields = dict(hidden_size=d, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp)
        if patch is not None:
            fields["patch_size"] = patch
        if size == "test":
            fields.update(image_size=32, patch_size=patch or 8)
        fields.update(kwargs)
        return cls(**fields)


__all__ = [
    "VitHfConfig", "PRESETS", "POS_EMBED_INTERPOLATIONS", "POOLINGS", "MLP_LAYERS", "NORM_TYPES", "ROPE_TYPES",
    "ROPE_NUMERICS",
]

VitHfConfig.register_for_auto_class()
