"""Shared benchmark machinery: equal-weight candidates, interleaved timing, environment record, tables, JSON.

Candidates (all built from ONE timm state dict, so weights are identical, and moved to the suite's `--device`):
  vit_hf     - vit_hf.VitHfForImageClassification (attn_implementation "sdpa", the default on direct construction)
  timm       - timm.models.vision_transformer.VisionTransformer
  hf_sdpa    - transformers ViTForImageClassification, attn_implementation="sdpa"
  hf_eager   - transformers ViTForImageClassification, attn_implementation="eager"
  vit_hf_eager - vit_hf with attn_implementation "eager" (its einops path; a probe, not a peer)

The sizes of timm's eva.py families (DINOv3, EVA02: rotary embeddings, registers, layer scale, SwiGLU) are built by
timm under their own architecture name and converted to vit_hf with the project's converter (`convert.timm`), so that
both run the same weights; transformers' ViT cannot represent them (no hf_* candidates there).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.device import current_mib, describe, peak_mib, precision_context, sync

# The measured results: bench/results (the latest full run, cited by the READMEs).
RESULTS = Path(__file__).resolve().parent / "results"
# BENCH_THREADS=N pins torch's intra-op threads for every script and child process. With other jobs on a 2-core
# machine, 2 OpenMP threads stall at every barrier when one core is taken (10x slowdowns seen); 1 thread degrades
# gracefully. The thread count is recorded in every JSON.
if os.environ.get("BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))


def results_dir() -> Path:
    """Where results are written and read: BENCH_RESULTS when set, else bench/results. Read at every call, not at
    import: `python -m bench SUITE --quick` points BENCH_RESULTS at a temporary folder so that smoke runs never
    overwrite the measured results, and a test sets it before calling a suite's main() in-process."""
    return Path(os.environ.get("BENCH_RESULTS") or RESULTS)


@dataclass(frozen=True)
class Size:
    width: int
    depth: int
    heads: int
    mlp: int
    timm_name: str  # the timm architecture it is built from (with the fields below as overrides)
    image: int = 224
    patch: int = 16
    eva: bool = False  # a timm eva.py architecture: built under its own name, converted by convert.timm
    prefix: int = 1  # class + register tokens (FLOP count)
    glu: bool = False  # a gated MLP (two input projections of width `mlp`)

    def timm_kwargs(self) -> dict:
        shape = dict(embed_dim=self.width, depth=self.depth, num_heads=self.heads, img_size=self.image,
                     patch_size=self.patch)  # fmt: skip
        # eva.py: the MLP width comes from the architecture's own ratio (EVA02's 4 * 2 / 3 would round to 1 less)
        return shape if self.eva else dict(shape, mlp_ratio=self.mlp / self.width)


SIZES: dict[str, Size] = {
    "S/16": Size(384, 12, 6, 1536, "vit_small_patch16_224"),
    "B/16": Size(768, 12, 12, 3072, "vit_base_patch16_224"),
    # `--quick`: 2 blocks of width 32 on 32x32 images (16 patches of 8x8): every code path of a suite in seconds, for
    # smoke tests; its numbers measure overhead, not the models
    "toy/8": Size(32, 2, 4, 64, "vit_tiny_patch16_224", image=32, patch=8),
    # timm eva.py families: DINOv3-S/16 (4 registers, layer scale, rotate-half RoPE, no qkv bias) and
    # EVA02-S/14 (q/v biases, interleaved RoPE on a 16x16 reference grid, SwiGLU)
    "DINOv3-S/16": Size(384, 12, 6, 1536, "vit_small_patch16_dinov3", eva=True, prefix=5),
    "EVA02-S/14": Size(384, 12, 6, 1024, "eva02_small_patch14_224", patch=14, eva=True, glu=True),
    # their toy versions (2 blocks, width 32 on 32x32 images), for smoke tests
    "toy-DINOv3/8": Size(32, 2, 4, 128, "vit_small_patch16_dinov3", image=32, patch=8, eva=True, prefix=5),
    "toy-EVA02/8": Size(32, 2, 4, 85, "eva02_small_patch14_224", image=32, patch=8, eva=True, glu=True),
}
QUICK_SIZE = "toy/8"
PEERS = ("vit_hf", "timm", "hf_sdpa", "hf_eager")


def available(names: list[str], size: str) -> list[str]:
    """The candidates that exist at `size`: no transformers ViT for the eva.py families."""
    return [n for n in names if not (SIZES[size].eva and n.startswith("hf_"))]


