"""Shared fixtures for the whole suite.

Session-scoped fixtures build their inputs once per pytest session, whichever test asks first:
- `tiny_models_dir`: the tiny random-weight SD and CLIP models (`clare.testing.tiny_models`),
  the folder holding `sd/` and `clip/`;
- `demo_data_dir`: the synthetic mini-DF40 (seed 0), lists in `<root>/lists`;
- `tiny_clip`: the tiny open_clip model object and its tokenizer.
The `clare` fixture is the one way a test runs the command line in its own process:
`clare(*args)` calls the real entry point, `clare.cli.main()`, with that argv and returns
(exit code, stdout, stderr), so main()'s last-resort guard is part of what is tested. A test that
needs a separate process (a signal, a kill, a fresh interpreter) runs `python -m clare.cli`.
Treat what they return as read-only (copy first if a test must change files).

The test machines have 2 cores shared with other work; tiny tensors run faster and more
predictably on one intra-op thread, and Dask workers use one thread each, so every test runs
torch on one thread, and pytest-xdist runs one test process per core instead (pyproject's
addopts). `--dist loadfile` keeps a test module in one process, so its module-scoped world is
built once; the longest modules are scheduled first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from dvc_project import dvc_project  # noqa: F401 - shared session fixture

from clare import cli
from clare.testing import tiny_models


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny models (sd/, clip/), built once per session."""
    return tiny_models(tmp_path_factory.mktemp("models")).root


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the synthetic mini-DF40 (seed 0), written once per session; lists in `<root>/lists`."""
    from clare.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("demo_seed0") / "demo"
    write_demo_dataset(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """The tiny open_clip model (random weights, E=32, W=64, T=48, 8x8 grid) and its tokenizer."""
    import open_clip

    from clare.models.tiny import TINY_CLIP_NAME, register_tiny_clip_config

    register_tiny_clip_config(tmp_path_factory.mktemp("openclip-config"))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval()
    return model, open_clip.get_tokenizer(TINY_CLIP_NAME)


# The longest modules first (DVC; the SIGKILL, Dask and benchmark subprocesses), so that the
# processes share the tail of short modules instead of one waiting on a long one at the end.
_LONGEST_FIRST = ("test_dvc_experiments", "test_fit_faults", "test_verbosity",
                  "test_benchmarks_smoke", "test_extract_faults", "test_predict")


def _module_rank(item: pytest.Item) -> int:
    name = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_module_rank)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread_per_test():
    """Back to one thread before and after every test: `clare predict` (interactive) takes
    every core, and a test after it must not inherit that."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _no_hash_cache_in_home():
    """The suite never writes the user's ~/.cache/clare/hashes.json (test_hash_cache turns the
    cache on, in a temporary folder); subprocesses inherit the setting."""
    before = os.environ.get("CLARE_HASH_CACHE")
    os.environ["CLARE_HASH_CACHE"] = "off"
    yield
    if before is None:
        os.environ.pop("CLARE_HASH_CACHE", None)
    else:
        os.environ["CLARE_HASH_CACHE"] = before


class CliResult(NamedTuple):
    """What `clare ARGS` did: exit code, stdout and stderr (a tuple, so it unpacks)."""

    code: int
    out: str
    err: str

    @property
    def exit_code(self) -> int:
        return self.code

    @property
    def output(self) -> str:
        """stdout, then stderr: everything the command printed."""
        return self.out + self.err


@pytest.fixture
def clare(capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """`clare(*args)`: exit code, stdout and stderr of `clare ARGS` through the real entry point."""

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["clare", *map(str, args)])
        capsys.readouterr()  # what the test printed before is not the command's
        with pytest.raises(SystemExit) as done:
            cli.main()
        captured = capsys.readouterr()
        code = done.value.code
        return CliResult(0 if code is None else int(code), captured.out, captured.err)

    return run
