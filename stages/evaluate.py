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
{subset, fpr, tpr, threshold} rows that `dvc plots` reads) and, with `--report`, report.md,
report.html and figures/.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clare.cache.loader import StoreLoader
from clare.cache.store import FeatureStore, open_store
from clare.config import Config
from clare.console import make_console
from clare.errors import ConfigError, StoreError
from clare.files import atomic_write_bytes, atomic_write_parquet
from clare.runs import RunInfo, check_compatible, load_detector, read_run

SCORE_COLUMNS = ("row", "path", "subset", "label", "video", "p_fake", "store")
REPORT_OUTPUTS = ("report.md", "report.html", "figures")


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


_PERTURBED_NAME = re.compile(r"^(?P<split>.+)-(?P<kind>jpeg|blur)(?P<value>\d+(?:\.\d+)?)$")


def _perturb_from_name(name: str) -> str | None:
    """`test-jpeg50` -> `jpeg=50`: lets an explicit --stores name get a useful extract hint."""
    match = _PERTURBED_NAME.match(Path(name).name)
    return f"{match['kind']}={match['value']}" if match else None


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
            perturbation = parse_perturbation(spec)
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
    check_compatible(
        run.store_fingerprint,
        store.meta.get("fingerprint", {}),
        f"the run's train store {run.record.get('store', '')}".rstrip(),
        str(store.path),
    )
    return store


# --------------------------------------------------------------------------- scoring


