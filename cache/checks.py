"""What is inside a feature store and whether it is sound, as data (rendered by `clare info/verify`).

    store_info(path) -> dict         counts, failures by reason, shapes, bytes per image,
                                     fingerprint summary, shard completion (incomplete stores too)
    verify_store(path) -> VerifyReport
                                     every check with its finding; damaged shards named and, by
                                     default, marked undone so that rerunning the same
                                     `clare extract` redoes them

Verification reads one shard at a time, so it runs in bounded memory on any store size. A
shard is sound when its marker belongs to this store (rows, fingerprint digest), its manifest
part matches the marker's checksum and the index rows store.json records for it, its array
files match the marker's checksums, and its values agree with the part (ok rows finite,
failed rows NaN). The parts together must match the index digest of the fingerprint.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clare import fingerprint as fp
from clare.cache.meta import BUILD_HINT
from clare.cache.store import (
    ARRAYS,
    DTYPES,
    MANIFEST_COLUMNS,
    FeatureStore,
    decode_failure,
    has_checksum,
)
from clare.cache.writer import StoreReadOnlyError, StoreWriter
from clare.errors import StoreError, reason_label
from clare.files import file_sha256


def open_existing(path: Path | str) -> FeatureStore:
    """A store with a readable, well-formed store.json (finished or not), else a StoreError."""
    store = FeatureStore(path)
    store.meta  # noqa: B018 - parse and check store.json now, so a broken one is reported here
    return store


def shard_ranges(indices: list[int], limit: int = 12) -> str:
    """Compact list of shard numbers: 0-3, 7, 9-11 (first `limit` runs)."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    more = f" (+{len(runs) - limit} more)" if len(runs) > limit else ""
    return ", ".join(shown) + more


# --------------------------------------------------------------------------- info


def _known_manifest(store: FeatureStore, done: list[int]) -> pd.DataFrame:
    """The final manifest when present and intact, else the manifest parts of the finished shards."""
    if store.is_complete():
        try:
            return store.manifest()
        except Exception:  # noqa: BLE001 - unreadable or changed manifest: count from the parts
            pass
    parts = []
    for index in done:
        try:
            parts.append(pd.read_parquet(store.part_path(index)))
        except Exception:  # noqa: BLE001 - a damaged part is verify's business, not info's
            continue
    if not parts:
        return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    return pd.concat(parts, ignore_index=True)


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _array_info(store: FeatureStore) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = {}
    for name in ARRAYS:
        try:
            array = store.array(name)
            info[name] = {"shape": list(array.shape), "dtype": str(array.dtype),
                          "bytes_on_disk": _disk_bytes(store.zarr_path / name)}
        except Exception as exc:  # noqa: BLE001 - report, do not crash, on a broken array
            info[name] = {"shape": None, "dtype": None, "error": _first_line(exc)}
    return info


def store_info(path: Path | str) -> dict[str, Any]:
    """Counts, failures by reason, arrays, size on disk, fingerprint and shard completion."""
    store = open_existing(path)
    meta = store.meta
    done = sorted(i for i in store.completed_shards() if i < store.n_shards)
    manifest = _known_manifest(store, done)
    status = manifest["status"].astype(str)
    failed = manifest[status != "ok"]
    disk = _disk_bytes(store.zarr_path)
    rows_done = int(len(manifest))
    views = int(meta.get("views", 1))
    return {
        "path": str(store.path),
        "format": meta.get("format"),
        "split": meta.get("split"),
        "perturb": meta.get("perturb"),
        "subsets": meta.get("subsets"),
        "created": meta.get("created"),
        "complete": store.is_complete(),
        "rows": store.n_rows,
        "images": int(meta.get("n_images") or store.n_rows),  # distinct, each extracted once
        "entries": int(meta.get("n_entries") or meta.get("n_images") or store.n_rows),
        "views": views,
        "rows_done": rows_done,
        "ok": int((status == "ok").sum()),
        "failed": int(len(failed)),
        "failures_by_reason": dict(sorted(Counter(reason_label(e) for e in failed["error"]).items())),
        "arrays": _array_info(store),
        "bytes_on_disk": disk,
        # Per written row and per image (all its views): what a store of N images will cost.
        "bytes_per_row": disk / rows_done if rows_done else None,
        "bytes_per_image": disk * views / rows_done if rows_done else None,
        "shard_rows": store.shard_rows,
        "shards": {"total": store.n_shards, "complete": len(done),
                   "missing": sorted(set(range(store.n_shards)) - set(done))},
        "fingerprint_sha256": meta.get("fingerprint_sha256"),
        "fingerprint": fp.summary(meta.get("fingerprint") or {}),
    }


