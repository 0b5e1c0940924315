"""Stores hold each distinct image once, in a seeded permutation, so the loader's batches mix
classes and videos.

The mixing test runs clare's own StoreLoader on a store of DF40's training shape (10 methods,
719 real + 719 fake videos each, 32 frames, reals shared by every method, 128-row shards,
batch 128): an epoch visits every listed entry, and the entries of a shared real frame read
its one row. The store has tiny arrays and no shard is written: the loader's order is computed
without reading, so the test takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clare.cache.entries import image_write_order, store_layout
from clare.cache.loader import BatchMixing, StoreLoader, batch_mixing, by_row
from clare.cache.store import FeatureStore
from clare.cache.writer import StoreWriter
from clare.config import FitConfig
from clare.data.df40 import describe_label_conflicts
from clare.stages.fit import video_keys

METHODS, VIDEOS, FRAMES, SHARD_ROWS, BATCH = 10, 719, 32, 128, 128
TINY_SHAPES = {"lare": (1, 1, 1), "cls": (1,), "tokens": (1, 1)}


def df40_shaped_index(methods: int = METHODS, videos: int = VIDEOS, frames: int = FRAMES) -> pd.DataFrame:
    """The index `clare prepare` writes for DF40's train lists: (subset, label, video) order,
    the same real frames listed under every method."""
    parts = []
    frame = np.tile(np.arange(frames), videos)
    video = np.repeat(np.arange(videos), frames)
    for m in range(methods):
        for label, folder in ((0, "ff/real"), (1, f"method{m}/ff/fake")):
            paths = [f"{folder}/{v:03d}/{f:03d}.png" for v, f in zip(video, frame, strict=True)]
            parts.append(pd.DataFrame({"path": paths, "subset": f"method{m}_ff", "label": label,
                                       "video": [f"{v:03d}" for v in video], "frame": frame}))
    return pd.concat(parts, ignore_index=True)


def in_index_order(index: pd.DataFrame) -> pd.DataFrame:
    """The rows as stores held them before the permutation: index order."""
    rows = index.assign(view=np.int16(0), perturb="")
    rows.insert(0, "row", np.arange(len(rows), dtype=np.int64))
    return rows


@pytest.fixture(scope="module")
def df40_index() -> pd.DataFrame:
    return df40_shaped_index()


def mixing_of(rows: pd.DataFrame, store: FeatureStore, window: int) -> BatchMixing:
    """Batch mixing of an epoch over every row, a video being a frame folder (as fit keys it)."""
    loader = StoreLoader(store, rows["row"].to_numpy(), rows["label"].to_numpy(),
                         batch_size=BATCH, seed=0, shuffle_window=window, prefetch=0)
    # batch_mixing looks labels and videos up by store row (entries of one row agree on both).
    return batch_mixing(loader, 0, by_row(rows["row"], rows["label"].to_numpy(), store.n_rows),
                        by_row(rows["row"], pd.factorize(video_keys(rows))[0], store.n_rows))


def entries_in_store_order(index: pd.DataFrame) -> pd.DataFrame:
    """Every entry with the store row of its image (one view), as fit's epoch lists them."""
    layout = store_layout(index, 1, None, seed=0, describe_conflicts=describe_label_conflicts)
    return layout.entries.assign(row=layout.entries["image"])


def test_df40_shaped_batches_mix_classes_and_videos(df40_index: pd.DataFrame, tmp_path: Path) -> None:
    n = len(df40_index)
    assert n == METHODS * 2 * VIDEOS * FRAMES
    store = StoreWriter.create(tmp_path / "store", n_rows=n, shapes=TINY_SHAPES,
                               shard_rows=SHARD_ROWS, meta={}).store
    # Before: one row per entry in index order, read with the loader's old window of 2 shards.
    before = mixing_of(in_index_order(df40_index), store, window=2)
    entries = entries_in_store_order(df40_index)
    # One row per distinct image: the reals are held once, not once per method.
    assert entries["row"].nunique() == (1 + METHODS) * VIDEOS * FRAMES
    after = mixing_of(entries, store, window=FitConfig().shuffle_window)
    # Index order: a window of two 128-row shards is a handful of videos of one or two classes
    # (47% single-class batches, a median of 8 videos).
    assert before.single_class_fraction > 0.3
    assert before.median_videos <= 16
    # Permuted order: every shard is a random sample of the split.
    assert after.batches == before.batches
    assert after.single_class_fraction <= 0.01
    assert after.median_videos >= 100


