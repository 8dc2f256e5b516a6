"""PyTorch -> ONNX: the traced graph (torch.export + torch.onnx's dynamo exporter) and its int8 twin.

The graph has one float32 input `pixel_values` (batch, channels, height, width) and one output `logits`. A dynamic
size is exported as `patch x grid` (any multiple of the patch size), and the position table is resampled inside the
graph with the model's own algorithm (`config.pos_embed_interpolation`), exactly as
`model(pixel_values, interpolate_pos_encoding=True)` does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .common import ExportError

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
# The linear layers on token sequences are MatMuls. The head is a Gemm (on the pooled 2-D features) and stays float32:
# onnxruntime's dynamic quantiser has no integer Gemm (it would rewrite it as MatMul + Add first), and the head is a
# tiny share of the compute that decides the top-1 directly.
LINEAR_OPS = ("MatMul",)
QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeMatMul")


class LogitsOnly(nn.Module):
    """`pixel_values -> logits`: the classification model with its keyword arguments fixed for tracing."""

    def __init__(self, model: nn.Module, resample_positions: bool):
        super().__init__()
        self.model = model
        self.resample_positions = resample_positions

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values, interpolate_pos_encoding=self.resample_positions).logits


def example_input(config, dynamic_batch: bool, dynamic_size: bool) -> torch.Tensor:
    """The tracing input. Batch 2 for a dynamic batch (torch.export specialises sizes 0 and 1). For a dynamic size
    the grid differs from the model's and its sides from each other: on the model's own grid the resampling is
    skipped (`old_grid == new_grid`) and would be traced out of the graph, and equal sides would be tied."""
    (ph, pw), (gh, gw) = config.patch_hw, config.grid_size
    grid = (gh + 1, gw + 2) if dynamic_size else (gh, gw)
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 if dynamic_batch else 1, config.num_channels, grid[0] * ph, grid[1] * pw, generator=g)


def dynamic_shapes(config, dynamic_batch: bool, dynamic_size: bool) -> dict | None:
    from torch.export import Dim

    axes = {}
    if dynamic_batch:
        axes[0] = Dim("batch", min=1)
    if dynamic_size:
        ph, pw = config.patch_hw
        # derived dims: the exporter knows height % patch == 0, so the model's divisibility check holds symbolically
        axes[2], axes[3] = ph * Dim("grid_height", min=1), pw * Dim("grid_width", min=1)
    return {INPUT_NAME: axes} if axes else None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def export_onnx(model: nn.Module, path: Path, opset: int, dynamic_batch: bool, dynamic_size: bool) -> None:
    """Trace `model` and write `path` (weights inside, or next to it as `<name>.data` past protobuf's 2 GiB)."""
    import onnx

    config = model.config
    wrapper = LogitsOnly(model, resample_positions=dynamic_size).eval()
    x = example_input(config, dynamic_batch, dynamic_size)
    what = "with --dynamic-size" if dynamic_size else "at a fixed size"
    # the exporter narrates each step on stdout and warns about its own internals: keep the CLI's output to ours
    log = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (x,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes(config, dynamic_batch, dynamic_size), opset_version=opset,
                verbose=False,
            )
            program.save(str(path))
    except Exception as e:  # torch.export's and the ONNX translation's many error types: all mean "cannot export"
        hint = " (export without --dynamic-size for a graph at the model's own size)" if dynamic_size else ""
        raise ExportError(f"the model cannot be exported to ONNX {what} at opset {opset}{hint}: {_first_line(e)}") \
            from None
    written = {o.domain or "ai.onnx": o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
    if written.get("ai.onnx") != opset:
        # the exporter falls back to another opset with only a warning: a file that is not what was asked is an error
        raise ExportError(
            f"the exporter wrote opset {written.get('ai.onnx')} instead of {opset}: choose --opset between "
            f"its supported versions"
        )


def linear_nodes(path: Path) -> list[str]:
    """Names of the MatMul nodes whose second operand is a weight (an initializer): the linear layers. The attention
    products (both operands activations) stay float: quantising them costs accuracy for little speed."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type in LINEAR_OPS and len(n.input) > 1 and n.input[1] in weights]


def quantize_int8(src: Path, dst: Path) -> int:
    """Dynamic int8 quantisation of the linear layers (weights int8 per output channel, activations uint8 per tensor
    at run time); returns how many layers were quantised (counted in the written graph).

    `reduce_range`: 7-bit weights. x86 CPUs without VNNI (AVX2, as here) multiply uint8 x int8 with VPMADDUBSW,
    whose int16 pair sums saturate with full-range weights. Measured here on a small digits model: full-range int8
    weights agreed with float32 on 64 % of the top-1s, 7-bit ones on 99 %."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = linear_nodes(src)
    if not nodes:
        raise ExportError(f"{src.name} has no linear layers with constant weights to quantise")
    external = src.with_name(src.name + ".data").exists()
    # its "consider pre-processing" warning (shape inference + graph optimisation first) is for static quantisation:
    # measured on the digits model, pre-processing changed no number of the dynamic int8 graph
    muted = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
            op_types_to_quantize=list(LINEAR_OPS),
            nodes_to_quantize=nodes, use_external_data_format=external, extra_options={"MatMulConstBOnly": True},
        )
    except Exception as e:  # onnxruntime's quantiser raises plain exceptions of many kinds
        raise ExportError(f"int8 quantisation failed: {_first_line(e)}") from None
    finally:
        logging.disable(muted)
    graph = onnx.load(str(dst), load_external_data=False).graph
    return sum(n.op_type in QUANTIZED_OPS for n in graph.node)