def score_store(detector: torch.nn.Module, store: FeatureStore, *, batch_size: int,
                device: torch.device, name: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """p(fake) for every usable row of a store, in row order, and the rows left out.

    Rows whose extraction failed, or whose features are not finite, are left out.
    """
    from clare.stages.fit import score_loader

    manifest = store.manifest()
    ok = manifest[manifest["status"] == "ok"]
    loader = StoreLoader(
        store, ok["row"].to_numpy(), ok["label"].to_numpy(), batch_size=batch_size, seed=0,
        shuffle=False, read_tokens=detector.needs_tokens, read_lare=detector.needs_lare,
    )
    probs, _labels, rows, _loss = score_loader(detector, loader, device, amp=False)
    by_row = manifest.set_index("row", drop=False)
    scored = by_row.loc[rows, ["row", "path", "subset", "label", "video"]].reset_index(drop=True)
    scored["p_fake"] = probs.astype(np.float64)
    scored["store"] = name or store.path.name
    scored = scored.astype({"row": "int64", "label": "int64"})
    scored = scored.sort_values("row", kind="stable").reset_index(drop=True)
    failed = manifest[~manifest["row"].isin(scored["row"])]
    return scored[list(SCORE_COLUMNS)], failed


# --------------------------------------------------------------------------- metrics


def subset_metrics(scores: pd.DataFrame, failed: pd.DataFrame,
                   subsets: list[str]) -> dict[str, dict[str, Any]]:
    """compute_metrics per subset (video ids for the video AUC) plus the count of failed rows."""
    from clare.metrics import compute_metrics

    out: dict[str, dict[str, Any]] = {}
    for subset in subsets:
        rows = scores[scores["subset"] == subset]
        metrics = compute_metrics(rows["label"].to_numpy(), rows["p_fake"].to_numpy(),
                                  rows["video"].to_numpy())
        metrics["n_failed"] = int((failed["subset"] == subset).sum())
        out[subset] = metrics
    return out


def _subset_order(scores: pd.DataFrame, failed: pd.DataFrame) -> list[str]:
    """Subsets in the order their first row appears in the store."""
    rows = pd.concat([scores[["row", "subset"]], failed[["row", "subset"]]]).sort_values("row")
    return [str(s) for s in pd.unique(rows["subset"].astype(str))]


def _mean(per_subset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from clare.metrics import summarize

    mean = summarize(per_subset)
    mean["n_failed"] = int(sum(m.get("n_failed", 0) for m in per_subset.values()))
    return mean


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, payload: Any) -> None:
    text = json.dumps(_json_safe(payload), indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


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
    from the subsets in turn so that the examples spread over subsets. Reads only those rows."""
    if per_class <= 0 or scores.empty:
        return []
    picked: list[pd.Series] = []
    for label in (0, 1):
        rows = scores[scores["label"] == label].sort_values("row")
        queues = [group for _, group in rows.groupby("subset", sort=False)]
        taken, depth = 0, 0
        while taken < per_class and any(depth < len(q) for q in queues):
            for queue in queues:
                if depth < len(queue) and taken < per_class:
                    picked.append(queue.iloc[depth])
                    taken += 1
            depth += 1
    if not picked:
        return []
    row_ids = np.array([int(p["row"]) for p in picked], dtype=np.int64)
    order = np.argsort(row_ids)
    maps = np.empty((len(row_ids), *store.meta["shapes"]["lare"]), dtype=np.float32)
    maps[order] = store.read_rows("lare", row_ids[order])
    return [
        {"path": str(p["path"]), "subset": str(p["subset"]), "label": int(p["label"]), "lare": lare}
        for p, lare in zip(picked, maps, strict=True)
        if np.isfinite(lare).all()
    ]


# --------------------------------------------------------------------------- console


def _cell(metrics: dict[str, Any], key: str, n_subsets: int | None = None) -> str:
    value = metrics.get(key)
    if value is None:
        return "—"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    contributed = metrics.get(f"{key}_n_subsets")
    if n_subsets is not None and contributed is not None and contributed < n_subsets:
        text += f" ({contributed}/{n_subsets})"  # a mean over fewer subsets than the table has
    return text


_TABLE_COLUMNS = (("auc", "AUC"), ("ap", "AP"), ("eer", "EER"), ("acc", "Acc@0.5"),
                  ("video_auc", "video AUC"), ("n_real", "real"), ("n_fake", "fake"),
                  ("n_failed", "failed"))


def _print_table(console: Any, run_name: str, subsets: dict[str, dict[str, Any]],
                 mean: dict[str, Any], robustness: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=f"{run_name}: per-subset metrics", title_justify="left")
    table.add_column("subset")
    for _key, title in _TABLE_COLUMNS:
        table.add_column(title, justify="right")
    for name, metrics in subsets.items():
        table.add_row(name, *(_cell(metrics, key) for key, _ in _TABLE_COLUMNS))
    table.add_row("[bold]mean[/]", *(_cell(mean, key, len(subsets)) for key, _ in _TABLE_COLUMNS))
    console.print(table)
    shown = {key for key, _ in _TABLE_COLUMNS}
    for name, metrics in subsets.items():
        # The reasons go below the table: inside a cell they would wrap it out of shape.
        by_reason: dict[str, list[str]] = {}
        for key, reason in (metrics.get("notes") or {}).items():
            if key in shown:
                by_reason.setdefault(reason, []).append(dict(_TABLE_COLUMNS)[key])
        for reason, titles in by_reason.items():
            console.print(f"  {name}: {', '.join(titles)} undefined ({reason})", highlight=False)
    for name, entry in robustness.items():
        auc = entry["mean"].get("auc")
        shown_auc = f"{auc:.3f}" if isinstance(auc, float) else "—"
        console.print(f"robustness {name} ({entry['perturb']}): mean AUC {shown_auc}")


# --------------------------------------------------------------------------- main


def run_eval(cfg: Config, *, run_dir: Path | None = None, stores: list[str] | None = None,
             report: bool = False, quiet: bool = False) -> Path:
    """Score the stores with a trained run and write the evaluation outputs; return their folder."""

    from clare.models.loading import resolve_device

    console = make_console(quiet=quiet)
    started = time.perf_counter()
    run_dir = Path(run_dir) if run_dir is not None else cfg.paths.runs / cfg.run_name()
    run = read_run(run_dir)
    items = stores_to_score(cfg, stores)
    if not items:
        raise StoreError("eval.stores is empty and no --stores given; name at least one test store")
    # Open and check every store before the (slower) model load, so a typo fails at once.
    opened = [(item, open_checked(item, run)) for item in items]
    _check_clean_subsets(opened)

    device = resolve_device(cfg.eval.device)
    detector = load_detector(run, device)
    scored: list[ScoredStore] = []
    for index, (item, store) in enumerate(opened):
        scores, failed = score_store(detector, store, batch_size=cfg.eval.batch_size,
                                     device=device, name=item.name)
        perturb = store.meta.get("perturb") or item.perturb
        # The first store is the table even when perturbed: there is nothing to compare it with.
        scored.append(ScoredStore(item.name, store, None if index == 0 else perturb,
                                  _subset_order(scores, failed), scores, failed))

    clean = [s for s in scored if s.perturb is None]
    perturbed = [s for s in scored if s.perturb is not None]
    clean_scores = pd.concat([s.scores for s in clean], ignore_index=True)
    clean_failed = pd.concat([s.failed for s in clean], ignore_index=True)
    clean_order = [subset for s in clean for subset in s.subsets]
    subsets = subset_metrics(clean_scores, clean_failed, clean_order)
    mean = _mean(subsets)
    robustness: dict[str, dict[str, Any]] = {}
    for item in perturbed:
        per_subset = subset_metrics(item.scores, item.failed, item.subsets)
        robustness[item.name] = {"perturb": item.perturb, "subsets": per_subset, "mean": _mean(per_subset)}

    name = run_dir.name
    out_dir = cfg.paths.reports / name
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "run": name,
        "subsets": subsets,
        "mean": mean,
        "robustness": robustness,
        "stores": {
            s.name: {
                "path": str(s.store.path),
                "perturb": s.store.meta.get("perturb"),
                "fingerprint_sha256": s.store.meta.get("fingerprint_sha256"),
                "rows": int(s.store.n_rows),
                "scored": int(len(s.scores)),
                "failed": int(len(s.failed)),
            }
            for s in scored
        },
    }
    all_scores = pd.concat([s.scores for s in scored], ignore_index=True)
    _write_json(out_dir / "metrics.json", metrics)
    atomic_write_parquet(out_dir / "scores.parquet", all_scores)
    _write_json(out_dir / "roc.json", roc_rows(clean_scores, clean_order))
    from clare.dvc_summary import write_dvc_files  # compact metrics and plots for DVC
    write_dvc_files(out_dir, metrics, all_scores, run)

    if report:
        from clare.report import render_report

        fingerprints = {"train": run.store_fingerprint,
                        **{s.name: s.store.meta.get("fingerprint", {}) for s in scored}}
        examples = pick_lare_examples(scored[0].store, scored[0].scores, cfg.eval.lare_examples)
        render_report(
            out_dir, title=f"CLaRE evaluation: {name}", metrics=metrics, scores=all_scores,
            config=run.record["config"], fingerprints=fingerprints,
            robustness=robustness or None, lare_examples=examples,
        )
    else:
        _remove_stale_report(out_dir)

    _print_table(console, name, subsets, mean, robustness)
    what = "report" if report else "metrics"
    console.print(f"[bold]{out_dir}[/]: {what} written in {time.perf_counter() - started:.1f} s")
    return out_dir


def _check_clean_subsets(opened: list[tuple[StoreToScore, FeatureStore]]) -> None:
    """Refuse a subset name found in two clean stores: its metrics would mix two image sets."""
    seen: dict[str, str] = {}
    for index, (item, store) in enumerate(opened):
        if index > 0 and (store.meta.get("perturb") or item.perturb):
            continue
        for subset in store.meta.get("subsets") or sorted(set(store.manifest()["subset"])):
            if subset in seen:
                raise StoreError(
                    f"{store.path}: subset '{subset}' is also in store '{seen[subset]}'; "
                    "evaluate one of the two stores (--stores) or rename the subset"
                )
            seen[subset] = item.name


def _remove_stale_report(out_dir: Path) -> None:
    # A report of an earlier evaluation would contradict the metrics just written.
    for name in REPORT_OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def show_report(report_dir: Path) -> None:
    """Print the per-subset table of a finished evaluation and where its report is."""

    metrics_file = Path(report_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise StoreError(f"{metrics_file}: not found; run `clare eval --config CONFIG --report` first")
    metrics = json.loads(metrics_file.read_text())
    console = make_console(stderr=False)
    _print_table(console, metrics.get("run", Path(report_dir).name), metrics["subsets"],
                 metrics["mean"], metrics.get("robustness") or {})
    html = Path(report_dir) / "report.html"
    console.print(f"report: {html if html.is_file() else metrics_file}")
