"""Run Python in a fresh interpreter that sees only what a consumer machine has: torch, einops, transformers and
Pillow (plus whatever those require), and neither `vit_hf` nor any development package (timm, torchvision, scipy,
datasets, accelerate, ...).

The development venv has all of those in one site-packages directory, and installs `vit_hf` in editable mode through
a `.pth` finder that `python -I` still processes. So the child starts with `-I -S` (no site processing, no `.pth`
hooks) from a temp dir, with a single directory on `sys.path`: a "consumer site" of symlinks to exactly the
distributions in the dependency closure of the consumer requirements (read from the installed metadata).
"""

from __future__ import annotations

import functools
import json
import os
import re
import site
import subprocess
import sys
import tempfile
import textwrap
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

CONSUMER_REQUIREMENTS = ("torch", "einops", "transformers", "pillow")
MUST_BE_ABSENT = ("vit_hf", "convert", "timm", "torchvision", "scipy", "datasets", "accelerate")

_PRELUDE = """
import importlib.util, sys
sys.path[:] = [p for p in sys.path if not p.endswith("site-packages")] + [{site!r}]
present = [m for m in {absent!r} if importlib.util.find_spec(m) is not None]
if present:
    raise SystemExit(f"isolation failed: {{present}} importable in the consumer process")
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def consumer_site() -> str:
    """A directory of symlinks to the consumer requirements' dependency closure (built once per test session)."""
    dists: dict[str, metadata.Distribution] = {}
    todo = list(CONSUMER_REQUIREMENTS)
    while todo:
        name = _canonical(todo.pop())
        if name in dists:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional/platform dependency that is not installed here
        dists[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    root = Path(tempfile.mkdtemp(prefix="vit_hf_consumer_site_"))
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        for entry in {Path(f).parts[0] for f in dist.files or []}:
            if entry in ("..", "__pycache__") or entry.endswith(".pth") or not (base / entry).exists():
                continue
            if not (root / entry).exists():
                (root / entry).symlink_to(base / entry)
    return str(root)


def run_isolated(
    code: str, cwd: str | Path, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh `-I -S` consumer interpreter (cwd a temp dir); raise with its output on failure."""
    script = _PRELUDE.format(site=consumer_site(), absent=MUST_BE_ABSENT) + textwrap.dedent(code)
    full_env = dict(os.environ if env is None else env)
    full_env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=str(cwd),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"isolated run failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        )
    return proc


def last_json_line(proc: subprocess.CompletedProcess) -> dict:
    """The child reports its results as one JSON object on its last stdout line."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The development site-packages, for tests that need to know where the consumer site's links point.
DEV_SITE_PACKAGES = [p for p in site.getsitepackages() if os.path.isdir(p)]
