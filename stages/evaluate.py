"""Stage evaluate: score the test stores with a trained run; write metrics, scores and a report.

Stores and their roles:
- The first store is the primary (clean) store; further stores without a perturbation are
  clean too, and their subsets join the per-subset table.
- Stores built under a fixed degradation (`clare extract --perturb jpeg=50`) go into the
  robustness section, compared with the clean table subset by subset.

Every store must come from the same frozen models and LaRE settings as the run's train store,
otherwise its features mean something else to the trained head. Scoring reads a store shard by
shard through `StoreLoader`, never whole. The head runs in fp32 even on a GPU (it is small), so
p(fake) does not depend on batch size or device precision settings.

Outputs, in `<paths.reports>/<run name>/`: metrics.json, scores.parquet, roc.json (a list of
{subset, fpr, tpr, threshold} rows that `dvc plots` reads), eval.log and, with `--report`,
report.md, report.html, report.tex, videos.csv and figures/. They are written to a staging folder and published
together, so the folder never holds a report of one evaluation beside metrics of another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from rich.markup import escape

from clare import fingerprint as fp
from clare.cache.loader import StoreLoader
from clare.cache.store import FeatureStore, open_store
from clare.config import Config
from clare.console import command_console, make_console, step_progress
from clare.dvc_summary import write_dvc_files
from clare.errors import ConfigError, ModelLoadError, ReportError, StoreError, short_repr
from clare.metrics import THRESHOLD_ACC
from clare.provenance import provenance
from clare.records import ReportFolder
from clare.runs import (
    EVAL_LOG,
    RunInfo,
    StagedFolder,
    load_detector,
    read_run,
)
from clare.scoring import THRESHOLD_RULE, accuracy_at, entry_scores, score_loader

if TYPE_CHECKING:
    from clare.models.detector import Detector

SCORE_COLUMNS = ("row", "path", "subset", "label", "video", "p_fake", "store")


@dataclass
class StoreToScore:
    """One store named for evaluation, before it is opened."""

    name: str
    path: Path
    perturb: str | None  # the spec from the config or the store name, e.g. "jpeg=50"

    @property
    def extract_hint(self) -> str:
        command = "clare extract --config CONFIG --split test"
        return command + (f" --perturb {self.perturb}" if self.perturb else "")


@dataclass
class ScoredStore:
    name: str
    store: FeatureStore
    perturb: str | None  # None for a clean store
    subsets: list[str]  # in manifest order
    scores: pd.DataFrame  # SCORE_COLUMNS, one row per scored image
    failed: pd.DataFrame  # manifest rows that were not scored (failed extraction or non-finite)


# --------------------------------------------------------------------------- store selection


def _perturb_from_name(name: str) -> str | None:
    """`test-jpeg50` -> `jpeg=50`: lets an explicit --stores name get a useful extract hint."""
    from clare.data.views import perturbation_of_store

    perturbation = perturbation_of_store(Path(name).name)
    return perturbation.spec if perturbation else None


def stores_to_score(cfg: Config, names: list[str] | None = None) -> list[StoreToScore]:
    """`names`, or the configured stores (eval.stores, one `test-<tag>` per perturbation) plus
    every finished `test-*` store found beside them."""
    from clare.data.views import parse_perturbation

    chosen: list[StoreToScore] = []
    if names:
        chosen = [StoreToScore(n, cfg.paths.stores / n, _perturb_from_name(n)) for n in names]
    else:
        chosen = [StoreToScore(n, cfg.paths.stores / n, None) for n in cfg.eval.stores]
        for spec in cfg.eval.perturbations:
            perturbation = parse_perturbation(spec, where="eval.perturbations")
            if perturbation is None:
                raise ConfigError("eval.perturbations holds an empty entry; write e.g. jpeg=50 or remove it")
            name = f"test-{perturbation.tag}"
            chosen.append(StoreToScore(name, cfg.paths.stores / name, perturbation.spec))
        # Robustness stores built with `clare extract --split test --perturb ...` join by
        # themselves, so a DVC pipeline need not repeat its list of perturbations here.
        if cfg.paths.stores.is_dir():
            for path in sorted(cfg.paths.stores.glob("test-*")):
                if (path / "store.json").is_file() and (path / "manifest.parquet").is_file():
                    chosen.append(StoreToScore(path.name, path, _perturb_from_name(path.name)))
    unique: dict[str, StoreToScore] = {}
    for item in chosen:
        unique.setdefault(item.name, item)
    return list(unique.values())


def open_checked(item: StoreToScore, run: RunInfo) -> FeatureStore:
    """Open a store; refuse one built with other frozen models or LaRE settings than the run's."""
    store = open_store(item.path, hint=item.extract_hint)
    fp.require_match(run.store_fingerprint, store.meta.get("fingerprint") or {}, fp.FEATURES,
                     expected_name=f"the run's train store {run.record.store or ''}".rstrip(),
                     actual_name=f"store {store.path}",
                     fix="rebuild one of them with the same models and LaRE settings")
    return store


