"""Shared fixtures for the whole suite.

The test machines have 2 cores shared with other work; tiny tensors run faster and more
predictably on one intra-op thread, and Dask workers use one thread each, so every test runs
torch on one thread.
"""

from __future__ import annotations

import pytest
import torch
from fixtures_data import demo_data_dir  # noqa: F401 - shared session fixture
from helpers_extract import tiny_models_dir  # noqa: F401 - shared session fixture


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
