"""Converters into vit_hf, and back to timm.

    python -m convert SOURCE OUT_DIR        the front door: a Hub repo id, a timm or transformers folder, or a file
    python -m convert.timm SRC OUT_DIR      a timm state dict or training checkpoint (.safetensors / .pth / .pth.tar /
                                            .pt / .bin)
    python -m convert.google SRC OUT_DIR    a Google .npz (vit_jax, big_vision)
    python -m convert.to_timm DIR OUT       a vit_hf folder -> a timm state dict + its VisionTransformer kwargs

From Python, one entry point per source, all of the same shape `(source, out_dir, *, the source's own keywords,
**options) -> out_dir`, `options` being `convert.common.Options` (image_size, verify, crop_pct, interpolation, mean,
std, push_to_hub, hub_token, private, source_repo, source_commit); each keyword is the CLI flag of the same name:

    convert.timm.convert_timm_file(src, out_dir, *, model_name, num_heads, global_pool, source_image_size, act, eps,
                                   use_ema, **options)
    convert.timm_hub.convert_timm_folder(folder, out_dir, *, num_heads, global_pool, source_image_size, act, eps,
                                         **options)
    convert.google.convert_npz_file(src, out_dir, *, prefix, gelu, pool, **options)
    convert.transformers.convert_transformers_folder(folder, out_dir, **options)

and in memory, without a folder: `convert.timm.convert_timm_state_dict(state, ...)`,
`convert.google.convert_npz(params, ...)`, `convert.transformers.convert_state(folder)`.

Layout (one module per source format, shared machinery in one place):
    common.py          loading files safely (timm training checkpoints too), strict key/shape checks, the meta-device
                       model, the shared options and CLI flags, the output folder, parity tables, the push, one-line
                       errors (`ConversionError`, `run_cli`); flag spellings, --debug and Hub references: vit_hf/cli.py
    source.py, hub.py  what SOURCE is (file / folder / repo id, and its format); Hub downloads and their errors
    key_mapping.py     the declarative key tables of every source (timm, Google) and their tensor transforms
    timm_arch.py       `TimmArch`: the one mapping between a vit_hf config and timm's VisionTransformer arguments
    timm.py            timm state dicts (+ timm_infer.py: architecture from shapes; timm_verify.py: vs timm)
    timm_hub.py        timm Hub repos / folders (config.json + weights, read by timm's own parser)
    google.py          Google npz (+ google_tree.py: reading the file; google_layout.py: what its keys say;
                       google_verify.py: vs timm and a numpy Flax forward in flax_numpy.py)
    transformers.py    transformers-format ViT-family folders (ViT, DeiT, DINOv2, CLIP, SigLIP, ViTMAE)
    preprocessing.py   the converted image processor from the source's preprocessing or the flags
    to_timm.py         the export back to timm
"""
