"""FeatureStore: sharded Zarr v3 arrays plus a Parquet manifest (the contract other tools read).

Layout of a store directory:
    features.zarr/        group with arrays lare (N,4,h,w) f32, cls (N,E) f32, tokens (N,P,W) f16,
                          sharded along N, inner chunk = one row (a random read decodes one row)
    manifest.parquet      one row per array row, same order (written when every shard is done)
    store.json            fingerprint, counts, creation time, completion state of every shard
    shards/NNNNN.parquet  the manifest rows of one shard
    shards/NNNNN.json     the shard's commit marker: checksums of its shard files, counts
    .lock                 held (flock) by the one process extending the store

A shard is written with one assignment per array, then its manifest part, then its marker: a
shard without a marker is not done and is recomputed on resume. Different shards live in
different files, so writers that own whole shards never collide.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clare.errors import StoreError
from clare.files import atomic_write_bytes, atomic_write_parquet, file_sha256

FORMAT = "clare-store/1"
ARRAYS = ("lare", "cls", "tokens")
MANIFEST_COLUMNS = (
    "row", "path", "subset", "label", "video", "frame", "view", "perturb",
    "status", "error", "sha256", "width", "height",
)
TOKENS_SHARD_BYTES = 64 * 2**20


def default_shard_rows(tokens: int, width: int) -> int:
    """About 64 MB of float16 tokens per shard (128 rows for ViT-L/14's 256 x 1024)."""
    return max(1, TOKENS_SHARD_BYTES // (tokens * width * 2))


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


class FeatureStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._meta: dict[str, Any] | None = None
        self._arrays: dict[str, Any] = {}

    # ------------------------------------------------------------------ paths and metadata
    @property
    def zarr_path(self) -> Path:
        return self.path / "features.zarr"

    @property
    def meta_path(self) -> Path:
        return self.path / "store.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.parquet"

    @property
    def shards_dir(self) -> Path:
        return self.path / "shards"

    def exists(self) -> bool:
        return self.meta_path.is_file() and self.zarr_path.is_dir()

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            if not self.meta_path.is_file():
                raise StoreError(f"{self.path}: not a feature store (no store.json)")
            self._meta = json.loads(self.meta_path.read_text())
        return self._meta

    def save_meta(self) -> None:
        atomic_write_json(self.meta_path, self.meta)

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def shard_rows(self) -> int:
        return int(self.meta["shard_rows"])

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    def shard_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)

    def _marker(self, index: int) -> Path:
        return self.shards_dir / f"{index:05d}.json"

    def _part(self, index: int) -> Path:
        return self.shards_dir / f"{index:05d}.parquet"

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
    ) -> FeatureStore:
        """Pre-allocate every array to n_rows (filled with NaN) and write store.json."""
        import zarr
        from zarr.codecs import BloscCodec

        if n_rows < 1:
            raise StoreError(f"{path}: cannot create an empty store (0 rows)")
        store = cls(path)
        store.path.mkdir(parents=True, exist_ok=True)
        store.shards_dir.mkdir(exist_ok=True)
        group = zarr.open_group(store.zarr_path, mode="w", zarr_format=3)
        dtypes = {"lare": "float32", "cls": "float32", "tokens": "float16"}
        # lz4 with byte shuffle: fast to decode in the training loop, a modest size gain.
        codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        for name in ARRAYS:
            shape = (n_rows, *shapes[name])
            group.create_array(
                name,
                shape=shape,
                chunks=(1, *shapes[name]),
                shards=(shard_rows, *shapes[name]),
                dtype=dtypes[name],
                fill_value=np.nan,
                compressors=codec,
            )
        store._meta = {
            **meta,
            "format": FORMAT,
            "n_rows": n_rows,
            "shard_rows": shard_rows,
            "shapes": {k: list(v) for k, v in shapes.items()},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "shards": {"total": -(-n_rows // shard_rows), "completed": [], "state": "incomplete"},
        }
        store.save_meta()
        return store

    def destroy(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    # ------------------------------------------------------------------ arrays
    def array(self, name: str) -> Any:
        import zarr

        if name not in self._arrays:
            if not self.zarr_path.is_dir():
                raise StoreError(f"{self.path}: features.zarr is missing; rebuild the store")
            self._arrays[name] = zarr.open_array(self.zarr_path / name, mode="r+")
        return self._arrays[name]

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.array(name)[start:stop]

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Arbitrary rows, in the order given.

        Zarr's orthogonal selection is several times slower than plain slices here, so rows
        are read per shard: one slice when they are dense in it, else one slice per row.
        """
        rows = np.asarray(rows, dtype=np.int64)
        array = self.array(name)
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        shard_of = ordered // self.shard_rows
        for shard in np.unique(shard_of):
            picks = np.flatnonzero(shard_of == shard)
            wanted = ordered[picks]
            start, stop = int(wanted[0]), int(wanted[-1]) + 1
            if len(wanted) * 4 >= stop - start:
                out[order[picks]] = array[start:stop][wanted - start]
            else:
                for pick, row in zip(picks, wanted, strict=True):
                    out[order[pick]] = array[int(row) : int(row) + 1][0]
        return out

    def shard_files(self, index: int) -> dict[str, Path]:
        """The file that holds shard `index` of every array."""
        files = {}
        for name in ARRAYS:
            array = self.array(name)
            key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
            files[name] = self.zarr_path / name / key
        return files

    # ------------------------------------------------------------------ shards
    def completed_shards(self) -> set[int]:
        done = set()
        for marker in self.shards_dir.glob("*.json"):
            index = int(marker.stem)
            if self._part(index).is_file():
                done.add(index)
        return done

    def write_shard(self, index: int, arrays: dict[str, np.ndarray], manifest: pd.DataFrame) -> dict:
        """Write one whole shard: one assignment per array, then its manifest part and marker."""
        start, stop = self.shard_bounds(index)
        if len(manifest) != stop - start or list(manifest["row"]) != list(range(start, stop)):
            raise StoreError(f"{self.path}: manifest rows of shard {index} do not match {start}..{stop}")
        self._marker(index).unlink(missing_ok=True)
        # Zarr merges a write into an existing shard file by reading it first; a damaged file
        # (the reason a shard is redone) would make that read fail, so start from none.
        for path in self.shard_files(index).values():
            path.unlink(missing_ok=True)
        for name in ARRAYS:
            self.array(name)[start:stop] = arrays[name]
        # Zarr writes no file for a shard that is all fill value (every row failed): None.
        checksums = {name: file_sha256(path) if path.is_file() else None
                     for name, path in self.shard_files(index).items()}
        atomic_write_parquet(self._part(index), manifest[list(MANIFEST_COLUMNS)])
        failed = int((manifest["status"] != "ok").sum())
        marker = {"shard": index, "rows": [start, stop], "checksums": checksums,
                  "ok": int(len(manifest) - failed), "failed": failed}
        atomic_write_json(self._marker(index), marker)
        return marker

    def shard_marker(self, index: int) -> dict[str, Any] | None:
        path = self._marker(index)
        return json.loads(path.read_text()) if path.is_file() else None

    def invalidate_shard(self, index: int) -> None:
        self._marker(index).unlink(missing_ok=True)

    def remove_partials(self) -> int:
        """Delete orphaned temporary files of interrupted writes (Zarr's and ours)."""
        removed = 0
        for path in self.path.rglob("*.partial"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def finalize(self, extra: dict[str, Any] | None = None) -> pd.DataFrame:
        """Join the shard manifests into manifest.parquet once every shard is done."""
        done = self.completed_shards()
        missing = sorted(set(range(self.n_shards)) - done)
        if missing:
            raise StoreError(f"{self.path}: shards {missing[:5]} are not written; rerun extract")
        parts = [pd.read_parquet(self._part(i)) for i in range(self.n_shards)]
        manifest = pd.concat(parts, ignore_index=True)
        atomic_write_parquet(self.manifest_path, manifest)
        meta = self.meta
        meta["shards"] = {"total": self.n_shards, "completed": list(range(self.n_shards)),
                          "state": "complete"}
        meta["counts"] = {
            "rows": int(len(manifest)),
            "ok": int((manifest["status"] == "ok").sum()),
            "failed": int((manifest["status"] != "ok").sum()),
        }
        meta.update(extra or {})
        self.save_meta()
        return manifest

    def record_progress(self) -> None:
        """Refresh the completion state in store.json (driver only: one writer of store.json)."""
        meta = self.meta
        meta["shards"]["completed"] = sorted(self.completed_shards())
        self.save_meta()

    def is_complete(self) -> bool:
        return self.meta.get("shards", {}).get("state") == "complete" and self.manifest_path.is_file()

    def manifest(self) -> pd.DataFrame:
        if not self.manifest_path.is_file():
            raise StoreError(
                f"{self.path}: extraction has not finished (no manifest.parquet); "
                "rerun the same `clare extract` command to complete it"
            )
        return pd.read_parquet(self.manifest_path)

    # ------------------------------------------------------------------ locking
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; released by the kernel if the process dies."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(
                f"{self.path}: another extract is writing this store (pid {holder}); "
                "wait for it to finish or stop it"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


def open_store(path: Path | str, *, hint: str = "") -> FeatureStore:
    """Open a finished store or raise a StoreError that names the command that builds it."""
    store = FeatureStore(path)
    if not store.exists():
        how = hint or "clare extract --config CONFIG --split SPLIT"
        raise StoreError(f"{store.path}: feature store not found; build it with `{how}`")
    if not store.is_complete():
        raise StoreError(
            f"{store.path}: extraction has not finished; rerun the `clare extract` command that "
            "built it to complete the missing shards"
        )
    return store
