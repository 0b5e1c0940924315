"""FeatureStore: sharded Zarr v3 arrays, a Parquet manifest of rows and a Parquet table of entries.

Layout of a store directory (format clare-store/3):
    features.zarr/        group with arrays lare (N,4,h,w) f32, cls (N,E) f32, tokens (N,P,W) f16,
                          sharded along N, inner chunk = one row (a random read decodes one row);
                          tokens are stored uncompressed (lz4 saved 7% and cost most of a read),
                          lare and cls with lz4; every inner chunk and every shard index carries
                          a crc32c checksum, so a damaged byte fails the read that meets it
                          instead of reading back wrong
    manifest.parquet      one row per array row, same order (written when every shard is done):
                          one row per distinct image x view, the images in a seeded permutation,
                          views of an image adjacent, so every shard is a random sample
    entries.parquet       one line per listed frame (subset, label, video, frame, path) and the
                          image it points at (`clare.cache.entries`); written at creation
    store.json            fingerprint, counts, creation time, completion state of every shard,
                          the digest of each shard's rows, the sha256 of manifest and entries
    shards/NNNNN.parquet  the manifest rows of one shard
    shards/NNNNN.json     the shard's commit marker: sha256 of its array files and its manifest
                          part, the store fingerprint digest it was written under, counts
    .lock                 held (flock) by the one process writing the store; never deleted

A shard is written with one assignment per array, then its manifest part, then its marker: a
shard without a marker is not done and is recomputed on resume. Different shards live in
different files, so writers that own whole shards never collide.

Which rows a store holds is fixed when it is created: the fingerprint records the digest of
the layout (rows: path, label, view in order; entries: what points at them) and store.json the
digest of each shard's slice of the rows. A manifest part is accepted (on resume, at finalize,
by verify) only when it matches its slice, so a shard copied in from another store, or labels
edited in place, are named and recomputed rather than trusted.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clare.cache.entries import ENTRY_COLUMNS, entry_rows, layout_digest, rows_digest
from clare.cache.mapped import map_rows, mapping_enabled, raw_layout
from clare.config import env_switch
from clare.errors import StoreError
from clare.files import (
    atomic_write_json,
    atomic_write_parquet,
    file_sha256,
    pid_lock,
    read_record_bytes,
)

FORMAT = "clare-store/3"
ARRAYS = ("lare", "cls", "tokens")
DTYPES = {"lare": "float32", "cls": "float32", "tokens": "float16"}
MANIFEST_COLUMNS = (
    "row", "path", "label", "view", "perturb", "status", "error", "sha256", "width", "height",
)
TOKENS_SHARD_BYTES = 64 * 2**20
BUILD_HINT = "clare extract --config CONFIG --split SPLIT"
_SHARD_FILE = re.compile(r"^(\d{5,})\.(json|parquet)$")


def default_shard_rows(tokens: int, width: int) -> int:
    """About 64 MB of float16 tokens per shard (128 rows for ViT-L/14's 256 x 1024)."""
    return max(1, TOKENS_SHARD_BYTES // (tokens * width * 2))


def shard_index_digests(rows: pd.DataFrame, shard_rows: int) -> list[str]:
    """rows_digest of each shard's slice of the rows."""
    return [rows_digest(rows.iloc[start : start + shard_rows])
            for start in range(0, len(rows), shard_rows)]


# Arrays stored without compression: fp16 CLIP tokens are 97% of a row's bytes and lz4 saved
# only 7% of them while taking most of a read's CPU time (BENCHMARKS.md section 2).
UNCOMPRESSED = frozenset({"tokens"})


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


def codec_pipeline() -> dict[str, Any]:
    """The Zarr codec pipeline the store's arrays open with: zarrs (Rust, decodes a shard's
    chunks in parallel threads) when it is installed, else zarr-python's own.

    Set per array at open time rather than in zarr's global config, so importing clare changes
    nothing for other Zarr users in the process. `CLARE_ZARRS=0` turns it off.
    """
    if not env_switch("CLARE_ZARRS"):
        return {}
    try:
        import zarrs  # noqa: F401 - the pipeline class is found by its dotted path
    except ImportError:
        return {}
    return {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}


def has_checksum(array: Any) -> bool:
    """True when every inner chunk of a sharded array ends in a crc32c codec."""
    from zarr.codecs import Crc32cCodec, ShardingCodec

    sharding = [c for c in array.metadata.codecs if isinstance(c, ShardingCodec)]
    return bool(sharding) and isinstance(sharding[0].codecs[-1], Crc32cCodec)


def decode_failure(exc: BaseException) -> str:
    """A short reason for an array read that failed (the codec messages carry raw bytes)."""
    if "checksum" in str(exc).lower():
        return "checksum mismatch"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


class StoreReadOnlyError(StoreError):
    """The store cannot be written (permissions or a read-only file system)."""


# --------------------------------------------------------------------------- store.json


class _ShardState(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    total: int = Field(ge=1)
    completed: list[int]
    state: Literal["complete", "incomplete"]


class _Shapes(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    lare: list[int]
    cls: list[int]
    tokens: list[int]


class _StoreMeta(BaseModel):
    """What clare reads from store.json; other keys are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")
    format: str
    n_rows: int = Field(ge=1)
    shard_rows: int = Field(ge=1)
    shapes: _Shapes
    shards: _ShardState
    fingerprint: dict[str, Any] | None = None
    fingerprint_sha256: str | None = None
    index_shards_sha256: list[str] | None = None
    manifest_sha256: str | None = None
    views: int = Field(default=1, ge=1)
    n_images: int | None = None
    split: str | None = None
    perturb: str | None = None
    subsets: list[str] | None = None


def rebuild_command(meta: dict[str, Any] | None = None, *, overwrite: bool = True) -> str:
    """The `clare extract` command that builds a store like this one (from what store.json says)."""
    meta = meta if isinstance(meta, dict) else {}
    split = meta.get("split") if meta.get("split") in ("train", "test") else "SPLIT"
    command = f"clare extract --config CONFIG --split {split}"
    perturb = meta.get("perturb")
    if isinstance(perturb, str) and perturb:
        command += f" --perturb {perturb}"
    return command + (" --overwrite" if overwrite else "")


def _parse_meta(path: Path) -> dict[str, Any]:
    """store.json as a mapping of this clare's format, else a StoreError naming the file and fix."""
    if not path.is_file():
        raise StoreError(f"{path.parent}: feature store not found (no store.json); build it with `{BUILD_HINT}`")
    try:
        raw = json.loads(read_record_bytes(path).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise StoreError(
            f"{path}: unreadable store.json ({type(exc).__name__}); rebuild with `{rebuild_command()}`"
        ) from None
    if not isinstance(raw, dict):
        raise StoreError(f"{path}: store.json must hold a mapping; rebuild with `{rebuild_command()}`")
    if raw.get("format") != FORMAT:
        found = raw.get("format")
        shown = found if isinstance(found, str) and len(found) <= 40 else "unknown"
        raise StoreError(
            f"{path}: store format {shown} is not {FORMAT}, the format this clare reads; "
            f"rebuild the store with `{rebuild_command(raw)}`"
        )
    return raw


def _read_meta(path: Path) -> dict[str, Any]:
    """Parse and check store.json; every problem is one StoreError naming the file and the fix."""
    raw = _parse_meta(path)
    try:
        checked = _StoreMeta.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise StoreError(
            f"{path}: key '{key}': {error['msg']}; rebuild with `{rebuild_command(raw)}`"
        ) from None
    n_shards = -(-checked.n_rows // checked.shard_rows)
    digests = checked.index_shards_sha256
    if checked.shards.total != n_shards or (digests is not None and len(digests) != n_shards):
        raise StoreError(
            f"{path}: shard counts disagree with n_rows and shard_rows; rebuild with `{rebuild_command(raw)}`"
        )
    return raw


# --------------------------------------------------------------------------- the store


@dataclass
class ShardPart:
    """A shard's manifest part as checked against its marker and the index; problem '' if sound."""

    index: int
    marker: dict[str, Any] | None
    part: pd.DataFrame | None
    problem: str


class FeatureStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._meta: dict[str, Any] | None = None
        self._arrays: dict[tuple[str, str], Any] = {}
        self._mappable: dict[str, bool] = {}

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
    def entries_path(self) -> Path:
        return self.path / "entries.parquet"

    @property
    def shards_dir(self) -> Path:
        return self.path / "shards"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def exists(self) -> bool:
        return self.meta_path.is_file() and self.zarr_path.is_dir()

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = _read_meta(self.meta_path)
        return self._meta

    def save_meta(self) -> None:
        with _writable(self.path):
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

    @property
    def fingerprint_sha256(self) -> str | None:
        return self.meta.get("fingerprint_sha256")

    def shard_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)

    def marker_path(self, index: int) -> Path:
        return self.shards_dir / f"{index:05d}.json"

    def part_path(self, index: int) -> Path:
        return self.shards_dir / f"{index:05d}.parquet"

    def rebuild_command(self) -> str:
        try:
            return rebuild_command(self.meta)
        except StoreError:
            return rebuild_command()

    def repair_advice(self) -> str:
        """What to do about a damaged shard: verify marks it, the same extract redoes it."""
        return (f"run `clare verify {self.path}`, then rerun the `clare extract` command that built "
                "it to recompute the damaged shards")

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
    ) -> FeatureStore:
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
        store = cls(path)
        with _writable(store.path):
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
        store._meta = {
            **meta,
            "format": FORMAT,
            "n_rows": n_rows,
            "shard_rows": shard_rows,
            "shapes": {k: list(v) for k, v in shapes.items()},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "shards": {"total": -(-n_rows // shard_rows), "completed": [], "state": "incomplete"},
        }
        if index is not None:
            store._meta["index_shards_sha256"] = shard_index_digests(index, shard_rows)
            store.write_entries(entries if entries is not None else one_entry_per_row(index))
        store.save_meta()
        return store

    def write_entries(self, entries: pd.DataFrame) -> None:
        """Write entries.parquet and record its sha256 in store.json."""
        with _writable(self.path):
            atomic_write_parquet(self.entries_path, entries[list(ENTRY_COLUMNS)])
        self.meta["entries_sha256"] = file_sha256(self.entries_path)
        self.save_meta()

    def destroy(self) -> None:
        """Delete the store's contents for --overwrite, but not `.lock`.

        The lock file stays so that the writer holding it keeps excluding every other writer:
        deleting it would let a second extract lock a fresh file and write the same store.
        store.json goes first, so an interrupted delete leaves no half-store that looks valid.
        """
        if not self.path.is_dir():
            return
        with _writable(self.path):
            self.meta_path.unlink(missing_ok=True)
            for entry in self.path.iterdir():
                if entry.name == self.lock_path.name:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self._meta = None
        self._arrays.clear()
        self._mappable.clear()

    # ------------------------------------------------------------------ arrays
    def array(self, name: str, *, write: bool = False) -> Any:
        """The Zarr array `name`, opened read-only unless `write`."""
        import zarr

        mode = "r+" if write else "r"
        if (name, mode) not in self._arrays:
            if not (self.zarr_path / name).is_dir():
                raise StoreError(
                    f"{self.path}: features.zarr/{name} is missing; rebuild with `{self.rebuild_command()}`"
                )
            try:
                with zarr.config.set(codec_pipeline()):
                    self._arrays[(name, mode)] = zarr.open_array(self.zarr_path / name, mode=mode)
            except (ValueError, LookupError, TypeError, zarr.errors.BaseZarrError) as exc:
                # Undecodable JSON, a missing key, another node type: the array's metadata is
                # damaged, which is a store problem, not a bug.
                raise StoreError(
                    f"{self.path}: features.zarr/{name}/zarr.json is unreadable "
                    f"({type(exc).__name__}); rebuild with `{self.rebuild_command()}`"
                ) from None
        return self._arrays[(name, mode)]

    def row_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.meta["shapes"][name])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(DTYPES[name])

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of one array; a damaged shard raises a StoreError naming it."""
        try:
            return self.array(name)[start:stop]
        except (ValueError, RuntimeError) as exc:  # crc32c mismatch, undecodable bytes
            raise self._damaged(name, range(start, stop), exc) from None

    def read_into(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """`read`, decoded straight into `out` (C-contiguous, the array's dtype): no extra copy."""
        from zarr.core.buffer.cpu import NDBuffer

        try:
            self.array(name).get_basic_selection(slice(start, stop),
                                                 out=NDBuffer.from_numpy_array(out))
        except (ValueError, RuntimeError) as exc:
            raise self._damaged(name, range(start, stop), exc) from None

    def mapped_rows(self, name: str, rows: np.ndarray) -> list[np.ndarray] | None:
        """Rows of one shard (store rows, repeats allowed) of an array stored uncompressed, as
        read-only views of the shard file's bytes after each row's crc32c is checked: no copy
        is made (`clare.cache.mapped`). None when the array is compressed or the shard cannot
        be used in place; `read` then decodes it, and names any damage."""
        if name not in self._mappable:
            array, shape = self.array(name), self.row_shape(name)
            self._mappable[name] = (
                mapping_enabled() and raw_layout(array) and tuple(array.shape[1:]) == shape
                and array.dtype == self.dtype(name)
                and tuple(array.shards or ()) == (self.shard_rows, *shape))
        if not self._mappable[name] or len(rows) == 0:
            return None
        rows = np.asarray(rows, dtype=np.int64)
        shard = int(rows[0]) // self.shard_rows
        start, stop = self.shard_bounds(shard)
        if int(rows.min()) < start or int(rows.max()) >= stop:
            raise ValueError(f"rows span more than shard {shard}")
        return map_rows(self.shard_file(name, shard), rows - start, shard_rows=self.shard_rows,
                        row_shape=self.row_shape(name), dtype=self.dtype(name))

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
                out[order[picks]] = self.read(name, start, stop)[wanted - start]
            else:
                for pick, row in zip(picks, wanted, strict=True):
                    out[order[pick]] = self.read(name, int(row), int(row) + 1)[0]
        return out

    def _damaged(self, name: str, rows: range, exc: BaseException) -> StoreError:
        """The StoreError for a failed read: find which shard of the range fails on its own."""
        first = rows.start // self.shard_rows
        last = max(rows.start, rows.stop - 1) // self.shard_rows
        shard = first
        for index in range(first, last + 1):
            start, stop = self.shard_bounds(index)
            try:
                self.array(name)[max(start, rows.start) : min(stop, rows.stop)]
            except (ValueError, RuntimeError):
                shard = index
                break
        return StoreError(
            f"{self.path}: array {name}, shard {shard} is damaged ({decode_failure(exc)} on read); "
            + self.repair_advice()
        )

    def shard_file(self, name: str, index: int) -> Path:
        """The file that holds shard `index` of array `name`."""
        array = self.array(name)
        return self.zarr_path / name / array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))

    def shard_files(self, index: int) -> dict[str, Path]:
        """The file that holds shard `index` of every array."""
        return {name: self.shard_file(name, index) for name in ARRAYS}

    # ------------------------------------------------------------------ shards
    def _shard_entries(self) -> tuple[set[int], set[int]]:
        """Shard numbers with a marker and with a part; anything else in shards/ is refused."""
        markers: set[int] = set()
        parts: set[int] = set()
        if not self.shards_dir.is_dir():
            return markers, parts
        for entry in self.shards_dir.iterdir():
            if entry.name.endswith(".partial"):
                continue  # an interrupted write; remove_partials sweeps it
            found = _SHARD_FILE.match(entry.name)
            if found is None or not entry.is_file():
                raise StoreError(
                    f"{entry}: not a file of this store (shards/ holds only NNNNN.json and "
                    "NNNNN.parquet); move it out of the store"
                )
            (markers if found.group(2) == "json" else parts).add(int(found.group(1)))
        return markers, parts

    def completed_shards(self) -> set[int]:
        markers, parts = self._shard_entries()
        return markers & parts

    def write_shard(self, index: int, arrays: dict[str, np.ndarray], manifest: pd.DataFrame) -> dict:
        """Write one whole shard: one assignment per array, then its manifest part and marker."""
        start, stop = self.shard_bounds(index)
        if len(manifest) != stop - start or list(manifest["row"]) != list(range(start, stop)):
            raise StoreError(f"{self.path}: manifest rows of shard {index} do not match {start}..{stop}")
        problem = self._index_problem(index, manifest)
        if problem:
            raise StoreError(f"{self.path}: shard {index}: {problem}; rebuild with `{self.rebuild_command()}`")
        self.marker_path(index).unlink(missing_ok=True)
        # Zarr merges a write into an existing shard file by reading it first; a damaged file
        # (the reason a shard is redone) would make that read fail, so start from none.
        for path in self.shard_files(index).values():
            path.unlink(missing_ok=True)
        for name in ARRAYS:
            self.array(name, write=True)[start:stop] = arrays[name]
        # Zarr writes no file for a shard that is all fill value (every row failed): None.
        checksums = {name: file_sha256(path) if path.is_file() else None
                     for name, path in self.shard_files(index).items()}
        atomic_write_parquet(self.part_path(index), manifest[list(MANIFEST_COLUMNS)])
        failed = int((manifest["status"] != "ok").sum())
        marker = {"shard": index, "rows": [start, stop], "checksums": checksums,
                  "manifest_sha256": file_sha256(self.part_path(index)),
                  "fingerprint_sha256": self.fingerprint_sha256,
                  "ok": int(len(manifest) - failed), "failed": failed}
        atomic_write_json(self.marker_path(index), marker)
        return marker

    def shard_marker(self, index: int) -> dict[str, Any] | None:
        """The marker of a shard; None when absent; StoreError when unreadable."""
        path = self.marker_path(index)
        if not path.is_file():
            return None
        try:
            marker = json.loads(read_record_bytes(path).decode("utf-8"))
        except (ValueError, RecursionError):
            raise StoreError(f"{path}: unreadable shard marker; {self.repair_advice()}") from None
        if not isinstance(marker, dict):
            raise StoreError(f"{path}: a shard marker must hold a mapping; {self.repair_advice()}")
        return marker

    def _index_problem(self, index: int, part: pd.DataFrame) -> str:
        """'' when the part holds this shard's rows of the index store.json records."""
        digests = self.meta.get("index_shards_sha256")
        if digests is None:
            return ""
        if rows_digest(part) != digests[index]:
            return ("its rows are not the store's index rows for this shard "
                    "(paths, labels or order differ)")
        return ""

    def _marker_problem(self, index: int, marker: Any) -> str:
        if not isinstance(marker, dict) or marker.get("rows") != list(self.shard_bounds(index)):
            return "marker does not describe this shard's rows"
        if marker.get("fingerprint_sha256") != self.fingerprint_sha256:
            return "marker was written under another fingerprint (a shard of another store?)"
        if not isinstance(marker.get("manifest_sha256"), str):
            return "marker has no checksum of its manifest part"
        return ""

    def check_part(self, index: int) -> ShardPart:
        """A finished shard's marker and manifest part, checked against each other and the index."""
        try:
            marker = self.shard_marker(index)
        except StoreError:
            return ShardPart(index, None, None, "unreadable marker")
        problem = self._marker_problem(index, marker)
        if problem or marker is None:  # a missing marker has a problem; `is None` narrows the type
            return ShardPart(index, None, None, problem)
        part_path = self.part_path(index)
        if not part_path.is_file():
            return ShardPart(index, marker, None, "manifest part is missing")
        if file_sha256(part_path) != marker["manifest_sha256"]:
            return ShardPart(index, marker, None, "manifest part changed since it was written (checksum mismatch)")
        try:
            part = pd.read_parquet(part_path)
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet is a damaged shard
            return ShardPart(index, marker, None, f"manifest part unreadable ({type(exc).__name__})")
        return ShardPart(index, marker, part, self._part_problem(index, marker, part))

    def _part_problem(self, index: int, marker: dict[str, Any], part: pd.DataFrame) -> str:
        start, stop = self.shard_bounds(index)
        if tuple(part.columns) != MANIFEST_COLUMNS:
            return "manifest part has other columns than the contract"
        if part["row"].tolist() != list(range(start, stop)):
            return f"manifest part rows are not {start}..{stop - 1}"
        failed = int((part["status"] != "ok").sum())
        if marker.get("ok") != len(part) - failed or marker.get("failed") != failed:
            return "ok/failed counts of the marker and the manifest part disagree"
        return self._index_problem(index, part)

    def invalidate_shard(self, index: int) -> None:
        with _writable(self.path):
            self.marker_path(index).unlink(missing_ok=True)

    def drop_unsound_shards(self) -> dict[int, str]:
        """Mark undone every finished shard whose marker or manifest part fails check_part.

        Cheap (markers and parts only, no array bytes): a resumed extract runs it so that a
        shard copied in from another store, or edited in place, is recomputed, not kept.
        """
        dropped = {}
        for index in sorted(self.completed_shards()):
            problem = ("beyond the store's rows" if index >= self.n_shards
                       else self.check_part(index).problem)
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

    def finalize(self, extra: dict[str, Any] | None = None) -> pd.DataFrame:
        """Join the shard manifests into manifest.parquet once every shard is done.

        Every part is checked against its marker and the index first; a bad one loses its
        marker (so the same extract redoes it) and nothing is written from it.
        """
        done = self.completed_shards()
        missing = sorted(set(range(self.n_shards)) - done)
        if missing:
            raise StoreError(f"{self.path}: shards {missing[:5]} are not written; rerun extract")
        parts = []
        for index in range(self.n_shards):
            checked = self.check_part(index)
            if checked.problem:
                self.invalidate_shard(index)
                raise StoreError(
                    f"{self.path}: shard {index}: {checked.problem}; it is marked for recomputation: "
                    "rerun the same `clare extract` command"
                )
            parts.append(checked.part)
        manifest = pd.concat(parts, ignore_index=True)
        problem = self.index_mismatch(manifest)
        if problem:
            raise StoreError(f"{self.path}: {problem}; rebuild with `{self.rebuild_command()}`")
        with _writable(self.path):
            atomic_write_parquet(self.manifest_path, manifest)
        meta = self.meta
        meta["manifest_sha256"] = file_sha256(self.manifest_path)
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

    def index_mismatch(self, manifest: pd.DataFrame) -> str:
        """'' when rows and entries match the layout digest the fingerprint records (or none is)."""
        fingerprint = self.meta.get("fingerprint") or {}
        expected = fingerprint.get("index_sha256") if isinstance(fingerprint, dict) else None
        if expected is None or layout_digest(manifest, self.entries()) == expected:
            return ""
        return ("the rows of the manifest parts and entries.parquet do not match the layout digest "
                "the fingerprint records (store.json edited?)")

    def record_progress(self) -> None:
        """Refresh the completion state in store.json (driver only: one writer of store.json)."""
        meta = self.meta
        meta["shards"]["completed"] = sorted(self.completed_shards())
        self.save_meta()

    def is_complete(self) -> bool:
        return self.meta["shards"]["state"] == "complete" and self.manifest_path.is_file()

    def manifest(self) -> pd.DataFrame:
        """manifest.parquet, its rows checked against the index digest of the fingerprint.

        Paths, labels and order are what fit and eval trust; `clare verify` also checks the
        whole file against the sha256 finalize recorded.
        """
        if not self.manifest_path.is_file():
            raise StoreError(
                f"{self.path}: extraction has not finished (no manifest.parquet); "
                "rerun the same `clare extract` command to complete it"
            )
        try:
            manifest = pd.read_parquet(self.manifest_path)
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet: one line, not a traceback
            raise StoreError(
                f"{self.manifest_path}: unreadable ({type(exc).__name__}); {self.repair_advice()}"
            ) from None
        missing = sorted(set(MANIFEST_COLUMNS) - set(manifest.columns))
        if missing or self.index_mismatch(manifest):
            what = f"lacks column(s) {', '.join(missing)}" if missing else (
                "its paths, labels or order differ from the index the fingerprint records")
            raise StoreError(f"{self.manifest_path}: {what}; {self.repair_advice()}")
        return manifest

    def entries(self) -> pd.DataFrame:
        """entries.parquet: the listed frames and the image each points at (ENTRY_COLUMNS),
        checked against the sha256 store.json records."""
        fix = self.repair_advice()
        # extract rewrites entries.parquet from the index whenever it runs: no --overwrite needed.
        rewrite = (f"rerun `{rebuild_command(self.meta, overwrite=False)}` (the command that built "
                   "the store), which rewrites it from the index")
        if not self.entries_path.is_file():
            raise StoreError(f"{self.entries_path}: missing; {rewrite}")
        recorded = self.meta.get("entries_sha256")
        if recorded is not None and file_sha256(self.entries_path) != recorded:
            raise StoreError(f"{self.entries_path}: its sha256 differs from the one store.json "
                             f"records (edited or damaged); {rewrite}")
        try:
            entries = pd.read_parquet(self.entries_path)
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet: one line, not a traceback
            raise StoreError(f"{self.entries_path}: unreadable ({type(exc).__name__}); {fix}") from None
        missing = sorted(set(ENTRY_COLUMNS) - set(entries.columns))
        images = self.n_rows // max(int(self.meta.get("views", 1)), 1)
        if missing or (len(entries) and not entries["image"].between(0, images - 1).all()):
            what = f"lacks column(s) {', '.join(missing)}" if missing else "points at images the store lacks"
            raise StoreError(f"{self.entries_path}: {what}; {rewrite}")
        return entries

    def entry_rows(self, view: int | None = None, *,
                   manifest: pd.DataFrame | None = None) -> pd.DataFrame:
        """Every entry with its rows (all views, or `view`) and their manifest fields; pass the
        `manifest()` a caller already holds to read and check it once."""
        rows = self.manifest() if manifest is None else manifest
        return entry_rows(self.entries(), rows, int(self.meta.get("views", 1)), view)

    # ------------------------------------------------------------------ locking
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; released by the kernel if the process dies."""
        with _writable(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")  # noqa: SIM115 - held open for the whole block

        def held(holder: str) -> StoreError:
            return StoreError(f"{self.path}: another extract is writing this store (pid {holder}); "
                              "wait for it to finish or stop it")

        with pid_lock(handle, held):
            yield


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
def _writable(path: Path) -> Iterator[None]:
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


def open_store(path: Path | str, *, hint: str = "") -> FeatureStore:
    """Open a finished store or raise a StoreError that names the command that builds it."""
    store = FeatureStore(path)
    if not store.exists():
        how = hint or BUILD_HINT
        raise StoreError(f"{store.path}: feature store not found; build it with `{how}`")
    if not store.is_complete():
        raise StoreError(
            f"{store.path}: extraction has not finished; rerun the `clare extract` command that "
            "built it to complete the missing shards"
        )
    return store