# ----------------------------------------------------------------------------------------------------------------------
# Models with identical weights
# ----------------------------------------------------------------------------------------------------------------------


def timm_model(size: str, num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    m = timm.create_model(SIZES[size].timm_name, pretrained=False, num_classes=num_classes, **SIZES[size].timm_kwargs())
    # timm zero-inits the head (and eva.py the q/v biases); give them random numbers so logits comparisons mean
    # something
    with torch.no_grad():
        m.head.weight.normal_(std=0.02)
        for name, p in m.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                p.normal_(std=0.02)
    return m.eval()


def timm_to_vit_hf_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k if k.startswith("head.") else f"vit.{k}"): v for k, v in sd.items()}


def timm_to_hf_vit_state(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    out = {
        "vit.embeddings.cls_token": sd["cls_token"],
        "vit.embeddings.position_embeddings": sd["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "vit.layernorm.weight": sd["norm.weight"],
        "vit.layernorm.bias": sd["norm.bias"],
        "classifier.weight": sd["head.weight"],
        "classifier.bias": sd["head.bias"],
    }
    for i in range(depth):
        t, h = f"blocks.{i}.", f"vit.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = sd[f"{t}attn.qkv.{p}"].chunk(3, dim=0)
            out[f"{h}attention.q_proj.{p}"] = q
            out[f"{h}attention.k_proj.{p}"] = k
            out[f"{h}attention.v_proj.{p}"] = v
            out[f"{h}attention.o_proj.{p}"] = sd[f"{t}attn.proj.{p}"]
            out[f"{h}layernorm_before.{p}"] = sd[f"{t}norm1.{p}"]
            out[f"{h}layernorm_after.{p}"] = sd[f"{t}norm2.{p}"]
            out[f"{h}mlp.fc1.{p}"] = sd[f"{t}mlp.fc1.{p}"]
            out[f"{h}mlp.fc2.{p}"] = sd[f"{t}mlp.fc2.{p}"]
    return out


def vit_hf_config(size: str, num_classes: int = 1000):
    from vit_hf import VitHfConfig

    s = SIZES[size]
    return VitHfConfig(
        hidden_size=s.width, num_hidden_layers=s.depth, num_attention_heads=s.heads, intermediate_size=s.mlp,
        image_size=s.image, patch_size=s.patch, num_labels=num_classes,
    )  # fmt: skip


def hf_vit_config(size: str, num_classes: int = 1000, attn: str = "sdpa"):
    from transformers import ViTConfig

    s = SIZES[size]
    cfg = ViTConfig(
        hidden_size=s.width,
        num_hidden_layers=s.depth,
        num_attention_heads=s.heads,
        intermediate_size=s.mlp,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        image_size=s.image,
        patch_size=s.patch,
        num_labels=num_classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg._attn_implementation = attn
    return cfg


def build(name: str, size: str, sd: dict[str, torch.Tensor] | None = None, num_classes: int = 1000) -> torch.nn.Module:
    """One candidate loaded with the timm state dict `sd` (built from seed 0 when None), in eval mode."""
    src = timm_model(size, num_classes) if sd is None or name == "timm" else None
    if sd is None:
        sd = src.state_dict()
    if name == "timm":
        src.load_state_dict(sd)
        return src.eval()
    if name.startswith("vit_hf"):
        from vit_hf import VitHfForImageClassification

        impl = {"vit_hf": "sdpa", "vit_hf_eager": "eager"}.get(name, "sdpa")
        if SIZES[size].eva:
            m = eva_to_vit_hf(size, sd)
        else:
            m = VitHfForImageClassification(vit_hf_config(size, num_classes))
            m.load_state_dict(timm_to_vit_hf_state(sd), strict=True)
        m.set_attn_implementation(impl)
        return m.eval()
    if SIZES[size].eva:
        raise ValueError(f"candidate {name!r} does not exist at {size} (a timm eva.py family): use vit_hf, timm")
    if name.startswith("hf_"):
        from transformers import ViTForImageClassification

        attn = name.split("_", 1)[1]
        m = ViTForImageClassification(hf_vit_config(size, num_classes, attn))
        m.set_attn_implementation(attn)
        missing, unexpected = m.load_state_dict(timm_to_hf_vit_state(sd, SIZES[size].depth), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"HF ViT key mismatch: missing={missing} unexpected={unexpected}")
        return m.eval()
    raise ValueError(f"unknown candidate {name!r}")


def eva_to_vit_hf(size: str, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The project's converter on a timm eva.py state dict (copied: the converted model would adopt the tensors, and
    the candidates should not share memory)."""
    from convert.timm import convert_timm_state_dict

    state = {k: v.clone() for k, v in sd.items()}
    s = SIZES[size]
    model, _, _ = convert_timm_state_dict(state, model_name=s.timm_name, create_kwargs=s.timm_kwargs())
    return model


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def images(size: str, batch: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """A fixed random input batch at the size's resolution."""
    n = SIZES[size].image
    return torch.randn(batch, 3, n, n, generator=torch.Generator().manual_seed(seed)).to(device)


def build_all(
    names: list[str], size: str, seed: int = 0, device: torch.device | str = "cpu"
) -> dict[str, torch.nn.Module]:
    sd = timm_model(size, seed=seed).state_dict()
    models = {n: build(n, size, sd).to(device) for n in names}
    # equal-weights check: same logits in true fp32 (TF32 off on CUDA) within 1e-3 on a fixed input
    x = images(size, 1, device, seed=1)
    with torch.inference_mode(), precision_context(torch.device(device), "fp32")():
        ref = None
        for n, m in models.items():
            y = logits(m, x)
            ref = y if ref is None else ref
            diff = (y - ref).abs().max().item()
            if diff > 1e-3:
                raise RuntimeError(f"{n} differs from {names[0]} by {diff:.2e}: weights not equal?")
    return models


# ----------------------------------------------------------------------------------------------------------------------
# FLOPs and GEMM peak
# ----------------------------------------------------------------------------------------------------------------------


def vit_flops(size: str, num_classes: int = 1000) -> float:
    """Forward FLOPs per image, 2 * MACs of every matmul (patch embed, qkv, q@k^T, attn@v, proj, MLP, head)."""
    s = SIZES[size]
    d, depth, mlp, image, patch = s.width, s.depth, s.mlp, s.image, s.patch
    p = (image // patch) ** 2
    n = p + s.prefix
    patch_embed = 2 * p * (3 * patch * patch) * d
    block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + (3 if s.glu else 2) * 2 * n * d * mlp
    return float(patch_embed + depth * block + 2 * d * num_classes)


def gemm_peak(
    dtype: torch.dtype, m: int = 8 * 197, k: int = 768, n: int = 3072, reps: int = 10,
    device: torch.device | str = "cpu",
) -> float:  # fmt: skip
    """Measured GFLOP/s of one (m,k)@(k,n) matmul at a ViT-B MLP shape (batch 8), best of `reps`."""
    device = torch.device(device)
    a = torch.randn(m, k).to(device, dtype)
    b = torch.randn(k, n).to(device, dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / min(times) / 1e9  # best of reps: capability, not contention


# ----------------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------------


def cpu_snapshot() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process incl. all its threads)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v) - v[3] - v[4]  # minus idle, iowait
    with open("/proc/self/stat") as f:
        s = f.read().rsplit(")", 1)[1].split()
    return busy, int(s[11]) + int(s[12])  # utime + stime


def foreign_load(before: tuple[int, int], after: tuple[int, int], wall_s: float) -> float:
    """Fraction of the machine's CPU time used by OTHER processes during a timed call (0 = machine was ours)."""
    tck = os.sysconf("SC_CLK_TCK")
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / (wall_s * tck * (os.cpu_count() or 1)))


CLEAN = 0.10  # a round is "clean" when other processes used < 10 % of the machine during it


@dataclass
class Timing:
    times: list[float]
    foreign: list[float] | None = None

    @property
    def clean_times(self) -> list[float]:
        if not self.foreign:
            return self.times
        clean = [t for t, f in zip(self.times, self.foreign, strict=True) if f < CLEAN]
        return clean or self.times

    @property
    def n_clean(self) -> int:
        return sum(f < CLEAN for f in self.foreign) if self.foreign else len(self.times)

    @property
    def median(self) -> float:
        """Median over the clean rounds (all rounds when none was clean)."""
        return statistics.median(self.clean_times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median over the clean rounds (all rounds when none was clean): the noise band."""
        t = self.clean_times
        return (max(t) - min(t)) / self.median if t else float("nan")


def interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, rounds: int, collect: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:  # fmt: skip
    """Warm every candidate up, then time rounds A, B, C, A, B, C, ... (rotating the start so order bias cancels).
    Garbage collection stays out of the timed calls: `collect` runs a full collection before every one (~0.5 s each
    with torch and transformers loaded, fine for 0.4 s calls); without it the automatic collector is off during the
    rounds (short calls: smoke runs, GPU cases). `clock`: wall time by default; `time.process_time` (this process's
    CPU time) leaves out the time other processes hold the core, meaningful with one thread on the CPU only."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out = {n: Timing([], []) for n in names}
    was_enabled = gc.isenabled()
    if not collect:
        gc.disable()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                if collect:
                    gc.collect()
                c0 = cpu_snapshot()
                t, w = clock(), time.perf_counter()
                fns[n]()
                dt, wall = clock() - t, time.perf_counter() - w
                out[n].times.append(dt)
                out[n].foreign.append(foreign_load(c0, cpu_snapshot(), wall))
    finally:
        if was_enabled:
            gc.enable()
    return out


def maxrss_mib() -> float:
    """Peak resident memory of this process (VmHWM; see bench.device.peak_mib)."""
    return peak_mib(torch.device("cpu"))


def rss_mib() -> float:
    return current_mib(torch.device("cpu"))


def run_child(args: list[str], timeout: float = 900, extra_env: dict[str, str] | None = None) -> dict:
    """Run `python -m bench.<...> args` in a fresh process; it prints one JSON line prefixed 'RESULT '."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra_env or {})
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {args} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# ----------------------------------------------------------------------------------------------------------------------
# Environment, tables, JSON
# ----------------------------------------------------------------------------------------------------------------------


def environment(device: torch.device | str = "cpu") -> dict:
    import timm
    import transformers

    flags = ""
    model_name = platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    keep = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": model_name,
        "nproc": os.cpu_count(),
        "cpu_flags": [f for f in keep if f in flags],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": os.getloadavg(),
        "started_unix": time.time(),
        **describe(torch.device(device)),
    }


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def add_ratios(rows: list[dict], key: str, group: tuple[str, ...], higher_better: bool = True, peers=PEERS) -> None:
    """ratio = value / best peer's value within the same group (ratio > 1: better than the best peer)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[g] for g in group), []).append(r)
    for rs in groups.values():
        vit_hf = [r for r in rs if r["candidate"] == "vit_hf"]
        others = [r[key] for r in rs if r["candidate"] in peers and r["candidate"] != "vit_hf" and r.get(key)]
        if not others:
            continue
        best = max(others) if higher_better else min(others)
        for r in rs:
            if r.get(key):
                r["vs_best_peer"] = r[key] / best if higher_better else best / r[key]
        for r in vit_hf:
            r["best_peer"] = [r2["candidate"] for r2 in rs if r2.get(key) == best][0]


def save(name: str, payload: dict) -> Path:
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def case_slug(case: str) -> str:
    """File-name form of a case name ("S/16-b8-fp32" -> "S16-b8-fp32")."""
    return case.replace("/", "")


def save_case(out: str, case: str, payload: dict) -> Path:
    """Write one case's result to results/<out>/<slug>.json, so a run stopped part-way keeps every finished case and
    separate invocations (--cases ...) do not overwrite each other; bench.report merges these files."""
    path = results_dir() / out / f"{case_slug(case)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def load_rows(name: str) -> tuple[list[dict], list[dict]]:
    """Rows and environments of results/<name>.json plus results/<name>/*.json (per-case files). A case present in
    several is taken from the newest file (recorded start time, else mtime; the aggregate may be an older, partial
    run)."""
    results, sources = results_dir(), []
    agg = results / f"{name}.json"
    if agg.exists():
        sources.append(agg)
    if (results / name).is_dir():
        sources += sorted((results / name).glob("*.json"))
    by_case: dict[str, tuple[float, list[dict], dict]] = {}
    for path in sources:
        data = json.loads(path.read_text())
        cases: dict[str, list[dict]] = {}
        for r in data["rows"]:
            cases.setdefault(r.get("case", ""), []).append(r)
        for case, rs in cases.items():
            # when it was measured: the recorded start time (a clone gives every file the same mtime), else mtime
            mtime = data["env"].get("started_unix", path.stat().st_mtime)
            if case not in by_case or mtime >= by_case[case][0]:
                by_case[case] = (mtime, rs, {**data["env"], "partial": data.get("partial", False), "file": path.name})
    rows = [r for _, rs, _ in by_case.values() for r in rs]
    envs = []
    for _, _, env in by_case.values():
        if env not in envs:
            envs.append(env)
    return rows, envs


def parse_cases(spec: str | None) -> list[str] | None:
    return [c.strip() for c in spec.split(",")] if spec else None


def selected(case: str, filters: list[str] | None) -> bool:
    return filters is None or any(f in case for f in filters)