def test_store_layout_holds_each_image_once_in_a_seeded_order_with_views_adjacent() -> None:
    index = df40_shaped_index(methods=2, videos=5, frames=4)
    layout = store_layout(index, 3, "jpeg=50", seed=7, describe_conflicts=describe_label_conflicts)
    rows, entries = layout.rows, layout.entries
    distinct = index["path"].nunique()
    assert distinct == 3 * 5 * 4 < len(index)  # the reals are listed by both methods
    assert layout.n_images == distinct and len(rows) == distinct * 3
    assert list(rows["row"]) == list(range(distinct * 3))
    assert (rows["view"].to_numpy() == rows["row"].to_numpy() % 3).all()
    assert (rows["perturb"] == "jpeg=50").all()
    # The three views of an image are adjacent: row // views names the image.
    assert (rows.groupby(rows["row"] // 3)["path"].nunique() == 1).all()
    assert rows.loc[rows["view"] == 0, "path"].is_unique
    # Every entry keeps its identity and points at the row of its own image and label.
    keys = ["path", "subset", "label", "video", "frame"]
    pd.testing.assert_frame_equal(entries[keys], index[keys].astype(entries[keys].dtypes))
    first_view = rows.set_index("row").loc[entries["image"].to_numpy() * 3]
    assert (first_view["path"].to_numpy() == entries["path"].to_numpy()).all()
    assert (first_view["label"].to_numpy() == entries["label"].to_numpy()).all()
    # Images in the seeded order of first listing: not index order, and deterministic.
    first_listed = pd.unique(index["path"])
    expected = first_listed[image_write_order(distinct, 7)]
    assert list(rows.loc[rows["view"] == 0, "path"]) == list(expected)
    assert list(expected) != list(first_listed)
    again = store_layout(index, 3, "jpeg=50", seed=7, describe_conflicts=describe_label_conflicts)
    pd.testing.assert_frame_equal(rows, again.rows)
    assert layout.digest() == again.digest() != store_layout(index, 3, "jpeg=50", seed=8, describe_conflicts=describe_label_conflicts).digest()


def test_store_layout_refuses_an_image_listed_with_both_labels() -> None:
    from clare.errors import DataError

    index = df40_shaped_index(methods=2, videos=2, frames=2)
    index.loc[len(index) - 1, "path"] = index.loc[0, "path"]  # a fake entry naming a real image
    with pytest.raises(DataError, match=r"listed as real by method0_ff, method1_ff and as fake by method1_ff"):
        store_layout(index, 1, None, seed=0, describe_conflicts=describe_label_conflicts)


def test_epoch_rows_is_the_order_the_batches_read(tmp_path: Path) -> None:
    n, shard_rows = 50, 8
    store = StoreWriter.create(tmp_path / "store", n_rows=n, shapes=TINY_SHAPES,
                               shard_rows=shard_rows, meta={}).store
    for shard in range(store.n_shards):
        start, stop = store.shard_bounds(shard)
        ids = np.arange(start, stop, dtype=np.float32)
        arrays = {"cls": ids[:, None], "tokens": ids[:, None, None].astype(np.float16),
                  "lare": ids[:, None, None, None]}
        for name, values in arrays.items():
            store.array(name, write=True)[start:stop] = values
    picked = np.arange(0, n, 3)
    loader = StoreLoader(store, picked, picked % 2, batch_size=5, seed=4, shuffle_window=2,
                         prefetch=0)
    batches = list(loader.epoch(1))
    order = loader.epoch_rows(1)
    assert sorted(order) == list(picked)
    assert np.array_equal(np.concatenate([b.rows for b in batches]), order)
    # The features read belong to the rows the order names.
    assert np.array_equal(np.concatenate([b.cls[:, 0].numpy() for b in batches]), order)
    assert not np.array_equal(loader.epoch_rows(2), order)
