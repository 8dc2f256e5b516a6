"""ONNX export of vit_hf image classifiers, with verified parity and an int8 variant.

    python -m vit_hf.export MODEL_DIR OUT_DIR [--revision R] [--opset N] [--dynamic-batch] [--dynamic-size]
                            [--quantize {none,int8}] [--verify] [--debug]

MODEL_DIR is a hub-ready folder (`python -m convert`, `vit_hf.train`) or a Hub repo id (`owner/name`, `owner/name@REV`).
OUT_DIR receives `model.onnx` (one float32 input `pixel_values` (batch, channels, height, width), one output `logits`),
`model_int8.onnx` with `--quantize int8`, `config.json` + `preprocessor_config.json` + their `.py` files (so that
`AutoImageProcessor.from_pretrained(OUT_DIR, trust_remote_code=True)` prepares the input and `config.id2label` names the
outputs), and `export_report.json` with `--verify`. Errors write nothing.

Needs the `export` extra (`pip install vit-hf[export]`: onnx, onnxruntime, onnxscript; scikit-learn for `--verify`).
Nothing here is imported by `import vit_hf` or by the remote-code files, and onnx is imported only when exporting.
"""

from .common import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportError
from .run import export_model

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ExportError", "export_model"]
