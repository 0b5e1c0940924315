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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from rich.markup import escape

from clare.compare_table import (
    FRAME_COLUMN,
    MEAN_COLUMN,
    PAIRED_TEST,
    RUN_LEVELS,
    SCORE_COLUMNS,
    CompareError,
    CompareTable,
    RunResult,
    build_table,
    column_pairs,
    display_frame,
    long_table,
    markdown_table,
    robustness_table,
    styled,
    to_latex,
)
from clare.config import NOT_APPLICABLE, effective_spec
from clare.files import atomic_write_csv, read_record_bytes
from clare.provenance import provenance_line
from clare.records import RUN_FILE, ReportFolder, RunRecord
from clare.render.figures import draw_roc, save_png
from clare.render.templates import template_environment

# --------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------- outputs


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
        shown.add_column(escape(title), justify="left" if subset in RUN_LEVELS else "right")
        previous = group
    for i, values in enumerate(frame.itertuples(index=False)):
        cells = [escape(str(v)) for v in values]  # run and subset names are the user's
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
