"""The device a suite runs on (`--device {cpu,cuda}`): precisions, timing barriers, peak memory, SDPA backends.

Every suite measures the same thing on both devices; what differs lives here, in small tables:
- precisions: the CPU runs fp32, bf16 autocast and bf16 weights; CUDA adds TF32 matmuls/convolutions and fp16
  autocast (fp32 master weights) and fp16 weights. "fp32" on CUDA is true fp32: TF32 is switched off for matmuls and
  for cuDNN convolutions (timm's patch embedding is a convolution, which cuDNN runs in TF32 by default), so that the
  fp32 rows of every candidate do the same arithmetic.
- timing: CUDA kernels are asynchronous, so every timed call ends with `torch.cuda.synchronize()`.
- memory: on CUDA, the allocator's peak (`torch.cuda.max_memory_allocated`, tensors only, exact and per call); on the
  CPU, the process's resident high-water mark (VmHWM), which is per process, so memory suites use fresh processes.
- attention: on CUDA the SDPA kernel can be pinned (`sdpa_kernel`) to flash or memory-efficient attention.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
from collections.abc import Callable, Iterator

import torch

DEVICES = ("cpu", "cuda")
PRECISIONS = {
    "cpu": ("fp32", "bf16-autocast", "bf16-weights"),
    "cuda": ("fp32", "tf32", "bf16-autocast", "fp16-autocast", "bf16-weights", "fp16-weights"),
}
TRAIN_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "tf32", "bf16", "fp16")}
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision prefix -> dtype
# SDPA backends a case can be pinned to (CUDA only; "default" = PyTorch's own choice). Flash attention has no fp32
# kernel, so it is offered for half-precision cases only.
SDPA_BACKENDS = ("default", "flash", "efficient")


def add_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", choices=DEVICES, default="cpu", help="where the models run (default: cpu)")


def resolve(name: str) -> torch.device:
    """The torch device for `--device NAME`; exits with one line when CUDA was asked for and is not there."""
    if name == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        sys.exit(
            f"error: --device cuda: torch {torch.__version__} ({build}) sees no CUDA device on this machine; "
            "run on a machine with an NVIDIA GPU or pass --device cpu"
        )
    return torch.device(name)


def describe(device: torch.device) -> dict:
    """What the environment record of a result file says about the device."""
    if device.type != "cuda":
        return {"device": "cpu"}
    p = torch.cuda.get_device_properties(device)
    return {
        "device": "cuda",
        "gpu": p.name,
        "gpu_capability": f"{p.major}.{p.minor}",
        "gpu_memory_gib": round(p.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def _bf16_ok(device: torch.device) -> bool:
    """bf16 has hardware support on this device (CUDA: Ampere and later; pre-Ampere GPUs would emulate or refuse)."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)


def precisions(device: torch.device) -> tuple[str, ...]:
    """The forward precisions measured on this device."""
    return tuple(p for p in PRECISIONS[device.type] if _bf16_ok(device) or not p.startswith("bf16"))


def train_precisions(device: torch.device) -> tuple[str, ...]:
    """The training-step precisions measured on this device."""
    return tuple(p for p in TRAIN_PRECISIONS[device.type] if _bf16_ok(device) or p != "bf16")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a case run in (the GEMM reference is timed in it)."""
    return HALF.get(precision.split("-")[0], torch.float32)


def weights_dtype(precision: str) -> torch.dtype | None:
    """The dtype models and inputs are cast to for "*-weights" cases, else None (fp32 weights)."""
    return HALF[precision.split("-")[0]] if precision.endswith("-weights") else None


@contextlib.contextmanager
def tf32(on: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions on or off, restored afterwards. Uses the legacy switches only:
    torch 2.9+ raises when the legacy getter meets a precision set through the new per-backend API, and inductor
    reads the legacy one."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def precision_context(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context every call of a case runs in: autocast for "*-autocast" (and "bf16"/"fp16" training
    cases), TF32 on for "tf32", true fp32 for everything else on CUDA; nothing on the CPU otherwise."""
    head = precision.split("-")[0]
    if head in HALF and not precision.endswith("-weights"):
        return lambda: torch.autocast(device.type, dtype=HALF[head])
    if device.type == "cuda":
        return lambda: tf32(head == "tf32")
    return contextlib.nullcontext


def sdpa_context(backend: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context that pins PyTorch's SDPA to one backend ("default": no pinning)."""
    if backend == "default":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
    return lambda: sdpa_kernel([kernel])


def sdpa_backends(device: torch.device, precision: str) -> tuple[str, ...]:
    """The SDPA pinnings worth timing for a case: none on the CPU; on CUDA flash only where it has a kernel (half)."""
    if device.type != "cuda":
        return ("default",)
    # PyTorch's flash-attention kernels need half precision and an Ampere or later GPU
    flash = precision.split("-")[0] in HALF and torch.cuda.get_device_capability(device) >= (8, 0)
    return tuple(b for b in SDPA_BACKENDS if b != "flash" or flash)


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read after this measures the work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def current_mib(device: torch.device) -> float:
    """Memory held now: tensors in the CUDA allocator, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib(device: torch.device) -> float:
    """Peak since the last `reset_peak` (CUDA allocator), or the process's resident high-water mark on the CPU: VmHWM
    of /proc/self/status (per address space, so reset by exec; getrusage's ru_maxrss is NOT: Linux carries the
    pre-exec high-water mark, i.e. the forking parent's RSS, into the child)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_kind(device: torch.device) -> str:
    return "CUDA allocator peak (torch.cuda.max_memory_allocated)" if device.type == "cuda" else "VmHWM (peak RSS)"
