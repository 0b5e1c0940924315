"""What an evaluation leaves for DVC experiments, beside the full metrics.json.

- `dvc_metrics.json`: the DVC metrics file, tens of numbers rather than metrics.json's hundreds,
  so that `dvc exp show` stays readable: mean test AUC, AP, EER and video AUC, the AUC per test
  subset, the mean AUC per robustness store, and the validation AUC and loss of the kept
  checkpoint (from run.yaml).
- `plots/roc.png` (one ROC line per clean test subset) and `plots/validation.png` (validation
  AUC and loss per validation step): images, because DVC's HTML draws data-series plots with
  Vega scripts from a CDN, and images show offline.
- `run_spec.json`: the run's name, folder, module, strategy and attention, so that
  `clare compare reports/<run>` can label its row without the run folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from clare.compare import clean_scores
from clare.files import atomic_write_metrics_json
from clare.records import ReportFolder
from clare.render.figures import draw_roc, save_png, validation_figure

PLOTS_DIR = "plots"
MEAN_KEYS = ("auc", "ap", "eer", "video_auc")


def dvc_metrics(metrics: Mapping[str, Any], best: Mapping[str, Any]) -> dict[str, Any]:
    """The compact metrics: test means, AUC per subset and robustness store, and the best
    validation (`best`: run.yaml's metrics)."""
    mean = metrics.get("mean") or {}
    return {
        **{key: mean.get(key) for key in MEAN_KEYS},
        "val_auc": best.get("val_auc", best.get("auc")),
        "val_loss": best.get("val_loss"),
        "subset_auc": {name: m.get("auc") for name, m in (metrics.get("subsets") or {}).items()},
        "robust_auc": {name: (entry.get("mean") or {}).get("auc")
                       for name, entry in (metrics.get("robustness") or {}).items()},
    }


def roc_figure(scores: pd.DataFrame, subsets: list[str], path: Path, title: str) -> Path:
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    draw_roc(ax, [(s, scores[scores["subset"] == s]) for s in subsets], title)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate")
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    return save_png(fig, path)


def write_dvc_files(out_dir: Path, metrics: Mapping[str, Any], scores: pd.DataFrame,
                    run: Any) -> None:
    """Write dvc_metrics.json, run_spec.json and plots/ into an evaluation's report folder.

    `scores` are all scored rows (scores.parquet); `run` is the evaluated `clare.runs.RunInfo`.
    """
    out_dir = Path(out_dir)
    record = run.record
    name = str(metrics.get("run") or out_dir.name)
    atomic_write_metrics_json(ReportFolder(out_dir).dvc_metrics_file, dvc_metrics(metrics, record.metrics))
    spec = {"run": name, "run_dir": str(run.path), **record.spec()}
    atomic_write_metrics_json(ReportFolder(out_dir).run_spec_file, spec)
    plots = out_dir / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    clean = clean_scores(metrics, scores)
    roc_figure(clean, list(metrics.get("subsets") or {}), plots / "roc.png", f"{name}: ROC per test subset")
    save_png(validation_figure(record.history, record.best_step, name), plots / "validation.png")
