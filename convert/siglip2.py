"""SigLIP2 NaFlex sources -> vit_hf: transformers `siglip2_vision_model` folders and a full `siglip2` folder's
vision tower (convert/transformers.py's `siglip2` family reads its keys with the CLIP/SigLIP table, then the fields,
processor and `--verify` here), and timm `naflexvit_*` folders (Hub snapshots of `timm/naflexvit_*_siglip.*`,
convert/timm_hub.py hands them here).

What differs from SigLIP: the patch embedding is a Linear on `(ph pw c)`-flattened patches (stored here as the
Conv2d it equals), the square position table is resampled to every image's grid (transformers: `hf_siglip2`, timm:
`timm_naflex`, naflex_vit_hf.py), and the processor is NaFlex (`max_num_patches`). `--verify` feeds both models a
NaFlex batch of mixed grids made by the converted processor from images of several aspect ratios and sizes (and timm
also its fixed-size NCHW path), in float64 and float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from einops import rearrange

from convert.checkpoints import load_torch_state_dict
from convert.common import ConversionError, VerificationError, build_model, check_paths, parity_markdown
from vit_hf import VitHfConfig, VitHfImageProcessor

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3}  # times max(1, largest reference magnitude)
# (height, width) of the verification images: landscape, portrait, square, tiny, a strip; each its own grid
VERIFY_SIZES = ((224, 224), (180, 320), (400, 120), (37, 53), (16, 300))
NAFLEX_MODULE = "timm.models.naflexvit"


def verification_images(sizes=VERIFY_SIZES, seed: int = 0) -> list[PIL.Image.Image]:
    """Seeded RGB images (smooth gradients plus noise, so that resizing matters) of several aspect ratios."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], -1)
        images.append(PIL.Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)))
    return images


def _patch_weight(weight: torch.Tensor, patch: int, channels: int, channels_last: bool = True) -> torch.Tensor:
    """A Linear patch embedding [D, P*P*C] as the Conv2d weight [D, C, P, P] vit_hf stores (same numbers)."""
    if weight.ndim == 4:
        return weight
    pattern = "d (ph pw c) -> d c ph pw" if channels_last else "d (c ph pw) -> d c ph pw"
    return rearrange(weight, pattern, ph=patch, pw=patch, c=channels).contiguous()


def _row(reference: str, dtype: torch.dtype, outputs: str, got: torch.Tensor, expected: torch.Tensor) -> dict:
    diff = (got - expected).abs().max().item()
    limit = TOLERANCE[dtype] * max(1.0, expected.abs().max().item())
    top1 = (got.argmax(-1) == expected.argmax(-1)).double().mean().item() if outputs.startswith("logits") else None
    return dict(reference=reference, dtype=str(dtype).replace("torch.", ""), outputs=outputs, max_abs_diff=diff,
                top1_agreement=top1, ok=diff <= limit)


def _check_rows(rows: list[dict], reference: str) -> list[dict]:
    bad = [r for r in rows if not r.pop("ok")]
    if bad:
        worst = max(bad, key=lambda r: r["max_abs_diff"])
        raise VerificationError(f"--verify: the converted model differs from {reference} by "
                                f"{worst['max_abs_diff']:.3e} ({worst['dtype']}, {worst['outputs']}); nothing written")
    return rows


