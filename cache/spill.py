"""Features `clare predict --store` computed, spilled to disk batch by batch, then written as a
store once every input is scored (`FeatureSpill`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from clare import fingerprint as fp
from clare.cache.entries import store_layout
from clare.cache.store import FeatureStore
from clare.cache.writer import StoreWriter, create_store, store_meta
from clare.config import Config


class BatchArrays(Protocol):
    """A batch's features as `clare.features.BatchFeatures` holds them (one line per kept row)."""

    lare: np.ndarray
    cls: np.ndarray
    tokens: np.ndarray


class FeatureSpill:
    """Features computed outside `clare extract` (by `clare predict --store`), kept on disk one
    batch at a time and written as a store once every batch is in: only then is it known which
    rows scored, and a store holds its rows in the seeded write order (`store_layout`).

    `add` takes a batch's features and, for each row to keep, its position in the batch and
    its manifest identity (path, subset, label, video, frame, sha256, width, height)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.batches = 0
        self.shapes: dict[str, tuple[int, ...]] | None = None
        self._open: dict[tuple[str, int], np.ndarray] = {}

    def add(self, features: BatchArrays, keep: list[tuple[int, dict[str, Any]]]) -> None:
        if not keep:
            return
        arrays = {"lare": features.lare, "cls": features.cls, "tokens": features.tokens}
        for name, values in arrays.items():
            np.save(self.folder / f"{name}-{self.batches:06d}.npy", values)
        self.shapes = {name: tuple(values.shape[1:]) for name, values in arrays.items()}
        self.rows.extend({**identity, "_batch": self.batches, "_at": j} for j, identity in keep)
        self.batches += 1

    def _rows_of(self, name: str, records: pd.DataFrame) -> np.ndarray:
        def row(batch: int, at: int) -> np.ndarray:
            if (name, batch) not in self._open:
                file = self.folder / f"{name}-{batch:06d}.npy"
                self._open[(name, batch)] = np.load(file, mmap_mode="r")
            return self._open[(name, batch)][at]

        pairs = zip(records["_batch"], records["_at"], strict=True)
        return np.stack([row(int(batch), int(at)) for batch, at in pairs])

    def write_store(self, path: Path, cfg: Config, *, split: str, extra: dict[str, Any],
                    describe_conflicts: Callable[[pd.DataFrame], str]) -> FeatureStore | None:
        """The spilled rows as a finished store at `path` (None when no row was kept); `split`
        and `extra` go into store.json."""
        if not self.rows or self.shapes is None:
            return None
        index = pd.DataFrame.from_records(self.rows)  # one entry per scored input
        layout = store_layout(index, 1, None, cfg.seed, describe_conflicts=describe_conflicts)
        # The features of each distinct image (an input given twice was scored twice alike),
        # in the layout's row order.
        records = index.drop_duplicates("path").set_index("path").loc[layout.rows["path"]]
        records = records.reset_index()
        fingerprint = fp.store_fingerprint(cfg, index_sha256=layout.digest(), views=1, perturb=None)
        with StoreWriter(path).lock():
            writer = create_store(
                path, layout, fingerprint, shapes=self.shapes, shard_rows=cfg.extract.shard_rows,
                meta={**store_meta(cfg, split=split, layout=layout, perturb=None), **extra})
            store = writer.store
            for shard in range(store.n_shards):
                start, stop = store.shard_bounds(shard)
                part = records.iloc[start:stop]
                manifest = layout.rows.iloc[start:stop].assign(
                    status="ok", error="", sha256=part["sha256"].to_numpy(),
                    width=part["width"].to_numpy(np.int32), height=part["height"].to_numpy(np.int32))
                writer.write_shard(shard, {name: self._rows_of(name, part) for name in self.shapes},
                                   manifest)
            writer.finalize()
        return store

    def close(self) -> None:
        self._open.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
