"""The timm `VisionTransformer` architecture with every default resolved (`TimmArch`): the one place where a vit_hf
config and timm's constructor arguments are mapped onto each other. Every converter goes through it: timm state dicts
and timm Hub repos (read off a timm model or inferred from shapes), Google npz files (built from the inferred layout),
and the export back to timm (`convert.to_timm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from convert.common import ConversionError, empty_model
from convert.timm_eva import activation_name
from vit_hf import VitHfConfig

# timm global_pool <-> vit_hf pooling
POOL_TO_HF = {"token": "token", "avg": "mean", "map": "map", "": "none"}
POOL_FROM_HF = {v: k for k, v in POOL_TO_HF.items()}
# timm activation names (timm.layers.get_act_layer) <-> transformers ACT2FN names
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "silu": "silu"}
ACT_FROM_HF = {v: k for k, v in ACT_TO_HF.items()}
# timm pos_embed <-> vit_hf pos_embed_type; 'sincos2d' (big_vision, generated, never stored) has no timm spelling
POS_EMBED_TO_HF = {"learn": "learned", "none": "none", "sincos2d": "sincos2d"}

# TimmArch field <-> VitHfConfig field, with the value map where the two vocabularies differ (None: same values).
# The one table both directions read; image/patch size (pairs), patch bias (tied to pre_norm in timm) and the run-time
# position resampling are set apart.
CONFIG_FIELDS: list[tuple[str, str, dict | None]] = [
    ("embed_dim", "hidden_size", None),
    ("depth", "num_hidden_layers", None),
    ("num_heads", "num_attention_heads", None),
    ("mlp_hidden", "intermediate_size", None),
    ("mlp_layer", "mlp_layer", None),
    ("act", "hidden_act", ACT_TO_HF),
    ("eps", "layer_norm_eps", None),
    ("in_chans", "num_channels", None),
    ("qkv_bias", "qkv_bias", None),
    ("proj_bias", "proj_bias", None),
    ("qk_norm", "qk_norm", None),
    ("class_token", "class_token", None),
    ("distilled", "distilled", None),
    ("reg_tokens", "num_register_tokens", None),
    ("no_embed_class", "no_embed_class", None),
    ("pos_embed", "pos_embed_type", POS_EMBED_TO_HF),
    ("pre_norm", "pre_norm", None),
    ("final_norm", "final_norm", None),
    ("global_pool", "pooling", POOL_TO_HF),
    ("fc_norm", "fc_norm", None),
    ("pool_include_prefix", "pool_include_prefix", None),
    ("init_values", "layer_scale_init_value", None),
    ("representation_size", "representation_size", None),
    ("num_classes", "num_labels", None),
    ("dynamic_img_size", "dynamic_img_size", None),
    # the switches of the newer families (timm eva.py: EVA02, DINOv3, PE, RoPE-ViT; vision_transformer.py: AIMv2,
    # BEiT-3, post-norm blocks); TimmArch uses vit_hf's vocabulary for them
    ("norm_type", "norm_type", None),
    ("embed_norm", "embed_norm", None),
    ("attn_inner_norm", "attn_inner_norm", None),
    ("mlp_inner_norm", "mlp_inner_norm", None),
    ("post_norm", "post_norm", None),
    ("key_bias", "key_bias", None),
    ("layer_scale_attn_only", "layer_scale_attn_only", None),
    ("pool_num_heads", "pool_num_heads", None),
    ("pool_mlp_hidden", "pool_intermediate_size", None),
    ("num_kv_heads", "num_key_value_heads", None),
    ("rope_type", "rope_type", None),
    ("rope_theta", "rope_theta", None),
    ("rope_rotate_half", "rope_rotate_half", None),
    ("rope_grid_indexing", "rope_grid_indexing", None),
    ("rope_grid_offset", "rope_grid_offset", None),
    ("rope_ref_grid", "rope_ref_grid", None),
    ("rope_shift_coords", "rope_shift_coords", None),
    ("rope_jitter_coords", "rope_jitter_coords", None),
    ("rope_rescale_coords", "rope_rescale_coords", None),
]
# TimmArch fields timm's VisionTransformer has no argument for (eva.py's Eva has): a config using them exports as Eva
EVA_ONLY_DEFAULTS = dict(key_bias=True, layer_scale_attn_only=False, pool_num_heads=None, pool_mlp_hidden=None,
                         rope_type="none", num_kv_heads=None)
TIMM_EPS = 1e-6  # timm's LayerNorm default


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
    distilled: bool = False  # DeiT's distillation token and second head (timm VisionTransformerDistilled)
    mlp_layer: str = "mlp"  # "glu": timm's SwiGLUPacked (fc1 -> [gate; up]); mlp_hidden is then fc2's input width
    dynamic_img_size: bool = False  # positions resampled to every input's grid at run time (timm's own switch)
    family: str = "vit"  # the timm class: "vit" (VisionTransformer) or "eva" (timm.models.eva.Eva)
    norm_type: str = "layernorm"  # "rmsnorm": timm RmsNorm (AIMv2, Sapiens2)
    embed_norm: bool = False  # a norm inside the patch embedding (AIMv2)
    attn_inner_norm: bool = False  # scale_attn_inner / scale_attn_norm (EVA02-CLIP, BEiT-3)
    mlp_inner_norm: bool = False  # scale_mlp / scale_mlp_norm (EVA02-B/L, BEiT-3)
    post_norm: bool = False  # residual post-norm blocks (EvaBlockPostNorm, ResPostBlock)
    key_bias: bool = True  # False: EVA's q_bias / v_bias with a zero key bias
    layer_scale_attn_only: bool = False
    pool_num_heads: int | None = None  # the MAP head's own heads / MLP width (PE)
    pool_mlp_hidden: int | None = None
    num_kv_heads: int | list[int] | None = None  # grouped-query attention (Sapiens2), per block
    rope_type: str = "none"
    rope_theta: float | None = None
    rope_rotate_half: bool | None = None
    rope_grid_indexing: str = "ij"
    rope_grid_offset: float = 0.0
    rope_ref_grid: tuple[int, int] | None = None
    rope_shift_coords: float | None = None
    rope_jitter_coords: float | None = None
    rope_rescale_coords: float | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def mlp_ratio(self) -> float:
        """A ratio for which timm's `int(embed_dim * mlp_ratio)` gives `mlp_hidden` back (M / D can truncate to M - 1);
        a gated MLP's fc1 is twice as wide."""
        hidden = self.mlp_hidden * (2 if self.mlp_layer == "glu" else 1)
        ratio = hidden / self.embed_dim
        if int(self.embed_dim * ratio) != hidden:
            ratio = (hidden + 0.25) / self.embed_dim
        assert int(self.embed_dim * ratio) == hidden
        return ratio

    # -------------------------------------------------------------- vit_hf config
    def to_config(self, pos_embed_interpolation: str = "timm", **kwargs) -> VitHfConfig:
        """The vit_hf config of this architecture; `pos_embed_interpolation` names the run-time position resampling
        (timm's, or Google's for npz weights). A combination the config rejects is a ConversionError."""
        h, w = self.img_size
        ph, pw = self.patch_size
        try:
            return self._config(h, w, ph, pw, pos_embed_interpolation, kwargs)
        except ValueError as e:
            raise ConversionError(f"unsupported configuration: {e}") from None

    def _config(self, h: int, w: int, ph: int, pw: int, interpolation: str, kwargs: dict) -> VitHfConfig:
        fields = {hf: (values[getattr(self, name)] if values else getattr(self, name))
                  for name, hf, values in CONFIG_FIELDS}
        return VitHfConfig(
            **fields,
            image_size=h if h == w else [h, w],
            patch_size=ph if ph == pw else [ph, pw],
            patch_bias=not self.pre_norm,  # timm ties them: PatchEmbed(bias=not pre_norm)
            # timm's stride-P convolution ignores what does not fill a patch (so400m/14 at 384 px: a 27x27 grid)
            crop_remainder=bool(h % ph or w % pw),
            pos_embed_interpolation=interpolation,
            **kwargs,
        )

    @classmethod
    def from_config(cls, config: VitHfConfig) -> TimmArch:
        """The timm architecture of a vit_hf config; refuses (ConversionError) what timm's VisionTransformer lacks."""
        problems = []
        if config.representation_size:
            problems.append("representation_size (the tanh pre_logits representation layer; timm >= 0.6 has none)")
        if config.pos_embed_type.startswith("sincos2d"):
            problems.append(f"pos_embed_type={config.pos_embed_type!r} (timm's VisionTransformer has only learned or "
                            f"no positions)")
        if config.pooling == "token" and not config.class_token:
            problems.append("pooling='token' without a class token (timm asserts class_token for global_pool='token')")
        if config.patch_bias != (not config.pre_norm):
            problems.append(
                f"patch_bias={config.patch_bias} with pre_norm={config.pre_norm} (timm ties patch bias to not pre_norm)"
            )
        if config.hidden_act not in ACT_FROM_HF:
            problems.append(f"hidden_act={config.hidden_act!r} (timm names: {sorted(ACT_FROM_HF)})")
        if config.pooling not in POOL_FROM_HF:
            problems.append(f"pooling={config.pooling!r} (timm global_pool: {sorted(POOL_TO_HF)})")
        if getattr(config, "no_embed_registers", False):
            problems.append("no_embed_registers (positions for the class token but not the registers)")
        if config.norm_type == "rmsnorm_fp32":
            problems.append("norm_type='rmsnorm_fp32' (timm's RmsNorm computes in the input's precision)")
        if problems:
            raise ConversionError("timm cannot represent: " + "; ".join(problems))
        fields = {name: ({v: k for k, v in values.items()}[getattr(config, hf)] if values else getattr(config, hf))
                  for name, hf, values in CONFIG_FIELDS}
        eva = any(fields[k] != v for k, v in EVA_ONLY_DEFAULTS.items())
        if eva and fields["rope_ref_grid"] is not None:
            fields["rope_ref_grid"] = tuple(fields["rope_ref_grid"])
        return cls(**fields, img_size=config.image_hw, patch_size=config.patch_hw, family="eva" if eva else "vit")

    # -------------------------------------------------------------- timm
    def timm_kwargs(self, json_safe: bool = True) -> dict:
        """Keyword arguments of `timm.models.vision_transformer.VisionTransformer` (`VisionTransformerDistilled` when
        `distilled`) for this architecture.

        `json_safe=True` gives plain values only (for OUT.json) and refuses what needs Python objects: a LayerNorm eps
        other than timm's 1e-6 needs `norm_layer=partial(timm.layers.LayerNorm, eps=...)`, which JSON cannot hold.
        Arguments newer than timm 1.0.3 (`final_norm`, `pool_include_prefix`, `proj_bias`) appear only when they differ
        from timm's default, so the kwargs also build on older timm.
        """
        if self.representation_size:
            raise ConversionError("timm >= 0.6 has no representation layer (pre_logits); the architecture needs one")
        if self.pos_embed == "sincos2d":
            raise ConversionError("timm's VisionTransformer has no sincos2d positions (learned or none only)")
        if self.family == "eva":
            from convert.timm_eva import eva_kwargs  # noqa: I001

            return eva_kwargs(self, json_safe)
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
        if self.dynamic_img_size:
            kwargs["dynamic_img_size"] = True
        if self.act != "gelu":
            kwargs["act_layer"] = self.act
        if self.attn_inner_norm:
            kwargs["scale_attn_norm"] = True
        if self.mlp_inner_norm:
            kwargs["scale_mlp_norm"] = True
        objects = [what for what, on in (("a norm in the patch embedding (embed_norm_layer)", self.embed_norm),
                                         ("RmsNorm (norm_layer)", self.norm_type != "layernorm"),
                                         ("post-norm blocks (block_fn=ResPostBlock)", self.post_norm)) if on]
        if json_safe and objects:
            raise ConversionError(f"{'; '.join(objects)} needs Python objects, which a JSON file of "
                                  f"VisionTransformer kwargs cannot hold")
        if self.embed_norm or self.norm_type != "layernorm":
            from functools import partial

            from timm.layers import LayerNorm, RmsNorm

            norm = partial(RmsNorm if self.norm_type == "rmsnorm" else LayerNorm, eps=self.eps)
            kwargs.update(norm_layer=norm, **({"embed_norm_layer": norm} if self.embed_norm else {}))
        if self.post_norm:
            from timm.models.vision_transformer import ResPostBlock

            kwargs["block_fn"] = ResPostBlock
        if json_safe and (self.distilled or self.mlp_layer == "glu"):
            what = "a distillation token (timm's VisionTransformerDistilled class)" if self.distilled else (
                "a gated MLP (mlp_layer=timm.layers.SwiGLUPacked)")
            raise ConversionError(f"{what} needs a Python object, which a JSON file of VisionTransformer kwargs "
                                  f"cannot hold")
        if self.mlp_layer == "glu":
            from timm.layers import SwiGLUPacked

            kwargs["mlp_layer"] = SwiGLUPacked
        if self.eps != TIMM_EPS and "norm_layer" not in kwargs:
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
        from timm.layers import LayerScale, RmsNorm
        from timm.layers.mlp import GluMlp, SwiGLU
        from timm.models.eva import Eva

        if isinstance(model, Eva):
            from convert.timm_eva import eva_arch

            return eva_arch(cls, model)
        _refuse_unsupported(model)
        block = model.blocks[0]
        fc_norm = not isinstance(model.fc_norm, torch.nn.Identity)
        head = model.head
        return cls(
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=block.attn.num_heads,
            mlp_hidden=block.mlp.fc2.in_features,
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
            qk_norm=not isinstance(block.attn.q_norm, torch.nn.Identity),
            proj_bias=block.attn.proj.bias is not None,
            init_values=block.ls1.init_values if isinstance(getattr(block, "ls1", None), LayerScale) else None,
            pre_norm=not isinstance(model.norm_pre, torch.nn.Identity),
            final_norm=fc_norm or not isinstance(model.norm, torch.nn.Identity),
            fc_norm=fc_norm,
            pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)),
            act=activation_name(block.mlp.act),
            eps=float(block.norm1.eps),
            distilled=getattr(model, "dist_token", None) is not None,
            mlp_layer="glu" if isinstance(block.mlp, (GluMlp, SwiGLU)) else "mlp",
            dynamic_img_size=bool(getattr(model, "dynamic_img_size", False)),
            norm_type="rmsnorm" if isinstance(block.norm1, RmsNorm) else "layernorm",
            embed_norm=not isinstance(model.patch_embed.norm, torch.nn.Identity),
            attn_inner_norm=not isinstance(getattr(block.attn, "norm", torch.nn.Identity()), torch.nn.Identity),
            mlp_inner_norm=not isinstance(getattr(block.mlp, "norm", torch.nn.Identity()), torch.nn.Identity),
            post_norm=type(block).__name__ == "ResPostBlock",
        )

    def expected_state(self) -> dict[str, torch.Tensor]:
        """timm key -> meta tensor (shape, dtype) of every parameter this architecture has (from a meta-device
        vit_hf model, whose keys are timm's under `vit.`)."""
        return {
            (key[len("vit.") :] if key.startswith("vit.") else key): value
            for key, value in empty_model(self.to_config()).state_dict().items()
        }



