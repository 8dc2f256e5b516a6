"""Converters into vit_hf (`python -m convert.timm`, `python -m convert.google`) and back to timm
(`python -m convert.to_timm`)."""
