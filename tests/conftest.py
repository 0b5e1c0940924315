"""Shared fixtures for the whole suite.

The test machines have 2 cores shared with other work; tiny tensors run faster and more
predictably on one intra-op thread, and Dask workers use one thread each, so every test runs
torch on one thread.
"""

from __future__ import annotations

import pytest
import torch
from dvc_project import dvc_project  # noqa: F401 - shared session fixture
from fixtures_data import demo_data_dir  # noqa: F401 - shared session fixture
from helpers_extract import tiny_models_dir  # noqa: F401 - shared session fixture


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """The tiny open_clip model (random weights, E=32, W=64, T=48, 8x8 grid) and its tokenizer."""
    import open_clip

    from clare.models.tiny import TINY_CLIP_NAME, register_tiny_clip_config

    register_tiny_clip_config(tmp_path_factory.mktemp("openclip-config"))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval()
    return model, open_clip.get_tokenizer(TINY_CLIP_NAME)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
