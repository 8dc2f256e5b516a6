"""Benchmarks of vit_hf against timm and transformers' ViT: `python -m bench SUITE [--quick] [--device {cpu,cuda}]`.

Layout: `__main__` (the entry point, the suites and the full sequence), one module per suite (forward, train_step,
train_memory, train_loop, preprocess, load, convert, device_check, profile_ops), `common` (equal-weight candidates,
interleaved timing, result files), `device` (what differs between CPU and CUDA), `gate` (the quiet-machine gate),
`report` / `plot` (tables and chart from bench/results). bench imports vit_hf's public names only (the top-level
classes and `vit_hf.train.main`) and the converters' entry points (`convert.timm`, `convert.google`).
"""
