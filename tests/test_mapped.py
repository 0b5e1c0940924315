"""Token rows used in place from mapped shard files (`clare.cache.mapped`) are the rows zarr
decodes, for every shard including a partial last one; anything unusual is declined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clare.cache.loader import RowCache, StoreLoader
from clare.cache.store import FeatureStore
from clare.cache.writer import StoreWriter

N, SHARD_ROWS = 10, 4  # shards of 4, 4 and 2 rows
SHAPES = {"lare": (2, 3, 3), "cls": (5,), "tokens": (3, 7)}


def _store(path: Path, written: int = N) -> FeatureStore:
    """A store whose rows hold distinct random values; rows from `written` on are never written."""
    rng = np.random.default_rng(11)
    store = StoreWriter.create(path, n_rows=N, shapes=SHAPES, shard_rows=SHARD_ROWS, meta={}).store
    for name, shape in SHAPES.items():
        values = rng.standard_normal((written, *shape)).astype(store.dtype(name))
        store.array(name, write=True)[:written] = values
    return FeatureStore(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    return _store(tmp_path_factory.mktemp("mapped") / "store")


def test_every_shard_maps_to_the_rows_zarr_decodes(store: FeatureStore) -> None:
    for shard in range(store.n_shards):
        start, stop = store.shard_bounds(shard)
        rows = np.repeat(np.arange(start, stop), 2)  # repeats, as an entry list has them
        mapped = store.mapped_rows("tokens", rows)
        assert mapped is not None, shard
        assert np.array_equal(np.stack(mapped), store.read_rows("tokens", rows)), shard
    assert store.shard_bounds(store.n_shards - 1) == (8, 10)  # the partial shard was among them
    assert store.mapped_rows("cls", np.arange(4)) is None  # compressed: zarr decodes it
    with pytest.raises(ValueError, match="span more than shard 0"):
        store.mapped_rows("tokens", np.array([3, 4]))


def test_a_row_never_written_is_declined_and_its_neighbours_map(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", written=9)  # row 9 (in the partial shard) stays fill value
    assert store.mapped_rows("tokens", np.array([8, 9])) is None
    assert store.mapped_rows("tokens", np.array([8])) is not None


@pytest.mark.parametrize("off", ["0", "false", "Off", "no"])
def test_clare_mmap_0_turns_mapping_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        off: str) -> None:
    monkeypatch.setenv("CLARE_MMAP", off)
    store = _store(tmp_path / "store")
    assert store.mapped_rows("tokens", np.arange(4)) is None


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_and_row_cache_deliver_the_stored_rows(store: FeatureStore, shuffle: bool) -> None:
    rows = np.array([0, 0, 1, 3, 4, 5, 5, 6, 8, 9, 9])
    labels = rows % 2
    loader = StoreLoader(store, rows, labels, batch_size=3, seed=5, shuffle=shuffle,
                         shuffle_window=2, prefetch=1)
    cache = RowCache(store, rows, ["cls", "tokens", "lare"])
    cached = StoreLoader(store, rows, labels, batch_size=3, seed=5, shuffle=shuffle,
                         shuffle_window=2, prefetch=0, cache=cache)
    got, from_cache = list(loader.epoch(0)), list(cached.epoch(0))
    assert np.array_equal(np.concatenate([b.rows for b in got]), loader.epoch_rows(0))
    assert sorted(np.concatenate([b.rows for b in got]).tolist()) == rows.tolist()
    for batch, twin in zip(got, from_cache, strict=True):
        for name in ("cls", "tokens", "lare"):
            expected = store.read_rows(name, batch.rows)
            assert np.array_equal(getattr(batch, name).numpy(), expected), name
            assert np.array_equal(getattr(twin, name).numpy(), expected), name
