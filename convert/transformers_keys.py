"""Declarative transformers -> vit_hf key tables for the plain-ViT families.

Keys are the names on disk (what `save_pretrained` writes and Hub repos hold: transformers 5 renames modules in
memory but reads and writes these), after the backbone prefix (`vit.`, `deit.`, `dinov2.`, `vision_model.`) is
removed; `{i}` is the block index. A `Rule` maps one source tensor to one vit_hf tensor, or to a row block of one
(the fused `attn.qkv` = [q; k; v], timm's `(qkv h d)` rows, §2.1), or takes a row block of one (SigLIP's
`in_proj_weight` = [q; k; v] split into `attn_pool.q` and `attn_pool.kv`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    """`source` (template, `{i}` = block) -> `target` (vit_hf key under `vit.` unless it starts with `head`).

    `part`/`parts`: the tensor is row block `part` of `parts` concatenated along dim 0 into `target`.
    `thirds`: take rows `[a/3, b/3)` of the source (a split of a [q; k; v] stack).
    `reshape`: einops-free view for `nn.Embedding` / flat vectors: the target's leading singleton axes.
    """

    source: str
    target: str
    part: int = 0
    parts: int = 1
    thirds: tuple[int, int] | None = None
    lead_axes: int = 0

    def pattern(self) -> re.Pattern:
        return _compiled(self.source)


@functools.cache
def _compiled(source: str) -> re.Pattern:
    return re.compile(re.escape(source).replace(r"\{i\}", r"(\d+)") + r"\Z")


def _wb(source: str, target: str, **kw) -> list[Rule]:
    """The `.weight` and `.bias` rules of one Linear / LayerNorm / Conv."""
    return [Rule(f"{source}.{p}", f"{target}.{p}", **kw) for p in ("weight", "bias")]


def _fused(source: str, target: str, names: tuple[str, ...]) -> list[Rule]:
    """q/k/v Linears stacked as row blocks of one fused Linear (weight and bias)."""
    return [r for k, n in enumerate(names) for r in _wb(source.format(n=n, i="{i}"), target, part=k, parts=len(names))]


# ----------------------------------------------------------------------------------------------------------------------
# ViT naming: ViT, DeiT, ViTMAE (`encoder.layer.{i}.layernorm_before`, `intermediate.dense`, `output.dense`)
# ----------------------------------------------------------------------------------------------------------------------

VIT_EMBEDDINGS = [
    Rule("embeddings.cls_token", "cls_token"),
    Rule("embeddings.distillation_token", "dist_token"),
    Rule("embeddings.register_tokens", "reg_token"),
    Rule("embeddings.position_embeddings", "pos_embed"),
    *_wb("embeddings.patch_embeddings.projection", "patch_embed.proj"),
    *_wb("layernorm", "norm"),
    *_wb("pooler.dense", "pre_logits.fc"),
]
_ATTENTION = [
    *_fused("encoder.layer.{i}.attention.attention.{n}", "blocks.{i}.attn.qkv", ("query", "key", "value")),
    *_wb("encoder.layer.{i}.attention.output.dense", "blocks.{i}.attn.proj"),
]
VIT_BLOCKS = [
    *_wb("encoder.layer.{i}.layernorm_before", "blocks.{i}.norm1"),
    *_wb("encoder.layer.{i}.layernorm_after", "blocks.{i}.norm2"),
    *_ATTENTION,
    *_wb("encoder.layer.{i}.intermediate.dense", "blocks.{i}.mlp.fc1"),
    *_wb("encoder.layer.{i}.output.dense", "blocks.{i}.mlp.fc2"),
]
# DINOv2 (and with registers): timm-like block names, LayerScale, a plain or SwiGLU MLP
DINOV2_BLOCKS = [
    *_wb("encoder.layer.{i}.norm1", "blocks.{i}.norm1"),
    *_wb("encoder.layer.{i}.norm2", "blocks.{i}.norm2"),
    *_ATTENTION,
    Rule("encoder.layer.{i}.layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
    Rule("encoder.layer.{i}.layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
    *_wb("encoder.layer.{i}.mlp.fc1", "blocks.{i}.mlp.fc1"),
    *_wb("encoder.layer.{i}.mlp.fc2", "blocks.{i}.mlp.fc2"),
    *_wb("encoder.layer.{i}.mlp.weights_in", "blocks.{i}.mlp.fc1"),  # [gate; up], timm SwiGLUPacked's fc1
    *_wb("encoder.layer.{i}.mlp.weights_out", "blocks.{i}.mlp.fc2"),
]

# ----------------------------------------------------------------------------------------------------------------------
# CLIP naming: CLIP, SigLIP (`encoder.layers.{i}.self_attn.q_proj`, `layer_norm1`, nn.Embedding positions)
# ----------------------------------------------------------------------------------------------------------------------

CLIP_TOWER = [
    Rule("embeddings.class_embedding", "cls_token", lead_axes=2),  # [D] -> [1, 1, D]
    *_wb("embeddings.patch_embedding", "patch_embed.proj"),  # CLIP: weight only (no bias); SigLIP: both
    Rule("embeddings.position_embedding.weight", "pos_embed", lead_axes=1),  # [N, D] -> [1, N, D]
    *_wb("pre_layrnorm", "norm_pre"),  # sic: transformers' spelling
    *_wb("post_layernorm", "norm"),
    *_wb("encoder.layers.{i}.layer_norm1", "blocks.{i}.norm1"),
    *_wb("encoder.layers.{i}.layer_norm2", "blocks.{i}.norm2"),
    *_fused("encoder.layers.{i}.self_attn.{n}_proj", "blocks.{i}.attn.qkv", ("q", "k", "v")),
    *_wb("encoder.layers.{i}.self_attn.out_proj", "blocks.{i}.attn.proj"),
    *_wb("encoder.layers.{i}.mlp.fc1", "blocks.{i}.mlp.fc1"),
    *_wb("encoder.layers.{i}.mlp.fc2", "blocks.{i}.mlp.fc2"),
    # SigLIP's MAP head: nn.MultiheadAttention's in_proj is [q; k; v] (timm AttentionPoolLatent: q, kv)
    Rule("head.probe", "attn_pool.latent"),
    Rule("head.attention.in_proj_weight", "attn_pool.q.weight", thirds=(0, 1)),
    Rule("head.attention.in_proj_weight", "attn_pool.kv.weight", thirds=(1, 3)),
    Rule("head.attention.in_proj_bias", "attn_pool.q.bias", thirds=(0, 1)),
    Rule("head.attention.in_proj_bias", "attn_pool.kv.bias", thirds=(1, 3)),
    *_wb("head.attention.out_proj", "attn_pool.proj"),
    *_wb("head.layernorm", "attn_pool.norm"),
    *_wb("head.mlp.fc1", "attn_pool.mlp.fc1"),
    *_wb("head.mlp.fc2", "attn_pool.mlp.fc2"),
]

# ----------------------------------------------------------------------------------------------------------------------
# DINOv3 (`layer.{i}.attention.q_proj`, `mlp.up_proj` / `gate_proj`, LayerScale) and AIMv2 (RMSNorm, SwiGLU, AIMv2's
# attention-pooling head): the tables depend on the config (gated MLP, a key without bias), so they are built for it
# ----------------------------------------------------------------------------------------------------------------------


def _split_qkv(source: str, target: str, biases: str) -> list[Rule]:
    """q/k/v weights fused into `attn.qkv`; biases fused too (`"fused"`), or q and v kept apart beside a key without
    bias (`"split"`: vit_hf's `attn.q_bias` / `attn.v_bias`, `key_bias=False`), or none (`"none"`)."""
    fused = _fused(source.replace("{{i}}", "{i}"), target + ".qkv", ("q", "k", "v"))
    if biases == "fused":
        return fused
    weights = [r for r in fused if r.source.endswith(".weight")]
    if biases == "none":
        return weights
    return weights + [Rule(source.format(n=n) + ".bias", f"{target}.{n}_bias") for n in ("q", "v")]


def dinov3_rules(gated: bool, biases: str) -> list[Rule]:
    mlp = _fused("layer.{i}.mlp.{n}_proj", "blocks.{i}.mlp.fc1", ("gate", "up")) if gated else \
        _wb("layer.{i}.mlp.up_proj", "blocks.{i}.mlp.fc1")
    return [
        Rule("embeddings.cls_token", "cls_token"),
        Rule("embeddings.register_tokens", "reg_token"),
        *_wb("embeddings.patch_embeddings", "patch_embed.proj"),
        *_wb("norm", "norm"),
        *_wb("layer.{i}.norm1", "blocks.{i}.norm1"),
        *_wb("layer.{i}.norm2", "blocks.{i}.norm2"),
        *_split_qkv("layer.{{i}}.attention.{n}_proj", "blocks.{i}.attn", biases),
        *_wb("layer.{i}.attention.o_proj", "blocks.{i}.attn.proj"),
        Rule("layer.{i}.layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
        Rule("layer.{i}.layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
        # [gate; up] rows: vit_hf's gated fc1 (timm GluMlp(gate_last=False))
        *mlp,
        *_wb("layer.{i}.mlp.down_proj", "blocks.{i}.mlp.fc2"),
    ]


def sapiens2_rules(biases: str) -> list[Rule]:
    """Sapiens2 checkpoints keep the original names (transformers renames them at load): `blocks.{i}.attn.wq`,
    `ffn.w12` = [gate; up] (transformers chunks it in that order), `attn.gamma` = the attention branch's LayerScale,
    `ln1` / `ln2` RMSNorms, `storage_tokens` = registers, a top-level `ln1` = the final norm."""
    return [
        Rule("cls_token", "cls_token"),
        Rule("storage_tokens", "reg_token"),
        *_wb("patch_embed.projection", "patch_embed.proj"),
        Rule("ln1.weight", "norm.weight"),
        Rule("blocks.{i}.ln1.weight", "blocks.{i}.norm1.weight"),
        Rule("blocks.{i}.ln2.weight", "blocks.{i}.norm2.weight"),
        *_split_qkv("blocks.{{i}}.attn.w{n}", "blocks.{i}.attn", biases),  # k / v rows: the block's kv heads
        Rule("blocks.{i}.attn.q_norm.weight", "blocks.{i}.attn.q_norm.weight"),
        Rule("blocks.{i}.attn.k_norm.weight", "blocks.{i}.attn.k_norm.weight"),
        *_wb("blocks.{i}.attn.proj", "blocks.{i}.attn.proj"),
        Rule("blocks.{i}.attn.gamma.weight", "blocks.{i}.ls1.gamma"),
        *_wb("blocks.{i}.ffn.w12", "blocks.{i}.mlp.fc1"),
        *_wb("blocks.{i}.ffn.w3", "blocks.{i}.mlp.fc2"),
    ]


def aimv2_rules(biases: str) -> list[Rule]:
    return [
        *_wb("embeddings.patch_embed", "patch_embed.proj"),
        Rule("embeddings.rms_norm.weight", "patch_embed.norm.weight"),
        Rule("embeddings.position_embedding.weight", "pos_embed", lead_axes=1),  # [N, D] -> [1, N, D]
        Rule("rms_norm.weight", "norm.weight"),
        Rule("encoder.layers.{i}.rms_norm1.weight", "blocks.{i}.norm1.weight"),
        Rule("encoder.layers.{i}.rms_norm2.weight", "blocks.{i}.norm2.weight"),
        *_split_qkv("encoder.layers.{{i}}.attention.{n}_proj", "blocks.{i}.attn", biases),
        *_wb("encoder.layers.{i}.attention.out_proj", "blocks.{i}.attn.proj"),
        *_fused("encoder.layers.{i}.ffn.{n}_proj", "blocks.{i}.mlp.fc1", ("gate", "up")),
        *_wb("encoder.layers.{i}.ffn.down_proj", "blocks.{i}.mlp.fc2"),
        # the pooling head: its learned query is used as is (no query projection), keys and values projected
        Rule("head.cls_token", "attn_pool.latent"),
        *_fused("head.{n}_proj", "attn_pool.kv", ("k", "v")),
        *_wb("head.output_proj", "attn_pool.proj"),
    ]


# TIPSv2 keeps the original (timm / DINOv2 repository) names on disk; transformers renames them when it loads and
# back when it saves: `attn.qkv` = [q; k; v], `ls1.gamma`, `mlp.w12` = [gate; up] (its SwiGLU chunks it in that
# order), `mlp.c_fc` / `c_proj` (what save_pretrained writes) or `fc1` / `fc2` (both load), registers without positions.
TIPSV2_TOWER = [
    Rule("cls_token", "cls_token"),
    Rule("register_tokens", "reg_token"),
    Rule("pos_embed", "pos_embed"),
    *_wb("patch_embed.proj", "patch_embed.proj"),
    *_wb("norm", "norm"),
    *_wb("blocks.{i}.norm1", "blocks.{i}.norm1"),
    *_wb("blocks.{i}.norm2", "blocks.{i}.norm2"),
    *_wb("blocks.{i}.attn.qkv", "blocks.{i}.attn.qkv"),
    *_wb("blocks.{i}.attn.proj", "blocks.{i}.attn.proj"),
    Rule("blocks.{i}.ls1.gamma", "blocks.{i}.ls1.gamma"),
    Rule("blocks.{i}.ls2.gamma", "blocks.{i}.ls2.gamma"),
    *[r for fc1, fc2 in (("c_fc", "c_proj"), ("fc1", "fc2"), ("w12", "w3")) for r in (
        *_wb(f"blocks.{{i}}.mlp.{fc1}", "blocks.{i}.mlp.fc1"), *_wb(f"blocks.{{i}}.mlp.{fc2}", "blocks.{i}.mlp.fc2"))],
]

# Classification heads, outside the backbone prefix: their targets are top-level (`head`, `head_dist`).
HEADS = [
    *_wb("classifier", "head"),
    *_wb("cls_classifier", "head"),  # DeiTForImageClassificationWithTeacher
    *_wb("distillation_classifier", "head_dist"),
]

# Tensors the converted model has no use for, by pattern, with the reason the card gives.
DROPPED = {
    r"(embeddings\.)?mask_token": "mask token (masked-image-modelling input only)",
    r"embeddings\.position_ids": "position ids buffer (transformers <= 4.30)",
    r"decoder\..*": "pixel decoder (masked-image-modelling pre-training only: MAE, SimMIM)",
    r"text_model\..*|text_projection\.weight|logit_scale|logit_bias|text_encoder\..*|temperature": (
        "text tower and contrastive logit parameters"),
    r"visual_projection\.weight": "image-text projection (the pooled output is the tower's, before it)",
}


# ----------------------------------------------------------------------------------------------------------------------
# Applying a table
# ----------------------------------------------------------------------------------------------------------------------


def _matches(rules: list[Rule], key: str) -> list[tuple[Rule, str | None]]:
    found = []
    for rule in rules:
        m = rule.pattern().match(key)
        if m:
            found.append((rule, m.group(1) if m.groups() else None))
    return found


def _take(rule: Rule, tensor: torch.Tensor) -> torch.Tensor:
    if rule.thirds is not None:
        if tensor.shape[0] % 3:
            raise ValueError(f"{rule.source} has {tensor.shape[0]} rows, not a [q; k; v] stack")
        third = tensor.shape[0] // 3
        tensor = tensor[rule.thirds[0] * third : rule.thirds[1] * third]
    for _ in range(rule.lead_axes):
        tensor = tensor.unsqueeze(0)
    return tensor


def map_keys(
    backbone: dict[str, torch.Tensor], top: dict[str, torch.Tensor], rules: list[Rule]
) -> tuple[dict[str, torch.Tensor], list[str], list[str], dict[str, str]]:
    """Apply `rules` to the backbone tensors (targets under `vit.`) and `HEADS` to the top-level ones.

    Returns (vit_hf state, unknown source keys, dropped-tensor reasons, target -> source name for messages).
    Fused targets are concatenated in part order; a missing part is left out (the model's key check names it).
    `backbone` and `top` are consumed (emptied), and each fused target's parts are released once concatenated:
    the caller holding no other reference, memory peaks at one copy of the weights plus one fused tensor.
    """
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    rule_of: dict[str, tuple[Rule, str | None]] = {}
    origin: dict[str, str] = {}
    unknown, dropped = [], set()
    for table, tensors, prefix in ((rules, backbone, "vit."), (HEADS, top, "")):
        for key in list(tensors):
            tensor = tensors.pop(key)
            found = _matches(table, key)
            if not found:
                reason = next((r for p, r in DROPPED.items() if re.fullmatch(p, key)), None)
                (dropped.add(reason) if reason else unknown.append(key))
                continue
            for rule, block in found:
                target = prefix + rule.target.replace("{i}", block or "")
                pieces.setdefault(target, {})[rule.part] = _take(rule, tensor)
                rule_of[target] = (rule, block)
                origin.setdefault(target, key)
    state = {}
    for target in list(pieces):
        blocks = pieces.pop(target)
        rule, block = rule_of[target]
        if len(blocks) == rule.parts:
            state[target] = blocks[0] if len(blocks) == 1 else torch.cat([blocks[k] for k in sorted(blocks)], dim=0)
        else:  # a fused target lacks a part: name the source tensor that is missing
            absent = [r for r in table_rules(rule, rules) if r.part not in blocks]
            origin[target] = ", ".join(r.source.replace("{i}", block or "") for r in absent)
    return state, unknown, sorted(dropped), origin


def table_rules(rule: Rule, rules: list[Rule]) -> list[Rule]:
    """The rules that fill the same fused target as `rule` (its sibling parts)."""
    return [r for r in rules if r.target == rule.target and r.parts == rule.parts]
