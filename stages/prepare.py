"""`clare prepare`: build the demo inputs if asked, index the dataset, report what is wrong.

Outputs, under `data.index_dir`: `train.parquet` and `test.parquet` (one row per image, see
`clare.data.df40`) and `checks.json` (the per-subset counts printed as a table).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clare.config import Config
from clare.console import make_console
from clare.data.df40 import DataIndexError, SubsetCheck, build_index
from clare.errors import DataError
from clare.files import (
    atomic_write_bytes,
    atomic_write_parquet,
    fresh_partial_folder,
    publish_partial_folder,
    read_record_bytes,
)

_TABLE_COLUMNS = (
    ("listed", "listed"),
    ("found", "found"),
    ("missing", "missing"),
    ("empty_folders", "empty folders"),
    ("unreadable", "unreadable headers"),
    ("duplicates", "duplicates"),
    ("unknown_labels", "unknown labels"),
    ("rejected", "rejected paths"),
    ("real", "real"),
    ("fake", "fake"),
)
# What the found frames cost to extract: entries, the images they add, and what sharing saves.
_ENTRY_COLUMNS = (
    ("found", "entries"),
    ("label_conflicts", "label conflicts"),
    ("distinct", "distinct images"),
    ("shared", "extractions saved"),
)
# Counts that are not problems; any other non-zero count is shown in red.
_PLAIN = frozenset({"listed", "found", "real", "fake", "distinct", "shared"})


def _build_demo_inputs(cfg: Config, console: Console) -> None:
    """Create the tiny models and the synthetic mini-DF40 once; existing folders are kept."""
    demo = cfg.demo
    assert demo is not None
    if demo.models_out is not None and not Path(demo.models_out).exists():
        from clare.models.tiny import build_tiny_models  # torch import: only when needed

        console.print(f"demo: writing tiny models to {escape(str(demo.models_out))}")
        build_tiny_models(Path(demo.models_out), seed=cfg.seed)
    if demo.data_out is not None and not Path(demo.data_out).exists():
        from clare.data.demo import write_demo_dataset

        out = Path(demo.data_out)
        # Write next to the target and rename at the end, so an interrupted run never
        # leaves a half-written tree that a later run would take as finished.
        staging = fresh_partial_folder(out)
        summary = write_demo_dataset(staging, seed=cfg.seed)
        publish_partial_folder(staging, out)
        console.print(f"demo: wrote {summary.n_images} images and {summary.n_lists} lists to {escape(str(out))}")


def _check_inputs(cfg: Config) -> None:
    data = cfg.data
    if not Path(data.root).is_dir():
        raise DataError(
            f"data.root {data.root} does not exist; point it at your DF40 folder (see README)"
        )
    needs_lists = any(spec.folder is None for spec in [*data.train, *data.test])
    if needs_lists and (data.lists_dir is None or not Path(data.lists_dir).is_dir()):
        raise DataError(
            f"data.lists_dir {data.lists_dir} does not exist; point it at the folder of "
            "DeepfakeBench JSON lists (see README)"
        )


def _counts_table(title: str, columns: tuple[tuple[str, str], ...],
                  rows: list[tuple[str, dict]], total: bool) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("subset", no_wrap=True)
    for _, header in columns:
        table.add_column(header, justify="right")
    if total:
        rows = [*rows, ("all", {key: sum(counts[key] for _, counts in rows) for key, _ in columns})]
    for index, (subset, counts) in enumerate(rows):
        cells = []
        for key, _ in columns:
            value = counts[key]
            # Highlight the counts that mean lost or suspicious images.
            problem = key not in _PLAIN and value
            cells.append(f"[bold red]{value}[/]" if problem else str(value))
        table.add_row(subset, *cells, end_section=total and index == len(rows) - 2)
    return table


def checks_table(split: str, checks: Iterable[SubsetCheck]) -> Table:
    """What `prepare` found wrong per subset: the frames listed, found, missing, ..."""
    rows = [(check.subset, check.counts()) for check in checks]
    return _counts_table(f"prepare: {split}", _TABLE_COLUMNS, rows, total=False)


def entries_table(split: str, checks: Iterable[SubsetCheck]) -> Table:
    """Per subset and for all: the entries found, the distinct images they add (an image an
    earlier subset lists is extracted once) and the extractions that saves."""
    rows = [(check.subset, {**check.counts(), "distinct": check.found - check.shared})
            for check in checks]
    return _counts_table(f"prepare: {split} entries", _ENTRY_COLUMNS, rows, total=True)


def saving_line(split: str, checks: Iterable[SubsetCheck]) -> str:
    """entries, distinct images and the extractions one row per image saves, for a split."""
    checks = list(checks)
    entries = sum(check.found for check in checks)
    saved = sum(check.shared for check in checks)
    share = saved / entries if entries else 0.0
    return (f"{split}: {entries} entries, {entries - saved} distinct images: "
            f"{saved} extractions saved ({share:.1%})")


def _print_checks(console: Console, split: str, checks: list[SubsetCheck]) -> None:
    console.print(checks_table(split, checks))
    console.print(entries_table(split, checks))
    console.print(saving_line(split, checks))
    for check in checks:
        for note in check.notes:
            console.print(f"  {check.subset}: {note}", markup=False, highlight=False)


def _update_checks_json(path: Path, results: dict[str, list[SubsetCheck]]) -> None:
    """Merge this run's splits into checks.json so preparing one split keeps the other's."""
    merged: dict[str, dict] = {}
    if path.is_file():
        try:
            loaded = json.loads(read_record_bytes(path).decode("utf-8"))
            merged = loaded if isinstance(loaded, dict) else {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            merged = {}  # our own output: rebuilding it is always right
    for split, checks in results.items():
        merged[split] = {check.subset: check.counts() for check in checks}
    atomic_write_bytes(path, (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def run_prepare(cfg: Config, splits: Iterable[str] = ("train", "test")) -> dict[str, Path]:
    """Index each split, write `<index_dir>/<split>.parquet` and `checks.json`; return paths."""
    console = make_console()
    splits = list(splits)
    for split in splits:
        if split not in ("train", "test"):
            raise DataError(f"split '{split}' is not train or test")
    if cfg.demo is not None:
        _build_demo_inputs(cfg, console)
    _check_inputs(cfg)

    index_dir = Path(cfg.data.index_dir)
    indexes: dict[str, pd.DataFrame] = {}
    results: dict[str, list[SubsetCheck]] = {}
    for split in splits:
        key = f"data.{split}"
        if not getattr(cfg.data, split):
            raise DataError(f"split '{split}' has no subsets; list subset names under {key}")
        try:
            # build_index takes Literal["train", "test"]; the loop above refused any other split.
            index, checks = build_index(cfg, split)  # type: ignore[arg-type]
        except DataIndexError as exc:
            _print_checks(console, split, exc.checks)
            raise
        _print_checks(console, split, checks)
        if index.empty:
            raise DataError(
                f"split '{split}': no images found for the subsets in {key}; check data.root "
                "and data.prefix_map against the paths in the lists"
            )
        indexes[split], results[split] = index, checks

    # Write only after every split indexed cleanly, so a failure leaves the old index whole.
    index_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split, index in indexes.items():
        path = index_dir / f"{split}.parquet"
        atomic_write_parquet(path, index)
        written[split] = path
        console.print(f"{split}: {len(index)} entries ({index['path'].nunique()} distinct images) in "
                      f"{len(results[split])} subsets -> {escape(str(path))}")
    _update_checks_json(index_dir / "checks.json", results)
    return written
