"""timm's `Eva` (timm/models/eva.py: EVA, EVA02 and its CLIP towers, DINOv3, Perception Encoder, timm's and Naver's
RoPE ViTs, LingBot, Sapiens2) <-> `TimmArch`: read an Eva model's architecture (`eva_arch`), refusing by name what
vit_hf lacks, and the `Eva` constructor arguments of an architecture (`eva_kwargs`, for export and verification).

Eva's keys are the VisionTransformer ones plus `attn.q_bias` / `attn.v_bias` (no key bias), separate
`attn.q_proj/k_proj/v_proj` and `mlp.fc1_g/fc1_x` (fused by convert/key_mapping.py), `gamma_1` / `gamma_2` (layer
scale), `attn.norm` / `mlp.norm` (inner norms) and `rope.freqs` (RoPE-Mixed).
"""

from __future__ import annotations

import torch

from convert.common import ConversionError

EVA_POOLS = {"token": "token", "avg": "avg", "map": "map", "": ""}


def _rope_fields(model) -> tuple[dict, list[str]]:
    """TimmArch rope_* fields of `model.rope`, and what of it vit_hf cannot represent."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed

    rope = model.rope
    if rope is None:
        return {}, []
    augment = dict(rope_shift_coords=rope.shift_coords, rope_jitter_coords=rope.jitter_coords,
                   rope_rescale_coords=rope.rescale_coords)
    common = dict(rope_theta=float(rope.temperature), rope_grid_indexing=rope.grid_indexing, **augment)
    if type(rope) is RotaryEmbeddingCat:
        refused = [] if rope.grid_type == "index" and not rope.in_pixels else [
            f"'cat' RoPE on a {rope.grid_type!r} grid in pixel frequencies (only patch indices)"]
        ref = tuple(rope.ref_feat_shape) if rope.ref_feat_shape is not None else None
        return dict(common, rope_type="cat", rope_rotate_half=rope.rotate_half, rope_grid_offset=rope.grid_offset,
                    rope_ref_grid=ref), refused
    if type(rope) is RotaryEmbeddingDinoV3:
        refused = []
        if rope.min_period is not None or rope.max_period is not None:
            refused.append("DINOv3 RoPE with min/max periods")
        if rope.normalize_coords != "separate":
            refused.append(f"DINOv3 RoPE with normalize_coords={rope.normalize_coords!r}")
        return dict(common, rope_type="dinov3", rope_rotate_half=rope.rotate_half,
                    rope_grid_offset=rope.grid_offset), refused
    if type(rope) is RotaryEmbeddingMixed:
        return dict(common, rope_type="mixed", rope_rotate_half=False), []
    return {}, [f"rotary embedding {type(rope).__name__} (vit_hf has timm's cat, dinov3 and mixed)"]


def _attention(block) -> tuple[dict, list[str]]:
    """qkv_bias / key_bias / qk_norm / inner norm of an EvaAttention or AttentionRope, and what vit_hf lacks."""
    from timm.layers import AttentionRope
    from timm.models.eva import EvaAttention

    attn, refused = block.attn, []
    if type(attn) not in (EvaAttention, AttentionRope):
        return {}, [f"attention {type(attn).__name__}"]
    fused = attn.qkv is not None
    if type(attn) is EvaAttention:  # query and value biases, never a key bias
        qkv_bias = (attn.q_bias is not None) if fused else (attn.q_proj.bias is not None)
        key_bias = not qkv_bias
    else:
        qkv_bias = (attn.qkv.bias is not None) if fused else (attn.q_proj.bias is not None)
        key_bias = True
    if attn.head_dim * attn.num_heads != block.norm1.normalized_shape[0]:
        refused.append(f"an attention head width ({attn.head_dim}) other than width / heads")
    if getattr(attn, "gate", None) is not None:
        refused.append("gated attention (a sigmoid gate on the attention output)")
    if getattr(attn, "qkv_bias_separate", False):
        refused.append("qkv_bias_separate")
    fields = dict(qkv_bias=qkv_bias, key_bias=key_bias or not qkv_bias, num_heads=attn.num_heads,
                  qk_norm=not isinstance(attn.q_norm, torch.nn.Identity),
                  attn_inner_norm=not isinstance(attn.norm, torch.nn.Identity))
    return fields, refused


def activation_name(act: torch.nn.Module) -> str | None:
    """timm activation module -> TimmArch.act (None: not one vit_hf has)."""
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    if isinstance(act, GELUTanh) or (isinstance(act, torch.nn.GELU) and act.approximate == "tanh"):
        return "gelu_tanh"
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, (GELU, torch.nn.GELU)):
        return "gelu"
    if isinstance(act, torch.nn.SiLU):
        return "silu"
    return None



def _mlp(block) -> tuple[dict, list[str]]:
    from timm.layers.mlp import GluMlp, Mlp, SwiGLU

    mlp = block.mlp
    inner = dict(mlp_inner_norm=not isinstance(mlp.norm, torch.nn.Identity), mlp_hidden=mlp.fc2.in_features)
    if type(mlp) is Mlp:
        act = activation_name(mlp.act)
        return dict(inner, mlp_layer="mlp", act=act), ([] if act else [f"activation {type(mlp.act).__name__}"])
    if type(mlp) in (GluMlp, SwiGLU) and isinstance(mlp.act, torch.nn.SiLU) and not getattr(mlp, "gate_last", False):
        return dict(inner, mlp_layer="glu", act="silu"), []
    return {}, [f"MLP {type(mlp).__name__}"]


def _pool(model) -> tuple[dict, list[str]]:
    from timm.layers import AttentionPoolLatent

    if model.global_pool not in EVA_POOLS:
        return {}, [f"global_pool={model.global_pool!r} (token, avg, map or none)"]
    pool = model.attn_pool
    if pool is None:
        return dict(global_pool=model.global_pool), []
    refused = []
    if type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pos_embed is not None or pool.mlp is None:
        refused.append("an attention pool with several latents, positions or no MLP")
    elif not isinstance(pool.q_norm, torch.nn.Identity):
        refused.append("an attention pool with qk-norm")
    elif not isinstance(pool.mlp.act, torch.nn.GELU) or pool.mlp.act.approximate != "none":
        refused.append("an attention pool whose MLP activation is not exact GELU")
    # Eva's MAP head attends to every token, the prefix included
    return dict(global_pool="map", pool_include_prefix=True, pool_num_heads=pool.num_heads,
                pool_mlp_hidden=pool.mlp.fc1.out_features), refused


def eva_arch(cls: type, model):
    """The `cls` (convert.timm_arch's TimmArch, passed in: that module imports this one) of a (meta-device) timm Eva
    model; ConversionError naming every feature vit_hf lacks."""
    from timm.layers import LayerNorm, RmsNorm
    from timm.models.eva import EvaBlock, EvaBlockPostNorm

    block = model.blocks[0]
    refused = []
    if len({type(b) for b in model.blocks}) != 1 or type(block) not in (EvaBlock, EvaBlockPostNorm):
        refused.append(f"block type(s) {sorted({type(b).__name__ for b in model.blocks})}")
    post_norm = type(block) is EvaBlockPostNorm
    if type(block.norm1) not in (torch.nn.LayerNorm, LayerNorm, RmsNorm):
        refused.append(f"norm layer {type(block.norm1).__name__}")
    attn, why = _attention(block)
    refused += why
    mlp, why = _mlp(block)
    refused += why
    pool, why = _pool(model)
    refused += why
    rope, why = _rope_fields(model)
    refused += why
    if getattr(model, "patch_drop", None) is not None:
        refused.append("patch dropout")
    if pool.get("global_pool") == "map" and mlp.get("act") not in (None, "gelu"):
        refused.append(f"a MAP head (GELU) on a trunk with activation {mlp.get('act')} (one activation in vit_hf)")
    if refused:
        raise ConversionError(f"timm model {type(model).__name__} uses features vit_hf cannot represent: "
                              + "; ".join(refused))
    kv = [getattr(b.attn, "num_kv_heads", b.attn.num_heads) for b in model.blocks]  # grouped-query attention
    attn["num_kv_heads"] = None if all(k == attn["num_heads"] for k in kv) else (kv[0] if len(set(kv)) == 1 else kv)
    gamma_1 = getattr(block, "gamma_1", None)
    head = model.head
    fc_norm = not isinstance(model.fc_norm, torch.nn.Identity)
    return cls(
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        mlp_hidden=mlp["mlp_hidden"],
        img_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(model.patch_embed.patch_size),
        in_chans=model.patch_embed.proj.in_channels,
        num_classes=head.out_features if isinstance(head, torch.nn.Linear) else 0,
        class_token=model.cls_token is not None,
        reg_tokens=model.reg_token.shape[1] if model.reg_token is not None else 0,
        no_embed_class=model.no_embed_class,
        pos_embed="learn" if model.pos_embed is not None else "none",
        proj_bias=block.attn.proj.bias is not None,
        init_values=None if gamma_1 is None else float(block.init_values),
        layer_scale_attn_only=gamma_1 is not None and getattr(block, "gamma_2", None) is None,
        pre_norm=not isinstance(model.norm_pre, torch.nn.Identity),
        final_norm=fc_norm or not isinstance(model.norm, torch.nn.Identity),
        fc_norm=fc_norm,
        eps=float(block.norm1.eps),
        norm_type="rmsnorm" if isinstance(block.norm1, RmsNorm) else "layernorm",
        dynamic_img_size=bool(model.dynamic_img_size),
        post_norm=post_norm,
        family="eva",
        **{k: v for k, v in attn.items()},
        **{k: v for k, v in mlp.items() if k != "mlp_hidden"},
        **pool,
        **rope,
    )


def _ratio(hidden: int, dim: int) -> float:
    """An mlp_ratio for which int(dim * ratio) == hidden (Eva sizes each SwiGLU half that way too)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.25) / dim


