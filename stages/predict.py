"""`clare predict`: score new images, folders and videos with a trained run, write the files.

The scoring is the Python API's (clare.predictor.Predictor: one code path): this module adds
what the command line has around it: INPUT folders, globs and `--list`, the output files and
locks, `--store`, `--explain`'s gallery, the table and the summary line.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.markup import escape

from clare.cache.spill import FeatureSpill
from clare.config import Config
from clare.console import make_console
from clare.data.df40 import describe_label_conflicts
from clare.errors import ConfigError, DataError, StoreError, one_line, reason_label
from clare.files import open_lock_file, pid_lock
from clare.predictor import (
    IMAGE_SUFFIXES,
    PREDICTION_COLUMNS,  # noqa: F401 - the columns' name where the command's users look
    STORE_SUBSET,
    VIDEO_SUFFIXES,
    InputResult,
    Item,
    Predictor,
    as_items,
    predictions_frame,
    result_rows,
)

TABLE_LIMIT = 20  # inputs up to which the predictions are printed as a table
SPILL_DIR = ".predict-spill"  # --store: features wait here until every input is scored


# --------------------------------------------------------------------------- inputs


def _media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _media(p))


def _expand(text: str) -> list[Path]:
    """One INPUT: a file as given, a folder's image and video files (recursive, sorted), or
    a glob pattern's matches; matching nothing is the user's error."""
    path = Path(text)
    if path.is_dir():
        found = _folder_files(path)
    elif path.exists():
        return [path]
    elif glob.has_magic(text):
        found = []
        for match in sorted(glob.glob(text, recursive=True)):
            hit = Path(match)
            found.extend(_folder_files(hit) if hit.is_dir() else [hit] if hit.is_file() else [])
    else:
        raise DataError(f"{text}: no such file or folder; check the path")
    if not found:
        raise DataError(f"{text}: matches no image or video file "
                        f"({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}); check the path")
    return found


def _read_list(list_file: Path) -> list[Path]:
    """`--list FILE`: one path a line (blank lines and # comments skipped); relative paths
    are taken from the current folder. A listed path that is missing becomes a failed row."""
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--list {list_file}: cannot read it ({one_line(exc, 120)}); "
                        "pass a UTF-8 text file with one path a line") from None
    return [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def collect_inputs(inputs: list[str], list_file: Path | None = None) -> list[Path]:
    """Every input file in order (first occurrence kept)."""
    paths = [p for text in inputs for p in _expand(text)]
    if list_file is not None:
        paths.extend(_read_list(list_file))
    if not paths:
        raise DataError("no inputs: pass image or video files, folders, globs or --list FILE")
    return list(dict.fromkeys(paths))


def check_outputs_outside_inputs(inputs: list[str], outputs: dict[str, Path | None]) -> None:
    """Refuse an output folder (`--out`, `--store`) inside an input folder: the next predict
    of that folder would score the images predict wrote there (explain/*.png)."""
    folders = [Path(text).resolve() for text in inputs if Path(text).is_dir()]
    for option, out in outputs.items():
        if out is None:
            continue
        target = Path(out).resolve()
        inside = next((folder for folder in folders if target.is_relative_to(folder)), None)
        if inside is not None:
            raise ConfigError(f"{option} {out}: inside the input folder {inside}, so predict's own "
                              "outputs would become inputs; choose a folder outside it")


# --------------------------------------------------------------------------- driver


@dataclass
class PredictSummary:
    out_dir: Path
    predictions: pd.DataFrame
    inputs: int
    failed: int  # inputs whose final row failed
    threshold: float
    seconds: float
    images_scored: int  # images and frames through the models
    store: Path | None = None  # --store: the feature store written

    @property
    def images_per_second(self) -> float:
        return self.images_scored / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class PredictOptions:
    out_dir: Path | None = None
    device: str | None = None
    batch_size: int | None = None
    threshold: float | None = None
    explain: bool = False
    quiet: bool = False
    faces: str = "none"  # none: inputs are face crops already; detect: crop the largest face
    store: Path | None = None  # also write the computed features as a feature store here


def _check_store_target(path: Path | None) -> None:
    """`--store DIR` must be a new or empty folder: predict never mixes into another store."""
    if path is None or not path.exists():
        return
    if not path.is_dir() or any(path.iterdir()):
        raise StoreError(f"--store {path}: already exists and is not an empty folder; "
                         "choose a new folder or delete it")


def _write_store(spill: FeatureSpill, path: Path, cfg: Config, faces: str, console: Any) -> Path | None:
    """The features of every scored image as a store at `path`; None when none scored."""
    store = spill.write_store(path, cfg, split=STORE_SUBSET, extra={"faces": faces},
                              describe_conflicts=describe_label_conflicts)
    spill.close()
    if store is None:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        console.print(f"--store {escape(str(path))}: no store written, no image was scored")
        return None
    console.print(f"[bold]{escape(str(path))}[/]: feature store of the {store.n_rows} scored image(s)")
    return path


def run_predict(run_dir: Path | str, inputs: list[str], *, list_file: Path | None = None,
                config_files: list[Path] | None = None, overrides: list[str] | None = None,
                options: PredictOptions | None = None) -> PredictSummary:
    """`clare predict`: `run_dir` is a run folder, an exported folder or a hub id (owner/name)."""
    options = options or PredictOptions()
    console = make_console(quiet=options.quiet)
    predictor = Predictor.open(run_dir, config_files=config_files or [], overrides=overrides or [],
                               device=options.device, threshold=options.threshold,
                               faces=options.faces, batch_size=options.batch_size)
    for note in predictor.notes:
        console.print(escape(note))
    paths = collect_inputs(inputs, list_file)
    out_dir = Path(options.out_dir) if options.out_dir else Path("predictions") / predictor.name
    check_outputs_outside_inputs(inputs, {"--out": out_dir, "--store": options.store})
    _check_store_target(options.store)  # before it is made: a file there is named as such
    # The output folders are made now, by the locks: one that cannot be written fails before
    # the inputs are scored.
    with output_locks({"--out": out_dir, "--store": options.store}):
        _check_store_target(options.store)  # under the lock: two predicts cannot both find it empty
        return _predict(predictor, paths, out_dir, options, console)


@contextmanager
def output_locks(outputs: dict[str, Path | None]) -> Iterator[None]:
    """Hold `.<folder>.lock` beside each output folder for the whole predict: a second predict
    into the same --out (whose files would interleave) or --store is refused in one line."""
    with ExitStack() as stack:
        for option, folder in outputs.items():
            if folder is None:
                continue
            Path(folder).mkdir(parents=True, exist_ok=True)  # one that cannot be made fails here
            target = Path(folder).resolve()
            handle = open_lock_file(target.parent / f".{target.name}.lock", ConfigError)  # held below

            def held(holder: str, option: str = option, folder: Path = Path(folder)) -> ConfigError:
                return ConfigError(f"{option} {folder}: another clare predict is writing it (pid "
                                   f"{holder}); wait for it to finish or choose another {option}")

            stack.enter_context(pid_lock(handle, held))
        yield


def _predict(predictor: Predictor, paths: list[Path], out_dir: Path, options: PredictOptions,
             console: Any) -> PredictSummary:
    """Score `paths` and write the outputs (under the output locks)."""
    spill = FeatureSpill(Path(options.store) / SPILL_DIR) if options.store is not None else None
    try:
        threads = torch.get_num_threads()
        # Interactive work: every core for torch (extract pins threads for bit-identical stores).
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            predictor.models()
            started = time.perf_counter()
            results, scored = _score_with_progress(predictor, as_items(paths), options, spill, console)
            seconds = time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)
        summary = _finish(results, out_dir, predictor.threshold, seconds, scored, options, console)
        if spill is not None and options.store is not None:
            summary.store = _write_store(spill, Path(options.store), predictor.config,
                                         options.faces, console)
    finally:
        if spill is not None:
            spill.close()  # a failed run leaves no spilled features behind
    return summary


def _score_with_progress(predictor: Predictor, items: list[Item], options: PredictOptions,
                         spill: FeatureSpill | None, console: Any) -> tuple[list[InputResult], int]:
    from clare.console import step_progress

    results: list[InputResult] = []
    if len(items) <= TABLE_LIMIT:
        scored = predictor.score(items, results.append, explain=options.explain, spill=spill)
        return results, scored
    with step_progress(console, "predict", "img") as progress:
        task = progress.add_task("predict", total=len(items))

        def on_input(result: InputResult) -> None:
            results.append(result)
            progress.advance(task)

        scored = predictor.score(items, on_input, explain=options.explain, spill=spill)
    return results, scored


def _finish(results: list[InputResult], out_dir: Path, threshold: float, seconds: float,
            scored: int, options: PredictOptions, console: Any) -> PredictSummary:
    from clare.files import atomic_write_csv, atomic_write_parquet

    rows = [row for result in results for row in result_rows(result, threshold)]
    frame = predictions_frame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_dir / "predictions.csv", frame)
    atomic_write_parquet(out_dir / "predictions.parquet", frame)
    final = frame[frame["kind"] != "frame"]
    failed = int((final["status"] != "ok").sum())
    summary = PredictSummary(out_dir, frame, len(results), failed, threshold, seconds, scored)
    if options.explain:
        from clare.explain import write_explanations

        write_explanations(results, threshold, out_dir)
    if len(results) <= TABLE_LIMIT:
        print_table(console, frame)
    _print_summary(console, summary, final)
    return summary


def print_table(console: Any, frame: pd.DataFrame) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("input", overflow="fold")  # a path is shown whole, over several lines
    for name in ("frame", "p_fake", "verdict"):
        table.add_column(name, no_wrap=True)
    table.add_column("status", overflow="fold")
    for row in frame.to_dict("records"):
        frame_text = "" if pd.isna(row["frame"]) else str(row["frame"])
        p_text = "" if pd.isna(row["p_fake"]) else f"{row['p_fake']:.4f}"
        status = "ok" if row["status"] == "ok" else f"failed: {one_line(str(row['error']), 60)}"
        label = str(row["input"]) + (" (video)" if row["kind"] == "video" else "")
        table.add_row(escape(label), frame_text, p_text, str(row["verdict"]), escape(status))
    console.print(table)


def _print_summary(console: Any, summary: PredictSummary, final: pd.DataFrame) -> None:
    reasons = final.loc[final["status"] != "ok", "error"].map(reason_label).value_counts()
    why = escape(", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none")
    fake = int((final["verdict"] == "fake").sum())
    console.print(
        f"[bold]{escape(str(summary.out_dir / 'predictions.csv'))}[/]: {summary.inputs} input{'' if summary.inputs == 1 else 's'}, {fake} fake at "
        f"threshold {summary.threshold:.4f}, {summary.failed} failed ({why}); "
        f"{summary.images_scored} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} img/s)"
    )
