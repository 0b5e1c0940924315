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
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from clare.cache.store import FeatureStore
from clare.errors import StoreError


@dataclass
class Batch:
    rows: np.ndarray  # store rows, int64
    cls: torch.Tensor  # (B, E) float32
    tokens: torch.Tensor | None  # (B, P, W) float16 as stored; None when the head does not use them
    lare: torch.Tensor | None  # (B, 4, h, w) float32; None when the head does not use it
    label: torch.Tensor  # (B,) int64


# The arrays a batch may carry, in Batch order after rows and labels.
_ARRAYS = ("cls", "tokens", "lare")


# A window's values of one array: a buffer of lines, or one read-only row per line (rows used in
# place from the mapped shard files, `FeatureStore.mapped_rows`).
_Values = np.ndarray | list[np.ndarray]


@dataclass
class _Window:
    """The selected lines of a window of shards: rows and labels in shard order (a line per
    selected row, repeated rows repeated) and each wanted array's values.

    Read from the store, `values` hold one line each (`index` None, the window owns them);
    from a RowCache, `values` are the cache's arrays and `index` says where each line is."""

    rows: np.ndarray
    labels: np.ndarray
    values: Mapping[str, _Values]
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def own(self) -> bool:
        return self.index is None

    def positions(self, lines: np.ndarray) -> np.ndarray:
        return lines if self.index is None else self.index[lines]


def _gather(values: _Values, positions: np.ndarray, out: np.ndarray) -> None:
    """Copy lines `positions` of `values` into `out`, in order: one copy per byte."""
    if isinstance(values, np.ndarray):
        np.take(values, positions, axis=0, out=out)
        return
    for slot, position in enumerate(positions.tolist()):
        out[slot] = values[position]


