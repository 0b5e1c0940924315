"""Batches for stage two, read from a FeatureStore shard by shard, never the whole store.

Order of an epoch, fully determined by (seed, epoch): the shards holding the selected rows are
shuffled; each window of `shuffle_window` shards is read as contiguous slices, its rows are
shuffled together, and batches are cut from a running buffer so that every batch but the last
is full. A background thread reads ahead (`prefetch` batches); it changes timing, not order.
`epoch_rows` gives that order without reading a byte (for checks such as `batch_mixing`).

Batches mix well only when every shard is a random sample of the split: extraction writes
the images in a seeded permutation for that reason (`clare.cache.store.image_write_order`).

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
        # Rows are sorted, so each shard's rows are one run of positions.
        shards, starts = np.unique(self.rows // store.shard_rows, return_index=True)
        stops = np.append(starts[1:], len(self.rows))
        self._by_shard = {int(s): np.arange(a, b) for s, a, b in zip(shards, starts, stops, strict=True)}

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

    def _plan(self, epoch: int) -> Iterator[tuple[list[int], np.ndarray | None]]:
        """The shard windows of one epoch and the order of each window's rows, read nothing.

        A window's rows are its shards' selected rows in shard order; the permutation (None
        when not shuffling) reorders them."""
        rng = np.random.default_rng([self.seed, epoch])
        shards = sorted(self._by_shard)
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        for start in range(0, len(shards), self.shuffle_window):
            window = shards[start : start + self.shuffle_window]
            size = sum(len(self._by_shard[shard]) for shard in window)
            yield window, rng.permutation(size) if self.shuffle else None

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Every store row of one epoch in the order its batches hold them (no array is read):
        batch k is `epoch_rows(epoch)[k * batch_size : (k + 1) * batch_size]`."""
        parts = []
        for window, perm in self._plan(epoch):
            rows = np.concatenate([self.rows[self._by_shard[shard]] for shard in window])
            parts.append(rows if perm is None else rows[perm])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _windows(self, epoch: int) -> Iterator[_Parts]:
        """The shard windows of one epoch, read, each with its rows in the plan's order."""
        for shards, perm in self._plan(epoch):
            window = self._read_window(shards)
            yield window if perm is None else _take(window, perm)

    def _batches(self, epoch: int) -> Iterator[Batch]:
        buffer: _Parts | None = None
        for window in self._windows(epoch):
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


@dataclass
class BatchMixing:
    """How well one epoch's batches mix classes and videos."""

    batches: int
    single_class_fraction: float  # batches holding one class only
    median_videos: float  # distinct videos in a batch, median over batches
    min_videos: int


def batch_mixing(loader: StoreLoader, epoch: int, label_of_row: np.ndarray,
                 video_of_row: np.ndarray) -> BatchMixing:
    """Mixing of the batches `loader` yields in `epoch`, from its order alone (nothing is read).

    `label_of_row` and `video_of_row` (integer codes) are indexed by store row."""
    rows = loader.epoch_rows(epoch)
    single = 0
    videos: list[int] = []
    for start in range(0, len(rows), loader.batch_size):
        batch = rows[start : start + loader.batch_size]
        single += int(len(np.unique(label_of_row[batch])) == 1)
        videos.append(len(np.unique(video_of_row[batch])))
    count = len(videos)
    return BatchMixing(batches=count, single_class_fraction=single / count if count else 0.0,
                       median_videos=float(np.median(videos)) if count else 0.0,
                       min_videos=min(videos, default=0))


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
