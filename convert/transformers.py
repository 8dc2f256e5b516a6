"""Convert a transformers-format plain-ViT checkpoint folder (config.json with `model_type`) into vit_hf.

Families: ViT (ViTModel with or without the in21k pooler,
ViTForImageClassification), DeiT (DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher),
ViTMAE (the encoder of ViTMAEModel / ViTMAEForPreTraining), DINOv2 and DINOv2 with registers (Model and
ForImageClassification, SwiGLU giant included), CLIP, SigLIP and MetaCLIP 2 vision towers (alone or inside a full
dual-encoder repo), I-JEPA (IJepaModel, with or without its pooler, IJepaForImageClassification), ViT-MSN
(ViTMSNModel, ViTMSNForImageClassification), DINOv3 (DINOv3ViTModel / Backbone: 2-D RoPE, registers, gated MLP, a key
without bias), Sapiens2 (Sapiens2Model / Backbone: DINOv3's RoPE with RMSNorm, qk-norm, grouped-query attention,
attention-only LayerScale) and the AIMv2 vision tower (alone or in a full AIMv2 repo: RMSNorm, SwiGLU,
attention-pooling head; learned positions, or the native variant's sin-cos table built for any size) and the TIPSv2
vision tower (alone, as Tipsv2VisionBackbone or in a full TIPSv2 repo: DINOv2 with registers, positions resampled
bilinear with antialiasing). Each converted
model reproduces the source class's own outputs: its norms and their eps, activation, position layout and run-time
position resampling, pooled output and heads; labels come from `id2label`. Anything else is refused by name before
anything is written. The families' tables are in convert/transformers_families.py.

Entry point for the front door (`python -m convert SOURCE OUT_DIR`): `convert_transformers_folder(folder, out_dir,
**options)`; `TRANSFORMERS_ALLOW_PATTERNS` are the files it reads.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from convert.checkpoints import load_torch_state_dict, read_privately
from convert.common import ConversionError, Options, build_model, check_paths, parity_markdown
from convert.transformers_families import DUAL_ENCODERS, HEAD_KEYS, Family, family_of
from convert.transformers_keys import map_keys
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
        (config.pos_embed_type == "sincos2d_mae", "fixed 2-D sin-cos positions (MAE frequencies, bands [sin w, cos w, "
                                                  "sin h, cos h]) built for every input grid: any input size, nothing "
                                                  "resampled (`pos_embed_type='sincos2d_mae'`)"),
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
    info["notes"] = [n for n in (resized, scaled) if n]
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