def _mlp_refusal(mlp: torch.nn.Module) -> str | None:
    from timm.layers.mlp import GluMlp, Mlp, SwiGLU

    if type(mlp) is GluMlp and not mlp.gate_last:
        return None  # SwiGLUPacked (gate first): vit_hf mlp_layer='glu'
    if type(mlp) is SwiGLU and isinstance(mlp.act, torch.nn.SiLU):
        return None  # separate gate/up weights, fused into fc1 = [gate; up]
    if type(mlp) is Mlp:
        return None
    return f"MLP {type(mlp).__name__} (timm's Mlp, SwiGLU, or GluMlp with the gate first: SwiGLUPacked)"


def _refuse_unsupported(model: torch.nn.Module) -> None:
    """ConversionError listing every module type of `model` vit_hf does not implement."""
    from timm.layers import AttentionPoolLatent, LayerNorm, PatchEmbed, RmsNorm
    from timm.layers.attention import Attention
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer

    name = type(model).__name__
    if type(model) not in (VisionTransformer, VisionTransformerDistilled):
        raise ConversionError(f"timm model class {name} is not a plain VisionTransformer; vit_hf cannot represent it")
    if len({type(b) for b in model.blocks}) != 1 or type(model.blocks[0]) not in (Block, ResPostBlock):
        kinds = sorted({type(b).__name__ for b in model.blocks} - {"Block", "ResPostBlock"})
        raise ConversionError(f"timm model {name} uses block type(s) {kinds}, not timm's Block: vit_hf has no such "
                              f"block")
    block, pool = model.blocks[0], model.attn_pool
    checks = [
        (type(block.attn) is Attention, f"attention {type(block.attn).__name__} (only timm's Attention)"),
        (_mlp_refusal(block.mlp) is None, _mlp_refusal(block.mlp)),
        (type(model.patch_embed) is PatchEmbed, f"patch embedding {type(model.patch_embed).__name__}"),
        (type(block.norm1) in (torch.nn.LayerNorm, LayerNorm, RmsNorm),
         f"norm layer {type(block.norm1).__name__} (LayerNorm or RmsNorm only)"),

        (model.global_pool in POOL_TO_HF, f"global_pool={model.global_pool!r}"),
        (pool is None or type(pool) is AttentionPoolLatent, "this attention pool"),
        (activation_name(block.mlp.act) is not None,
         f"activation {type(block.mlp.act).__name__} (GELU, GELU-tanh, QuickGELU or SiLU only)"),
    ]
    refused = [what for ok, what in checks if not ok]
    if pool is not None and type(pool) is AttentionPoolLatent:
        if pool.latent_len != 1 or pool.pos_embed is not None or pool.mlp is None:
            refused.append("an AttentionPoolLatent with several latents, positions or no MLP")
        if not isinstance(pool.q_norm, torch.nn.Identity):
            refused.append("an AttentionPoolLatent with qk-norm")
    if refused:
        raise ConversionError(f"timm model {name} uses features vit_hf cannot represent: " + "; ".join(refused))


def import_timm(why: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ConversionError(f"{why} needs timm (pip install timm)") from None
    return timm


def timm_model_by_name(name: str, **kwargs) -> torch.nn.Module:
    """`timm.create_model(name, pretrained=False)` on the meta device: architecture and pretrained_cfg, no weights."""
    timm = import_timm("--model-name")
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "unknown model" in str(e).lower():
            raise ConversionError(f"--model-name {name!r}: {e}") from None
        raise