# --------------------------------------------------------------------------- verify


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    path: Path
    checks: list[Check] = field(default_factory=list)
    damaged: dict[int, str] = field(default_factory=dict)  # shard -> what is wrong with it
    incomplete: list[int] = field(default_factory=list)  # shards with no marker (never finished)
    invalidated: list[int] = field(default_factory=list)  # damaged shards marked undone by verify
    manifest_removed: bool = False
    read_only: bool = False  # checked but not repaired: the store cannot be written

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.damaged and not self.incomplete

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def advice(self) -> str | None:
        """What the user should do next; None when the store is sound."""
        if self.invalidated or self.manifest_removed:
            what = f"shard(s) {shard_ranges(self.invalidated)}" if self.invalidated else "the manifest"
            return (f"marked {what} for recomputation; rerun the same `{BUILD_HINT}` command that "
                    "built this store to repair it")
        if self.ok:
            return None
        # Settings or the index do not match: no shard can be trusted, so start afresh.
        if any(not c.ok for c in self.checks if c.name in ("fingerprint", "arrays", "index")):
            return "rebuild it with the `clare extract` command and --overwrite"
        if self.read_only and self.damaged:
            return ("the store is read-only, so nothing was marked; make it writable and rerun "
                    "`clare verify`, then the `clare extract` command that built it")
        return f"rerun the same `{BUILD_HINT}` command that built this store to finish it"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_fingerprint(store: FeatureStore, report: VerifyReport) -> None:
    fingerprint = store.meta.get("fingerprint")
    if not isinstance(fingerprint, dict):
        report.add("fingerprint", False, "store.json has no fingerprint")
        return
    recorded = store.meta.get("fingerprint_sha256")
    actual = fp.digest(fingerprint)
    report.add("fingerprint", recorded == actual,
               "digest matches" if recorded == actual else
               f"store.json was edited: fingerprint_sha256 {str(recorded)[:12]} != {actual[:12]}")


def _array_problems(store: FeatureStore, name: str) -> list[str]:
    try:
        array = store.array(name)
    except Exception as exc:  # noqa: BLE001 - any failure to open is a finding
        return [f"{name}: cannot open ({_first_line(exc)})"]
    problems = []
    want_shape = (store.n_rows, *store.meta["shapes"][name])
    if tuple(array.shape) != want_shape:
        problems.append(f"{name}: shape {tuple(array.shape)} != {want_shape} in store.json")
    if str(array.dtype) != DTYPES[name]:
        problems.append(f"{name}: dtype {array.dtype} != {DTYPES[name]}")
    shard_shape = getattr(array, "shards", None)
    if shard_shape is None or shard_shape[0] != store.shard_rows:
        problems.append(f"{name}: shards of {shard_shape and shard_shape[0]} rows != {store.shard_rows}")
    elif not has_checksum(array):
        problems.append(f"{name}: chunks carry no crc32c checksum")
    return problems


def _check_arrays(store: FeatureStore, report: VerifyReport) -> bool:
    problems = [problem for name in ARRAYS for problem in _array_problems(store, name)]
    return report.add("arrays", not problems,
                      "; ".join(problems) or "shapes, dtypes, shard size and checksums match store.json")


def _check_shard_files(store: FeatureStore, index: int, marker: dict[str, Any]) -> str:
    checksums = marker.get("checksums")
    if not isinstance(checksums, dict):
        return "marker has no checksums of its array files"
    for name, file in store.shard_files(index).items():
        if name not in checksums:
            return f"marker has no checksum for {name}"
        expected = checksums[name]
        if expected is None:
            # Every row failed, so Zarr wrote no file; one appearing since is foreign.
            if file.exists():
                return f"{name}: unexpected file {file.name} in an all-failed shard"
            continue
        if not file.is_file():
            return f"{name}: shard file {file.relative_to(store.path)} is missing"
        if file_sha256(file) != expected:
            return f"{name}: checksum mismatch in {file.relative_to(store.path)}"
    return ""