def naflex_inputs(processor: VitHfImageProcessor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    batch = processor(verification_images())
    return {**batch, "pixel_values": batch["pixel_values"].to(dtype)}


def _grids(inputs) -> str:
    return "NaFlex grids " + ", ".join(f"{h}x{w}" for h, w in inputs["spatial_shapes"].tolist())


# ----------------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------------


def siglip2_fields(hf, state: dict) -> dict:
    """Siglip2VisionConfig -> VitHfConfig fields; the Linear patch embedding in `state` becomes the Conv2d layout."""
    if not getattr(hf, "vision_use_head", True):
        raise ConversionError("SigLIP2 with vision_use_head=false has no pooled output (no MAP head): not supported")
    side = math.isqrt(hf.num_patches)
    if side * side != hf.num_patches:
        raise ConversionError(f"SigLIP2 num_patches={hf.num_patches} is not a square grid")
    key = "vit.patch_embed.proj.weight"
    if key in state:
        state[key] = _patch_weight(state[key], hf.patch_size, hf.num_channels)
    return dict(
        hidden_size=hf.hidden_size, num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size, hidden_act=hf.hidden_act, layer_norm_eps=hf.layer_norm_eps,
        image_size=side * hf.patch_size, patch_size=hf.patch_size, num_channels=hf.num_channels, class_token=False,
        pooling="map", patch_bias=True, pos_embed_interpolation="hf_siglip2", dynamic_img_size=True,
    )


def processor_from_siglip2(preprocessor: dict | None, config: VitHfConfig, flags: dict | None = None):
    """(processor, note): the NaFlex processor giving transformers' `Siglip2ImageProcessorPil` pixels for this
    preprocessor_config.json (its class defaults when there is none). The fixed-size preprocessing flags are refused."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    given = [k for k, v in (flags or {}).items() if v is not None]
    if given:
        raise ConversionError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a NaFlex model "
                              f"(its processor resizes every image to its own grid): drop it")

    try:
        src = Siglip2ImageProcessorPil.from_dict(dict(preprocessor or {}))
    except (TypeError, ValueError) as e:
        raise ConversionError(f"preprocessor_config.json is not a valid Siglip2ImageProcessor config: {e}") from None
    if not src.do_resize:
        raise ConversionError("Siglip2ImageProcessor with do_resize=false is not supported (images must be resized)")
    if src.patch_size != config.patch_hw[0]:
        raise ConversionError(f"preprocessor patch_size {src.patch_size} differs from the model's {config.patch_hw[0]}")
    c = config.num_channels
    mean = list(src.image_mean) if src.do_normalize else [0.0] * c
    std = list(src.image_std) if src.do_normalize else [1.0] * c
    processor = VitHfImageProcessor(
        size=list(config.image_hw), crop_pct=1.0, resample=int(src.resample), image_mean=mean, image_std=std,
        num_channels=c, rescale_factor=float(src.rescale_factor) if src.do_rescale else 1.0,
        max_num_patches=int(src.max_num_patches), patch_size=int(src.patch_size),
    )
    source = "preprocessor_config.json" if preprocessor else "Siglip2ImageProcessor's defaults (no preprocessor file)"
    return processor, f"preprocessing from {source} (Siglip2ImageProcessor, PIL backend): {processor.describe_eval()}"


def verify_siglip2(folder: Path, info: dict, processor: VitHfImageProcessor) -> list[dict]:
    """Parity rows: image -> converted processor -> pooler_output of transformers' Siglip2VisionModel and ours."""
    import transformers

    from convert.transformers_verify import load_source

    reference = f"transformers {transformers.__version__} `Siglip2VisionModel`"
    rows = []
    for dtype in (torch.float64, torch.float32):
        inputs = naflex_inputs(processor, dtype)
        with torch.no_grad():
            expected = load_source(folder, info, dtype)(**inputs).pooler_output
            got = build_model(info["config"], info["state"], dtype=dtype).vit(**inputs).pooler_output
        rows.append(_row(reference, dtype, f"pooler_output, {_grids(inputs)}", got, expected))
    return _check_rows(rows, reference)


# ----------------------------------------------------------------------------------------------------------------------
# timm naflexvit
# ----------------------------------------------------------------------------------------------------------------------


def _timm_refusals(model) -> list[str]:
    from timm.layers import AttentionPoolLatent
    from timm.layers.attention import Attention
    from timm.layers.mlp import Mlp
    from timm.models.vision_transformer import Block

    from convert.timm_eva import activation_name

    e, block, pool = model.embeds, model.blocks[0], model.attn_pool
    checks = [
        (e.pos_embed_type == "learned", f"position embedding {e.pos_embed_type!r} (learned only)"),
        (getattr(model, "rope", None) is None, "rotary position embeddings"),
        (not e.pos_embed_ar_preserving and not e.pos_embed_use_grid_sample, "aspect-preserving / grid_sample pos."),
        (_interpolation(model) is not None, f"{e.pos_embed_interp_mode} position resampling (antialiased bilinear or "
                                            f"bicubic only)"),
        (e.norm_input is None and isinstance(e.norm, torch.nn.Identity), "a norm inside the patch embedding"),
        (e.patch_interpolator is None, "the patch-size interpolator"),
        (all(type(b) is Block for b in model.blocks), "blocks other than timm's Block"),
        (type(block.attn) is Attention and isinstance(block.attn.norm, torch.nn.Identity), "this attention"),
        (type(block.mlp) is Mlp and isinstance(block.mlp.norm, torch.nn.Identity), "this MLP"),
        (isinstance(block.norm1, torch.nn.LayerNorm), "norms other than LayerNorm"),
        (model.global_pool in ("map", "avg", "token"), f"global_pool={model.global_pool!r}"),
        (pool is None or (type(pool) is AttentionPoolLatent and pool.latent_len == 1 and pool.pos_embed is None
                          and isinstance(pool.q_norm, torch.nn.Identity)), "this attention pool"),
        (activation_name(block.mlp.act) in ("gelu", "gelu_tanh", "quick_gelu"), "this activation"),
    ]
    return [what for ok, what in checks if not ok]


def _interpolation(model) -> str | None:
    """vit_hf's name for timm NaFlexEmbeds' resampling: F.interpolate in float32, skipped at the stored grid."""
    e = model.embeds
    if e.pos_embed_align_corners or not e.pos_embed_antialias:
        return None
    return {"bilinear": "timm_naflex", "bicubic": "timm"}.get(e.pos_embed_interp_mode)


def timm_fields(model, num_classes: int) -> dict:
    from convert.timm_arch import ACT_TO_HF
    from convert.timm_eva import activation_name

    e, block = model.embeds, model.blocks[0]
    (gh, gw), (ph, pw) = e.pos_embed.shape[1:3], e.patch_size
    ln = torch.nn.LayerNorm
    return dict(
        hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks), num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features, hidden_act=ACT_TO_HF[activation_name(block.mlp.act)],
        layer_norm_eps=block.norm1.eps, image_size=[gh * ph, gw * pw], patch_size=[ph, pw],
        num_channels=e.in_chans, qkv_bias=block.attn.qkv.bias is not None, proj_bias=block.attn.proj.bias is not None,
        patch_bias=e.proj.bias is not None, class_token=e.cls_token is not None, num_register_tokens=e.num_reg_tokens,
        no_embed_class=True, qk_norm=isinstance(block.attn.q_norm, ln), pre_norm=isinstance(model.norm_pre, ln),
        final_norm=isinstance(model.norm, ln) or isinstance(model.fc_norm, ln), fc_norm=isinstance(model.fc_norm, ln),
        pooling={"map": "map", "avg": "mean", "token": "token"}[model.global_pool],
        pool_include_prefix=model.pool_include_prefix, num_labels=num_classes,
        layer_scale_init_value=1.0 if not isinstance(block.ls1, torch.nn.Identity) else None,
        pos_embed_interpolation=_interpolation(model), dynamic_img_size=True,
    )


