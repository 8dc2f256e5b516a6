"""`--verify`: onnxruntime against PyTorch on the same inputs.

- float32: seeded random pixels at every shape the graph accepts that matters (batch sizes with `--dynamic-batch`,
  other and non-square grids with `--dynamic-size`) and the real test images; max abs logit difference <= 1e-4.
- real data: the test split of scikit-learn's handwritten digits, the one
  `vit_hf.train.data.prepare_sklearn_digits` makes (stratified 20 %, seed 0, 8x8 -> 16x16 bicubic; 360 images),
  through the model's own image processor. Top-1 agreement of each ONNX model with PyTorch, and accuracy when the
  model's labels are the digits 0-9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import ExportError

FP32_TOLERANCE = 1e-4
CHUNK = 32


class OrtModel:
    """An onnxruntime session fed in chunks its input shape accepts (one image at a time for a fixed batch)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the quantised graph's shape-inference notes are not news
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        batch = self.session.get_inputs()[0].shape[0]
        self.chunk = batch if isinstance(batch, int) else CHUNK

    def __call__(self, pixel_values: torch.Tensor) -> np.ndarray:
        x = pixel_values.numpy()
        return np.concatenate([self.session.run(None, {"pixel_values": x[i : i + self.chunk]})[0]
                               for i in range(0, len(x), self.chunk)])


@torch.no_grad()
def torch_logits(model: torch.nn.Module, pixel_values: torch.Tensor, resample: bool) -> np.ndarray:
    return np.concatenate([model(pixel_values[i : i + CHUNK], interpolate_pos_encoding=resample).logits.numpy()
                           for i in range(0, len(pixel_values), CHUNK)])


def random_cases(config, dynamic_batch: bool, dynamic_size: bool) -> dict[str, torch.Tensor]:
    """Seeded N(0, 1) pixels per shape: the model's own size, and what the dynamic axes allow (a graph with a fixed
    batch of 1 is fed the four images one by one)."""
    (ph, pw), (gh, gw) = config.patch_hw, config.grid_size
    grids = [(gh, gw)] + ([(gh + 2, gw + 1), (max(1, gh // 2), gw + 3)] if dynamic_size else [])
    shapes = [(b, config.num_channels, h * ph, w * pw) for h, w in grids for b in ((1, 5) if dynamic_batch else (4,))]
    g = torch.Generator().manual_seed(0)
    return {"random " + "x".join(map(str, shape)): torch.randn(shape, generator=g) for shape in shapes}


def digits_split(split: str = "test") -> tuple[list, np.ndarray]:
    """Images (PIL, grey 16x16) and labels of `prepare_sklearn_digits`'s "train" (1437) or "test" (360) split."""
    import PIL.Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    chosen = dict(zip(("train", "test"), train_test_split(index, test_size=0.2, random_state=0,
                                                          stratify=digits.target)))[split]
    bicubic = PIL.Image.Resampling.BICUBIC
    images = [PIL.Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16), bicubic)
              for i in chosen]
    return images, digits.target[chosen]


def digit_label_ids(config) -> np.ndarray | None:
    """Class index of each digit 0-9 when the model's labels are exactly the digits, else None."""
    names = {str(name).strip(): int(i) for i, name in config.id2label.items()}
    digits = [str(d) for d in range(10)]
    return np.array([names[d] for d in digits]) if sorted(names) == digits else None


def _compare(reference: np.ndarray, logits: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(reference - logits).max()),
            "top1_agreement": float((reference.argmax(-1) == logits.argmax(-1)).mean())}


def verify(model, processor, onnx_paths: dict[str, Path], dynamic_batch: bool, dynamic_size: bool) -> dict:
    """Run every check; returns the report (also what `export_report.json` holds). Raises `ExportError` when the
    float32 graph is off by more than the tolerance."""
    sessions = {name: OrtModel(path) for name, path in onnx_paths.items()}
    fp32 = {}
    for label, x in random_cases(model.config, dynamic_batch, dynamic_size).items():
        fp32[label] = _compare(torch_logits(model, x, dynamic_size), sessions["fp32"](x))["max_abs_diff"]
    images, targets = digits_split("test")
    x = processor(images, return_tensors="pt").pixel_values
    reference = torch_logits(model, x, dynamic_size)
    outputs = {"pytorch": reference} | {name: session(x) for name, session in sessions.items()}
    fp32[f"digits test split {len(images)}x{'x'.join(map(str, x.shape[1:]))}"] = \
        _compare(reference, outputs["fp32"])["max_abs_diff"]
    ids = digit_label_ids(model.config)
    real = {name: _compare(reference, out) for name, out in outputs.items()}
    for name, row in real.items():
        row["accuracy"] = None if ids is None else float((outputs[name].argmax(-1) == ids[targets]).mean())
    worst = max(fp32.values())
    report = {"fp32": {"max_abs_diff": worst, "tolerance": FP32_TOLERANCE, "cases": fp32},
              "digits": {"images": len(images), "labels_are_digits": ids is not None, "models": real}}
    if worst > FP32_TOLERANCE:
        raise ExportError(f"the float32 ONNX graph differs from PyTorch by {worst:.2e} (> {FP32_TOLERANCE:g}) "
                          f"on {max(fp32, key=fp32.get)}: nothing was written")
    return report


def report_table(report: dict) -> str:
    """The printed summary: one row per model on the real test images, plus the float32 random-input check."""
    digits = report["digits"]
    lines = [f"parity on {digits['images']} digits test images (onnxruntime vs PyTorch float32); "
             f"float32 max abs diff over all {len(report['fp32']['cases'])} input sets: "
             f"{report['fp32']['max_abs_diff']:.2e} (tolerance {report['fp32']['tolerance']:g})",
             "| model | max abs diff | top-1 agreement | accuracy |", "| --- | --- | --- | --- |"]
    names = {"pytorch": "PyTorch fp32", "fp32": "ONNX fp32", "int8": "ONNX int8"}
    for name, row in digits["models"].items():
        acc = "n/a (labels are not digits)" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f} %"
        diff = "-" if name == "pytorch" else f"{row['max_abs_diff']:.2e}"
        agree = "-" if name == "pytorch" else f"{100 * row['top1_agreement']:.2f} %"
        lines.append(f"| {names[name]} | {diff} | {agree} | {acc} |")
    return "\n".join(lines)
