"""A timm Hub repo or folder (`timm/<arch>.<tag>`, as `timm.models.save_for_hf` writes it) -> vit_hf folder.

`config.json` names the `architecture` (the registry name without tag) and holds `pretrained_cfg` (preprocessing,
labels), with `model_args` (the `create_model` kwargs) in repos saved by timm >= 0.9.16; older repos have none, and
then the architecture's registry entry decides everything the name implies (e.g. `*_clip_*`: pre-norm, LayerNorm eps
1e-5). Both are read by timm's own parser (`timm.create_model("local-dir:FOLDER")`, on the meta device, no weights), so
the architecture is exactly the one timm would build for this repo; the number of classes and the image size come
from the weights. Architectures that are not a plain ViT are refused by name before anything is built.
"""

from __future__ import annotations

from pathlib import Path

from convert.checkpoints import load_torch_state_dict, read_json_object
from convert.common import ConversionError, check_paths, check_push, make_options, parity_markdown
from convert.timm import convert_timm_state_dict, sha256_of, source_markdown, write_conversion
from convert.timm_arch import import_timm

# timm modules whose models vit_hf converts (VisionTransformer itself; DeiT's; eva.py's Eva, EVA02 / DINOv3 / PE /
# RoPE-ViT: the rest is checked on the built module by TimmArch.from_timm_model, which names what it refuses)
PLAIN_VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.eva")
# timm module -> the family name a refusal gives
FAMILIES = {
    "swin_transformer": "swin", "swin_transformer_v2": "swin v2", "swin_transformer_v2_cr": "swin v2 (cr)",
    "eva": "EVA", "beit": "BEiT", "vision_transformer_sam": "SAM's ViT (windowed attention)",
    "vision_transformer_relpos": "a ViT with relative position bias", "vision_transformer_hybrid": "a hybrid CNN-ViT",
    "naflexvit": "NaFlexViT", "cait": "CaiT", "xcit": "XCiT", "levit": "LeViT", "pit": "PiT", "twins": "Twins",
    "crossvit": "CrossViT", "mvitv2": "MViTv2", "hiera": "Hiera", "volo": "VOLO", "tnt": "TNT", "convit": "ConViT",
}
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def check_architecture(arch: str) -> None:
    """Refuse, by family name, an architecture timm registers outside its plain-ViT modules (before building it)."""
    timm = import_timm("a timm repo")
    from timm.models import is_model, model_entrypoint

    if not is_model(arch):
        raise ConversionError(
            f"architecture {arch!r} is not a model timm {timm.__version__} knows (a newer timm may: "
            f"pip install -U timm)"
        )
    module = model_entrypoint(arch).__module__
    if module in PLAIN_VIT_MODULES or module == "timm.models.naflexvit":  # NaFlexViT: convert/siglip2.py checks it
        return
    short = module.rsplit(".", 1)[-1]
    family = FAMILIES.get(short, short)
    raise ConversionError(
        f"{arch}: {family} is not a plain ViT ({module}); vit_hf converts timm's vision_transformer.py, deit.py and "
        f"eva.py models"
    )


def weights_file(folder: Path) -> Path:
    """`model.safetensors`, else `pytorch_model.bin` (timm's own order)."""
    for name in TIMM_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"{folder} has a timm config.json but no {' or '.join(TIMM_WEIGHTS)}")


def _check_num_classes(config: dict, state: dict, folder: Path) -> None:
    """config.json's num_classes (top level, else pretrained_cfg) must be the head's row count: timm would refuse to
    load the weights otherwise, so a mismatch is a damaged repo, not a fine-tune."""
    stated = config.get("num_classes", (config.get("pretrained_cfg") or {}).get("num_classes"))
    rows = state["head.weight"].shape[0] if "head.weight" in state else 0
    if stated is not None and int(stated) != rows:
        raise ConversionError(
            f"{folder / 'config.json'} says num_classes={stated} but head.weight has {rows} rows: the config and the "
            f"weights are from different models"
        )


def convert_timm_folder(
    folder: str | Path,
    out_dir: str | Path,
    *,
    num_heads: int | None = None,
    global_pool: str | None = None,
    source_image_size: int | str | tuple[int, int] | None = None,
    act: str | None = None,
    eps: float | None = None,
    **options,
) -> Path:
    """Convert a timm-layout folder (a Hub snapshot when `source_repo` is given) into the hub-ready folder `out_dir`
    (returned). The architecture keywords must agree with what the folder's config.json names; `options`:
    `convert.common.Options`."""
    opts = make_options("convert_timm_folder", options)
    folder = Path(folder)
    config = read_json_object(folder / "config.json")
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise ConversionError(f"{folder / 'config.json'} names no `architecture`: not a timm model folder")
    check_architecture(arch)
    from convert.siglip2 import convert_naflex_folder, is_naflex_architecture
    if is_naflex_architecture(arch):  # NaFlexViT (SigLIP2): convert/siglip2.py
        return convert_naflex_folder(folder, weights_file(folder), out_dir, opts, config, write_conversion)
    weights = weights_file(folder)
    check_paths(weights, out_dir)
    check_push(opts)
    state = load_torch_state_dict(weights)
    _check_num_classes(config, state, folder)
    repo, commit = opts.source_repo, opts.source_commit
    tag = (config.get("pretrained_cfg") or {}).get("tag")
    label = repo or (f"{arch}.{tag}" if tag else arch)
    model, processor, info = convert_timm_state_dict(
        state, model_name=f"local-dir:{folder}", reference_label=label, num_heads=num_heads, global_pool=global_pool,
        image_size=opts.image_size, source_image_size=source_image_size, act=act, eps=eps, verify=opts.verify,
        preprocessing=opts.preprocessing)
    if repo:
        origin = (f"Converted from the timm Hub repo `{repo}` at commit `{commit}` (architecture `{arch}`, weights "
                  f"`{weights.name}`) with `python -m convert`.")
    else:
        origin = (f"Converted from the timm folder `{folder.name}` (architecture `{arch}`, weights `{weights.name}`, "
                  f"sha256 `{sha256_of(weights)}`) with `python -m convert`.")
    cfg = info["pretrained_cfg"] or {}
    card = dict(
        source=source_markdown(origin, info),
        parity=parity_markdown(info["parity"]) if info["parity"] else None,
        tags=["timm"],
        base_model=repo,
        license=cfg.get("license") or "apache-2.0",
    )
    return write_conversion(model, processor, info, out_dir, opts, card, f"Convert {repo or folder.name} from timm")