def _check_shard_values(store: FeatureStore, index: int, part: pd.DataFrame) -> str:
    start, stop = store.shard_bounds(index)
    ok = (part["status"] == "ok").to_numpy()
    for name in ARRAYS:
        try:
            values = np.asarray(store.array(name)[start:stop])
        except (ValueError, RuntimeError) as exc:  # undecodable bytes make the shard damaged
            return f"{name}: cannot decode ({decode_failure(exc)})"
        flat = values.reshape(len(values), -1)
        bad_ok = np.flatnonzero(ok & ~np.isfinite(flat).all(axis=1))
        bad_failed = np.flatnonzero(~ok & ~np.isnan(flat).all(axis=1))
        if bad_ok.size:
            return f"{name}: ok row {start + int(bad_ok[0])} holds NaN or inf"
        if bad_failed.size:
            return f"{name}: failed row {start + int(bad_failed[0])} holds values (expected NaN)"
    return ""


def _check_shard(store: FeatureStore, index: int, arrays_ok: bool) -> tuple[pd.DataFrame | None, str]:
    """One finished shard: its part (when sound) and what is wrong with it ('' when sound)."""
    if index >= store.n_shards:
        return None, "marker for a shard beyond the store's rows"
    checked = store.check_part(index)
    if checked.problem or not arrays_ok or checked.marker is None or checked.part is None:
        return checked.part, checked.problem
    problem = (_check_shard_files(store, index, checked.marker)
               or _check_shard_values(store, index, checked.part))
    return checked.part, problem


def _check_shards(store: FeatureStore, report: VerifyReport, arrays_ok: bool) -> dict[int, pd.DataFrame]:
    """Every finished shard; the sound ones' manifest parts."""
    parts: dict[int, pd.DataFrame] = {}
    for index in sorted(store.completed_shards()):
        part, problem = _check_shard(store, index, arrays_ok)
        if problem:
            report.damaged[index] = problem
        elif part is not None:
            parts[index] = part
    report.incomplete = sorted(set(range(store.n_shards)) - set(parts) - set(report.damaged))
    report.add("shards", not report.damaged,
               f"{len(parts)} of {store.n_shards} shards verified" if not report.damaged
               else f"{len(report.damaged)} of {store.n_shards} damaged: shard(s) {shard_ranges(sorted(report.damaged))}")
    return parts


def _check_entries(store: FeatureStore, report: VerifyReport) -> bool:
    """entries.parquet: present, the sha256 store.json records, images the store holds."""
    try:
        entries = store.entries()
    except StoreError as exc:
        return report.add("entries", False, _first_line(exc))
    return report.add("entries", True, f"{len(entries)} entries name "
                      f"{entries['image'].nunique()} distinct images")


def _check_index(store: FeatureStore, report: VerifyReport, parts: dict[int, pd.DataFrame],
                 entries_ok: bool) -> None:
    """The shards' rows against the index the fingerprint records (paths, labels, order)."""
    if not entries_ok:
        report.add("index", False, "not checked: entries.parquet is not sound")
        return
    if store.meta.get("index_shards_sha256") is None:
        report.add("index", False, "store.json records no index digest per shard")
        return
    if len(parts) < store.n_shards:
        report.add("index", True, f"{len(parts)} shard(s) match their index rows; the whole "
                   "index is checked once every shard is sound")
        return
    problem = store.index_mismatch(pd.concat([parts[i] for i in sorted(parts)], ignore_index=True))
    report.add("index", not problem, problem or "rows and entries match the layout digest of the fingerprint")