class RowCache:
    """The selected rows of a store held in RAM (`fit.cache: ram`), read once, shard by shard.

    Every later epoch gathers from memory: no decode, no checksum, one copy per byte. Values
    keep the store's dtypes (tokens float16), so the RAM needed is the rows' bytes on disk
    uncompressed: `RowCache.bytes_needed`.
    """

    def __init__(self, store: FeatureStore, rows: np.ndarray, names: list[str]) -> None:
        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        reader = StoreLoader(store, self.rows, np.zeros(len(self.rows), dtype=np.int64),
                             batch_size=max(len(self.rows), 1), seed=0, shuffle=False,
                             shuffle_window=1, prefetch=0, read_tokens="tokens" in names,
                             read_lare="lare" in names)
        self.values = {name: np.empty((len(self.rows), *store.row_shape(name)), store.dtype(name))
                       for name in reader.names}
        for window, _perm in reader._plan(0):
            got = reader._read_window(window)
            # Unique sorted rows read in order: a window is one run of the cache.
            start = int(np.searchsorted(self.rows, got.rows[0]))
            for name, values in got.values.items():
                _gather(values, np.arange(len(got)), self.values[name][start : start + len(got)])

    @staticmethod
    def bytes_needed(store: FeatureStore, rows: np.ndarray, names: list[str]) -> int:
        per_row = sum(int(np.prod(store.row_shape(n))) * store.dtype(n).itemsize for n in names)
        return per_row * len(np.unique(rows))

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Where each of `rows` (all cached) is in `values`."""
        return np.searchsorted(self.rows, rows)


class StoreLoader:
    """Batches of selected store rows (repeats allowed: an entry list), one epoch at a time.

    Tokens (97% of the bytes, stored uncompressed) are used in place from the mapped shard
    files, their checksums checked by the thread that reads ahead, so each of their bytes is
    copied once, into its batch, as a memmap read would; cls and lare are decoded into the
    window's buffer first (no copy at all when a window is read in order and a batch is a
    slice of it). Tokens stay float16 until the device (`clare.scoring.to_device` casts them
    there), so the host moves half the bytes.
    """

    def __init__(
        self,
        store: FeatureStore,
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        shuffle_window: int = 4,
        prefetch: int = 2,
        read_tokens: bool = True,
        read_lare: bool = True,
        pin_memory: bool = False,
        cache: RowCache | None = None,
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
        wanted = {"cls": True, "tokens": read_tokens, "lare": read_lare}
        self.read_tokens = read_tokens
        self.read_lare = read_lare
        self.names = [name for name in _ARRAYS if wanted[name]]
        # Page-locked batches let a CUDA copy run asynchronously (`non_blocking=True`).
        self.pin_memory = pin_memory
        self.cache = cache
        # Rows are sorted, so each shard's rows are one run of positions.
        shards, starts = np.unique(self.rows // store.shard_rows, return_index=True)
        stops = np.append(starts[1:], len(self.rows))
        self._by_shard = {int(s): np.arange(a, b) for s, a, b in zip(shards, starts, stops, strict=True)}

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def _check_finite(self, name: str, values: np.ndarray, rows: np.ndarray) -> None:
        """A row the manifest calls ok but that reads back as fill value (NaN) lost its file.

        Damage inside a file fails its crc32c on read; a missing shard file or inner chunk
        reads back as NaN in every value, so the first value of each row tells."""
        first = values.reshape(len(values), -1)[:, 0]
        finite = np.isfinite(first)
        if not finite.all():
            row = int(rows[np.flatnonzero(~finite)[0]])
            raise StoreError(
                f"{self.store.path}: array {name}, row {row} (shard {row // self.store.shard_rows}) "
                "holds NaN or inf although the manifest calls it ok (a missing or damaged shard "
                f"file); {self.store.repair_advice()}"
            )

    def _read_shard(self, name: str, rows: np.ndarray, out: np.ndarray) -> None:
        """One array's values for the (sorted) selected rows of one shard, into `out`."""
        start, stop = int(rows[0]), int(rows[-1]) + 1
        # Every row once, in order: decode straight into out. (A count equal to the span is not
        # enough: rows 0, 0, 1, 3 span four rows too.)
        if len(rows) == stop - start and bool((np.diff(rows) == 1).all()):
            self.store.read_into(name, start, stop, out)
        else:
            np.take(self.store.read(name, start, stop), rows - start, axis=0, out=out)
        self._check_finite(name, out, rows)

    def _read_window(self, shards: list[int]) -> _Window:
        picks = np.concatenate([self._by_shard[shard] for shard in shards])
        rows, labels = self.rows[picks], self.labels[picks]
        if self.cache is not None:  # batches gather straight from the cache: one copy
            return _Window(rows, labels, self.cache.values, self.cache.positions(rows))
        values: dict[str, _Values] = {}
        for name in self.names:
            values[name] = (self._map_array(name, shards, rows)
                            or self._decode_array(name, shards, rows))
        return _Window(rows, labels, values)

    def _map_array(self, name: str, shards: list[int], rows: np.ndarray) -> list[np.ndarray]:
        """The window's rows of an uncompressed array used in place (checksums checked here,
        in the reading thread); [] when one shard cannot be (it is then decoded, and a
        damaged one named, by `_decode_array`). Mapped rows need no NaN check: a missing
        shard file or chunk is never mapped."""
        lines: list[np.ndarray] = []
        for lines_of_shard in self._shard_lines(shards):
            mapped = self.store.mapped_rows(name, rows[lines_of_shard])
            if mapped is None:
                return []
            lines.extend(mapped)
        return lines

    def _decode_array(self, name: str, shards: list[int], rows: np.ndarray) -> np.ndarray:
        """The window's rows of one array decoded by zarr into a buffer the window owns."""
        buffer = np.empty((len(rows), *self.store.row_shape(name)), dtype=self.store.dtype(name))
        for lines_of_shard in self._shard_lines(shards):
            self._read_shard(name, rows[lines_of_shard], buffer[lines_of_shard])
        return buffer

    def _shard_lines(self, shards: list[int]) -> Iterator[slice]:
        """The lines of a window (its shards' selected rows, in shard order) of each shard."""
        at = 0
        for shard in shards:
            count = len(self._by_shard[shard])
            yield slice(at, at + count)
            at += count

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
            if not self.shuffle:
                yield window, None
                continue
            rows = np.concatenate([self.rows[self._by_shard[shard]] for shard in window])
            yield window, _spread_permutation(rows, rng)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Every store row of one epoch in the order its batches hold them (no array is read):
        batch k is `epoch_rows(epoch)[k * batch_size : (k + 1) * batch_size]`."""
        parts = []
        for window, perm in self._plan(epoch):
            rows = np.concatenate([self.rows[self._by_shard[shard]] for shard in window])
            parts.append(rows if perm is None else rows[perm])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _windows(self, epoch: int) -> Iterator[tuple[_Window, np.ndarray | None]]:
        """The epoch's windows, read, each with its order; the next window is read in a
        thread while the caller cuts batches from this one (the codecs release the GIL)."""
        plan = list(self._plan(epoch))
        if not plan:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clare-window") as pool:
            ahead = pool.submit(self._read_window, plan[0][0])
            for number, (_shards, perm) in enumerate(plan):
                window = ahead.result()
                if number + 1 < len(plan):
                    ahead = pool.submit(self._read_window, plan[number + 1][0])
                yield window, perm

    def _batches(self, epoch: int) -> Iterator[Batch]:
        """Cut batches from the windows in plan order; a batch may span two windows."""
        carry: list[tuple[_Window, np.ndarray]] = []  # (window, its lines still to batch)
        carried = 0
        for window, perm in self._windows(epoch):
            lines = np.arange(len(window)) if perm is None else perm
            while carried + len(lines) >= self.batch_size:
                need = self.batch_size - carried
                yield self._make_batch([*carry, (window, lines[:need])])
                carry, carried, lines = [], 0, lines[need:]
            if len(lines):
                carry.append((window, lines))
                carried += len(lines)
        if carried:
            yield self._make_batch(carry)

    def _make_batch(self, parts: list[tuple[_Window, np.ndarray]]) -> Batch:
        """Gather a batch's lines from one or two windows (a view when they are a run)."""
        size = sum(len(lines) for _, lines in parts)
        rows = np.concatenate([window.rows[lines] for window, lines in parts])
        labels = np.concatenate([window.labels[lines] for window, lines in parts])
        tensors: dict[str, torch.Tensor] = {}
        for name in self.names:
            first_window, first_lines = parts[0]
            first = first_window.values[name]
            run = _as_run(first_lines)
            if (len(parts) == 1 and run is not None and not self.pin_memory and first_window.own
                    and isinstance(first, np.ndarray)):
                tensors[name] = torch.from_numpy(first[run])
                continue
            shape, dtype = (size, *self.store.row_shape(name)), self.store.dtype(name)
            # numpy's allocations are backed by transparent huge pages where the kernel offers
            # them (torch's are not): first-touch page faults cost as much as the copy itself.
            out = (torch.empty(shape, dtype=_TORCH_DTYPES[dtype.name], pin_memory=True)
                   if self.pin_memory else torch.from_numpy(np.empty(shape, dtype=dtype)))
            target, at = out.numpy(), 0
            for window, lines in parts:
                _gather(window.values[name], window.positions(lines), target[at : at + len(lines)])
                at += len(lines)
            tensors[name] = out
        return Batch(rows=rows, cls=tensors["cls"], tokens=tensors.get("tokens"),
                     lare=tensors.get("lare"), label=torch.from_numpy(labels.astype(np.int64)))

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Batches of one epoch, skipping the first `skip` (used on resume mid-epoch)."""
        source = self._batches(epoch)
        if self.prefetch <= 0:
            for number, batch in enumerate(source):
                if number >= skip:
                    yield batch
            return
        yield from _prefetched(source, self.prefetch, skip)


_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _as_run(lines: np.ndarray) -> slice | None:
    """lines as a slice when they are consecutive and increasing, else None."""
    if len(lines) and lines[-1] - lines[0] == len(lines) - 1 and (
            len(lines) < 2 or bool((np.diff(lines) == 1).all())):
        return slice(int(lines[0]), int(lines[-1]) + 1)
    return None


@dataclass
class BatchMixing:
    """How well one epoch's batches mix classes and videos."""

    batches: int
    single_class_fraction: float  # batches holding one class only
    median_videos: float  # distinct videos in a batch, median over batches
    min_videos: int


def by_row(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """`values` (one per line of an entry list) as an array indexed by store row, the form
    `batch_mixing` reads; the entries of one row must agree (label, video folder)."""
    out = np.zeros(n_rows, dtype=np.asarray(values).dtype)
    out[np.asarray(rows)] = values
    return out


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


def _spread_permutation(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of a window's rows in which the copies of a row are evenly spread.

    A row listed k times (a real frame DF40 lists under k methods) gets one copy in each k-th
    of the window, at a random place in it, instead of k random places that may share a
    batch; rows listed once are placed uniformly. Without copies this is a plain shuffle.
    """
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    order = rng.permutation(len(rows))
    # The rank of each copy among its row's copies, in a random order of the copies.
    by_row = order[np.argsort(inverse[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(rows), dtype=np.int64)
    rank[by_row] = np.arange(len(rows)) - np.repeat(starts, counts)
    key = (rank + rng.random(len(rows))) / counts[inverse]
    return np.argsort(key, kind="stable")


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
