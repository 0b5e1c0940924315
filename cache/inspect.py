"""Look inside a feature store (`clare info`) and check it end to end (`clare verify`).

    clare info stores/df40/train      counts, failures by reason, shapes, bytes per image,
                                      fingerprint, shard completion (incomplete stores too)
    clare verify stores/df40/train    exit 0 when the store is sound; otherwise name each
                                      damaged shard, exit 1, and mark those shards undone so
                                      that rerunning the same `clare extract` redoes them

From Python: `store_info(path) -> dict`, `verify_store(path) -> VerifyReport`.
Verification reads one shard at a time, so it runs in bounded memory on any store size.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clare.cache.store import (
    ARRAYS,
    MANIFEST_COLUMNS,
    FeatureStore,
    fingerprint_digest,
)
from clare.errors import StoreError
from clare.files import file_sha256

EXPECTED_DTYPES = {"lare": "float32", "cls": "float32", "tokens": "float16"}
BUILD_HINT = "clare extract --config CONFIG --split SPLIT"


def _open_existing(path: Path | str) -> FeatureStore:
    store = FeatureStore(path)
    if not store.meta_path.is_file():
        raise StoreError(f"{store.path}: feature store not found; build it with `{BUILD_HINT}`")
    try:
        store.meta  # noqa: B018 - parse store.json now so a broken file is reported here
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StoreError(
            f"{store.meta_path}: unreadable store.json; rebuild with `{BUILD_HINT} --overwrite`"
        ) from None
    return store


def _reason(error: Any) -> str:
    return str(error).split(":", 1)[0].strip() or "unknown"


def _read_part(store: FeatureStore, index: int) -> pd.DataFrame:
    return pd.read_parquet(store.shards_dir / f"{index:05d}.parquet")


def _known_manifest(store: FeatureStore, done: list[int]) -> pd.DataFrame:
    """The final manifest when present, else the manifest parts of the finished shards."""
    if store.is_complete():
        try:
            return store.manifest()
        except Exception:  # noqa: BLE001 - unreadable manifest: count from the parts instead
            pass
    parts = []
    for index in done:
        try:
            parts.append(_read_part(store, index))
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
            info[name] = {"shape": None, "dtype": None, "error": f"{type(exc).__name__}: {exc}"}
    return info


def fingerprint_summary(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The parts of a fingerprint a person compares by eye (file hashes shortened)."""
    weights = fingerprint.get("weights", {})
    sd = weights.get("sd", {})
    clip = weights.get("clip", {})
    short = (lambda v: v[:12] if isinstance(v, str) else v)  # noqa: E731
    return {
        "sd": sd.get("pretrained"),
        "sd_revision": sd.get("revision"),
        "sd_files_hashed": len(sd.get("files", {}) or {}),
        "clip": f"{clip.get('model')} / {clip.get('pretrained')}",
        "clip_sha256": short(clip.get("sha256")),
        "lare": fingerprint.get("lare"),
        "precision": fingerprint.get("precision"),
        "views": fingerprint.get("views"),
        "augment": fingerprint.get("augment"),
        "perturb": fingerprint.get("perturb"),
        "decode": fingerprint.get("decode"),
        "seed": fingerprint.get("seed"),
        "index_sha256": short(fingerprint.get("index_sha256")),
        "clare_version": fingerprint.get("clare_version"),
    }


# --------------------------------------------------------------------------- info


def store_info(path: Path | str) -> dict[str, Any]:
    """Counts, failures by reason, arrays, size on disk, fingerprint and shard completion."""
    store = _open_existing(path)
    meta = store.meta
    done = sorted(i for i in store.completed_shards() if i < store.n_shards)
    missing = sorted(set(range(store.n_shards)) - set(done))
    manifest = _known_manifest(store, done)
    status = manifest["status"].astype(str)
    failed = manifest[status != "ok"]
    reasons = Counter(_reason(e) for e in failed["error"])
    disk = _disk_bytes(store.zarr_path)
    rows_done = int(len(manifest))
    n_images = int(meta.get("n_images", store.n_rows))
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
        "images": n_images,
        "views": views,
        "rows_done": rows_done,
        "ok": int((status == "ok").sum()),
        "failed": int(len(failed)),
        "failures_by_reason": dict(sorted(reasons.items())),
        "arrays": _array_info(store),
        "bytes_on_disk": disk,
        # Per written row and per image (all its views): what a store of N images will cost.
        "bytes_per_row": disk / rows_done if rows_done else None,
        "bytes_per_image": disk * views / rows_done if rows_done else None,
        "shard_rows": store.shard_rows,
        "shards": {"total": store.n_shards, "complete": len(done), "missing": missing},
        "fingerprint_sha256": meta.get("fingerprint_sha256"),
        "fingerprint": fingerprint_summary(meta.get("fingerprint", {})),
    }