def timm_state(state: dict, model) -> dict:
    """timm NaFlexVit keys -> vit_hf keys (the trunk under `vit.`, the head at the top)."""
    e, out = model.embeds, {}
    renames = {"embeds.cls_token": "cls_token", "embeds.reg_token": "reg_token",
               "embeds.proj.bias": "patch_embed.proj.bias"}
    for key, value in state.items():
        if key == "embeds.proj.weight":
            out["vit.patch_embed.proj.weight"] = _patch_weight(value, e.patch_size[0], e.in_chans, e.channels_last)
        elif key == "embeds.pos_embed":
            out["vit.pos_embed"] = rearrange(value, "1 gh gw d -> 1 (gh gw) d").contiguous()
        elif key.startswith("head."):
            out[key] = value
        else:
            out["vit." + renames.get(key, key)] = value
    return out


def timm_processor(model, config: VitHfConfig) -> tuple[VitHfImageProcessor, str]:
    """NaFlex with as many patches as the stored position table has, timm's interpolation / mean / std."""
    cfg = model.pretrained_cfg or {}
    processor = VitHfImageProcessor(
        size=list(config.image_hw), crop_pct=1.0, resample=cfg.get("interpolation", "bicubic"),
        image_mean=cfg.get("mean", (0.5,) * 3), image_std=cfg.get("std", (0.5,) * 3), num_channels=config.num_channels,
        max_num_patches=config.grid_size[0] * config.grid_size[1], patch_size=config.patch_hw[0],
    )
    return processor, (f"preprocessing: NaFlex at the stored table's {processor.max_num_patches} patches with the "
                       f"pretrained_cfg's interpolation, mean and std: {processor.describe_eval()}")


