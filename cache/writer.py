"""Writing a FeatureStore: creating it, extending it, committing shards, finishing it.

The layout and the rules a reader checks are `clare.cache.store`'s; this module is the one
place that writes a store's files. One process writes a store at a time (`StoreWriter.lock`);
extract's workers each write only the shards they own, whose files no other shard shares.

    create_store / open_or_create   a new store for a layout, or the one to extend (extract)
    StoreWriter.write_shard         one shard's arrays, then its manifest part, then its marker
    StoreWriter.finalize            the parts joined into manifest.parquet, store.json complete

A shard's marker records, beside the sha256 of each of its files, the crc32c zarr stored for
each of its rows (`chunk_crc32c`): readers compare the rows they read against it, so a shard
file swapped for another shard's valid bytes is refused on read (`FeatureStore.recorded_crcs`).
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clare import fingerprint as fp
from clare.cache.entries import ENTRY_COLUMNS, StoreLayout, rows_digest
from clare.cache.mapped import chunk_checksums
from clare.cache.meta import FORMAT
from clare.cache.store import (
    ARRAYS,
    DTYPES,
    MANIFEST_COLUMNS,
    FeatureStore,
    has_checksum,
)
from clare.config import Config
from clare.errors import StoreError, one_line
from clare.files import (
    atomic_write_json,
    atomic_write_parquet,
    file_sha256,
    open_lock_file,
    pid_lock,
)

TOKENS_SHARD_BYTES = 64 * 2**20
# Arrays stored without compression: fp16 CLIP tokens are 97% of a row's bytes and lz4 saved
# only 7% of them while taking most of a read's CPU time (BENCHMARKS.md section 2).
UNCOMPRESSED = frozenset({"tokens"})


class StoreReadOnlyError(StoreError):
    """The store cannot be written (permissions or a read-only file system)."""


def default_shard_rows(tokens: int, width: int) -> int:
    """About 64 MB of float16 tokens per shard (128 rows for ViT-L/14's 256 x 1024)."""
    return max(1, TOKENS_SHARD_BYTES // (tokens * width * 2))


def shard_index_digests(rows: pd.DataFrame, shard_rows: int) -> list[str]:
    """rows_digest of each shard's slice of the rows."""
    return [rows_digest(rows.iloc[start : start + shard_rows])
            for start in range(0, len(rows), shard_rows)]


def array_codecs(name: str, *, checksum: bool = True,
                 uncompressed: frozenset[str] = UNCOMPRESSED) -> tuple[Any, ...]:
    """Bytes codecs of every inner chunk of array `name`: lz4 with byte shuffle (none for the
    tokens), then crc32c.

    crc32c is checked before decompression, so a flipped bit anywhere in a row fails that
    row's read. `checksum=False` and `uncompressed` exist for bench_store, which measures what
    they cost.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    codecs: tuple[Any, ...] = () if name in uncompressed else (
        BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    return (*codecs, Crc32cCodec()) if checksum else codecs


def one_entry_per_row(rows: pd.DataFrame) -> pd.DataFrame:
    """Entries for a store written without a list (benchmarks): one per view-0 row."""
    first = rows[rows["view"].astype(int) == 0].reset_index(drop=True)
    views = max(len(rows) // max(len(first), 1), 1)
    return pd.DataFrame({
        "entry": np.arange(len(first), dtype=np.int64), "path": first["path"].astype(str),
        "subset": first["subset"].astype(str) if "subset" in first else "",
        "label": first["label"].astype(np.int8),
        "video": first["video"].astype(str) if "video" in first else first["path"].astype(str),
        "frame": first["frame"].astype(np.int32) if "frame" in first else 0,
        "image": first["row"].to_numpy(dtype=np.int64) // views if "row" in first
        else np.arange(len(first), dtype=np.int64),
    })


@contextmanager
def writable(path: Path) -> Iterator[None]:
    """A read-only store (permissions or file system) is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise StoreReadOnlyError(
            f"{path}: cannot write to the store ({os.strerror(exc.errno)}); make it writable, "
            "or point paths.stores at a writable folder"
        ) from None


class StoreWriter:
    """The writes to one store; `store` reads it (and sees what was written)."""

    def __init__(self, store: FeatureStore | Path | str) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)

    @property
    def path(self) -> Path:
        return self.store.path

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        n_rows: int,
        shapes: dict[str, tuple[int, ...]],
        shard_rows: int,
        meta: dict[str, Any],
        index: pd.DataFrame | None = None,
        entries: pd.DataFrame | None = None,
        checksum: bool = True,
        uncompressed: frozenset[str] = UNCOMPRESSED,
    ) -> StoreWriter:
        """Pre-allocate every array to n_rows (filled with NaN), write entries and store.json.

        `index` (the rows' path, label and view, in order) fixes which rows each shard must
        hold, `entries` the listed frames that point at them (one per row when None); stores
        built by `clare extract` always pass both.
        """
        import zarr

        if n_rows < 1:
            raise StoreError(f"{path}: cannot create an empty store (0 rows)")
        if index is not None and len(index) != n_rows:
            raise ValueError(f"index has {len(index)} rows, the store {n_rows}")
        writer = cls(path)
        store = writer.store
        with writable(store.path):
            store.path.mkdir(parents=True, exist_ok=True)
            # Leftovers of a store whose store.json is gone (an interrupted --overwrite) must
            # not pass for finished shards of this one.
            store.manifest_path.unlink(missing_ok=True)
            if store.shards_dir.is_dir():
                shutil.rmtree(store.shards_dir)
            store.shards_dir.mkdir()
            group = zarr.open_group(store.zarr_path, mode="w", zarr_format=3)
            for name in ARRAYS:
                group.create_array(
                    name,
                    shape=(n_rows, *shapes[name]),
                    chunks=(1, *shapes[name]),
                    shards=(shard_rows, *shapes[name]),
                    dtype=DTYPES[name],
                    fill_value=np.nan,
                    compressors=array_codecs(name, checksum=checksum, uncompressed=uncompressed),
                )
        store.reset({
            **meta,
            "format": FORMAT,
            "n_rows": n_rows,
            "shard_rows": shard_rows,
            "shapes": {k: list(v) for k, v in shapes.items()},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "shards": {"total": -(-n_rows // shard_rows), "completed": [], "state": "incomplete"},
        })
        if index is not None:
            store.meta["index_shards_sha256"] = shard_index_digests(index, shard_rows)
            writer.write_entries(entries if entries is not None else one_entry_per_row(index))
        writer.save_meta()
        return writer

    def save_meta(self) -> None:
        with writable(self.path):
            atomic_write_json(self.store.meta_path, self.store.meta)

    def write_entries(self, entries: pd.DataFrame) -> None:
        """Write entries.parquet and record its sha256 in store.json."""
        with writable(self.path):
            atomic_write_parquet(self.store.entries_path, entries[list(ENTRY_COLUMNS)])
        self.store.meta["entries_sha256"] = file_sha256(self.store.entries_path)
        self.save_meta()

    def destroy(self) -> None:
        """Delete the store's contents for --overwrite, but not `.lock`.

        The lock file stays so that the writer holding it keeps excluding every other writer:
        deleting it would let a second extract lock a fresh file and write the same store.
        store.json goes first, so an interrupted delete leaves no half-store that looks valid.
        """
        store = self.store
        if not store.path.is_dir():
            return
        with writable(store.path):
            store.meta_path.unlink(missing_ok=True)
            for entry in store.path.iterdir():
                if entry.name == store.lock_path.name:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        store.reset()

    # ------------------------------------------------------------------ shards
    def write_shard(self, index: int, arrays: dict[str, np.ndarray], manifest: pd.DataFrame) -> dict:
        """Write one whole shard: one assignment per array, then its manifest part and marker."""
        store = self.store
        start, stop = store.shard_bounds(index)
        if len(manifest) != stop - start or list(manifest["row"]) != list(range(start, stop)):
            raise StoreError(f"{store.path}: manifest rows of shard {index} do not match {start}..{stop}")
        problem = store.index_problem(index, manifest)
        if problem:
            raise StoreError(f"{store.path}: shard {index}: {problem}; rebuild with `{store.rebuild_command()}`")
        store.marker_path(index).unlink(missing_ok=True)
        # Zarr merges a write into an existing shard file by reading it first; a damaged file
        # (the reason a shard is redone) would make that read fail, so start from none.
        for path in store.shard_files(index).values():
            path.unlink(missing_ok=True)
        for name in ARRAYS:
            store.array(name, write=True)[start:stop] = arrays[name]
        # Zarr writes no file for a shard that is all fill value (every row failed): None.
        files = store.shard_files(index)
        checksums = {name: file_sha256(path) if path.is_file() else None
                     for name, path in files.items()}
        atomic_write_parquet(store.part_path(index), manifest[list(MANIFEST_COLUMNS)])
        failed = int((manifest["status"] != "ok").sum())
        marker = {"shard": index, "rows": [start, stop], "checksums": checksums,
                  "chunk_crc32c": {name: self._row_checksums(name, path, stop - start)
                                   for name, path in files.items()},
                  "manifest_sha256": file_sha256(store.part_path(index)),
                  "fingerprint_sha256": store.fingerprint_sha256,
                  "ok": int(len(manifest) - failed), "failed": failed}
        atomic_write_json(store.marker_path(index), marker)
        return marker

    def _row_checksums(self, name: str, path: Path, rows: int) -> list[int | None] | None:
        """The crc32c of each row's chunk in the shard file just written (None for a row zarr
        wrote no chunk for); None when the array's chunks carry no crc32c (bench_store)."""
        if not has_checksum(self.store.array(name)):
            return None
        if not path.is_file():
            return [None] * rows
        found = chunk_checksums(path, self.store.shard_rows)
        if found is None:
            raise StoreError(f"{path}: the shard file just written cannot be read back; "
                             "rerun the same `clare extract` command")
        return found[:rows]

    def invalidate_shard(self, index: int) -> None:
        with writable(self.path):
            self.store.marker_path(index).unlink(missing_ok=True)

    def drop_unsound_shards(self) -> dict[int, str]:
        """Mark undone every finished shard whose marker or manifest part fails check_part.

        Cheap (markers and parts only, no array bytes): a resumed extract runs it so that a
        shard copied in from another store, or edited in place, is recomputed, not kept.
        """
        store = self.store
        dropped = {}
        for index in sorted(store.completed_shards()):
            problem = ("beyond the store's rows" if index >= store.n_shards
                       else store.check_part(index).problem)
            if problem:
                self.invalidate_shard(index)
                dropped[index] = problem
        return dropped

    def remove_partials(self) -> int:
        """Delete orphaned temporary files of interrupted writes (Zarr's and ours)."""
        removed = 0
        for path in self.path.rglob("*.partial"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def record_progress(self) -> None:
        """Refresh the completion state in store.json (driver only: one writer of store.json)."""
        self.store.meta["shards"]["completed"] = sorted(self.store.completed_shards())
        self.save_meta()

    def finalize(self, extra: dict[str, Any] | None = None) -> pd.DataFrame:
        """Join the shard manifests into manifest.parquet once every shard is done.

        Every part is checked against its marker and the index first; a bad one loses its
        marker (so the same extract redoes it) and nothing is written from it.
        """
        store = self.store
        missing = sorted(set(range(store.n_shards)) - store.completed_shards())
        if missing:
            raise StoreError(f"{store.path}: shards {missing[:5]} are not written; rerun extract")
        parts = []
        for index in range(store.n_shards):
            checked = store.check_part(index)
            if checked.problem:
                self.invalidate_shard(index)
                raise StoreError(
                    f"{store.path}: shard {index}: {checked.problem}; it is marked for recomputation: "
                    "rerun the same `clare extract` command"
                )
            parts.append(checked.part)
        manifest = pd.concat(parts, ignore_index=True)
        problem = store.index_mismatch(manifest)
        if problem:
            raise StoreError(f"{store.path}: {problem}; rebuild with `{store.rebuild_command()}`")
        with writable(store.path):
            atomic_write_parquet(store.manifest_path, manifest)
        meta = store.meta
        meta["manifest_sha256"] = file_sha256(store.manifest_path)
        meta["shards"] = {"total": store.n_shards, "completed": list(range(store.n_shards)),
                          "state": "complete"}
        meta["counts"] = {
            "rows": int(len(manifest)),
            "ok": int((manifest["status"] == "ok").sum()),
            "failed": int((manifest["status"] != "ok").sum()),
        }
        meta.update(extra or {})
        self.save_meta()
        return manifest

    # ------------------------------------------------------------------ locking
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; released by the kernel if the process dies."""
        with writable(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open_lock_file(self.store.lock_path, StoreError)  # held open for the whole block

        def held(holder: str) -> StoreError:
            return StoreError(f"{self.path}: another extract is writing this store (pid {holder}); "
                              "wait for it to finish or stop it")

        with pid_lock(handle, held):
            yield


# --------------------------------------------------------------------------- a store for a layout


def store_meta(cfg: Config, *, split: str, layout: StoreLayout,
               perturb: str | None) -> dict[str, Any]:
    """What store.json records beside the fingerprint, for a store laid out as `layout`."""
    return {"split": split, "views": layout.views, "n_images": layout.n_images,
            "n_entries": len(layout.entries), "perturb": perturb,
            # In index (config) order: reports list subsets in this order.
            "subsets": [str(s) for s in pd.unique(layout.entries["subset"])],
            "libraries": {"torch": torch.__version__},
            "cpu_threads": cfg.extract.cpu_threads}


def create_store(path: Path, layout: StoreLayout, fingerprint: dict[str, Any], *,
                 shapes: dict[str, tuple[int, ...]], shard_rows: int | None,
                 meta: dict[str, Any]) -> StoreWriter:
    """A new, empty store laid out as `layout` (its rows and entries), recording its fingerprint;
    `shard_rows` None: about 64 MB of tokens per shard."""
    return StoreWriter.create(
        path, n_rows=len(layout.rows), shapes=shapes,
        shard_rows=shard_rows or default_shard_rows(*shapes["tokens"]), index=layout.rows,
        entries=layout.entries,
        meta={"fingerprint": fingerprint, "fingerprint_sha256": fp.digest(fingerprint), **meta},
    )


def open_or_create(path: Path, layout: StoreLayout, fingerprint: dict[str, Any], *,
                   shapes: Callable[[], dict[str, tuple[int, ...]]], shard_rows: int | None,
                   meta: dict[str, Any], overwrite: bool,
                   notify: Callable[[str], None]) -> StoreWriter:
    """The store to extend (same settings, unsound shards dropped) or a new one; call it under
    the store's lock. `shapes` is called only for a new store (it may load a model); `notify`
    gets a plain-text line for each thing repaired."""
    writer = StoreWriter(path)
    store = writer.store
    if store.exists() and overwrite:
        writer.destroy()
    if not store.exists():
        return create_store(path, layout, fingerprint, shapes=shapes(), shard_rows=shard_rows,
                            meta=meta)
    fp.require_match(store.meta.get("fingerprint") or {}, fingerprint, fp.STORE,
                     expected_name=f"store {path}", actual_name="this extraction's settings",
                     fix="use --overwrite to rebuild it or another paths.stores")
    removed = writer.remove_partials()
    if removed:
        notify(f"removed {removed} orphaned *.partial file(s) of an interrupted write")
    # The index matches the fingerprint, so it, not store.json, says which rows each shard holds.
    expected = shard_index_digests(layout.rows, store.shard_rows)
    if store.meta.get("index_shards_sha256") != expected:
        notify(f"{path}: store.json's shard digests differ from the index; restored from the index")
        store.meta["index_shards_sha256"] = expected
        writer.save_meta()
    restore_entries(writer, layout, notify)
    for index, problem in writer.drop_unsound_shards().items():
        notify(f"shard {index} is not sound ({problem}); recomputing it")
    return writer


def restore_entries(writer: StoreWriter, layout: StoreLayout, notify: Callable[[str], None]) -> None:
    """entries.parquet follows from the index the fingerprint matched: rewrite it if lost."""
    try:
        writer.store.entries()
        return
    except StoreError as exc:
        notify(f"{one_line(exc, 160)}; rewritten from the index")
    writer.write_entries(layout.entries)
