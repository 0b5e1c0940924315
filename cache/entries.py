"""Entries and rows: what the lists name, and what a store computes once.

An *entry* is one listed frame: its image path, subset, label, video and frame number, in the
order `clare prepare` indexed them. A *row* is one image × view of the store. DF40 lists the
same FF++ real frames once per method, so about half of its entries name an image another
entry already names; the store computes and keeps each distinct image once, and every entry
points at its image (many entries → one row per view).

`entries.parquet` beside the manifest holds the entries (columns ENTRY_COLUMNS, readable by
pandas or dask as is); `image` is the image's position in the store, so its rows are
`image * views + view`. Fit and eval work on entries: an epoch visits every entry, a score
is computed per row and shared by the row's entries, per-subset metrics count entries.

The image identity is the normalised path relative to `data.root` that `clare prepare`
writes; one image listed with two labels is a data error (or dropped and counted under
`data.on_label_conflict: skip`), so the label of a row is well defined.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clare.errors import DataError

ENTRY_COLUMNS = ("entry", "path", "subset", "label", "video", "frame", "image")
# The columns that say which image a row is and what its label is: the row digest covers them.
ROW_INDEX_COLUMNS = ("path", "label", "view")
# The columns an entry is known by; the entries digest covers them (with `image`).
ENTRY_INDEX_COLUMNS = ("path", "subset", "label", "video", "frame", "image")
# Seeds the write order's own random stream, apart from every other draw made from cfg.seed.
_WRITE_ORDER_STREAM = 0x0D3E


def table_digest(table: pd.DataFrame, columns: tuple[str, ...]) -> str:
    """sha256 of `columns` of every line of `table`, in order, as tab-joined text lines.

    The join runs in Arrow: 400k lines are digested in a fraction of a second, so every reader
    can afford the check."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fields = table[list(columns)].astype(str).fillna("<NA>")
    arrays = [pa.array(fields[name], type=pa.string()) for name in columns]
    lines = pc.binary_join_element_wise(*arrays, "\t").to_numpy(zero_copy_only=False)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def rows_digest(rows: pd.DataFrame) -> str:
    """The digest of which image and label each row holds, in row order."""
    return table_digest(rows, ROW_INDEX_COLUMNS)


def layout_digest(rows: pd.DataFrame, entries: pd.DataFrame) -> str:
    """The fingerprint's index_sha256: the rows and the entries that point at them."""
    both = f"rows {rows_digest(rows)}\nentries {table_digest(entries, ENTRY_INDEX_COLUMNS)}"
    return hashlib.sha256(both.encode()).hexdigest()


def image_write_order(n_images: int, seed: int) -> np.ndarray:
    """The order in which a store holds the distinct images: a seeded permutation of 0..n-1.

    Index order (subset, label, video) would make every 128-row shard a few videos of one
    class, and the loader's window of two shards a batch of one or two classes; in a random
    order every shard is a random sample of the split. It depends only on (seed, number of
    images), never on the worker count or batch size, so it is part of the layout digest.
    """
    return np.random.default_rng([seed, _WRITE_ORDER_STREAM]).permutation(n_images)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class StoreLayout:
    """Which rows a store holds, in store order, and the entries that point at them."""

    rows: pd.DataFrame  # row, path, label, view, perturb
    entries: pd.DataFrame  # ENTRY_COLUMNS
    views: int

    @property
    def n_images(self) -> int:
        return len(self.rows) // self.views

    def digest(self) -> str:
        return layout_digest(self.rows, self.entries)


def store_layout(index: pd.DataFrame, views: int, perturb: str | None, seed: int, *,
                 describe_conflicts: Callable[[pd.DataFrame], str]) -> StoreLayout:
    """Lay out a store for an index of entries: one row per distinct image × view.

    Distinct images (by path, in order of first listing) come in `image_write_order`; the
    `views` views of an image stay adjacent, so row = image * views + view. An index that
    lists one path with two labels is refused, in the words of `describe_conflicts(index)`
    (the data layer's, e.g. `clare.data.df40.describe_label_conflicts`): `clare prepare`
    resolves those.
    """
    codes, paths = pd.factorize(index["path"].astype(str), sort=False)
    labels = index["label"].to_numpy().astype(np.int8)
    image_label = np.empty(len(paths), dtype=np.int8)
    image_label[codes] = labels
    if not np.array_equal(image_label[codes], labels):  # the entries of an image disagree
        raise DataError(f"{describe_conflicts(index)} (then rerun `clare prepare --config CONFIG`)")
    order = image_write_order(len(paths), seed)
    position = np.empty(len(paths), dtype=np.int64)
    position[order] = np.arange(len(paths), dtype=np.int64)
    rows = pd.DataFrame({
        "row": np.arange(len(paths) * views, dtype=np.int64),
        "path": np.repeat(np.asarray(paths, dtype=object)[order], views),
        "label": np.repeat(image_label[order], views),
        "view": np.tile(np.arange(views, dtype=np.int16), len(paths)),
        "perturb": perturb or "",
    })
    entries = pd.DataFrame({
        "entry": np.arange(len(index), dtype=np.int64),
        "path": index["path"].astype(str).to_numpy(),
        "subset": index["subset"].astype(str).to_numpy(),
        "label": labels,
        "video": index["video"].astype(str).to_numpy(),
        "frame": index["frame"].to_numpy().astype(np.int32),
        "image": position[codes],
    })
    return StoreLayout(rows, entries, views)


def entry_rows(entries: pd.DataFrame, manifest: pd.DataFrame, views: int,
               view: int | None = None) -> pd.DataFrame:
    """Every entry with each of its rows (or only `view`), and the row's manifest fields.

    One line per (entry, view), in entry then view order: entry, row, path, subset, label,
    video, frame, view and the manifest's perturb, status, error, sha256, width, height.
    """
    picked = range(views) if view is None else [view]
    n = len(entries)
    chosen = np.tile(np.asarray(list(picked), dtype=np.int64), n)
    repeat = len(picked)
    table = entries.loc[entries.index.repeat(repeat)].reset_index(drop=True)
    table["row"] = table["image"].to_numpy(dtype=np.int64) * views + chosen
    by_row = manifest.set_index("row")
    extra = [c for c in ("view", "perturb", "status", "error", "sha256", "width", "height")
             if c in by_row.columns]
    joined = by_row.loc[table["row"].to_numpy(), extra].reset_index(drop=True)
    table = pd.concat([table.drop(columns=["image"]), joined], axis=1)
    front = ["entry", "row", "path", "subset", "label", "video", "frame"]
    return table[front + extra]