def _timm_naflex_forward(model, inputs: dict) -> torch.Tensor:
    """timm's own NaFlex call: patch (y, x) coordinates from the grids, padding at (0, 0)."""
    shapes, valid = inputs["spatial_shapes"], inputs["pixel_attention_mask"].bool()
    k = torch.arange(valid.shape[1])
    coord = torch.stack([k[None] // shapes[:, 1:], k[None] % shapes[:, 1:]], -1) * valid[..., None]
    return model(inputs["pixel_values"], patch_coord=coord, patch_valid=valid)


def verify_timm(timm_model, info: dict, processor) -> list[dict]:
    """timm's NaFlexVit against ours: fixed-size NCHW at the stored grid and at 1.5x it, and a NaFlex batch."""
    import timm

    reference, compared = f"timm {timm.__version__} `{info['arch']}`", info["compared"]
    rows = []
    for dtype in (torch.float64, torch.float32):
        ours, theirs = build_model(info["config"], info["state"], dtype=dtype), timm_model.to(dtype)
        (h, w), g = info["config"].image_hw, torch.Generator().manual_seed(0)
        out = (lambda o: o.logits) if compared == "logits" else (lambda o: o.pooler_output)
        for hw in ((h, w), (h * 3 // 2, w * 3 // 2)):
            x = torch.randn(4, info["config"].num_channels, *hw, generator=g).to(dtype)
            with torch.no_grad():
                got = out(ours(x) if compared == "logits" else ours.vit(x))
                rows.append(_row(reference, dtype, f"{compared} at {hw[0]}x{hw[1]}", got, theirs(x)))
        inputs = naflex_inputs(processor, dtype)
        with torch.no_grad():
            got = out(ours(**inputs) if compared == "logits" else ours.vit(**inputs))
            expected = _timm_naflex_forward(theirs, inputs)
        rows.append(_row(reference, dtype, f"{compared}, {_grids(inputs)}", got, expected))
    return _check_rows(rows, reference)


def is_naflex_architecture(arch: str) -> bool:
    from timm.models import is_model, model_entrypoint

    return is_model(arch) and model_entrypoint(arch).__module__ == NAFLEX_MODULE


def _refuse_fixed_size_options(opts) -> None:
    given = [k for k, v in {**opts.preprocessing, "image_size": opts.image_size}.items() if v is not None]
    if given:
        raise ConversionError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a NaFlex model "
                              f"(its processor resizes every image to its own grid, its positions follow): drop it")


def _convert_naflex(state: dict, create, arch: str, out_dir, opts, origin: str, write) -> Path:
    """The timm NaFlexVit state dict `state` -> `out_dir`; `create(**kwargs)` builds the timm model of its
    architecture (on the meta device for the config, on the CPU with the weights for --verify); `write` is
    `convert.timm.write_conversion`, passed in by the timm front ends (they import this module)."""
    import timm

    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    with torch.device("meta"):
        meta = create(num_classes=num_classes)
    refused = _timm_refusals(meta)
    if refused:
        raise ConversionError(f"{arch}: timm NaFlexVit features vit_hf cannot represent: {'; '.join(refused)}")
    vit_config = VitHfConfig(**timm_fields(meta, num_classes))
    info = dict(arch=arch, config=vit_config, state=timm_state(state, meta),
                compared="logits" if num_classes else "pooler_output")
    model = build_model(vit_config, info["state"])
    processor, note = timm_processor(meta, vit_config)
    parity = None
    if opts.verify:
        reference = create(num_classes=num_classes)
        reference.load_state_dict(state)
        parity = verify_timm(reference.eval(), info, processor)
    card = dict(source=f"Converted from {origin} with `python -m convert`.\n\n{note}",
                parity=parity_markdown(parity) if parity else None, tags=["timm", "naflex"],
                base_model=opts.source_repo, license=(meta.pretrained_cfg or {}).get("license") or "apache-2.0")
    return write(model, processor, dict(parity=parity), out_dir, opts, card,
                            f"Convert {opts.source_repo or arch} from timm ({timm.__version__})")


def convert_naflex_folder(folder: Path, weights: Path, out_dir, opts, config: dict, write) -> Path:
    """A timm naflexvit folder (config.json + `weights`) -> `out_dir` (returned); `opts`: `convert.common.Options`,
    `write`: `convert.timm.write_conversion`."""
    import timm

    from convert.common import check_push

    arch = config["architecture"]
    _refuse_fixed_size_options(opts)
    check_paths(weights, out_dir)
    check_push(opts)
    state = load_torch_state_dict(weights)
    where = f"the timm Hub repo `{opts.source_repo}`" if opts.source_repo else f"the timm folder `{folder.name}`"
    origin = f"{where} (architecture `{arch}`, NaFlexViT, weights `{weights.name}`)"
    return _convert_naflex(state, lambda **kw: timm.create_model(f"local-dir:{folder}", pretrained=False, **kw), arch,
                           out_dir, opts, origin, write)


def is_naflex_state(state) -> bool:
    """timm NaFlexVit keys (the embeddings under `embeds.`), not VisionTransformer's."""
    return "embeds.proj.weight" in state


def convert_naflex_file(state: dict, src: Path, out_dir, opts, model_name: str | None, write) -> Path:
    """A timm NaFlexVit state dict file -> `out_dir`: the architecture from `model_name` (its registry entry), the
    position grid from the weights; `write`: `convert.timm.write_conversion`."""
    import timm

    if not model_name or not is_naflex_architecture(model_name.split(".")[0]):
        raise ConversionError(f"{src} holds a timm NaFlexViT state dict (embeds.* keys): pass its architecture with "
                              f"--model-name (e.g. naflexvit_base_patch16_siglip)")
    _refuse_fixed_size_options(opts)
    grid = tuple(state["embeds.pos_embed"].shape[1:3]) if "embeds.pos_embed" in state else None
    extra = {"pos_embed_grid_size": grid} if grid else {}
    return _convert_naflex(
        state, lambda **kw: timm.create_model(model_name, pretrained=False, **extra, **kw), model_name, out_dir, opts,
        f"the timm NaFlexViT state dict `{src.name}` (architecture `{model_name}`)", write)
