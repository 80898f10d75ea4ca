"""Test-wide settings: nothing is written to the user's cache, few threads."""

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["MEDUSA_CACHE"] = str(tmp_path_factory.mktemp("medusa-cache"))
    yield


torch.set_num_threads(min(2, torch.get_num_threads()))
