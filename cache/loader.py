"""Batches for stage two, read from a FeatureStore shard by shard, never the whole store.

Order of an epoch, fully determined by (seed, epoch): the shards holding the selected rows are
shuffled; each window of `shuffle_window` shards is read as contiguous slices, its rows are
shuffled together, and batches are cut from a running buffer so that every batch but the last
is full. A background thread reads ahead (`prefetch` batches); it changes timing, not order.

The rows a loader is given are rows the manifest calls ok, and extraction marks any row with
NaN or inf features failed, so a non-finite value in a row read here means a missing or
damaged shard file: it raises a StoreError naming the row and shard instead of being skipped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clare.cache.store import FeatureStore
from clare.errors import StoreError

# The parts of a window or batch, in this order: rows, labels, cls, tokens, lare.
_Parts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Batch:
    rows: np.ndarray  # store rows, int64
    cls: torch.Tensor  # (B, E) float32
    tokens: torch.Tensor | None  # (B, P, W) float32; None when the head does not use them
    lare: torch.Tensor | None  # (B, 4, h, w) float32; None when the head does not use it
    label: torch.Tensor  # (B,) int64


class StoreLoader:
    def __init__(
        self,
        store: FeatureStore,
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        shuffle_window: int = 2,
        prefetch: int = 2,
        read_tokens: bool = True,
        read_lare: bool = True,
    ) -> None:
        order = np.argsort(rows, kind="stable")
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)[order]
        self.labels = np.asarray(labels, dtype=np.int64)[order]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_window = shuffle_window
        self.prefetch = prefetch
        # Kept for callers that report it: non-finite rows now raise, so it stays 0.
        self.skipped_nonfinite = 0
        # Tokens are 97% of the bytes: heads that only use the CLS embedding skip them.
        self.read_tokens = read_tokens
        self.read_lare = read_lare
        shard_of = self.rows // store.shard_rows
        self._by_shard = {int(s): np.flatnonzero(shard_of == s) for s in np.unique(shard_of)}

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def _read(self, name: str, wanted: bool, rows: np.ndarray) -> np.ndarray:
        """One array's values for rows of one shard (an empty placeholder when not wanted)."""
        if not wanted:
            return np.zeros((len(rows), 0), dtype=np.float32)
        start, stop = int(rows.min()), int(rows.max()) + 1
        values = self.store.read(name, start, stop)[rows - start]
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            row = int(rows[np.flatnonzero(~finite)[0]])
            raise StoreError(
                f"{self.store.path}: array {name}, row {row} (shard {row // self.store.shard_rows}) "
                "holds NaN or inf although the manifest calls it ok (a missing or damaged shard "
                f"file); {self.store.repair_advice()}"
            )
        return values

    def _read_window(self, shards: list[int]) -> _Parts:
        parts: list[list[np.ndarray]] = [[], [], [], [], []]
        for shard in shards:
            picks = self._by_shard[shard]
            rows = self.rows[picks]
            values = (rows, self.labels[picks], self._read("cls", True, rows),
                      self._read("tokens", self.read_tokens, rows),
                      self._read("lare", self.read_lare, rows))
            for bucket, value in zip(parts, values, strict=True):
                bucket.append(value)
        rows, labels, cls, tokens, lare = (np.concatenate(bucket) for bucket in parts)
        return rows, labels, cls, tokens, lare

    def _windows(self, rng: np.random.Generator) -> Iterator[_Parts]:
        """The shard windows of one epoch, each with its rows shuffled (when shuffling)."""
        shards = sorted(self._by_shard)
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        for start in range(0, len(shards), self.shuffle_window):
            window = self._read_window(shards[start : start + self.shuffle_window])
            if self.shuffle:
                perm = rng.permutation(len(window[0]))
                window = _take(window, perm)
            yield window

    def _batches(self, epoch: int) -> Iterator[Batch]:
        buffer: _Parts | None = None
        for window in self._windows(np.random.default_rng([self.seed, epoch])):
            buffer = window if buffer is None else _join(buffer, window)
            while len(buffer[0]) >= self.batch_size:
                yield self._make_batch(_take(buffer, slice(0, self.batch_size)))
                buffer = _take(buffer, slice(self.batch_size, None))
        if buffer is not None and len(buffer[0]):
            yield self._make_batch(buffer)

    def _make_batch(self, parts: _Parts) -> Batch:
        rows, labels, cls, tokens, lare = parts

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

        return Batch(
            rows=rows,
            cls=tensor(cls),
            tokens=tensor(tokens) if self.read_tokens else None,
            lare=tensor(lare) if self.read_lare else None,
            label=torch.from_numpy(labels.astype(np.int64)),
        )

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Batches of one epoch, skipping the first `skip` (used on resume mid-epoch)."""
        source = self._batches(epoch)
        if self.prefetch <= 0:
            for number, batch in enumerate(source):
                if number >= skip:
                    yield batch
            return
        yield from _prefetched(source, self.prefetch, skip)


def _take(parts: _Parts, pick: np.ndarray | slice) -> _Parts:
    rows, labels, cls, tokens, lare = (part[pick] for part in parts)
    return rows, labels, cls, tokens, lare


def _join(first: _Parts, second: _Parts) -> _Parts:
    rows, labels, cls, tokens, lare = (np.concatenate(pair) for pair in zip(first, second, strict=True))
    return rows, labels, cls, tokens, lare


def _prefetched(source: Iterator[Batch], depth: int, skip: int) -> Iterator[Batch]:
    """Run `source` in a thread, `depth` batches ahead; errors are re-raised in the caller."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for number, batch in enumerate(source):
                if stop.is_set():
                    return
                if number >= skip:
                    box.put(batch)
            box.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            box.put(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
