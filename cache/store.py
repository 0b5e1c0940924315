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
                          part, the crc32c of each row's chunk, the store fingerprint digest it
                          was written under, counts
    .lock                 held (flock) by the one process writing the store; never deleted

A shard is written (`clare.cache.writer`) with one assignment per array, then its manifest
part, then its marker: a shard without a marker is not done and is recomputed on resume.
Different shards live in different files, so writers that own whole shards never collide.
This module reads and checks; store.json's schema is `clare.cache.meta`'s.

Which rows a store holds is fixed when it is created: the fingerprint records the digest of
the layout (rows: path, label, view in order; entries: what points at them) and store.json the
digest of each shard's slice of the rows. A manifest part is accepted (on resume, at finalize,
by verify) only when it matches its slice, so a shard copied in from another store, or labels
edited in place, are named and recomputed rather than trusted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clare.cache.entries import ENTRY_COLUMNS, entry_rows, layout_digest, rows_digest
from clare.cache.mapped import chunk_checksums, map_rows, mapping_enabled, raw_layout
from clare.cache.meta import BUILD_HINT, read_meta, rebuild_command
from clare.config import env_switch
from clare.errors import StoreError
from clare.files import file_sha256, read_record_bytes

ARRAYS = ("lare", "cls", "tokens")
DTYPES = {"lare": "float32", "cls": "float32", "tokens": "float16"}
MANIFEST_COLUMNS = (
    "row", "path", "label", "view", "perturb", "status", "error", "sha256", "width", "height",
)
_SHARD_FILE = re.compile(r"^(\d{5,})\.(json|parquet)$")


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
        # Per shard: each array's row crc32c its marker records (`recorded_crcs`).
        self._recorded: dict[int, dict[str, np.ndarray]] = {}
        # (array, shard) -> the stat of the shard file whose row crc32c last matched them.
        self._verified: dict[tuple[str, int], tuple[int, ...]] = {}

    def reset(self, meta: dict[str, Any] | None = None) -> None:
        """Forget what was read from the store's files, which a writer changed; `meta`: the
        store.json the writer is about to save."""
        self._meta = meta
        self._arrays.clear()
        self._mappable.clear()
        self._recorded.clear()
        self._verified.clear()

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
            self._meta = read_meta(self.meta_path)
        return self._meta

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
        self.check_identity(name, start, stop)
        try:
            return self.array(name)[start:stop]
        except (ValueError, RuntimeError) as exc:  # crc32c mismatch, undecodable bytes
            raise self._damaged(name, range(start, stop), exc) from None

    def read_into(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """`read`, decoded straight into `out` (C-contiguous, the array's dtype): no extra copy."""
        from zarr.core.buffer.cpu import NDBuffer

        self.check_identity(name, start, stop)
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
                        row_shape=self.row_shape(name), dtype=self.dtype(name),
                        expected_crcs=self.recorded_crcs(name, shard))

    # ------------------------------------------------------------------ shard identity
    def recorded_crcs(self, name: str, shard: int) -> np.ndarray | None:
        """The crc32c of each row's chunk in a shard file of array `name`, as the shard's marker
        recorded them when it was written (-1: no chunk); None when it records none (an
        unfinished store's unmarked shard, a store written without them).

        The crc32c codec proves a chunk's bytes are intact, not that they are this shard's:
        another shard's file is intact too. Comparing the stored crc32c of every row read with
        the recorded ones refuses a shard file replaced by another's (`check_identity`)."""
        if shard not in self._recorded:
            self._recorded[shard] = self._marker_crcs(shard)
        return self._recorded[shard].get(name)

    def _marker_crcs(self, shard: int) -> dict[str, np.ndarray]:
        marker = self.shard_marker(shard)
        if marker is None and self.meta["shards"]["state"] != "complete":
            return {}  # not written yet: nothing to compare with
        problem = ("missing, though store.json says the store is complete" if marker is None
                   else self._marker_problem(shard, marker))
        if problem or marker is None:
            raise StoreError(f"{self.marker_path(shard)}: {problem}; {self.repair_advice()}")
        recorded = marker.get("chunk_crc32c")
        start, stop = self.shard_bounds(shard)
        crcs: dict[str, np.ndarray] = {}
        for name, values in (recorded.items() if isinstance(recorded, dict) else ()):
            if values is None:
                continue
            if (not isinstance(values, list) or len(values) != stop - start
                    or not all(v is None or (isinstance(v, int) and 0 <= v < 2**32) for v in values)):
                raise StoreError(f"{self.marker_path(shard)}: chunk_crc32c of {name} is not one "
                                 f"crc32c per row; {self.repair_advice()}")
            crcs[name] = np.array([-1 if v is None else v for v in values], dtype=np.int64)
        return crcs

    def check_identity(self, name: str, start: int, stop: int) -> None:
        """Refuse a shard file of rows start..stop-1 whose rows' stored crc32c are not the ones
        its marker recorded: one StoreError naming the file and the fix.

        A file is checked again whenever its stat changes (a replaced file has a new inode,
        one rewritten in place a new ctime); checking reads its index and 4 bytes per row. A
        file replaced between this check and zarr's own open of it is not seen; the mapped
        token rows (`mapped_rows`) are compared on the very bytes they are read from."""
        for shard in range(start // self.shard_rows, max(start, stop - 1) // self.shard_rows + 1):
            expected = self.recorded_crcs(name, shard)
            if expected is None:
                continue
            file = self.shard_file(name, shard)
            try:
                stat = file.stat()
            except OSError:
                continue  # a missing file reads as NaN, which the loader names
            key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            if self._verified.get((name, shard)) == key:
                continue
            found = chunk_checksums(file, self.shard_rows)
            if found is None:
                continue  # a damaged index: zarr's read fails its checksum and names the shard
            stored = np.array([-1 if v is None else v for v in found[: len(expected)]], np.int64)
            if not np.array_equal(stored, expected):
                raise StoreError(
                    f"{file}: not the file shard {shard} of array {name} was written as (its rows' "
                    f"crc32c differ from those {self.marker_path(shard).relative_to(self.path)} "
                    "records: copied or moved in from another shard or store); "
                    + self.repair_advice())
            self._verified[(name, shard)] = key

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

    def index_problem(self, index: int, part: pd.DataFrame) -> str:
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
        return self.index_problem(index, part)

    def index_mismatch(self, manifest: pd.DataFrame) -> str:
        """'' when rows and entries match the layout digest the fingerprint records (or none is)."""
        fingerprint = self.meta.get("fingerprint") or {}
        expected = fingerprint.get("index_sha256") if isinstance(fingerprint, dict) else None
        if expected is None or layout_digest(manifest, self.entries()) == expected:
            return ""
        return ("the rows of the manifest parts and entries.parquet do not match the layout digest "
                "the fingerprint records (store.json edited?)")

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
