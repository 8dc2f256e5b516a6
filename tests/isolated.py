"""Run Python in a fresh interpreter that cannot import `vit_hf`: a consumer machine with only torch, einops and
transformers (plus their dependencies) installed.

The development venv installs `vit_hf` in editable mode through a `.pth` finder in site-packages, which `python -I`
still processes. So the child starts with `-I -S` (no site processing at all) and puts the site-packages
directories back on `sys.path` by hand: installed distributions import normally, `.pth` hooks (the editable
finder among them) never run, and the repository is not on the path because the child runs from a temp dir.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

_PRELUDE = """
import sys
sys.path.extend({paths!r})
try:
    import vit_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("isolation failed: vit_hf is importable in the consumer process")
"""


def run_isolated(code: str, cwd: str | Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh `-I -S` interpreter (cwd a temp dir) where `import vit_hf` fails; raise on failure."""
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    script = _PRELUDE.format(paths=paths) + textwrap.dedent(code)
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
        raise AssertionError(f"isolated run failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc


def last_json_line(proc: subprocess.CompletedProcess) -> dict:
    """The child reports its results as one JSON object on its last stdout line."""
    return json.loads(proc.stdout.strip().splitlines()[-1])
