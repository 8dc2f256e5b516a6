"""The values each `VitHfConfig` switch takes, and the checks that a combination of them is one model.

`VitHfConfig.__init__` calls `check_config(config)` before transformers' own validators run; every refusal is a
`ValueError` naming the field and the fix. Remote code (copied next to the weights): imports only transformers.
"""

from __future__ import annotations

POOLINGS = ("token", "mean", "map", "map_kv", "token_mean", "none")
MLP_LAYERS = ("mlp", "glu")
POS_EMBED_TYPES = ("learned", "sincos2d", "sincos2d_mae", "none")
NORM_TYPES = ("layernorm", "rmsnorm", "rmsnorm_fp32")
# Rotary position embeddings on q/k: kind -> default rope_theta (the sources' defaults)
ROPE_TYPES: dict[str, float | None] = {"none": None, "cat": 10_000.0, "dinov3": 100.0, "mixed": 10.0}
ROPE_NUMERICS = ("timm", "transformers")
# Position-table resampling algorithms, by the library whose results they
# reproduce: name -> (torch interpolate mode, align_corners, antialias, always float32). "always float32" computes in
# float32 whatever the table's dtype (float64 tables included, which then carry float32 rounding) because that library
# does; otherwise the computation runs in the table's dtype, upcast to float32 at least.
POS_EMBED_INTERPOLATIONS: dict[str, tuple[str, bool, bool, bool]] = {
    "timm": ("bicubic", False, True, True),  # timm checkpoint_filter_fn / dynamic_img_size: resample_abs_pos_embed
    "timm_npz": ("bilinear", False, False, False),  # timm _load_weights (npz path)
    "google": ("bilinear", True, False, False),  # scipy.ndimage.zoom(order=1), corner-aligned: vit_jax, big_vision
    "hf": ("bicubic", False, False, False),  # transformers ViTEmbeddings.interpolate_pos_encoding
    "hf_dinov2": ("bicubic", False, False, True),  # transformers Dinov2Embeddings.interpolate_pos_encoding
    "hf_dinov2_reg": ("bicubic", False, True, True),  # transformers Dinov2WithRegistersEmbeddings
    # NaFlex (naflex_vit_hf.naflex_positions): per image, bilinear antialiased, float32
    "hf_siglip2": ("bilinear", False, True, True),  # transformers Siglip2VisionEmbeddings (a weight matrix, always)
    "timm_naflex": ("bilinear", False, True, True),  # timm NaFlexEmbeds (F.interpolate, skipped at the stored grid)
}


def check_config(config) -> None:
    """Raise a `ValueError` that names the field and the fix for any inconsistent setting of `config`."""
    _check_sizes(config)
    _check_choices(config)
    _check_tokens_and_pooling(config)
    _check_norms_and_scales(config)
    _check_attention(config)
    _check_rope(config)
    _check_activation(config)


def _check_sizes(config) -> None:
    sizes = dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        num_channels=config.num_channels,
    )
    sizes.update({f"image_size[{i}]": v for i, v in enumerate(config.image_hw)})
    sizes.update({f"patch_size[{i}]": v for i, v in enumerate(config.patch_hw)})
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in ("representation_size", "pool_num_heads", "pool_intermediate_size"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size ({config.hidden_size}) is not divisible by num_attention_heads "
            f"({config.num_attention_heads}): choose heads so that hidden_size / heads is an integer head_dim"
        )
    (h, w), (ph, pw) = config.image_hw, config.patch_hw
    if (h % ph or w % pw) and not config.crop_remainder:
        raise ValueError(
            f"image_size {h}x{w} is not divisible by patch_size {ph}x{pw}: pick an image size that is a "
            f"multiple of the patch size, or set crop_remainder=True to ignore the pixels past the last whole patch"
        )
    if config.num_register_tokens < 0:
        raise ValueError(f"num_register_tokens must be >= 0, got {config.num_register_tokens}")
    if not 0.0 <= config.drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {config.drop_path_rate}")


def _check_choices(config) -> None:
    """Each named switch holds one of its known values."""
    choices = dict(pooling=POOLINGS, pos_embed_type=POS_EMBED_TYPES, pos_embed_interpolation=POS_EMBED_INTERPOLATIONS,
                   norm_type=NORM_TYPES, mlp_layer=MLP_LAYERS, rope_type=ROPE_TYPES, rope_numerics=ROPE_NUMERICS)
    for name, known in choices.items():
        if getattr(config, name) not in known:
            raise ValueError(f"{name}={getattr(config, name)!r} is not one of {tuple(known)}")
    if config.pos_embed_type.startswith("sincos2d") and config.hidden_size % 4:
        raise ValueError(f"pos_embed_type={config.pos_embed_type!r} needs hidden_size divisible by 4, got "
                         f"{config.hidden_size}")


