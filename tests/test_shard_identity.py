"""A shard file replaced by another shard's valid bytes is refused on read, not read as this
shard's rows (issue 23 §4): its chunks pass their crc32c, but not the ones its marker recorded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clare.cache.loader import StoreLoader
from clare.cache.store import MANIFEST_COLUMNS, FeatureStore, open_store
from clare.cache.writer import StoreWriter
from clare.errors import StoreError

N, SHARD_ROWS = 12, 4  # three full shards: token shard files of one size
SHAPES = {"lare": (4, 3, 3), "cls": (5,), "tokens": (3, 8)}


def _manifest() -> pd.DataFrame:
    rows = np.arange(N)
    return pd.DataFrame({
        "row": rows, "path": [f"img/{r:03d}.png" for r in rows], "subset": "s",
        "label": (rows % 2).astype(np.int8), "video": [f"v{r}" for r in rows],
        "frame": np.zeros(N, np.int32), "view": np.zeros(N, np.int16), "perturb": "",
        "status": "ok", "error": "", "sha256": "0" * 64,
        "width": np.full(N, 8, np.int32), "height": np.full(N, 8, np.int32),
    })[list(MANIFEST_COLUMNS)]


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A finished store whose rows hold distinct random values, and those values."""
    rng = np.random.default_rng(5)
    values = {name: rng.standard_normal((N, *shape)).astype(np.float16 if name == "tokens"
                                                            else np.float32)
              for name, shape in SHAPES.items()}
    manifest = _manifest()
    writer = StoreWriter.create(tmp_path / "store", n_rows=N, shapes=SHAPES, shard_rows=SHARD_ROWS,
                                meta={}, index=manifest)
    for shard in range(writer.store.n_shards):
        start, stop = writer.store.shard_bounds(shard)
        writer.write_shard(shard, {k: v[start:stop] for k, v in values.items()},
                           manifest.iloc[start:stop].reset_index(drop=True))
    writer.finalize()
    return tmp_path / "store", values


def _replace_with(target: Path, source: Path) -> None:
    """Replace `target` by a copy of `source` the way a copy tool does: a new inode, renamed in."""
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def _epoch(store: FeatureStore) -> dict[str, np.ndarray]:
    """One in-order epoch of every row, as `clare fit --set fit.cache=none` reads it."""
    loader = StoreLoader(store, np.arange(N), np.arange(N) % 2, batch_size=N, seed=0,
                         shuffle=False, shuffle_window=2, prefetch=0)
    batch = next(iter(loader.epoch(0)))
    return {"cls": batch.cls.numpy(), "tokens": batch.tokens.numpy(), "lare": batch.lare.numpy()}


def _assert_refused(caught: pytest.ExceptionInfo[StoreError], store: FeatureStore, name: str) -> None:
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{store.shard_file(name, 0)}: not the file shard 0 of array {name}")
    assert "shards/00000.json" in message  # the record it was compared with
    assert f"run `clare verify {store.path}`, then rerun the `clare extract` command" in message


@pytest.mark.parametrize("mapped", ["1", "0"])
@pytest.mark.parametrize("name", ["tokens", "cls", "lare"])
def test_a_shard_file_replaced_by_another_shards_bytes_is_refused_on_read(
        written: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch,
        name: str, mapped: str) -> None:
    monkeypatch.setenv("CLARE_MMAP", mapped)  # tokens are used in place, or decoded by zarr
    path, values = written
    store = open_store(path)
    assert all(np.array_equal(_epoch(store)[k], values[k]) for k in SHAPES)  # sound as written
    if name == "tokens":  # the attack's case: uncompressed, so every token shard has one size
        assert store.shard_file(name, 0).stat().st_size == store.shard_file(name, 1).stat().st_size
    _replace_with(store.shard_file(name, 0), store.shard_file(name, 1))

    # The store opened before the swap (a fit under way) and one opened after both refuse it.
    for reader in (store, open_store(path)):
        with pytest.raises(StoreError) as caught:
            _epoch(reader)
        _assert_refused(caught, reader, name)
        with pytest.raises(StoreError) as caught:
            reader.read_rows(name, np.array([1, 6]))
        _assert_refused(caught, reader, name)
    # The other shards still read as written.
    assert np.array_equal(store.read(name, 4, 12), values[name][4:12])


def test_the_marker_records_each_rows_crc32c_and_a_store_without_them_reads(
        written: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, values = written
    store = open_store(path)
    marker = store.shard_marker(1)
    assert marker is not None
    assert {k: len(v) for k, v in marker["chunk_crc32c"].items()} == dict.fromkeys(SHAPES, SHARD_ROWS)
    assert len(set(marker["chunk_crc32c"]["tokens"])) == SHARD_ROWS  # distinct rows, distinct crcs
    # A store written before markers recorded them has nothing to compare with: it reads.
    for shard in range(store.n_shards):
        marker = store.shard_marker(shard)
        assert marker is not None
        del marker["chunk_crc32c"]
        store.marker_path(shard).write_text(json.dumps(marker))
    assert np.array_equal(_epoch(open_store(path))["tokens"], values["tokens"])


def test_a_forged_record_of_row_crc32c_is_refused(written: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = written
    store = open_store(path)
    marker = store.shard_marker(0)
    assert marker is not None
    marker["chunk_crc32c"]["cls"] = ["not a crc"] * SHARD_ROWS
    store.marker_path(0).write_text(json.dumps(marker))
    with pytest.raises(StoreError) as caught:
        open_store(path).read("cls", 0, 4)
    assert str(caught.value).startswith(f"{store.marker_path(0)}: chunk_crc32c of cls is not one "
                                        "crc32c per row; run `clare verify")


def test_a_finished_store_that_lost_a_marker_is_refused_on_read(
        written: tuple[Path, dict[str, np.ndarray]]) -> None:
    """Deleting the record must not turn the check off: store.json says every shard has one."""
    path, _ = written
    store = open_store(path)
    store.marker_path(2).unlink()
    with pytest.raises(StoreError) as caught:
        open_store(path).read("tokens", 8, 12)
    assert str(caught.value).startswith(
        f"{store.marker_path(2)}: missing, though store.json says the store is complete; "
        f"run `clare verify {path}`")
