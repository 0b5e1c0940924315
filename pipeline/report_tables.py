"""The tables and sentences of the evaluation report (`clare.report`): per-subset metrics with
their mean, the oracle and threshold tables, robustness, and the summary paragraph.

Each function turns metrics (as `clare.metrics` computes them) into blocks of the document
model (`clare.render.document`); nothing here reads files or draws figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from clare.errors import reason_label
from clare.metrics import (
    ROBUSTNESS_TABLE,
    SUBSET_TABLE,
    THRESHOLD_ACC,
    describe_undefined,
    is_number,
    metric_title,
    table_keys,
)
from clare.render.document import Block, Cell, Heading, Paragraph, Table
from clare.render.figures import fmt as _fmt

# Metrics named in the summary paragraph (the TPR key follows what the results hold).
_SUMMARY_METRICS = ("auc", "ap", "eer", "acc", THRESHOLD_ACC, "video_auc", "tpr_at_1fpr")


def _metric_cell(metrics: Mapping[str, Any], key: str) -> Cell:
    value = metrics.get(key)
    if is_number(value):
        return Cell(_fmt(value), numeric=True)
    reason = (metrics.get("notes") or {}).get(key)
    if reason:
        return Cell(f"— ({reason_label(reason)})", numeric=True, hint=str(reason))
    return Cell("—", numeric=True)


def _mean_cell(mean: Mapping[str, Any], key: str, n_subsets: int) -> Cell:
    cell = _metric_cell(mean, key)
    contributed = mean.get(f"{key}_n_subsets")
    if is_number(mean.get(key)) and isinstance(contributed, int) and contributed < n_subsets:
        cell.text += f" ({contributed}/{n_subsets})"
        cell.hint = (mean.get("notes") or {}).get(key)
    return cell


def mean_row(label: str, values: Sequence[Any]) -> list[Cell]:
    """A last row of plain means: the mean of each column's numbers, "—" where it has none."""
    cells = [Cell(label)]
    for column in values:
        numbers = [float(v) for v in column if is_number(v)]
        cells.append(Cell(_fmt(float(np.mean(numbers))) if numbers else "—", numeric=True))
    return cells


@dataclass
class OperatingPoint:
    """The threshold that decides "fake": the run's validation threshold, else 0.5."""

    value: float
    source: str  # where it comes from, a clause for a caption
    name: str  # a few words for a heading or a parenthesis
    from_validation: bool


def operating_point(metrics: Mapping[str, Any]) -> OperatingPoint:
    recorded = metrics.get("threshold") or {}
    value = recorded.get("value") if isinstance(recorded, Mapping) else None
    if is_number(value):
        rule = recorded.get("rule") or "chosen on the run's validation videos"
        return OperatingPoint(float(value), f"chosen by clare fit, {rule}, recorded in run.yaml "
                              "under threshold", "the run's validation threshold", True)
    return OperatingPoint(0.5, "the fixed 0.5, as the run records no validation threshold",
                          "0.5, no validation threshold recorded", False)


def _means_sentence(mean: Mapping[str, Any], n: int) -> str:
    parts = []
    for key in table_keys(_SUMMARY_METRICS, mean):
        if key == THRESHOLD_ACC and not is_number(mean.get(key)):
            continue  # a run without a validation threshold: its section says so
        count = mean.get(f"{key}_n_subsets")
        scope = f" ({count} of {n} subsets)" if isinstance(count, int) and count < n else ""
        parts.append(f"{metric_title(key)} {_fmt(mean.get(key))}{scope}")
    return (
        f"{n} test subset(s) with {_fmt(mean.get('n_real', 0))} real and "
        f"{_fmt(mean.get('n_fake', 0))} fake images. Mean over subsets: " + ", ".join(parts) + "."
    )


def _extremes_sentence(subsets: Mapping[str, Mapping[str, Any]]) -> str:
    ranked = sorted(
        (float(m["auc"]), name) for name, m in subsets.items() if is_number(m.get("auc"))
    )
    if len(ranked) < 2:
        return ""
    return (
        f" Lowest AUC: {ranked[0][1]} ({ranked[0][0]:.3f}); "
        f"highest: {ranked[-1][1]} ({ranked[-1][0]:.3f})."
    )


def _auc_change(auc: Any, clean_auc: Any) -> str | None:
    """`+0.012`: a perturbed AUC minus the clean one; None when either is missing."""
    if is_number(auc) and is_number(clean_auc):
        return f"{float(auc) - float(clean_auc):+.3f}"
    return None


def _robustness_sentences(mean: Mapping[str, Any],
                          robustness: Mapping[str, Mapping[str, Any]] | None) -> str:
    text = ""
    for store, entry in (robustness or {}).items():
        auc = (entry.get("mean") or {}).get("auc")
        if is_number(auc):
            change = _auc_change(auc, mean.get("auc"))
            delta = f" ({change} vs clean)" if change else ""
            text += f" Under {entry.get('perturb', store)}: mean AUC {_fmt(auc)}{delta}."
    return text


def summary_text(
    subsets: Mapping[str, Mapping[str, Any]],
    mean: Mapping[str, Any],
    robustness: Mapping[str, Mapping[str, Any]] | None,
) -> str:
    return (_means_sentence(mean, len(subsets)) + _extremes_sentence(subsets)
            + _robustness_sentences(mean, robustness))


