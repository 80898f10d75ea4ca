"""Test-wide settings: nothing is written to the user's cache, few threads.

The DeepSpeed test builds DeepSpeed's shared-memory op (~40 s, once): into ``.cache/torch_extensions`` of this
checkout (git-ignored), not ``~/.cache/torch_extensions``.
"""

import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["MEDUSA_CACHE"] = str(tmp_path_factory.mktemp("medusa-cache"))
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(ROOT, ".cache", "torch_extensions")
    yield


# two pytest-xdist workers (make test: -n 2) share the 2 cores: one thread each, so they never oversubscribe
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
