"""What every part of the export shares: its error type, the opsets it supports, the optional packages it needs."""

from __future__ import annotations

import importlib

# The dynamo exporter (torch.onnx with onnxscript's torchlib) writes operators of opset 18 and up; it "converts" a
# lower request with onnx's version converter, which fails on Resize with antialias (the timm and DINOv2-register
# position resampling) and otherwise leaves the model at 18 with a warning. 25 is the newest opset that torch 2.14 +
# onnxscript 0.7 export and onnxruntime 1.32 runs (26: no onnx adapter for Gelu, onnxruntime rejects the Attention op).
MIN_OPSET, MAX_OPSET = 18, 25
DEFAULT_OPSET = 18  # the widest runtime support: every onnxruntime since 1.14, TensorRT 8.6+
# import name -> distribution name; `onnxscript` is what torch.onnx's dynamo exporter translates with
EXPORT_PACKAGES = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}
VERIFY_PACKAGES = {"sklearn": "scikit-learn"}  # the digits test split of --verify
INSTALL_HINT = "pip install vit-hf[export]"


class ExportError(Exception):
    """An export that cannot be done or cannot be trusted. The message names the input, flag or package involved."""


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: choose --opset between {MIN_OPSET} and {MAX_OPSET} (the exporter's "
            f"operators start at {MIN_OPSET}; {MAX_OPSET} is the newest exported and run here)"
        )


def require_packages(packages: dict[str, str], why: str) -> None:
    """Import each package or raise one `ExportError` naming all the missing ones and the extra that installs them."""
    missing = []
    for module, dist in packages.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise ExportError(f"{why} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          f"installed: {INSTALL_HINT}")
