"""The table of `clare compare` as data, and its cells as text, HTML, Markdown and LaTeX.

Rows are runs (module, strategy, attention, name); columns are the test subsets, grouped as
DF40 groups them (the known methods in each domain, `*_ff` and `*_cdf`; the unseen methods),
inside a group by DF40 family (FS, FR, EFS, FE), plus the mean over subsets. AUC cells carry a
95 % bootstrap interval that resamples videos (`clare.bootstrap`); the best run of a column is
the one a paired test separates from the runner-up. `clare.compare` reads the runs and writes
the files; this module only computes and formats.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

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
from clare.data.df40_methods import DF40_FAMILIES, df40_method
from clare.errors import ClareError
from clare.render.templates import latex_text

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
