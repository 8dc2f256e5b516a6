"""Test-suite set-up: offline, a private HF cache, threads, the shared fixtures, and how tests are spread over
pytest-xdist workers (`make test` runs `-n auto --dist loadgroup`).

The environment is fixed here, before anything imports huggingface_hub (which reads HF_* variables at import).
Functions several test modules share are in helpers.py; test modules never import each other.
"""

import inspect
import os
import sys
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="vit_hf_tests_hf_home_")  # one per process: xdist workers never share a cache
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under xdist every core already runs a worker: one thread each, and in every subprocess they start (OMP_NUM_THREADS
# is what torch reads at import); more would only make the workers fight over the cores.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from _pytest.nodeid import NodeId  # noqa: E402

TESTS = Path(__file__).resolve().parent
torch.set_num_threads(1 if XDIST_WORKER else max(1, min(2, os.cpu_count() or 1)))


# ----------------------------------------------------------------------------------------------------------------------
# Shared fixtures
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_config():
    """Odd sizes on purpose: head_dim (8) != heads (4), mlp (37) != 4 * width, non-trivial labels."""
    from vit_hf import VitHfConfig

    return VitHfConfig.from_preset("test", num_labels=10)


@pytest.fixture
def pixel_values():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g)


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster, and immune to a busy machine's thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """In-process training runs each build an Accelerator with other settings, and accelerate keeps process-wide
    singletons: reset them after any test that used accelerate (the check keeps other tests from importing it)."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


# ----------------------------------------------------------------------------------------------------------------------
# Spreading tests over xdist workers
# ----------------------------------------------------------------------------------------------------------------------


def _shared_fixtures(item: pytest.Item) -> list[str]:
    """The module-, package- or session-scoped fixtures of this suite that `item` uses (by definition site)."""
    out = []
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of what the item requests (doctests have none)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        fixturedef = defs[-1]  # the one the item gets (the closest override)
        if fixturedef.scope == "function":
            continue
        source = Path(inspect.getsourcefile(fixturedef.func) or "")
        if source.parent == TESTS:
            out.append(f"{source.name}::{name}")
    return out


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share an expensive set-up (a module- or session-scoped fixture: a DDP run, a pushed data set) run on
    one worker, so it is built once: each connected set becomes one `xdist_group`. Groups are handed out by their number
    of slow tests, most first, so that no long chain starts last while the other worker idles."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared = {item.nodeid: _shared_fixtures(item) for item in items}
    for keys in shared.values():
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])

    def group(item: pytest.Item) -> str:
        return root(shared[item.nodeid][0]) if shared[item.nodeid] else item.nodeid

    slow_tests: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("slow"):
            slow_tests[group(item)] = slow_tests.get(group(item), 0) + 1
    items.sort(key=lambda item: -slow_tests.get(group(item), 0))  # stable: otherwise the collection order
    # In a worker, xdist resets `dist` to "no" and keeps what was asked as `loadgroup` (xdist/remote.py setup_config).
    if XDIST_WORKER and config.getoption("loadgroup", False):
        for item in items:
            if shared[item.nodeid]:
                item.add_marker(pytest.mark.xdist_group(group(item)))
                # xdist 3.8 groups by a "@group" suffix of the node id, which it writes to `item._nodeid`; pytest 9
                # reads `item._id` instead, so without this the groups were silently ignored (each worker built the
                # shared fixtures again)
                if "@" not in item.nodeid:
                    item._id = NodeId.parse(f"{item.nodeid}@{group(item)}")


def pytest_configure(config: pytest.Config) -> None:
    """Hand the groups out in the order above (most slow tests first), not xdist's default of the most tests first:
    a group of many quick tests would otherwise start before a long launch chain."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
