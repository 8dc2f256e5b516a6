"""`python -m vit_hf.demo`: the main job on an embedded default (Fashion-MNIST from Debian, else scikit-learn's
digits), trained from scratch, evaluated and reloaded through `pipeline`. See `__main__.py`."""
