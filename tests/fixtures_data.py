"""Shared data fixtures. Import them into a test module:

    def test_x(demo_data_dir): ...   # the fixture comes from conftest.py

`demo_data_dir` is the synthetic mini-DF40 (seed 0), written once per test session and shared:
treat it as read-only (copy it first if a test must change files).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Module-level, not only session scope: every test module that imports the fixture registers
# its own copy of it, and the tree should still be written once per session.
_WRITTEN: dict[int, Path] = {}


def demo_tree(tmp_path_factory: pytest.TempPathFactory, seed: int = 0) -> Path:
    if seed not in _WRITTEN:
        from clare.data.demo import write_demo_dataset

        out = tmp_path_factory.mktemp(f"demo_seed{seed}") / "demo"
        write_demo_dataset(out, seed=seed)
        _WRITTEN[seed] = out
    return _WRITTEN[seed]


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the demo tree; lists are in `<root>/lists`."""
    return demo_tree(tmp_path_factory)