def _manifest_problems(store: FeatureStore, manifest: pd.DataFrame,
                       parts: dict[int, pd.DataFrame]) -> list[str]:
    if tuple(manifest.columns) != MANIFEST_COLUMNS:
        return [f"columns {list(manifest.columns)} != {list(MANIFEST_COLUMNS)}"]
    if len(manifest) != store.n_rows:
        return [f"{len(manifest)} rows != n_rows {store.n_rows}"]
    if not np.array_equal(manifest["row"].to_numpy(), np.arange(store.n_rows)):
        return ["column row is not 0..N-1 in order"]
    for index, part in parts.items():
        start, stop = store.shard_bounds(index)
        if not manifest.iloc[start:stop].reset_index(drop=True).equals(part.reset_index(drop=True)):
            return [f"rows of shard {index} differ from shards/{index:05d}.parquet"]
    recorded = store.meta.get("manifest_sha256")
    if recorded is not None and file_sha256(store.manifest_path) != recorded:
        return ["manifest.parquet changed since extraction finished (checksum mismatch)"]
    return []


def _check_manifest(store: FeatureStore, report: VerifyReport, parts: dict[int, pd.DataFrame]) -> bool:
    """The final manifest: contract columns, rows 0..N-1 in order, same rows as the parts."""
    if not store.manifest_path.is_file():
        complete = store.meta["shards"]["state"] == "complete"
        return report.add("manifest", not complete,
                          "store.json says complete but manifest.parquet is missing" if complete
                          else "not written yet (extraction unfinished)")
    try:
        manifest = pd.read_parquet(store.manifest_path)
    except Exception as exc:  # noqa: BLE001
        return report.add("manifest", False, f"manifest.parquet unreadable ({_first_line(exc)})")
    problems = _manifest_problems(store, manifest, parts)
    return report.add("manifest", not problems,
                      "; ".join(problems) or f"{store.n_rows} rows, contract columns, in order")


def _check_completion(store: FeatureStore, report: VerifyReport) -> None:
    if report.incomplete:
        report.add("completion", False, f"{len(report.incomplete)} shard(s) never finished: "
                   f"{shard_ranges(report.incomplete)}")
        return
    # All shards done but not finalized: the run stopped before writing the manifest.
    finalized = store.meta["shards"]["state"] == "complete"
    report.add("completion", finalized, "every shard finished" if finalized else
               "every shard finished but store.json is not marked complete")


def _repair(store: FeatureStore, report: VerifyReport, manifest_ok: bool) -> None:
    """Mark damaged shards undone (and drop a bad or stale manifest) so extract redoes them."""
    writer = StoreWriter(store)
    for index in sorted(report.damaged):
        writer.invalidate_shard(index)
        report.invalidated.append(index)
    if store.manifest_path.is_file() and (report.damaged or not manifest_ok):
        # The manifest is rebuilt from the parts when the rerun finishes.
        store.manifest_path.unlink()
        report.manifest_removed = True
    meta = store.meta
    meta["shards"]["state"] = "incomplete"
    meta["shards"]["completed"] = sorted(store.completed_shards())
    writer.save_meta()


def _verify(store: FeatureStore, report: VerifyReport, *, repair: bool) -> None:
    _check_fingerprint(store, report)
    arrays_ok = _check_arrays(store, report)
    parts = _check_shards(store, report, arrays_ok)
    _check_index(store, report, parts, _check_entries(store, report))
    manifest_ok = _check_manifest(store, report, parts)
    _check_completion(store, report)
    if repair and (report.damaged or not manifest_ok):
        _repair(store, report, manifest_ok)


def verify_store(path: Path | str, *, repair: bool = True) -> VerifyReport:
    """Check store.json, arrays, index, manifest, every shard's checksums and values.

    With repair (the default), damaged shards lose their marker and the store is marked
    incomplete, so rerunning the same `clare extract` command recomputes exactly those shards.
    A store that cannot be written (permissions, read-only file system) is checked as it is.
    """
    store = open_existing(path)
    report = VerifyReport(store.path)
    if repair and os.access(store.path, os.W_OK):
        try:
            with StoreWriter(store).lock():  # no extract may write while shards are checked and invalidated
                _verify(store, report, repair=True)
            return report
        except StoreReadOnlyError:
            report = VerifyReport(store.path)
    report.read_only = repair
    _verify(store, report, repair=False)
    return report