def eva_kwargs(arch, json_safe: bool) -> dict:
    """`timm.models.eva.Eva` constructor arguments of `arch` (`json_safe`: plain values only, else refused)."""
    from functools import partial

    if arch.num_prefix_tokens and arch.pool_include_prefix != (arch.global_pool == "map"):
        raise ConversionError(f"timm's Eva pools {'with' if arch.global_pool == 'map' else 'without'} the prefix "
                              f"tokens for global_pool={arch.global_pool!r}; this model pools "
                              f"{'with' if arch.pool_include_prefix else 'without'} them")
    h, w = arch.img_size
    ph, pw = arch.patch_size
    kwargs = dict(
        img_size=h if h == w else [h, w], patch_size=ph if ph == pw else [ph, pw], in_chans=arch.in_chans,
        num_classes=arch.num_classes, global_pool=arch.global_pool, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads, qkv_bias=arch.qkv_bias, qk_norm=arch.qk_norm,
        mlp_ratio=_ratio(arch.mlp_hidden, arch.embed_dim),
        swiglu_mlp=arch.mlp_layer == "glu", scale_mlp=arch.mlp_inner_norm, scale_attn_inner=arch.attn_inner_norm,
        init_values=arch.init_values, attn_only_layer_scale=arch.layer_scale_attn_only,
        class_token=arch.class_token, num_reg_tokens=arch.reg_tokens, no_embed_class=arch.no_embed_class,
        use_abs_pos_emb=arch.pos_embed == "learn", use_post_norm=arch.post_norm,
        use_pre_transformer_norm=arch.pre_norm, use_post_transformer_norm=arch.final_norm and not arch.fc_norm,
        use_fc_norm=arch.final_norm and arch.fc_norm, dynamic_img_size=arch.dynamic_img_size,
    )
    # EvaAttention has no key bias; AttentionRope's fused qkv has all three
    kwargs["attn_type"] = "eva" if not arch.key_bias or not arch.qkv_bias else "rope"
    if arch.num_kv_heads is not None:  # grouped-query attention: AttentionRope with separate projections
        kwargs.update(attn_type="rope", qkv_fused=False, num_kv_heads=arch.num_kv_heads)
    if arch.global_pool == "map":
        kwargs.update(attn_pool_num_heads=arch.pool_num_heads,
                      attn_pool_mlp_ratio=(arch.pool_mlp_hidden or arch.mlp_hidden) / arch.embed_dim)
    if arch.rope_type != "none":
        kwargs.update(use_rot_pos_emb=True, rope_type=arch.rope_type, rope_temperature=arch.rope_theta,
                      rope_rotate_half=bool(arch.rope_rotate_half), rope_grid_indexing=arch.rope_grid_indexing,
                      rope_grid_offset=arch.rope_grid_offset,
                      ref_feat_shape=list(arch.rope_ref_grid) if arch.rope_ref_grid else None)
        for name in ("shift", "jitter", "rescale"):
            if getattr(arch, f"rope_{name}_coords") is not None:
                kwargs[f"rope_{name}_coords"] = getattr(arch, f"rope_{name}_coords")
    if arch.act != ("silu" if arch.mlp_layer == "glu" else "gelu"):
        raise ConversionError(f"timm's Eva has no activation argument: its MLP is GELU (SiLU when gated), not "
                              f"{arch.act}")
    if arch.eps != 1e-6 or arch.norm_type != "layernorm":
        if json_safe:
            raise ConversionError(f"Eva with {arch.norm_type} eps {arch.eps:g} needs a Python object (norm_layer), "
                                  f"which a JSON file of kwargs cannot hold")
        from timm.layers import LayerNorm, RmsNorm

        kwargs["norm_layer"] = partial(RmsNorm if arch.norm_type == "rmsnorm" else LayerNorm, eps=arch.eps)
    return kwargs
