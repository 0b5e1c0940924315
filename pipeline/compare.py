"""`clare compare`: several evaluated runs in one table, the shape of DF40's results.

Rows are runs (module, strategy, attention, name); columns are the test subsets, grouped as
DF40 groups them (the known methods in each domain, `*_ff` and `*_cdf`; the unseen methods),
and inside a group by DF40 family (FS, FR, EFS, FE), plus the mean over subsets. AUC cells carry a 95 % bootstrap interval that resamples videos
(`clare.bootstrap`). Outputs, in `--out`: compare.md, compare.csv (one row per run and subset,
numbers only), compare.tex (booktabs), compare.html (self-contained: the table, ROC overlays of
the runs per subset, the robustness table) and roc.png.

Inputs are report folders (`reports/<run>/` from `clare eval`) or run folders (`runs/<run>/`,
whose report is `<paths.reports>/<run>` of the run's config).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from rich.markup import escape

from clare.bootstrap import (
    LOWER_BOUND,
    NO_INTERVAL,
    PERCENTILE,
    UPPER_BOUND,
    Interval,
    RunResamples,
    auc_interval,
    resample_runs,
    separates,
)
from clare.config import NOT_APPLICABLE, effective_spec
from clare.data.df40 import DF40_FAMILIES, df40_method
from clare.errors import ClareError
from clare.files import atomic_write_csv, read_record_bytes
from clare.provenance import provenance_line
from clare.records import RUN_FILE, ReportFolder, RunRecord
from clare.render.figures import draw_roc, save_png
from clare.render.templates import latex_text, template_environment

SCORE_COLUMNS = ("subset", "label", "video", "p_fake", "store")
FRAME_COLUMN = "path"  # optional: links one video listed by several subsets (clare.bootstrap)

# DF40's grouping of the test subsets (design.md §4). Matching ignores case.
KNOWN_CDF = "known methods, Celeb-DF domain"
KNOWN_FF = "known methods, FF++ domain"
UNSEEN = "unseen methods"
OTHER = "other"
GROUP_ORDER = (KNOWN_CDF, KNOWN_FF, UNSEEN, OTHER)
UNSEEN_METHODS = frozenset(
    {"heygen", "midjourney", "whichisreal", "whichfaceisreal", "stargan", "starganv2",
     "styleclip", "collabdiff"}
)
MEAN_COLUMN = ("", "mean")
RUN_LEVELS = ("module", "strategy", "attention", "run")
LOWER_IS_BETTER = frozenset({"eer"})
COUNTS = frozenset({"n_real", "n_fake", "n_failed"})  # no "best" among counts


class CompareError(ClareError):
    """A folder given to `clare compare` is not a finished evaluation or run."""


# --------------------------------------------------------------------------- inputs


@dataclass
class RunResult:
    """One evaluated run: its identity, metrics.json and the scores of its clean stores."""

    name: str
    module: str
    strategy: str
    attention: str
    report_dir: Path
    metrics: dict[str, Any]
    scores: pd.DataFrame  # clean stores only: SCORE_COLUMNS (+ FRAME_COLUMN where written)
    clare_version: str | None = None  # as recorded in metrics.json or run.yaml, if at all

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.module, self.strategy, self.attention, self.name)


def _domain_group(subset: str, method: tuple[str, str, bool] | None) -> str:
    name = subset.lower()
    if name.endswith("_cdf"):
        return KNOWN_CDF
    if name.endswith("_ff"):
        return KNOWN_FF
    if name in UNSEEN_METHODS or (method is not None and not method[2]):
        return UNSEEN
    return OTHER


def subset_group(subset: str) -> str:
    """The column group: DF40's domain group, then the method's DF40 family (FS, FR, EFS, FE),
    e.g. `known methods, Celeb-DF domain: FS`; the bare domain group for other names."""
    method = df40_method(subset)
    group = _domain_group(subset, method)
    return f"{group}: {method[0]}" if method is not None and group != OTHER else group


def _group_rank(group: str) -> tuple[int, int]:
    """Domain groups in GROUP_ORDER, families in DF40's order inside each."""
    domain, _, family = group.partition(": ")
    return (GROUP_ORDER.index(domain),
            DF40_FAMILIES.index(family) + 1 if family in DF40_FAMILIES else 0)


