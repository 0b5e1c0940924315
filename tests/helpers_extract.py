"""Helpers for tests that run stage one on tiny models and tiny generated images.

The inputs (tiny models, image tree, index, config) come from `clare.testing`, which the
benchmarks use too; they are re-exported here so test modules keep one import line:

    from helpers_extract import make_config, make_image_tree  # tiny_models_dir: conftest.py

What stays here is test-only: reading a whole store and asserting two stores are equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clare.testing import (  # noqa: F401 - re-exported for the test modules
    INDEX_COLUMNS,
    SIDECAR_INDEX,
    make_config,
    make_image_tree,
    tiny_models,
    write_index,
)


def store_arrays(store_path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, read whole (tests only: the stores here are tiny)."""
    from clare.cache.store import ARRAYS, FeatureStore

    store = FeatureStore(store_path)
    return {name: store.read(name, 0, store.n_rows) for name in ARRAYS}


def assert_stores_equal(actual: Path, expected: Path) -> None:
    """Arrays bit for bit (NaN payloads included) and manifests equal."""
    from clare.cache.store import FeatureStore

    got, want = store_arrays(actual), store_arrays(expected)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), f"{name} differs"
    pd.testing.assert_frame_equal(FeatureStore(actual).manifest(), FeatureStore(expected).manifest())