def subset_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any]) -> Table:
    keys = table_keys(SUBSET_TABLE, mean)
    rows = [[Cell(name)] + [_metric_cell(m, key) for key in keys] for name, m in subsets.items()]
    n = len(subsets)
    rows.append(
        [Cell(f"mean over {n} subsets")]
        + [
            Cell(_fmt(mean.get(key)), numeric=True)
            if key in ("n_real", "n_fake")
            else _mean_cell(mean, key, n)
            for key in keys
        ]
    )
    return Table(
        header=["Subset"] + [metric_title(key) for key in keys],
        rows=rows,
        caption=(
            "Frame-level metrics, fake = positive class. Accuracies at the fixed threshold "
            "0.5 (fake when p(fake) ≥ 0.5); EER and TPR at the FPR target are interpolated "
            "on the ROC curve; video AUC uses the mean p(fake) per video. Last row: "
            "unweighted mean over subsets (k/n: only k subsets define the metric), counts "
            "are totals."
        ),
        notes=describe_undefined(subsets, keys),
        emphasise_last_row=True,
    )


def oracle_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any]) -> Table:
    rows = [
        [
            Cell(name),
            _metric_cell(m, "oracle_best_threshold_acc"),
            _metric_cell(m, "oracle_best_threshold"),
            _metric_cell(m, "acc"),
        ]
        for name, m in subsets.items()
    ]
    rows.append(
        [
            Cell(f"mean over {len(subsets)} subsets"),
            _mean_cell(mean, "oracle_best_threshold_acc", len(subsets)),
            Cell("—", numeric=True),
            _mean_cell(mean, "acc", len(subsets)),
        ]
    )
    return Table(
        header=[
            "Subset",
            "Oracle acc (threshold chosen on test labels)",
            "Oracle threshold",
            "Acc@0.5 (for comparison)",
        ],
        rows=rows,
        caption=(
            "Oracle: for each subset the threshold that maximises accuracy on that subset's "
            "own test labels. It is an upper bound that a deployed detector cannot reach "
            "and must not be compared with accuracy at a fixed threshold."
        ),
        emphasise_last_row=True,
    )


def _robustness_summary(clean_mean: Mapping[str, Any],
                        robustness: Mapping[str, Mapping[str, Any]]) -> Table:
    keys = table_keys(ROBUSTNESS_TABLE, clean_mean)
    clean_auc = clean_mean.get("auc")

    def summary_row(store: str, perturb: str, mean: Mapping[str, Any]) -> list[Cell]:
        delta = Cell(_auc_change(mean.get("auc"), clean_auc) or "—", numeric=True)
        cells = [_metric_cell(mean, key) for key in keys]
        return [Cell(store), Cell(perturb)] + cells[:1] + [delta] + cells[1:]

    titles = [metric_title(key) for key in keys]
    return Table(
        header=["Store", "Perturbation"]
        + [f"mean {titles[0]}", "ΔAUC vs clean"]
        + [f"mean {title}" for title in titles[1:]],
        rows=[summary_row("clean", "none", clean_mean)]
        + [
            summary_row(store, str(entry.get("perturb", "?")), entry.get("mean") or {})
            for store, entry in robustness.items()
        ],
        caption="Means over subsets for the clean test stores and each degraded copy.",
    )


def _robustness_per_subset(clean_subsets: Mapping[str, Mapping[str, Any]],
                           robustness: Mapping[str, Mapping[str, Any]]) -> Table:
    stores = list(robustness)
    names = list(clean_subsets) + [
        n
        for entry in robustness.values()
        for n in (entry.get("subsets") or {})
        if n not in clean_subsets
    ]
    rows = []
    for name in dict.fromkeys(names):
        row = [Cell(name), _metric_cell(clean_subsets.get(name, {}), "auc")]
        for store in stores:
            row.append(_metric_cell((robustness[store].get("subsets") or {}).get(name, {}), "auc"))
        rows.append(row)
    return Table(
        header=["Subset", "clean"] + [str(robustness[s].get("perturb", s)) for s in stores],
        rows=rows,
        caption="Frame-level AUC per subset under each perturbation.",
    )


def robustness_tables(
    clean_mean: Mapping[str, Any],
    clean_subsets: Mapping[str, Mapping[str, Any]],
    robustness: Mapping[str, Mapping[str, Any]],
) -> list[Table]:
    return [_robustness_summary(clean_mean, robustness),
            _robustness_per_subset(clean_subsets, robustness)]


def config_yaml(config: Mapping[str, Any]) -> str:
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


def _threshold_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any],
                     point: OperatingPoint) -> Table:
    n = len(subsets)
    rows = [[Cell(name), _metric_cell(m, "acc"), _metric_cell(m, THRESHOLD_ACC)]
            for name, m in subsets.items()]
    rows.append([Cell(f"mean over {n} subsets"), _mean_cell(mean, "acc", n),
                 _mean_cell(mean, THRESHOLD_ACC, n)])
    return Table(
        header=["Subset", "Acc@0.5", f"Acc@val thr (t = {point.value:.4f})"],
        rows=rows,
        caption=(f"Accuracy with fake when p(fake) ≥ 0.5, and with fake when p(fake) ≥ t, the "
                 f"operating threshold {point.source}. Both thresholds are fixed before the "
                 "test labels are seen, unlike the oracle below."),
        emphasise_last_row=True,
    )


def threshold_blocks(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any],
                      point: OperatingPoint) -> list[Block]:
    heading = Heading("Accuracy at the validation threshold")
    if not point.from_validation:
        return [heading, Paragraph(
            "The run records no operating threshold chosen on validation (its run.yaml has "
            "no threshold: runs fitted before clare fit chose one). Refit the run to get the "
            "accuracy at it; accuracies below are at 0.5.")]
    return [heading, _threshold_table(subsets, mean, point)]
