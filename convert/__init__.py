"""Converters into vit_hf: `python -m convert.timm`, `python -m convert.google`, and back: `python -m convert.to_timm`."""