def _check_tokens_and_pooling(config) -> None:
    if config.pooling == "token" and not config.class_token and config.num_register_tokens:
        # timm refuses this too; without registers it is big_vision's pool_type='0' (the first patch token)
        raise ValueError(
            "pooling='token' without a class token would pool register token 0: set class_token=True or use "
            "pooling='mean' / 'map'"
        )
    if config.fc_norm and config.pooling == "none":
        raise ValueError("fc_norm=True needs a pooling ('token', 'mean' or 'map'), got pooling='none'")
    if config.no_embed_registers and (config.no_embed_class or not config.class_token):
        raise ValueError(
            "no_embed_registers=True needs class_token=True and no_embed_class=False (with no_embed_class the "
            "registers have no positions already): drop one of them"
        )
    if config.distilled and not (config.class_token and config.pooling == "token"):
        raise ValueError(
            "distilled=True reads the class and distillation tokens: it needs class_token=True and pooling='token'"
        )
    if config.pooling == "token_mean" and not config.class_token:
        raise ValueError("pooling='token_mean' concatenates the class token: set class_token=True")
    if config.pooling == "token_mean" and (config.fc_norm or config.representation_size):
        raise ValueError(
            "pooling='token_mean' gives 2 x hidden_size features: it cannot take fc_norm or representation_size"
        )
    if config.pool_num_heads and config.hidden_size % config.pool_num_heads:
        raise ValueError(f"pool_num_heads={config.pool_num_heads} does not divide hidden_size={config.hidden_size}")


def _check_norms_and_scales(config) -> None:
    if config.layer_scale_attn_only and config.layer_scale_init_value is None:
        raise ValueError("layer_scale_attn_only=True needs layer scale: set layer_scale_init_value (e.g. 1e-5)")
    if config.post_norm and config.layer_scale_init_value is not None:
        raise ValueError("post_norm=True blocks have no layer scale (as timm's): drop layer_scale_init_value")


def _check_attention(config) -> None:
    """Grouped-query attention: one key/value head count for every block, or one per block."""
    kv = config.num_key_value_heads
    if kv is None:
        return
    per_block = kv if isinstance(kv, list) else [kv]
    if isinstance(kv, list) and len(kv) != config.num_hidden_layers:
        raise ValueError(f"num_key_value_heads has {len(kv)} entries for {config.num_hidden_layers} blocks")
    if any(not isinstance(k, int) or k <= 0 or config.num_attention_heads % k for k in per_block):
        raise ValueError(f"num_key_value_heads={kv!r} must divide num_attention_heads="
                         f"{config.num_attention_heads} (per block)")
    if config.qkv_bias and not config.key_bias:
        raise ValueError("num_key_value_heads with key_bias=False is not supported: give the keys a bias")


def _check_rope(config) -> None:
    if config.rope_type == "none":
        return
    if config.head_dim % 4:
        raise ValueError(f"rope_type={config.rope_type!r} needs head_dim divisible by 4, got {config.head_dim}")
    if not config.rope_theta > 0:
        raise ValueError(f"rope_theta must be a positive number, got {config.rope_theta!r}")
    if config.rope_grid_indexing not in ("ij", "xy"):
        raise ValueError(f"rope_grid_indexing={config.rope_grid_indexing!r} is not 'ij' or 'xy'")
    if config.rope_numerics == "transformers" and (config.rope_type != "dinov3" or not config.rope_rotate_half):
        raise ValueError("rope_numerics='transformers' exists for rope_type='dinov3' with rope_rotate_half=True")
    if config.rope_ref_grid is not None and config.rope_type != "cat":
        raise ValueError(f"rope_ref_grid rescales 'cat' coordinates only; rope_type={config.rope_type!r} has none")
    if config.rope_type == "mixed" and (config.rope_rotate_half or config.rope_grid_offset):
        raise ValueError("rope_type='mixed' rotates interleaved pairs without a grid offset: set "
                         "rope_rotate_half=False and rope_grid_offset=0")
    for name in ("rope_jitter_coords", "rope_rescale_coords", "rope_shift_coords"):
        value, low = getattr(config, name), 0.0 if name == "rope_shift_coords" else 1.0
        if value is not None and not (isinstance(value, (int, float)) and value >= low):
            raise ValueError(f"{name} must be a number >= {low:g} or None, got {value!r}")


def _check_activation(config) -> None:
    try:  # transformers is importable wherever this config is; ACT2FN is its activation registry
        from transformers.activations import ACT2FN
    except ImportError:  # pragma: no cover
        return
    if config.hidden_act not in ACT2FN:
        raise ValueError(
            f"hidden_act={config.hidden_act!r} is not a transformers activation; use 'gelu' (exact), "
            f"'gelu_pytorch_tanh' (JAX/Flax tanh GELU) or 'quick_gelu' (OpenAI CLIP)"
        )