def clean_scores(metrics: Mapping[str, Any], scores: pd.DataFrame) -> pd.DataFrame:
    """Rows of the clean stores: every store that is not a robustness (perturbed) store."""
    perturbed = set(metrics.get("robustness") or {})
    return scores[~scores["store"].astype(str).isin(perturbed)].reset_index(drop=True)


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(read_record_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CompareError(f"{path}: unreadable ({exc.__class__.__name__}); {fix}") from None


def _report_of_run(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The report folder of a run folder: `<config paths.reports>/<run folder name>`; and the
    run's module, strategy and attention."""
    record = RunRecord.load(run_dir / RUN_FILE)
    paths = record.config.get("paths")
    reports = (paths if isinstance(paths, dict) else {}).get("reports", "reports")
    report_dir = Path(str(reports)) / run_dir.name
    if not ReportFolder(report_dir).has_report():
        raise CompareError(
            f"{run_dir}: its report {ReportFolder(report_dir).metrics_file} is missing; run "
            f"`clare eval --config CONFIG --run {run_dir}` first, or pass the report folder"
        )
    return report_dir, record.spec()


def resolve_input(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """A report folder, and the run's spec (module, strategy, attention) when a run folder
    was given."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such folder; pass reports/<run> or runs/<run>")
    if ReportFolder(path).has_report():
        return path, None
    if (path / RUN_FILE).is_file():
        return _report_of_run(path)
    raise CompareError(
        f"{path}: neither a report folder (metrics.json) nor a run folder (run.yaml); "
        "pass reports/<run> from `clare eval` or runs/<run> from `clare fit`"
    )


def _spec(report_dir: Path, record: Mapping[str, Any] | None) -> dict[str, str]:
    """module, strategy and attention: from the run record, else the report's run_spec.json."""
    spec_file = ReportFolder(report_dir).run_spec_file
    if record is None and spec_file.is_file():
        record = _read_json(spec_file, "rerun `clare eval`")
    fit = ((record or {}).get("config") or {}).get("fit") or {}
    spec = {key: str((record or {}).get(key) or fit.get(key) or NOT_APPLICABLE)
            for key in ("module", "strategy", "attention")}
    # A setting the module does not use shows as "—", even where an old record kept the config's.
    return {key: "—" if value == NOT_APPLICABLE else value
            for key, value in effective_spec(**spec).items()}


def _read_scores(report_dir: Path) -> pd.DataFrame:
    return ReportFolder(report_dir).load_scores(SCORE_COLUMNS, (FRAME_COLUMN,))


def _recorded_version(record: Mapping[str, Any]) -> str | None:
    """The clare version a metrics.json or run.yaml records (`provenance.clare`; a bare
    `clare_version` in hand-made files), or None."""
    made_by = record.get("provenance")
    version = made_by.get("clare") if isinstance(made_by, Mapping) else None
    return version or record.get("clare_version")


def load_run(path: Path) -> RunResult:
    """Read one input folder; any problem is a one-line ClareError naming the file and the fix."""
    report_dir, record = resolve_input(path)
    metrics = ReportFolder(report_dir).load_metrics().model_dump()
    spec = _spec(report_dir, record)
    name = str(metrics.get("run") or report_dir.name)
    version = _recorded_version(metrics) or _recorded_version(record or {})
    return RunResult(name, spec["module"], spec["strategy"], spec["attention"], report_dir,
                     metrics, clean_scores(metrics, _read_scores(report_dir)),
                     str(version) if version else None)


def load_runs(paths: Sequence[Path]) -> list[RunResult]:
    if not paths:
        raise CompareError("no runs given; pass report or run folders, e.g. reports/a reports/b")
    runs: list[RunResult] = []
    seen: dict[Path, Path] = {}
    for path in paths:
        run = load_run(path)
        where = run.report_dir.resolve()
        if where in seen:
            raise CompareError(f"{path}: same report as {seen[where]}; pass each run once")
        seen[where] = Path(path)
        runs.append(run)
    # Runs of one name (DVC experiments all write reports/<run>, copied elsewhere to compare):
    # the report folder's name tells them apart, or its whole path.
    names = [r.name for r in runs]
    folders = [r.report_dir.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            folder = run.report_dir.name
            run.name = folder if folders.count(folder) == 1 else str(run.report_dir)
    return runs


# --------------------------------------------------------------------------- comparability


def _listing(runs: Sequence[RunResult], describe: Any) -> str:
    return ", ".join(f"{run.name} {describe(run)}" for run in runs)


def _store_fingerprints(run: RunResult) -> str:
    """The fingerprints of the run's clean test stores, shortened (metrics.json `stores`)."""
    perturbed = set(run.metrics.get("robustness") or {})
    stores = run.metrics.get("stores") if isinstance(run.metrics.get("stores"), dict) else {}
    prints = sorted(str(entry.get("fingerprint_sha256") or "unrecorded")[:12]
                    for name, entry in (stores or {}).items()
                    if name not in perturbed and isinstance(entry, dict))
    return "+".join(prints) or "unrecorded"


def _failed_rows(run: RunResult) -> int:
    return int(sum(m.get("n_failed") or 0 for m in run.metrics["subsets"].values()
                   if isinstance(m, dict) and isinstance(m.get("n_failed"), int)))


def _membership_line(runs: Sequence[RunResult]) -> str | None:
    """One line naming the subsets whose videos (or frame files) differ between runs."""
    keys = [c for c in ("video", FRAME_COLUMN) if all(c in r.scores.columns for r in runs)]
    listed: list[dict[str, frozenset[tuple[str, ...]]]] = [
        {str(subset): frozenset(map(tuple, rows[keys].astype(str).to_numpy()))
         for subset, rows in run.scores.groupby("subset")} for run in runs]
    differing = []
    for subset in sorted({s for per_run in listed for s in per_run}):
        sets = [per_run[subset] for per_run in listed if subset in per_run]
        if len(sets) > 1 and len(set(sets)) > 1:
            counts = ", ".join(f"{run.name} {len(per_run[subset])}"
                               for run, per_run in zip(runs, listed, strict=True) if subset in per_run)
            differing.append(f"{subset} ({counts})")
    if not differing:
        return None
    return (f"warning: {len(differing)} subset(s) list different frames in different runs: "
            + "; ".join(differing) + " — their AUCs are not over the same images")


def comparability_warnings(runs: Sequence[RunResult]) -> list[str]:
    """One line per way the runs are not comparable: test stores, subset membership, failed
    rows, clare version (only where some report records one)."""
    if len(runs) < 2:
        return []
    lines = []
    if len({_store_fingerprints(r) for r in runs}) > 1:
        lines.append("warning: the runs were scored on different test stores (fingerprint "
                     f"{_listing(runs, _store_fingerprints)})")
    membership = _membership_line(runs)
    if membership:
        lines.append(membership)
    if len({_failed_rows(r) for r in runs}) > 1:
        lines.append(f"warning: failed rows differ ({_listing(runs, _failed_rows)}); failed rows "
                     "are left out of a run's numbers")
    versions = {r.clare_version for r in runs}
    if len(versions) > 1 and versions != {None}:
        lines.append("warning: the runs were evaluated by different clare versions ("
                     + _listing(runs, lambda r: r.clare_version or "unrecorded") + ")")
    return lines


# --------------------------------------------------------------------------- the table


PAIRED_TEST = ("paired video bootstrap z-test against the runner-up of the column, on the "
               "same resamples of the videos both runs scored (two-sided, 5 %)")


@dataclass
class CompareTable:
    """Values per run and subset (plus the mean), AUC intervals where computed, and which cells
    a paired test marks best."""

    metric: str
    values: pd.DataFrame  # index RUN_LEVELS, columns (group, subset) then MEAN_COLUMN
    low: pd.DataFrame | None = None
    high: pd.DataFrame | None = None
    kind: pd.DataFrame | None = None  # how each interval was made (clare.bootstrap kinds, "")
    videos: pd.DataFrame | None = None  # fewest videos per class behind a bound or a gap
    notes: list[str] = field(default_factory=list)
    best_flags: pd.DataFrame | None = None  # set where a paired test was run

    def best(self) -> pd.DataFrame:
        """True where the paired test separates a cell's run from the runner-up of its column.
        All False where no test was run (another metric than AUC, or no bootstrap)."""
        if self.best_flags is not None:
            return self.best_flags
        return pd.DataFrame(False, index=self.values.index, columns=self.values.columns)


def column_pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(group, subset) of each column of a table frame (its columns are a two-level index)."""
    columns = frame.columns
    return list(zip(columns.get_level_values(0), columns.get_level_values(1), strict=True))


def _number(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def table_columns(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """(group, subset) of every subset of any run, in group order, first-seen order inside."""
    subsets: list[str] = []
    for run in runs:
        subsets += [s for s in run.metrics["subsets"] if s not in subsets]
    return sorted(((subset_group(s), s) for s in subsets),
                  key=lambda col: (_group_rank(col[0]), subsets.index(col[1])))


def check_metric(runs: Sequence[RunResult], metric: str) -> None:
    available = sorted({key for run in runs for m in run.metrics["subsets"].values()
                        for key, value in m.items() if isinstance(value, (int, float))})
    if metric not in available:
        raise CompareError(f"--metric {metric}: not in these metrics.json files; use one of "
                           + ", ".join(available))


def _run_intervals(run: RunResult, columns: list[tuple[str, str]], values: np.ndarray,
                   n_resamples: int, seed: int) -> list[Interval | None]:
    """Intervals of one run's cells (the mean last), all from one draw of the run's videos:
    a video listed by several subsets is drawn once for all of them (clare.bootstrap)."""
    subsets = [subset for (_group, subset), value in zip(columns, values, strict=False)
               if math.isfinite(value)]
    drawn = resample_runs([run.scores], subsets, n_resamples=n_resamples, seed=seed)[0]
    out: list[Interval | None] = []
    for (_group, subset), value in zip(columns, values, strict=False):
        out.append(auc_interval(value, drawn.resampled[subset], drawn.videos[subset])
                   if math.isfinite(value) and subset in drawn.resampled else None)
    if subsets and all(subset in drawn.resampled for subset in subsets):
        out.append(auc_interval(values[-1], drawn.mean(subsets),
                                min(drawn.videos[subset] for subset in subsets)))
    else:
        out.append(None)
    return out


def _interval_frames(runs: Sequence[RunResult], columns: list[tuple[str, str]],
                     values: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """low, high, kind and videos per cell (arrays shaped like `values`)."""
    low, high, videos = (np.full(values.shape, np.nan) for _ in range(3))
    kind = np.full(values.shape, "", dtype=object)
    for i, run in enumerate(runs):
        for j, interval in enumerate(_run_intervals(run, columns, values[i], n_resamples, seed)):
            if interval is not None:
                low[i, j], high[i, j], kind[i, j] = interval.low, interval.high, interval.kind
                videos[i, j] = np.nan if interval.videos is None else interval.videos
    return low, high, kind, videos


def _column_subsets(values: np.ndarray, columns: list[tuple[str, str]], j: int,
                    pair: tuple[int, int]) -> list[str]:
    """The subsets behind column j for two runs: its own, or for the mean the subsets of both
    runs (none when their means cover different subsets, which no test can compare)."""
    if j < len(columns):
        return [columns[j][1]]
    present = np.isfinite(values[list(pair), :-1])
    if not (present[0] == present[1]).all():
        return []
    return [subset for (_group, subset), here in zip(columns, present[0], strict=True) if here]


def _paired_test(pair: Sequence[RunResamples], subsets: list[str]) -> bool:
    """Whether the first run beats the second on `subsets` (their mean AUC) in the paired test."""
    first, second = pair
    if not subsets or any(s not in first.resampled or s not in second.resampled for s in subsets):
        return False
    observed = (float(np.mean([first.observed[s] for s in subsets]))
                - float(np.mean([second.observed[s] for s in subsets])))
    return separates(observed, first.mean(subsets) - second.mean(subsets),
                     min(min(first.videos[s], second.videos[s]) for s in subsets))


def _paired_best(runs: Sequence[RunResult], columns: list[tuple[str, str]], values: np.ndarray,
                 n_resamples: int, seed: int) -> np.ndarray:
    """True where a run's AUC is highest in its column and the paired test separates it from
    the runner-up's. The pair is resampled once for all the columns it heads."""
    flags = np.zeros(values.shape, dtype=bool)
    drawn: dict[tuple[int, int], list[RunResamples]] = {}
    subsets = [subset for _group, subset in columns]
    for j in range(values.shape[1]):
        ranked = sorted(np.flatnonzero(np.isfinite(values[:, j])), key=lambda i: -values[i, j])
        if len(ranked) < 2 or values[ranked[0], j] == values[ranked[1], j]:
            continue
        pair = (int(ranked[0]), int(ranked[1]))
        if pair not in drawn:
            drawn[pair] = resample_runs([runs[pair[0]].scores, runs[pair[1]].scores], subsets,
                                        n_resamples=n_resamples, seed=seed, shared_only=True)
        flags[pair[0], j] = _paired_test(drawn[pair], _column_subsets(values, columns, j, pair))
    return flags


def build_table(runs: Sequence[RunResult], metric: str = "auc", *, n_resamples: int = 1000,
                seed: int = 0) -> CompareTable:
    """The comparison table; for AUC with n_resamples > 0, intervals and the paired test."""
    check_metric(runs, metric)
    columns = table_columns(runs)
    values = np.array([[_number(run.metrics["subsets"].get(subset, {}).get(metric))
                        for _group, subset in columns] for run in runs]).reshape(len(runs), len(columns))
    present = np.isfinite(values)
    counts = present.sum(axis=1)
    totals = np.where(present, values, 0.0).sum(axis=1)
    values = np.column_stack([values, np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)])
    notes = [f"{run.name}: mean over {n} of {len(columns)} subsets ({metric} missing or "
             "undefined elsewhere)" for run, n in zip(runs, counts, strict=True)
             if n < len(columns)]
    index = pd.MultiIndex.from_tuples([r.key for r in runs], names=list(RUN_LEVELS))
    all_columns = pd.MultiIndex.from_tuples([*columns, MEAN_COLUMN], names=["group", "subset"])

    def frame(array: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(array, index=index, columns=all_columns)

    table = CompareTable(metric, frame(values), notes=comparability_warnings(runs) + notes)
    if metric == "auc" and n_resamples > 0:
        low, high, kind, videos = _interval_frames(runs, columns, values, n_resamples, seed)
        table.low, table.high, table.kind, table.videos = frame(low), frame(high), frame(kind), frame(videos)
        table.best_flags = frame(_paired_best(runs, columns, values, n_resamples, seed))
    return table


def long_table(table: CompareTable) -> pd.DataFrame:
    """One row per run and column (CSV): numbers only, the interval beside the value."""
    best = table.best()
    rows = []
    for key in table.values.index:
        for group, subset in column_pairs(table.values):
            column = (group, subset)
            rows.append({
                **dict(zip(RUN_LEVELS, key, strict=True)),
                "group": group or "all", "subset": subset, "metric": table.metric,
                "value": table.values.loc[key, column],
                "ci_low": table.low.loc[key, column] if table.low is not None else np.nan,
                "ci_high": table.high.loc[key, column] if table.high is not None else np.nan,
                # percentile, lower bound ([ci_low, 1] at AUC 1.0), upper bound or none
                "ci_kind": table.kind.loc[key, column] if table.kind is not None else "",
                "ci_videos": table.videos.loc[key, column] if table.videos is not None else np.nan,
                "best": bool(best.loc[key, column]),
            })
    return pd.DataFrame(rows)


def robustness_table(runs: Sequence[RunResult], metric: str = "auc") -> CompareTable | None:
    """Mean `metric` per run on the clean stores and on each perturbed store (None when no run
    was evaluated on a perturbed store)."""
    titles: dict[str, str] = {}
    for run in runs:
        for name, entry in (run.metrics.get("robustness") or {}).items():
            titles.setdefault(name, f"{name} ({entry.get('perturb') or '?'})")
    if not titles:
        return None
    rows = []
    for run in runs:
        robustness = run.metrics.get("robustness") or {}
        rows.append([_number((run.metrics.get("mean") or {}).get(metric))] + [
            _number(((robustness.get(name) or {}).get("mean") or {}).get(metric)) for name in titles
        ])
    return CompareTable(metric, pd.DataFrame(
        rows,
        index=pd.MultiIndex.from_tuples([r.key for r in runs], names=list(RUN_LEVELS)),
        columns=pd.MultiIndex.from_tuples(
            [("", "clean"), *(("perturbed", title) for title in titles.values())],
            names=["group", "subset"]),
    ))


# --------------------------------------------------------------------------- figures


def roc_overlay(runs: Sequence[RunResult], subsets: Sequence[str], path: Path) -> Path:
    """A grid with one panel per subset and one ROC line per run in each."""
    n_cols = max(1, min(4, len(subsets)))
    n_rows = max(1, math.ceil(len(subsets) / n_cols))
    fig = Figure(figsize=(3.0 * n_cols, 2.8 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, subset in zip(axes, subsets, strict=False):
        draw_roc(ax, [(run.name, run.scores[run.scores["subset"] == subset]) for run in runs],
                 subset)
        ax.tick_params(labelsize=7)
    for ax in axes[len(subsets):]:
        ax.set_axis_off()
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(runs)), fontsize=8,
               frameon=False)
    return save_png(fig, path)


# --------------------------------------------------------------------------- rendering


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.0f}" if metric in COUNTS else f"{value:.3f}"


_CELL_LAYOUT = {  # how a value and its interval (or what stands for one) share one cell
    "text": ("{value} [{low}, {high}]", "{value} ({note})"),
    "html": ("{value}<br><small>[{low}, {high}]</small>", "{value}<br><small>({note})</small>"),
    "latex": ("{value} {{\\scriptsize [{low}, {high}]}}", "{value} {{\\scriptsize ({note})}}"),
}
_SIGNS = {"text": ("≥", "≤"), "html": ("≥", "≤"), "latex": ("$\\geq$", "$\\leq$")}


def _cell(frame: pd.DataFrame, key: tuple[str, ...], column: tuple[str, str]) -> float:
    # pandas-stubs types a cell as any scalar; the table frames hold floats.
    return cast(float, frame.loc[key, column])


def _interval_note(table: CompareTable, key: tuple[str, ...], column: tuple[str, str],
                   layout: str) -> str:
    """What stands in for an interval where the resamples do not vary: a one-sided bound with
    the videos it rests on, or the statement that there is no interval."""
    kind = str(table.kind.loc[key, column]) if table.kind is not None else PERCENTILE
    videos = _cell(table.videos, key, column) if table.videos is not None else math.nan
    low = _cell(table.low, key, column) if table.low is not None else math.nan
    high = _cell(table.high, key, column) if table.high is not None else math.nan
    per_class = f"{videos:.0f} video{'s' if videos != 1 else ''}/class"
    at_least, at_most = _SIGNS[layout]
    if kind == LOWER_BOUND:
        return f"{at_least} {low:.3f}, {per_class}"
    if kind == UPPER_BOUND:
        return f"{at_most} {high:.3f}, {per_class}"
    return f"no interval, {per_class}"


def cell_text(table: CompareTable, key: tuple[str, ...], column: tuple[str, str],
              layout: str = "text") -> str:
    """A cell's value, with its interval or what stands for one. Numbers only, so no escaping."""
    value = _fmt(_cell(table.values, key, column), table.metric)
    if table.low is None or table.high is None:
        return value
    kind = str(table.kind.loc[key, column]) if table.kind is not None else PERCENTILE
    interval, note = _CELL_LAYOUT[layout]
    if kind == PERCENTILE and not math.isnan(_cell(table.low, key, column)):
        return interval.format(value=value, low=f"{_cell(table.low, key, column):.3f}",
                               high=f"{_cell(table.high, key, column):.3f}")
    if kind in (LOWER_BOUND, UPPER_BOUND, NO_INTERVAL):
        return note.format(value=value, note=_interval_note(table, key, column, layout))
    return value


def display_frame(table: CompareTable, layout: str = "text") -> pd.DataFrame:
    """Strings: the run levels as leading columns, then one formatted cell per subset."""
    frame = pd.DataFrame(
        {("", level): table.values.index.get_level_values(level) for level in RUN_LEVELS}
    )
    for column in column_pairs(table.values):
        frame[column] = [cell_text(table, key, column, layout) for key in table.values.index]
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["group", "subset"])
    return frame


def styled(table: CompareTable, layout: str) -> Any:
    """A pandas Styler of the table for `layout` (html or latex), best cells in bold."""
    frame = display_frame(table, layout)
    runs: list[Hashable] = [("", level) for level in RUN_LEVELS]
    best = table.best().to_numpy()
    bold = np.full(frame.shape, "", dtype=object)
    bold[:, len(runs):] = np.where(best, "font-weight: bold;", "")
    return (
        frame.style.hide(axis="index")
        .format(escape=layout, subset=runs)  # names are user text; cells hold numbers only
        .format_index(escape=layout, axis=1)
        .apply(lambda _frame: bold, axis=None)
    )


def markdown_table(table: CompareTable) -> dict[str, Any]:
    """Header, group row and body rows of a Markdown table; best cells in bold."""
    frame = display_frame(table)
    best = table.best().to_numpy()
    n_run = len(RUN_LEVELS)
    rows = []
    for i, values in enumerate(frame.itertuples(index=False)):
        cells = [str(v).replace("|", "\\|") for v in values]
        cells[n_run:] = [f"**{c}**" if flag else c for c, flag in zip(cells[n_run:], best[i], strict=True)]
        rows.append(cells)
    groups = [group for group, _subset in column_pairs(frame)]
    shown_groups = [g if i == 0 or g != groups[i - 1] else "" for i, g in enumerate(groups)]
    return {"header": [s for _g, s in column_pairs(frame)], "groups": shown_groups, "rows": rows,
            "align": ["---"] * n_run + ["---:"] * (len(frame.columns) - n_run)}


def _group_rules(table: CompareTable) -> str:
    """\\cmidrule under each named group of the header (LaTeX columns count from 1)."""
    rules = []
    column = len(RUN_LEVELS) + 1
    groups = [group for group, _subset in column_pairs(table.values)]
    for group in dict.fromkeys(groups):
        span = groups.count(group)
        if group:
            rules.append(f"\\cmidrule(lr){{{column}-{column + span - 1}}}")
        column += span
    return " ".join(rules)


def to_latex(table: CompareTable, caption: str, label: str = "tab:clare-compare") -> str:
    """A booktabs table in a `table` float with its caption, rules under the group headers."""
    n_metric = len(table.values.columns)
    tabular = styled(table, "latex").to_latex(
        hrules=True, convert_css=True, multicol_align="c",
        column_format="l" * len(RUN_LEVELS) + "r" * n_metric,
    )
    lines = tabular.splitlines()
    group_row = lines.index("\\toprule") + 1  # the first header row holds the groups
    rules = _group_rules(table)
    if rules:
        lines.insert(group_row + 1, rules)
    return "\n".join([
        "% needs \\usepackage{booktabs}", "\\begin{table}[htbp]", "\\centering",
        f"\\caption{{{latex_text(caption)}.}}", f"\\label{{{label}}}", *lines, "\\end{table}", "",
    ])


@dataclass
class CompareOutputs:
    markdown: Path
    csv: Path
    latex: Path
    html: Path
    roc: Path
    robustness_latex: Path | None


def _caption(table: CompareTable, n_resamples: int, seed: int) -> str:
    what = f"{table.metric.upper() if table.metric in ('auc', 'ap', 'eer') else table.metric} per test subset"
    if table.low is None:
        untested = "--bootstrap 0" if table.metric == "auc" else f"no test for {table.metric}"
        return what + f"; no cell in bold (best is marked only by the paired test on AUC; {untested})"
    return (what + f"; [95 % bootstrap interval over videos, {n_resamples} resamples, seed {seed}: "
            "one resample draws each distinct video once for all the subsets that list it]; "
            "(≥ x, k videos/class): an exact one-sided 95 % bound where AUC is 1.0 and no "
            f"resample varies; in bold: best of its column by a {PAIRED_TEST}")


def _made_by(run: RunResult) -> str:
    """The clare version, commit and library versions its metrics.json records."""
    return provenance_line(run.metrics.get("provenance"))


def write_outputs(runs: Sequence[RunResult], table: CompareTable, out_dir: Path, *,
                  n_resamples: int, seed: int) -> CompareOutputs:
    """compare.md, .csv, .tex, .html and roc.png (+ robustness.tex) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subsets = [subset for group, subset in column_pairs(table.values) if (group, subset) != MEAN_COLUMN]
    roc = roc_overlay(runs, subsets, out_dir / "roc.png")
    robust = robustness_table(runs, table.metric)
    caption = _caption(table, n_resamples, seed)
    context: dict[str, Any] = {
        "caption": caption, "metric": table.metric, "notes": table.notes,
        "runs": [{"name": r.name, "report": str(r.report_dir), "made_by": _made_by(r)}
                 for r in runs],
        "robustness_title": f"Robustness: mean {table.metric} on clean and perturbed test stores",
    }
    env = template_environment()
    outputs = CompareOutputs(out_dir / "compare.md", out_dir / "compare.csv",
                             out_dir / "compare.tex", out_dir / "compare.html", roc, None)
    made_by = {r.name: _made_by(r) for r in runs}
    atomic_write_csv(outputs.csv, long_table(table).assign(made_by=lambda t: t["run"].map(made_by)))
    # One comment line per run (a name or a hand-edited record may hold a newline).
    made_by_tex = "".join(" ".join(f"% {name}: {line}".split()) + "\n" for name, line in made_by.items())
    outputs.latex.write_text(made_by_tex + to_latex(table, caption), encoding="utf-8")
    if robust is not None:
        outputs.robustness_latex = out_dir / "robustness.tex"
        outputs.robustness_latex.write_text(
            to_latex(robust, context["robustness_title"], "tab:clare-robustness"), encoding="utf-8")
    markdown = env.get_template("compare.md.j2").render(
        **context, table=markdown_table(table), roc=roc.name,
        robustness=markdown_table(robust) if robust is not None else None,
    )
    outputs.markdown.write_text(markdown, encoding="utf-8")
    html = env.get_template("compare.html.j2").render(
        **context, table_html=styled(table, "html").to_html(table_attributes='class="compare"'),
        roc_data_uri="data:image/png;base64," + base64.b64encode(roc.read_bytes()).decode("ascii"),
        robustness_html=(styled(robust, "html").to_html(table_attributes='class="compare"')
                         if robust is not None else None),
    )
    outputs.html.write_text(html, encoding="utf-8")
    return outputs


def print_table(table: CompareTable, console: Any) -> None:
    from rich.table import Table

    # Values only: intervals would wrap every cell in a terminal; the files hold them.
    frame = display_frame(CompareTable(table.metric, table.values))
    best = table.best().to_numpy()
    shown = Table(title=f"{table.metric} per test subset", title_justify="left")
    previous = None
    for column in frame.columns:
        group, subset = str(column[0]), str(column[1])  # (group, subset) MultiIndex columns
        title = f"{group}\n{subset}" if group and group != previous else f"\n{subset}"
        shown.add_column(title, justify="left" if subset in RUN_LEVELS else "right")
        previous = group
    for i, values in enumerate(frame.itertuples(index=False)):
        cells = [str(v) for v in values]
        n_run = len(RUN_LEVELS)
        cells[n_run:] = [f"[bold]{c}[/]" if flag else c for c, flag in zip(cells[n_run:], best[i], strict=True)]
        shown.add_row(*cells)
    console.print(shown)
    for note in table.notes:
        console.print(f"  {escape(note)}", highlight=False)


def check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a report folder of `clare eval`: compare.* and roc.png would mix
    with the published evaluation, and its next publish would drop them."""
    if ReportFolder(out_dir).holds_results():
        raise CompareError(f"--out {out_dir}: a report folder of `clare eval` (it holds "
                           "metrics.json); choose a folder of its own, e.g. reports/compare")


def run_compare(paths: Sequence[Path], *, metric: str = "auc", n_resamples: int = 1000,
                out_dir: Path = Path("reports/compare"), seed: int = 0,
                quiet: bool = False) -> CompareOutputs:
    """Load the runs, build the table, print it and write every output; return their paths."""
    from clare.console import make_console

    if n_resamples < 0:
        raise CompareError(f"--bootstrap {n_resamples}: must be 0 (no intervals) or more")
    if seed < 0:  # numpy's generators take no negative seed
        raise CompareError(f"--seed {seed}: must be 0 or more")
    check_out_dir(Path(out_dir))
    runs = load_runs(paths)
    table = build_table(runs, metric, n_resamples=n_resamples, seed=seed)
    outputs = write_outputs(runs, table, out_dir, n_resamples=n_resamples, seed=seed)
    console = make_console(stderr=False, quiet=quiet)
    print_table(table, console)
    if table.low is not None:
        console.print(f"95 % intervals ({n_resamples} video resamples): {escape(str(outputs.markdown))}")
    console.print(f"[bold]{escape(str(outputs.html))}[/] (also {outputs.markdown.name}, {outputs.csv.name}, "
                  f"{outputs.latex.name}, {outputs.roc.name})")
    return outputs