# --------------------------------------------------------------------------- scoring


def _scored_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows eval scores: usable view-0 rows (a test store has no other view)."""
    return manifest[(manifest["status"] == "ok") & (manifest["view"] == 0)]


def score_store(detector: Detector, store: FeatureStore, *, batch_size: int,
                device: torch.device, name: str | None = None,
                on_batch: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """p(fake) for every entry of a store whose row is usable, in entry order, and the entries
    left out (their row's extraction failed).

    Each usable row is scored once; its score is shared by every entry naming its image.
    """
    manifest = store.manifest()
    entries = store.entry_rows(view=0, manifest=manifest)
    ok = _scored_rows(manifest)
    loader = StoreLoader(
        store, ok["row"].to_numpy(), ok["label"].to_numpy(), batch_size=batch_size, seed=0,
        shuffle=False, read_tokens=detector.needs_tokens, read_lare=detector.needs_lare,
    )
    scored_rows = score_loader(detector, loader, device, amp=False, on_batch=on_batch)
    broken = int((~np.isfinite(scored_rows.probs)).sum())
    if broken:
        # The features are finite (extraction checked them), so the weights are the problem.
        raise ModelLoadError(
            f"{store.path}: the run's detector gave {broken} of {len(scored_rows.probs)} rows a NaN "
            "or infinite score from finite features; its weights (model.safetensors) hold NaN or "
            "inf: retrain the run or restore the file"
        )
    usable = entries["status"] == "ok"
    scored = entries.loc[usable, ["row", "path", "subset", "label", "video"]].reset_index(drop=True)
    scored["p_fake"] = entry_scores(scored_rows, scored)
    scored["store"] = name or store.path.name
    scored = scored.astype({"row": "int64", "label": "int64"})
    return scored[list(SCORE_COLUMNS)], entries[~usable].reset_index(drop=True)


# --------------------------------------------------------------------------- metrics


def subset_metrics(scores: pd.DataFrame, failed: pd.DataFrame, subsets: list[str],
                   threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """compute_metrics per subset (video ids for the video AUC), the count of failed rows and,
    given the run's operating threshold, the accuracy at it (`acc_at_val_threshold`)."""
    from clare.metrics import compute_metrics

    out: dict[str, dict[str, Any]] = {}
    for subset in subsets:
        rows = scores[scores["subset"] == subset]
        labels, probs = rows["label"].to_numpy(), rows["p_fake"].to_numpy()
        metrics = compute_metrics(labels, probs, rows["video"].to_numpy())
        metrics["n_failed"] = int((failed["subset"] == subset).sum())
        metrics[THRESHOLD_ACC] = None if threshold is None else accuracy_at(labels, probs, threshold)
        if metrics[THRESHOLD_ACC] is None:
            metrics["notes"][THRESHOLD_ACC] = ("no images" if len(rows) else
                                               "the run records no operating threshold")
        out[subset] = metrics
    return out


def _subset_order(store: FeatureStore, scores: pd.DataFrame, failed: pd.DataFrame) -> list[str]:
    """The store's subsets in index (config) order, as store.json lists them.

    Rows are stored in a seeded permutation, so row order says nothing about subsets; a store
    whose store.json lacks the list falls back to the order of first appearance."""
    rows = pd.concat([scores[["row", "subset"]], failed[["row", "subset"]]]).sort_values("row")
    present = [str(s) for s in pd.unique(rows["subset"].astype(str))]
    listed = [str(s) for s in store.meta.get("subsets") or [] if str(s) in present]
    return listed + [s for s in present if s not in listed]


def _mean(per_subset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from clare.metrics import summarize

    mean = summarize(per_subset)
    mean["n_failed"] = int(sum(m.get("n_failed", 0) for m in per_subset.values()))
    # Accuracy at the run's threshold is evaluate's own metric: averaged as summarize does.
    values = [m[THRESHOLD_ACC] for m in per_subset.values() if m.get(THRESHOLD_ACC) is not None]
    mean[THRESHOLD_ACC] = float(np.mean(values)) if values else None
    mean[f"{THRESHOLD_ACC}_n_subsets"] = len(values)
    return mean


def roc_rows(scores: pd.DataFrame, subsets: list[str]) -> list[dict[str, Any]]:
    """ROC points of every two-class subset, one flat list with a `subset` field (dvc plots)."""
    from clare.metrics import roc_points

    rows: list[dict[str, Any]] = []
    for subset in subsets:
        part = scores[scores["subset"] == subset]
        for point in roc_points(part["label"].to_numpy(), part["p_fake"].to_numpy()):
            rows.append({"subset": subset, **point})
    return rows


# --------------------------------------------------------------------------- LaRE examples


def pick_lare_examples(store: FeatureStore, scores: pd.DataFrame, per_class: int) -> list[dict[str, Any]]:
    """`per_class` real and fake maps: the first scored rows of each class in row order, taken
    from the subsets in turn so that the examples spread over subsets. Reads only those rows.

    An image listed by several subsets is one example, under the first subset listing it."""
    if per_class <= 0 or scores.empty:
        return []
    images = scores.drop_duplicates("row")
    picked = [row for label in (0, 1)
              for row in _subsets_in_turn(images[images["label"] == label], per_class)]
    if not picked:
        return []
    maps = read_lare_rows(store, np.array([int(p["row"]) for p in picked], dtype=np.int64))
    return [
        {"path": str(p["path"]), "subset": str(p["subset"]), "label": int(p["label"]), "lare": lare}
        for p, lare in zip(picked, maps, strict=True)
        if np.isfinite(lare).all()
    ]


def read_lare_rows(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """The LaRE maps of `rows` (any order), read in row order as the store prefers."""
    order = np.argsort(rows)
    maps = np.empty((len(rows), *store.meta["shapes"]["lare"]), dtype=np.float32)
    maps[order] = store.read_rows("lare", np.asarray(rows, dtype=np.int64)[order])
    return maps


def _subsets_in_turn(scores: pd.DataFrame, count: int) -> list[pd.Series]:
    """Up to `count` rows: the first row of each subset in turn, then the second, and so on."""
    queues = [group for _, group in scores.sort_values("row").groupby("subset", sort=False)]
    picked: list[pd.Series] = []
    depth = 0
    while len(picked) < count and any(depth < len(q) for q in queues):
        picked.extend(q.iloc[depth] for q in queues if depth < len(q))
        depth += 1
    return picked[:count]


# --------------------------------------------------------------------------- console


def _cell(metrics: dict[str, Any], key: str, n_subsets: int | None = None) -> str:
    value = metrics.get(key)
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.3f}"
    elif isinstance(value, int):
        text = str(value)
    else:  # only a hand-edited metrics.json gets here; show it, bounded
        text = short_repr(value, 20)
    contributed = metrics.get(f"{key}_n_subsets")
    if isinstance(n_subsets, int) and isinstance(contributed, int) and contributed < n_subsets:
        text += f" ({contributed}/{n_subsets})"  # a mean over fewer subsets than the table has
    return text


def _print_table(console: Any, run_name: str, subsets: dict[str, dict[str, Any]],
                 mean: dict[str, Any], robustness: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    from clare.metrics import CONSOLE_TABLE, describe_undefined, metric_title

    # Names come from configs and files: escaped, a "[" in them is text, not rich markup.
    table = Table(title=f"{escape(run_name)}: per-subset metrics", title_justify="left")
    table.add_column("subset")
    for key in CONSOLE_TABLE:
        table.add_column(metric_title(key), justify="right")
    for name, metrics in subsets.items():
        table.add_row(escape(name), *(escape(_cell(metrics, key)) for key in CONSOLE_TABLE))
    table.add_row("[bold]mean[/]", *(_cell(mean, key, len(subsets)) for key in CONSOLE_TABLE))
    console.print(table)
    # The reasons go below the table: inside a cell they would wrap it out of shape.
    for line in describe_undefined(subsets, CONSOLE_TABLE):
        console.print(f"  {line}", highlight=False, markup=False)
    for name, entry in robustness.items():
        auc = entry["mean"].get("auc")
        shown_auc = f"{auc:.3f}" if isinstance(auc, float) else "—"
        console.print(f"robustness {name} ({entry['perturb']}): mean AUC {shown_auc}", markup=False)


# --------------------------------------------------------------------------- main


@dataclass
class Evaluation:
    """Everything an evaluation writes, computed from the scored stores."""

    run_name: str
    scored: list[ScoredStore]
    clean_scores: pd.DataFrame
    clean_order: list[str]  # clean subsets, in store order
    subsets: dict[str, dict[str, Any]]
    mean: dict[str, Any]
    robustness: dict[str, dict[str, Any]]
    threshold: float | None = None  # the run's operating threshold

    @property
    def all_scores(self) -> pd.DataFrame:
        return pd.concat([s.scores for s in self.scored], ignore_index=True)

    def metrics(self) -> dict[str, Any]:
        """metrics.json: per-subset and mean metrics, robustness, and which stores were read."""
        return {
            "run": self.run_name,
            "threshold": {"value": self.threshold, "rule": THRESHOLD_RULE},
            "subsets": self.subsets,
            "mean": self.mean,
            "robustness": self.robustness,
            "stores": {
                s.name: {
                    "path": str(s.store.path),
                    "perturb": s.store.meta.get("perturb"),
                    "fingerprint_sha256": s.store.meta.get("fingerprint_sha256"),
                    "rows": int(s.store.n_rows),
                    "scored": int(len(s.scores)),
                    "failed": int(len(s.failed)),
                }
                for s in self.scored
            },
            "provenance": provenance(),
        }


def open_stores(cfg: Config, run: RunInfo, names: list[str] | None) -> list[tuple[StoreToScore, FeatureStore]]:
    """Open and check every store before the (slower) model load, so a typo fails at once."""
    items = stores_to_score(cfg, names)
    if not items:
        raise StoreError("eval.stores is empty and no --stores given; name at least one test store")
    opened = [(item, open_checked(item, run)) for item in items]
    _check_clean_subsets(opened)
    return opened


def score_stores(cfg: Config, run: RunInfo, opened: list[tuple[StoreToScore, FeatureStore]],
                 console: Any) -> list[ScoredStore]:
    """Score every store with the run's detector, with one progress bar over all their rows."""
    from clare.models.loading import resolve_device

    device = resolve_device(cfg.eval.device)
    detector = load_detector(run, device)
    total = sum(len(_scored_rows(store.manifest())) for _item, store in opened)
    scored: list[ScoredStore] = []
    with step_progress(console, f"eval {run.path.name}", "images") as progress:
        task = progress.add_task("eval", total=total)
        for index, (item, store) in enumerate(opened):
            scores, failed = score_store(detector, store, batch_size=cfg.eval.batch_size,
                                         device=device, name=item.name,
                                         on_batch=lambda n: progress.advance(task, n))
            perturb = store.meta.get("perturb") or item.perturb
            # The first store is the table even when perturbed: there is nothing to compare it with.
            scored.append(ScoredStore(item.name, store, None if index == 0 else perturb,
                                      _subset_order(store, scores, failed), scores, failed))
    return scored


def summarize_stores(run_name: str, scored: list[ScoredStore],
                     threshold: float | None = None) -> Evaluation:
    """Metrics per clean subset and their mean; each perturbed store under robustness.

    `threshold`: the run's operating threshold (chosen on its validation videos), or None."""
    clean = [s for s in scored if s.perturb is None]
    clean_scores = pd.concat([s.scores for s in clean], ignore_index=True)
    clean_failed = pd.concat([s.failed for s in clean], ignore_index=True)
    clean_order = [subset for s in clean for subset in s.subsets]
    subsets = subset_metrics(clean_scores, clean_failed, clean_order, threshold)
    robustness: dict[str, dict[str, Any]] = {}
    for item in scored:
        if item.perturb is not None:
            per_subset = subset_metrics(item.scores, item.failed, item.subsets, threshold)
            robustness[item.name] = {"perturb": item.perturb, "subsets": per_subset,
                                     "mean": _mean(per_subset)}
    return Evaluation(run_name, scored, clean_scores, clean_order, subsets, _mean(subsets),
                      robustness, threshold)


def write_outputs(out_dir: Path, evaluation: Evaluation, run: RunInfo) -> dict[str, Any]:
    """The report folder's records and the DVC files; returns the metrics written."""
    metrics = evaluation.metrics()
    ReportFolder(out_dir).save(metrics, evaluation.all_scores,
                               roc_rows(evaluation.clean_scores, evaluation.clean_order))
    write_dvc_files(out_dir, metrics, evaluation.all_scores, run)  # compact metrics, plots for DVC
    return metrics


def write_report(out_dir: Path, cfg: Config, run: RunInfo, evaluation: Evaluation,
                 metrics: dict[str, Any]) -> None:
    """report.md, report.html and figures/, from the same metrics as metrics.json."""
    from clare.report import render_report

    scored = evaluation.scored
    fingerprints = {"train": run.store_fingerprint,
                    **{s.name: s.store.meta.get("fingerprint", {}) for s in scored}}
    examples = pick_lare_examples(scored[0].store, scored[0].scores, cfg.eval.lare_examples)
    stores = {s.name: s.store for s in scored}
    render_report(
        out_dir, title=f"CLaRE evaluation: {evaluation.run_name}", metrics=metrics,
        scores=evaluation.all_scores, config=run.record.config, fingerprints=fingerprints,
        robustness=evaluation.robustness or None, lare_examples=examples,
        image_root=cfg.data.root,  # the worst errors' thumbnails, from the listed image files
        read_lare=lambda store, rows: read_lare_rows(stores[store], rows),
        training=run.record.model_dump(),  # the report reads it as a mapping
    )


def run_eval(cfg: Config, *, run_dir: Path | None = None, stores: list[str] | None = None,
             report: bool = False, quiet: bool = False) -> Path:
    """Score the stores with a trained run and write the evaluation outputs; return their folder.

    The outputs are written to a staging folder and published whole (clare.runs.StagedFolder),
    so a killed evaluation leaves the previous report folder as it was: metrics and report
    always come from the same evaluation.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir) if run_dir is not None else cfg.paths.runs / cfg.run_name()
    run = read_run(run_dir)
    opened = open_stores(cfg, run, stores)
    folder = StagedFolder(cfg.paths.reports / run_dir.name, "clare eval")
    with folder.lock(ReportError):
        staging = folder.fresh_staging()
        console = command_console(staging / EVAL_LOG, quiet=quiet)
        evaluation = summarize_stores(run_dir.name, score_stores(cfg, run, opened, console),
                                      run.threshold)
        metrics = write_outputs(staging, evaluation, run)
        if report:
            write_report(staging, cfg, run, evaluation, metrics)
        _print_table(console, evaluation.run_name, evaluation.subsets, evaluation.mean,
                     evaluation.robustness)
        folder.publish()
    what = "report" if report else "metrics"
    console.print(f"[bold]{escape(str(folder.final))}[/]: {what} written in {time.perf_counter() - started:.1f} s")
    return folder.final


def _check_clean_subsets(opened: list[tuple[StoreToScore, FeatureStore]]) -> None:
    """Refuse a subset name found in two clean stores: its metrics would mix two image sets."""
    seen: dict[str, str] = {}
    for index, (item, store) in enumerate(opened):
        if index > 0 and (store.meta.get("perturb") or item.perturb):
            continue
        for subset in store.meta.get("subsets") or sorted(set(store.entries()["subset"])):
            if subset in seen:
                raise StoreError(
                    f"{store.path}: subset '{subset}' is also in store '{seen[subset]}'; "
                    "evaluate one of the two stores (--stores) or rename the subset"
                )
            seen[subset] = item.name


def report_dir_from_params(params: Path) -> Path:
    """`<reports>/<run>` as named by a DVC params file (keys `reports` and `run`)."""
    from clare.config_files import read_yaml_mapping

    values = read_yaml_mapping(
        params, "DVC params file", "pass the report folder, e.g. `clare show reports/demo`"
    )
    parts = []
    for key, default in (("reports", "reports"), ("run", "demo")):
        value = values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise ConfigError(f"{params}: key '{key}' must be a folder name, got {short_repr(value)}")
        parts.append(str(value))
    return Path(parts[0]) / parts[1]


def show_report(report_dir: Path) -> None:
    """Print the per-subset table of a finished evaluation and where its report is."""
    folder = ReportFolder(Path(report_dir))
    metrics_file = folder.metrics_file
    if not folder.has_report():
        raise StoreError(f"{metrics_file}: not found; run `clare eval --config CONFIG --report` first")
    metrics = folder.load_metrics()
    console = make_console(stderr=False)
    robustness = {name: entry.model_dump() for name, entry in metrics.robustness.items()}
    _print_table(console, metrics.run or Path(report_dir).name, metrics.subsets, metrics.mean,
                 robustness)
    html = Path(report_dir) / "report.html"
    console.print(f"report: {html if html.is_file() else metrics_file}", markup=False)
