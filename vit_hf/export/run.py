"""One export, whole or not at all: load, trace, quantise, describe, verify in a temporary folder, then move in."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .common import DEFAULT_OPSET, EXPORT_PACKAGES, VERIFY_PACKAGES, ExportError, check_opset, require_packages
from .graph import export_onnx, quantize_int8
from .source import Source, load_source

QUANTIZE_CHOICES = ("none", "int8")
ONNX_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
REPORT_FILE = "export_report.json"
# what an export writes: only these are ever replaced or removed in an existing OUT_DIR
OUTPUT_FILES = {*ONNX_FILES.values(), *(f"{n}.data" for n in ONNX_FILES.values()), REPORT_FILE, "config.json",
                "preprocessor_config.json", "configuration_vit_hf.py", "switches_vit_hf.py",
                "image_processing_vit_hf.py", "naflex_processing_vit_hf.py",
                "pixels_vit_hf.py"}  # the processor's sibling files, which it imports


def _check_out_dir(out: Path, source_folder: Path) -> None:
    if out.exists() and os.path.samefile(out, source_folder):
        raise ExportError(f"OUT_DIR {out} is MODEL_DIR: the export would replace the model's config.json; choose "
                          f"another folder")


def _write_description(source: Source, folder: Path) -> None:
    """config.json (labels, sizes; AutoConfig only: the folder has no PyTorch weights or modeling code) and the
    image processor with its remote code, so `AutoImageProcessor.from_pretrained(OUT_DIR, trust_remote_code=True)`
    prepares the graph's input."""
    config = copy.deepcopy(source.model.config)
    config.auto_map = {"AutoConfig": "configuration_vit_hf.VitHfConfig"}
    config.architectures = None
    config.save_pretrained(folder)
    source.processor.save_pretrained(folder)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", *EXPORT_PACKAGES.values()):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 and 0600: give what a plain mkdir / open would have
    for entry in tmp.iterdir():
        entry.chmod(0o666 & ~umask)
    if not out.exists():
        shutil.move(tmp, out)  # a rename, unless the temporary folder is on another file system (no parent yet)
        return
    for stale in OUTPUT_FILES - {e.name for e in tmp.iterdir()}:  # e.g. an int8 model of an earlier export
        (out / stale).unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir(), key=lambda e: e.suffix == ".onnx"):  # the graphs last
        os.replace(entry, out / entry.name)
    shutil.rmtree(tmp, ignore_errors=True)


def export_model(
    model_dir: str,
    out_dir: str | Path,
    revision: str | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    quantize: str = "none",
    verify: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Export a vit_hf model to `out_dir` (see the package docstring); returns the report written with `verify`."""
    check_opset(opset)
    if quantize not in QUANTIZE_CHOICES:
        raise ExportError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    require_packages(EXPORT_PACKAGES, "ONNX export")
    if verify:
        require_packages(VERIFY_PACKAGES, "--verify")
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT_DIR {out_dir} is an existing file: choose a folder path")
    source = load_source(model_dir, revision)
    _check_out_dir(out, source.folder)
    parent = out.parent if out.parent.is_dir() else None  # a missing parent is created only on success
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        try:
            report = _export_into(source, tmp, opset, dynamic_batch, dynamic_size, quantize, verify, log)
            out.parent.mkdir(parents=True, exist_ok=True)
            _move_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:  # a full disk, a read-only or forbidden folder: everything went to the temporary folder
        raise ExportError(f"cannot write {out_dir} ({e.strerror or e}): nothing was written; free space or choose "
                          f"another OUT_DIR") from None
    log(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.name in OUTPUT_FILES))}")
    return report


def _export_into(source: Source, tmp: Path, opset: int, dynamic_batch: bool, dynamic_size: bool, quantize: str,
                 verify: bool, log: Callable[[str], None]) -> dict:
    from .verify import report_table
    from .verify import verify as run_verify

    config = source.model.config
    paths = {"fp32": tmp / ONNX_FILES["fp32"]}
    export_onnx(source.model, paths["fp32"], opset, dynamic_batch, dynamic_size)
    batch = "batch" if dynamic_batch else "1"
    hw = "height, width (multiples of {}x{})".format(*config.patch_hw) if dynamic_size else "{}, {}".format(
        *config.image_hw)
    log(f"exported {ONNX_FILES['fp32']}: opset {opset}, pixel_values ({batch}, {config.num_channels}, {hw}) float32 "
        f"-> logits ({batch}, {config.num_labels})")
    report = {"source": {"model": source.repo_id or str(source.folder), "commit": source.commit},
              "opset": opset, "dynamic_batch": dynamic_batch, "dynamic_size": dynamic_size, "quantize": quantize,
              "attn_implementation": "sdpa", "versions": _versions()}
    if quantize == "int8":
        paths["int8"] = tmp / ONNX_FILES["int8"]
        report["int8_linear_layers"] = quantize_int8(paths["fp32"], paths["int8"])
        log(f"quantised {report['int8_linear_layers']} linear layers to int8: {ONNX_FILES['int8']}")
    _write_description(source, tmp)
    if verify:
        report |= run_verify(source.model, source.processor, paths, dynamic_batch, dynamic_size)
        log(report_table(report))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
