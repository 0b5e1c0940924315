"""Batches for stage two, read from a FeatureStore shard by shard, never the whole store.

Order of an epoch, fully determined by (seed, epoch): the shards holding the selected rows are
shuffled; each window of `shuffle_window` shards is read as contiguous slices, its rows are
shuffled together, and batches are cut from a running buffer so that every batch but the last
is full. A background thread reads ahead (`prefetch` batches); it changes timing, not order.

Rows whose features are not finite are dropped and counted (`skipped_nonfinite`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clare.cache.store import FeatureStore


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
        self.skipped_nonfinite = 0
        # Tokens are 97% of the bytes: heads that only use the CLS embedding skip them.
        self.read_tokens = read_tokens
        self.read_lare = read_lare
        shard_of = self.rows // store.shard_rows
        self._by_shard = {int(s): np.flatnonzero(shard_of == s) for s in np.unique(shard_of)}

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def _read_window(self, shards: list[int]) -> tuple[np.ndarray, ...]:
        rows, labels, cls, tokens, lare = [], [], [], [], []
        for shard in shards:
            picks = self._by_shard[shard]
            shard_rows = self.rows[picks]
            start, stop = int(shard_rows.min()), int(shard_rows.max()) + 1
            local = shard_rows - start
            rows.append(shard_rows)
            labels.append(self.labels[picks])
            cls.append(self.store.read("cls", start, stop)[local])
            if self.read_tokens:
                tokens.append(self.store.read("tokens", start, stop)[local])
            else:
                tokens.append(np.zeros((len(local), 0), dtype=np.float16))
            if self.read_lare:
                lare.append(self.store.read("lare", start, stop)[local])
            else:
                lare.append(np.zeros((len(local), 0), dtype=np.float32))
        return tuple(np.concatenate(part) for part in (rows, labels, cls, tokens, lare))

    def _batches(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        shards = sorted(self._by_shard)
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        buffer: list[np.ndarray] | None = None
        for start in range(0, len(shards), self.shuffle_window):
            window = self._read_window(shards[start : start + self.shuffle_window])
            finite = (
                np.isfinite(window[2]).all(axis=1)
                & np.isfinite(window[3].reshape(len(window[0]), -1)).all(axis=1)
                & np.isfinite(window[4].reshape(len(window[0]), -1)).all(axis=1)
            )
            self.skipped_nonfinite += int((~finite).sum())
            window = tuple(part[finite] for part in window)
            if self.shuffle:
                perm = rng.permutation(len(window[0]))
                window = tuple(part[perm] for part in window)
            buffer = list(window) if buffer is None else [np.concatenate(p) for p in zip(buffer, window, strict=True)]
            while len(buffer[0]) >= self.batch_size:
                yield self._make_batch([part[: self.batch_size] for part in buffer])
                buffer = [part[self.batch_size :] for part in buffer]
        if buffer is not None and len(buffer[0]):
            yield self._make_batch(buffer)

    def _make_batch(self, parts: list[np.ndarray]) -> Batch:
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
        self.skipped_nonfinite = 0
        source = self._batches(epoch)
        if self.prefetch <= 0:
            for number, batch in enumerate(source):
                if number >= skip:
                    yield batch
            return
        yield from _prefetched(source, self.prefetch, skip)


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
