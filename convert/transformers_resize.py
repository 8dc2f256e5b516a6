"""`--image-size` for transformers sources: the positions resampled as transformers resamples them at run time
(`interpolate_pos_encoding=True`: bicubic, no antialias, the "hf" algorithm), and the source's processor scaled to the
new size with its resize-to-crop ratio kept, so the converted folder runs at that size as a whole."""

from __future__ import annotations

import copy
import math

from convert.common import ConversionError


def resize_model(model, info: dict, image_size: tuple[int, int] | None) -> str | None:
    """Resample `model`'s positions for `image_size` (in place; `info`'s config and state follow) and return the
    card's note, or None when no resize was asked for."""
    config = model.config
    if image_size is None or tuple(image_size) == tuple(config.image_hw):
        return None
    stored = config.pos_embed_type == "learned"  # else RoPE (DINOv3) or a sin-cos table built per grid (AIMv2 native)
    if stored and not info["family"].resizable:
        raise ConversionError(
            f"--image-size: transformers' {info['source_class']} runs only at its stored size "
            f"{config.image_hw[0]}x{config.image_hw[1]} (it cannot resample its positions), so there is no source "
            f"behaviour to reproduce at another size: drop --image-size"
        )
    if config.dynamic_img_size:
        raise ConversionError(
            f"--image-size: {info['family'].name} resamples its positions at every call (as transformers does), so "
            f"the processor's size decides: drop --image-size"
        )
    (h, w), (ph, pw) = image_size, config.patch_hw
    if h % ph or w % pw:
        raise ConversionError(f"--image-size {h}x{w} is not divisible by the patch size {ph}x{pw}: pick a multiple")
    old = config.image_hw
    if not stored:  # nothing stored depends on the size
        config.image_size = [h, w]
        info["config"] = config
        return f"image size set to {h}x{w} (no stored position table to resample: the model runs at any size)"
    # what --verify rebuilds in each dtype before resampling there, as transformers does at run time in that dtype
    info["unresized"] = (copy.deepcopy(config), info["state"]["vit.pos_embed"])
    model.vit.resize_position_embeddings((h, w), algorithm="hf")
    info["state"] = {**info["state"], "vit.pos_embed": model.vit.pos_embed.data}
    info["config"], info["resized_from"] = config, old
    return (
        f"positions resampled from {old[0]}x{old[1]} to {h}x{w} as transformers does at run time "
        f"(interpolate_pos_encoding: bicubic, no antialias)"
    )


def scale_processor(processor, image_hw: tuple[int, int]):
    """The processor with its output size set to `image_hw` and a stated resize step scaled by the same factor per
    axis (a shortest-edge resize by the larger one, so the crop still fits); returns (processor, note or None)."""
    size = (processor.size["height"], processor.size["width"])
    if size == tuple(image_hw):
        return processor, None
    sh, sw = image_hw[0] / size[0], image_hw[1] / size[1]
    resize = getattr(processor, "resize_size", None)
    if resize and "height" in resize:
        resize = {"height": round(resize["height"] * sh), "width": round(resize["width"] * sw)}
    elif resize:
        resize = {"shortest_edge": math.ceil(resize["shortest_edge"] * max(sh, sw))}
    fields = {**processor.to_dict(), "size": {"height": image_hw[0], "width": image_hw[1]}, "resize_size": resize}
    scaled = type(processor).from_dict(fields)
    what = f"resize {resize}, " if resize else ""
    return scaled, f"the source's preprocessing scaled to {image_hw[0]}x{image_hw[1]} ({what}same resize/crop ratio)"
