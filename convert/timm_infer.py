"""Read a timm `VisionTransformer` architecture off a state dict (keys in current timm spelling): `infer_arch`.

Each step reads one thing from the keys and shapes and says, in a note, where it came from; what the weights cannot
tell (the heads of a fused qkv, a CLIP tower's activation and eps, an ambiguous position table) is an error naming
the flag that decides it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from convert.common import ConversionError, square_side
from convert.timm_arch import ACT_TO_HF, TIMM_EPS, TimmArch


def grid_for(n: int, hints: list[tuple[int, int]]) -> tuple[int, int] | None:
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


def _need(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"missing key {key!r} ({what}); is this a timm VisionTransformer state dict?")
    return state[key]


def _trunk(state: Mapping[str, torch.Tensor]) -> tuple[tuple[int, int, int, int], int, int, str]:
    """(D, C, ph, pw) of the patch kernel, the depth, the MLP width (fc2's input) and the MLP kind: an fc1 twice as
    wide as fc2's input is a gated MLP ([gate; up], timm's SwiGLUPacked)."""
    patch = _need(state, "patch_embed.proj.weight", "the patch embedding")
    if patch.ndim != 4:
        raise ConversionError(
            f"patch_embed.proj.weight has shape {tuple(patch.shape)}; a Conv2d kernel [D, C, P, P] is expected (old "
            f"pre-conv timm checkpoints: load them with timm's checkpoint_filter_fn first)"
        )
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    if not blocks:
        raise ConversionError("no `blocks.{i}.*` keys: not a timm VisionTransformer state dict")
    if blocks != list(range(len(blocks))):
        gap = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise ConversionError(f"missing key(s) of block(s) {gap}: blocks must be numbered 0..{blocks[-1]}")
    fc1 = _need(state, "blocks.0.mlp.fc1.weight", "the first MLP layer").shape[0]
    fc2 = _need(state, "blocks.0.mlp.fc2.weight", "the second MLP layer").shape[1]
    return tuple(patch.shape), len(blocks), fc2, ("glu" if fc1 == 2 * fc2 else "mlp")


def _heads(state: Mapping[str, torch.Tensor], dim: int, num_heads: int | None, notes: list[str]) -> int:
    """Heads cannot be read off a fused qkv; qk-norm runs over the head dimension, so its width gives them."""
    heads_from_norm = None
    if "blocks.0.attn.q_norm.weight" in state:
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
    return heads


def _position_layout(
    rows: int, prefix: int, hints: list[tuple[int, int]], source_image_size: tuple[int, int] | None, patch: tuple
) -> tuple[bool, tuple[int, int], bool]:
    """(no_embed_class, grid, hinted) of a position table of `rows` rows: with prefix slots or patches only."""
    options = []
    for nec, n in ((False, rows - prefix), (True, rows)) if prefix else ((False, rows),):
        grid = grid_for(n, hints)
        if grid:
            options.append((nec, grid, bool(hints) and grid == hints[0]))
    if any(o[2] for o in options) or source_image_size:
        options = [o for o in options if o[2]]
    if not options and source_image_size:
        raise ConversionError(
            f"pos_embed has {rows} rows, which fit a {hints[0][0]}x{hints[0][1]} grid (--source-image-size "
            f"{source_image_size[0]}x{source_image_size[1]}) neither with nor without {prefix} prefix slot(s)"
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
        ph, pw = patch
        raise ConversionError(
            f"pos_embed has {rows} rows: either a {grid[0]}x{grid[1]} grid without prefix slots (no_embed_class, "
            f"as DeiT-3 / FlexiViT) or a {alternative[0]}x{alternative[1]} grid with {prefix} prefix slot(s). Pass "
            f"--source-image-size {grid[0] * ph}x{grid[1] * pw} or {alternative[0] * ph}x{alternative[1] * pw} "
            f"(the checkpoint's own size), or --model-name"
        )
    return no_embed_class, grid, hinted


def _pooling(state: Mapping[str, torch.Tensor], global_pool: str | None, notes: list[str]) -> str:
    """timm global_pool: the flag if given (checked against the keys), else read off the keys."""
    class_token, has_attn_pool = "cls_token" in state, "attn_pool.latent" in state
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
        return global_pool
    if has_attn_pool:
        notes.append("pooling 'map' from attn_pool.*")
        return "map"
    if "fc_norm.weight" in state:
        notes.append(
            "pooling 'avg' (mean of patch tokens, then fc_norm) from fc_norm.* (timm's default for avg); "
            "pass --global-pool token for a class-token model with fc_norm"
        )
        return "avg"
    if class_token:
        notes.append("pooling 'token' from cls_token")
        return "token"
    raise ConversionError(
        "the pooling cannot be read off the keys: no cls_token, no fc_norm and no attn_pool. Pass --global-pool "
        "avg (mean of the patch tokens after `norm`: timm global_pool='avg', fc_norm=False)"
    )


def _act_eps(state: Mapping[str, torch.Tensor], act: str | None, eps: float | None, notes: list[str],
             gated: bool = False) -> str:
    """Check the activation / eps flags (a CLIP-style pre-norm tower needs both: the weights cannot tell) and return
    the activation: the flag, else SiLU for a gated MLP (every timm model with SwiGLUPacked), else exact GELU."""
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
    if act is not None:
        notes.append(f"activation: {act} (--act)")
    elif gated:
        notes.append("activation: SiLU (timm's SwiGLUPacked; --act to change)")
    else:
        notes.append("activation: exact GELU (timm's default; pass --act or --model-name for CLIP/SigLIP-2 towers)")
    notes.append(f"LayerNorm eps {eps:g} (--eps)" if eps else "LayerNorm eps 1e-6 (timm's default; --eps to change)")
    return act or ("silu" if gated else "gelu")


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
    (dim, in_chans, ph, pw), depth, mlp_hidden, mlp_layer = _trunk(state)
    heads = _heads(state, dim, num_heads, notes)
    class_token, distilled = "cls_token" in state, "dist_token" in state
    reg_tokens = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = int(class_token) + int(distilled) + reg_tokens
    if mlp_layer == "glu":
        notes.append(f"gated MLP (fc1 {2 * mlp_hidden} rows = [gate; up], fc2 {mlp_hidden} wide: timm SwiGLUPacked)")


    given = source_image_size or image_size
    hints = [(given[0] // ph, given[1] // pw)] if given else []
    no_embed_class, pos_embed = False, "learn"
    if "pos_embed" in state:
        rows = state["pos_embed"].shape[1]
        no_embed_class, grid, _ = _position_layout(rows, prefix, hints, source_image_size, (ph, pw))
        notes.append(
            f"grid {grid[0]}x{grid[1]} from pos_embed ({rows} rows, {prefix} prefix token(s), "
            f"{'no ' if no_embed_class else ''}prefix slots)"
        )
    elif hints:
        grid, pos_embed = hints[0], "none"
    else:
        raise ConversionError(
            "the checkpoint has no pos_embed, so the image size cannot be inferred: pass --image-size (or --model-name)"
        )
    pool = _pooling(state, global_pool, notes)
    representation = state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None
    if representation:
        notes.append(f"representation layer (timm <= 0.5 pre_logits, tanh) of width {representation}")
    act = _act_eps(state, act, eps, notes, gated=mlp_layer == "glu")
    arch = TimmArch(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_hidden=mlp_hidden,
        img_size=(grid[0] * ph, grid[1] * pw),
        patch_size=(ph, pw),
        in_chans=in_chans,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        global_pool=pool,
        class_token=class_token,
        reg_tokens=reg_tokens,
        no_embed_class=no_embed_class,
        pos_embed=pos_embed,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        qk_norm="blocks.0.attn.q_norm.weight" in state,
        proj_bias="blocks.0.attn.proj.bias" in state,
        init_values=1e-5 if "blocks.0.ls1.gamma" in state else None,  # only the init; the trained gammas are loaded
        pre_norm="norm_pre.weight" in state,
        final_norm="norm.weight" in state or "fc_norm.weight" in state,
        fc_norm="fc_norm.weight" in state,
        act=act,
        eps=eps or TIMM_EPS,
        representation_size=representation,
        distilled=distilled,
        mlp_layer=mlp_layer,
        **_inner_norms(state, notes),
    )
    return arch, notes


def _inner_norms(state: Mapping[str, torch.Tensor], notes: list[str]) -> dict:
    """Norms inside the patch embedding / attention / MLP (AIMv2, BEiT-3), and RMSNorm: a block norm without a bias
    (timm's LayerNorm always has one; its RmsNorm never)."""
    found = dict(embed_norm="patch_embed.norm.weight" in state, attn_inner_norm="blocks.0.attn.norm.weight" in state,
                 mlp_inner_norm="blocks.0.mlp.norm.weight" in state)
    for name, key in (("embed_norm", "patch_embed.norm"), ("attn_inner_norm", "blocks.0.attn.norm"),
                      ("mlp_inner_norm", "blocks.0.mlp.norm")):
        if found[name]:
            notes.append(f"{name} from {key}.*")
    rms = "blocks.0.norm1.weight" in state and "blocks.0.norm1.bias" not in state
    if rms:
        notes.append("RMSNorm (timm RmsNorm) from blocks.0.norm1 having no bias")
    return dict(found, norm_type="rmsnorm" if rms else "layernorm")
