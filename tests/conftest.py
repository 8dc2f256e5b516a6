"""Test-suite set-up: offline, a private HF cache, and small shared fixtures.

The environment is fixed here, before anything imports huggingface_hub (which reads HF_* variables at import).
"""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="vit_hf_tests_hf_home_")
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_config():
    """Odd sizes on purpose: head_dim (8) != heads (4), mlp (37) != 4 * width, non-trivial labels."""
    from vit_hf import VitHfConfig

    return VitHfConfig.from_preset("test", num_labels=10)


@pytest.fixture
def pixel_values():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g)