def _human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(value)


def _ranges(indices: list[int], limit: int = 12) -> str:
    """Compact list of shard numbers: 0-3, 7, 9-11 (first `limit` runs)."""
    runs: list[str] = []
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
    more = f" (+{len(runs) - limit} more)" if len(runs) > limit else ""
    return ", ".join(runs[:limit]) + more


def print_info(path: Path | str) -> dict[str, Any]:
    """Print store_info as tables on stdout; returns the same dictionary."""
    from rich.markup import escape
    from rich.table import Table

    from clare.console import make_console

    info = store_info(path)
    console = make_console(stderr=False)
    shards = info["shards"]
    state = "complete" if info["complete"] else (
        f"[bold yellow]incomplete[/]: {shards['complete']}/{shards['total']} shards done; "
        "rerun the same `clare extract` command to finish"
    )
    summary = Table(title=f"store {escape(info['path'])}", title_justify="left", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value")
    summary.add_row("state", state)
    summary.add_row("split", f"{info['split']}" + (f" ({info['perturb']})" if info["perturb"] else ""))
    summary.add_row("subsets", ", ".join(info["subsets"] or []) or "-")
    summary.add_row("created", str(info["created"]))
    summary.add_row("rows", f"{info['rows']} ({info['images']} images x {info['views']} view(s))")
    summary.add_row("rows written", str(info["rows_done"]))
    summary.add_row("ok", str(info["ok"]))
    summary.add_row("failed", str(info["failed"]))
    summary.add_row("shards", f"{shards['complete']}/{shards['total']} complete, "
                    f"{info['shard_rows']} rows each")
    if shards["missing"]:
        summary.add_row("missing shards", _ranges(shards["missing"]))
    summary.add_row("on disk", f"{_human_bytes(info['bytes_on_disk'])}; "
                    f"{_human_bytes(info['bytes_per_image'])} per image, "
                    f"{_human_bytes(info['bytes_per_row'])} per row")
    summary.add_row("fingerprint", str(info["fingerprint_sha256"]))
    console.print(summary)

    arrays = Table(title="arrays", title_justify="left")
    for column in ("name", "shape", "dtype", "on disk"):
        arrays.add_column(column)
    for name, item in info["arrays"].items():
        if item.get("error"):
            arrays.add_row(name, "-", "-", f"[red]{escape(item['error'])}[/]")
        else:
            arrays.add_row(name, " x ".join(map(str, item["shape"])), item["dtype"],
                           _human_bytes(item["bytes_on_disk"]))
    console.print(arrays)

    if info["failures_by_reason"]:
        failures = Table(title="failures by reason", title_justify="left")
        failures.add_column("reason")
        failures.add_column("rows", justify="right")
        for reason, count in info["failures_by_reason"].items():
            failures.add_row(escape(reason), str(count))
        console.print(failures)

    settings = Table(title="fingerprint (what the numbers depend on)", title_justify="left",
                     show_header=False)
    settings.add_column("key", style="bold")
    settings.add_column("value")
    for key, value in info["fingerprint"].items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
        settings.add_row(key, escape(shown))
    console.print(settings)
    return info


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

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.damaged and not self.incomplete

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_fingerprint(store: FeatureStore, report: VerifyReport) -> None:
    meta = store.meta
    fingerprint = meta.get("fingerprint")
    if not isinstance(fingerprint, dict):
        report.add("fingerprint", False, "store.json has no fingerprint")
        return
    recorded = meta.get("fingerprint_sha256")
    actual = fingerprint_digest(fingerprint)
    report.add("fingerprint", recorded == actual,
               "digest matches" if recorded == actual else
               f"store.json was edited: fingerprint_sha256 {str(recorded)[:12]} != {actual[:12]}")


def _check_arrays(store: FeatureStore, report: VerifyReport) -> bool:
    shapes = store.meta.get("shapes", {})
    problems = []
    for name in ARRAYS:
        try:
            array = store.array(name)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: cannot open ({_first_line(exc)})")
            continue
        want_shape = (store.n_rows, *shapes.get(name, []))
        if tuple(array.shape) != want_shape:
            problems.append(f"{name}: shape {tuple(array.shape)} != {want_shape} in store.json")
        if str(array.dtype) != EXPECTED_DTYPES[name]:
            problems.append(f"{name}: dtype {array.dtype} != {EXPECTED_DTYPES[name]}")
        shard_shape = getattr(array, "shards", None)
        if shard_shape is not None and shard_shape[0] != store.shard_rows:
            problems.append(f"{name}: {shard_shape[0]} rows per shard != {store.shard_rows}")
    return report.add("arrays", not problems,
                      "; ".join(problems) or "shapes, dtypes and shard size match store.json")


def _check_part(store: FeatureStore, index: int, marker: dict[str, Any]) -> tuple[pd.DataFrame | None, str]:
    """The shard's manifest part, or None and what is wrong with it."""
    start, stop = store.shard_bounds(index)
    try:
        part = _read_part(store, index)
    except Exception as exc:  # noqa: BLE001
        return None, f"manifest part unreadable ({_first_line(exc)})"
    if tuple(part.columns) != MANIFEST_COLUMNS:
        return None, "manifest part has other columns than the contract"
    if part["row"].tolist() != list(range(start, stop)):
        return None, f"manifest part rows are not {start}..{stop - 1}"
    failed = int((part["status"] != "ok").sum())
    if marker.get("ok") != len(part) - failed or marker.get("failed") != failed:
        return None, "ok/failed counts of the marker and the manifest part disagree"
    return part, ""


def _check_shard_files(store: FeatureStore, index: int, marker: dict[str, Any]) -> str:
    checksums = marker.get("checksums", {})
    try:
        files = store.shard_files(index)
    except Exception as exc:  # noqa: BLE001
        return f"cannot locate shard files ({_first_line(exc)})"
    for name, file in files.items():
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
            values = np.asarray(store.read(name, start, stop))
        except Exception as exc:  # noqa: BLE001 - undecodable bytes make the shard damaged
            return f"{name}: cannot decode ({_first_line(exc)})"
        flat = values.reshape(len(values), -1)
        finite = np.isfinite(flat).all(axis=1)
        all_nan = np.isnan(flat).all(axis=1)
        bad_ok = np.flatnonzero(ok & ~finite)
        bad_failed = np.flatnonzero(~ok & ~all_nan)
        if bad_ok.size:
            return f"{name}: ok row {start + int(bad_ok[0])} holds NaN or inf"
        if bad_failed.size:
            return f"{name}: failed row {start + int(bad_failed[0])} holds values (expected NaN)"
    return ""


def _check_manifest(store: FeatureStore, report: VerifyReport, parts: dict[int, pd.DataFrame]) -> bool:
    """The final manifest: contract columns, rows 0..N-1 in order, same rows as the parts."""
    if not store.manifest_path.is_file():
        complete = store.meta.get("shards", {}).get("state") == "complete"
        return report.add("manifest", not complete,
                          "store.json says complete but manifest.parquet is missing" if complete
                          else "not written yet (extraction unfinished)")
    try:
        manifest = pd.read_parquet(store.manifest_path)
    except Exception as exc:  # noqa: BLE001
        return report.add("manifest", False, f"manifest.parquet unreadable ({_first_line(exc)})")
    problems = []
    if tuple(manifest.columns) != MANIFEST_COLUMNS:
        problems.append(f"columns {list(manifest.columns)} != {list(MANIFEST_COLUMNS)}")
    if len(manifest) != store.n_rows:
        problems.append(f"{len(manifest)} rows != n_rows {store.n_rows}")
    elif "row" in manifest and not np.array_equal(manifest["row"].to_numpy(), np.arange(store.n_rows)):
        problems.append("column row is not 0..N-1 in order")
    if not problems:
        for index, part in parts.items():
            start, stop = store.shard_bounds(index)
            piece = manifest.iloc[start:stop].reset_index(drop=True)
            if not piece.equals(part.reset_index(drop=True)):
                problems.append(f"rows of shard {index} differ from shards/{index:05d}.parquet")
                break
    return report.add("manifest", not problems,
                      "; ".join(problems) or f"{store.n_rows} rows, contract columns, in order")


def _repair(store: FeatureStore, report: VerifyReport, manifest_ok: bool) -> None:
    """Mark damaged shards undone (and drop a bad or stale manifest) so extract redoes them."""
    for index in sorted(report.damaged):
        store.invalidate_shard(index)
        report.invalidated.append(index)
    if store.manifest_path.is_file() and (report.damaged or not manifest_ok):
        # The manifest is rebuilt from the parts when the rerun finishes.
        store.manifest_path.unlink()
        report.manifest_removed = True
    meta = store.meta
    shards = meta.setdefault("shards", {})
    shards["state"] = "incomplete"
    shards["completed"] = sorted(store.completed_shards())
    store.save_meta()


def verify_store(path: Path | str, *, repair: bool = True) -> VerifyReport:
    """Check store.json, arrays, manifest, every shard's checksums and values.

    With repair (the default), damaged shards lose their marker and the store is marked
    incomplete, so rerunning the same `clare extract` command recomputes exactly those shards.
    """
    store = _open_existing(path)
    report = VerifyReport(store.path)
    if repair and os.access(store.path, os.W_OK):
        with store.lock():  # no extract may write while shards are checked and invalidated
            _verify(store, report, repair=True)
    else:
        # A read-only store (e.g. shared) is checked but left as it is.
        _verify(store, report, repair=False)
    return report


def _verify(store: FeatureStore, report: VerifyReport, *, repair: bool) -> None:
    _check_fingerprint(store, report)
    arrays_ok = _check_arrays(store, report)
    n_shards = store.n_shards
    markers: dict[int, dict[str, Any]] = {}
    for index in sorted(store.completed_shards()):
        if index >= n_shards:
            report.damaged[index] = "marker for a shard beyond the store's rows"
            continue
        try:
            marker = store.shard_marker(index)
        except (json.JSONDecodeError, UnicodeDecodeError):
            report.damaged[index] = "unreadable marker"
            continue
        if not isinstance(marker, dict) or marker.get("rows") != list(store.shard_bounds(index)):
            report.damaged[index] = "marker does not describe this shard's rows"
            continue
        markers[index] = marker
    report.incomplete = sorted(set(range(n_shards)) - set(markers) - set(report.damaged))

    parts: dict[int, pd.DataFrame] = {}
    for index, marker in markers.items():
        part, problem = _check_part(store, index, marker)
        if not problem and arrays_ok:
            problem = _check_shard_files(store, index, marker)
        if not problem and arrays_ok:
            problem = _check_shard_values(store, index, part)
        if problem:
            report.damaged[index] = problem
        else:
            parts[index] = part
    report.add("shards", not report.damaged,
               f"{len(parts)} of {n_shards} shards verified" if not report.damaged
               else f"{len(report.damaged)} damaged: {_ranges(sorted(report.damaged))}")
    manifest_ok = _check_manifest(store, report, parts)
    if report.incomplete:
        report.add("completion", False, f"{len(report.incomplete)} shard(s) never finished: "
                   f"{_ranges(report.incomplete)}")
    else:
        # All shards done but not finalized: the run stopped before writing the manifest.
        finalized = store.meta.get("shards", {}).get("state") == "complete"
        report.add("completion", finalized, "every shard finished" if finalized else
                   "every shard finished but store.json is not marked complete")
    if repair and (report.damaged or not manifest_ok):
        _repair(store, report, manifest_ok)


def run_verify(path: Path | str) -> bool:
    """Verify, print one line per check and per damaged shard; True when the store is sound."""
    from rich.markup import escape

    from clare.console import make_console

    report = verify_store(path)
    console = make_console(stderr=False)
    console.print(f"[bold]verify {escape(str(report.path))}[/]")
    for check in report.checks:
        mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
        console.print(f"  {mark} {check.name}: {escape(check.detail)}", highlight=False)
    for index, problem in sorted(report.damaged.items()):
        console.print(f"  [red]damaged shard {index}[/]: {escape(problem)}", highlight=False)
    if report.invalidated or report.manifest_removed:
        what = f"shard(s) {_ranges(report.invalidated)}" if report.invalidated else "the manifest"
        console.print(
            f"  marked {what} for recomputation; rerun the same `{BUILD_HINT}` command that "
            "built this store to repair it"
        )
    elif not report.ok:
        settings_bad = any(not c.ok for c in report.checks if c.name in ("fingerprint", "arrays"))
        advice = ("rebuild it with the `clare extract` command and --overwrite" if settings_bad else
                  f"rerun the same `{BUILD_HINT}` command that built this store to finish it")
        console.print(f"  {advice}")
    console.print("[green]store is sound[/]" if report.ok else "[red]store failed verification[/]")
    return report.ok
