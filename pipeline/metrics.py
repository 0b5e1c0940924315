"""Detection metrics for one test subset, and their mean over subsets (docs/design.md §6).

Conventions used throughout:

- Label 1 is "fake" and is the positive class; the score is p(fake).
- A frame is predicted fake when ``p_fake >= threshold``; the fixed operating point is 0.5.
- Where a metric cannot be computed (one class only, no video ids, ...) its value is ``None``
  and ``result["notes"][metric]`` says why, so that a table can show the reason instead of a
  misleading number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat, TypeGuard

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from clare.errors import DataError

# Metrics that are averaged over subsets by `summarize`, in display order.
MEAN_METRICS: tuple[str, ...] = (
    "auc",
    "ap",
    "eer",
    "acc",
    "real_acc",
    "fake_acc",
    "video_auc",
    "tpr_at_1fpr",
    "oracle_best_threshold_acc",
)
# Counts are summed over subsets rather than averaged: a total is what a reader wants.
COUNT_METRICS: tuple[str, ...] = ("n_real", "n_fake")


# Accuracy at the operating threshold `clare fit` chose on the run's validation videos: written
# per subset by `clare eval` (it needs the run, so compute_metrics leaves it out), read by the report.
THRESHOLD_ACC = "acc_at_val_threshold"

# The one table of metric titles (key -> column title). The console table of `clare eval`,
# the report's tables and every "undefined" note take their names from here.
METRIC_TITLES: dict[str, str] = {
    "auc": "AUC",
    "ap": "AP",
    "eer": "EER",
    "acc": "Acc@0.5",
    "acc_at_val_threshold": "Acc@val thr",
    "real_acc": "real acc",
    "fake_acc": "fake acc",
    "video_auc": "video AUC",
    "tpr_at_1fpr": "TPR@1%FPR",
    "oracle_best_threshold_acc": "oracle acc",
    "oracle_best_threshold": "oracle threshold",
    "n_real": "n real",
    "n_fake": "n fake",
    "n_failed": "failed",
}
# Which metrics each table shows, in display order (titles from METRIC_TITLES).
SUBSET_TABLE: tuple[str, ...] = (
    "auc", "ap", "eer", "acc", "real_acc", "fake_acc", "video_auc", "tpr_at_1fpr", "n_real", "n_fake",
)
ROBUSTNESS_TABLE: tuple[str, ...] = ("auc", "ap", "eer", "acc", "video_auc", "tpr_at_1fpr")
CONSOLE_TABLE: tuple[str, ...] = (
    "auc", "ap", "eer", "acc", "acc_at_val_threshold", "video_auc", "n_real", "n_fake", "n_failed",
)
_TPR_KEY = re.compile(r"tpr_at_(.+)fpr")


def tpr_key(fpr_target: float) -> str:
    """Result key for TPR at a given FPR, in percent: 0.01 -> ``tpr_at_1fpr``."""
    return f"tpr_at_{fpr_target * 100:g}fpr"


def metric_title(key: str) -> str:
    """The column title of a metric key; TPR keys of any FPR target read ``TPR@<x>%FPR``."""
    if key in METRIC_TITLES:
        return METRIC_TITLES[key]
    match = _TPR_KEY.fullmatch(key)
    return f"TPR@{match.group(1)}%FPR" if match else key


def present_tpr_key(metrics: Mapping[str, Any]) -> str:
    """The TPR@FPR key a result actually holds (compute_metrics names it from its target)."""
    for key in metrics:
        if key.startswith("tpr_at_") and not key.endswith("_n_subsets"):
            return key
    return "tpr_at_1fpr"


def describe_undefined(per_subset: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """One line per subset naming its undefined metrics (among `keys`), grouped by reason:
    ``"beta: AUC, AP undefined (single class: only fake images (12))"``."""
    lines = []
    for name, metrics in per_subset.items():
        notes = metrics.get("notes")
        by_reason: dict[str, list[str]] = {}
        for key, reason in (notes.items() if isinstance(notes, Mapping) else ()):
            if key in keys:
                by_reason.setdefault(str(reason), []).append(metric_title(key))
        if by_reason:
            lines.append(f"{name}: " + "; ".join(
                f"{', '.join(titles)} undefined ({reason})" for reason, titles in by_reason.items()
            ))
    return lines


def table_keys(table: tuple[str, ...], metrics: Mapping[str, Any]) -> list[str]:
    """A table's metric keys with the TPR column renamed to the key `metrics` holds."""
    tpr = present_tpr_key(metrics)
    return [tpr if key == "tpr_at_1fpr" else key for key in table]


# --------------------------------------------------------------------------- input checks


def _as_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = sorted({repr(v) for v in arr[~np.isin(arr, (0, 1))][:5].tolist()})
        raise ValueError(f"labels must be 0 (real) or 1 (fake); found {', '.join(bad)}")
    return arr.astype(np.int64)


def _as_scores(p_fake: Any, n: int) -> np.ndarray:
    arr = np.asarray(p_fake, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"p_fake must have shape ({n},) like labels, got {arr.shape}")
    n_nan = int(np.isnan(arr).sum())
    if n_nan:
        raise ValueError(
            f"p_fake holds {n_nan} NaN value(s); drop failed rows before computing metrics"
        )
    return arr


def _single_class_reason(n_real: int, n_fake: int) -> str | None:
    if n_real and n_fake:
        return None
    if not n_real and not n_fake:
        return "no images"
    if n_real:
        return f"single class: only real images ({n_real})"
    return f"single class: only fake images ({n_fake})"


# --------------------------------------------------------------------------- curve metrics


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """EER on a ROC curve: the point where FPR equals the miss rate 1 - TPR.

    Along the curve, d = (1 - TPR) - FPR falls from 1 to -1. The EER is read at the first
    point where d <= 0, interpolating linearly on the segment from the previous point, where
    both rates are equal by construction.
    """
    gap = (1.0 - tpr) - fpr
    idx = int(np.argmax(gap <= 0.0))
    if gap[idx] == 0.0 or idx == 0:
        return float(fpr[idx])
    frac = gap[idx - 1] / (gap[idx - 1] - gap[idx])
    return float(fpr[idx - 1] + frac * (fpr[idx] - fpr[idx - 1]))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, fpr_target: float) -> float:
    """TPR of the ROC curve at FPR = ``fpr_target``, interpolated linearly.

    The curve can have vertical steps (several points at one FPR). At a step exactly at the
    target the highest TPR counts (the best operating point with that FPR); otherwise the value
    lies on the segment from the last point with FPR <= target to the next point.
    """
    after = int(np.searchsorted(fpr, fpr_target, side="right"))
    if after >= len(fpr):
        return float(tpr[-1])
    before = after - 1
    if fpr[before] == fpr_target:
        return float(tpr[before])
    return float(np.interp(fpr_target, [fpr[before], fpr[after]], [tpr[before], tpr[after]]))


def best_threshold_accuracy(labels: Any, p_fake: Any) -> tuple[float, float]:
    """Oracle accuracy: the best accuracy over all thresholds, chosen on these very labels.

    Returns ``(accuracy, threshold)`` with the rule "fake when score >= threshold". Only the
    distinct score values (plus one value above the maximum, "everything real") are candidate
    thresholds, since a threshold between two equal scores cannot split them. Cost: one sort
    plus cumulative sums, O(N log N). Among equally good thresholds the lowest is returned.
    """
    y = _as_labels(labels)
    s = _as_scores(p_fake, y.shape[0])
    n = y.shape[0]
    if n == 0:
        raise ValueError("best_threshold_accuracy needs at least one score")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    fakes_above = np.cumsum(y_desc)  # fakes with score >= s_desc[i]
    reals_above = np.cumsum(1 - y_desc)
    n_real = int(n - fakes_above[-1])
    # The last position of every run of equal scores is where that threshold's counts end.
    group_end = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    correct = fakes_above[group_end] + (n_real - reals_above[group_end])
    thresholds = s_desc[group_end]
    # "Everything real" threshold, just above the top score.
    correct = np.r_[correct, n_real]
    thresholds = np.r_[thresholds, np.nextafter(s_desc[0], np.inf)]
    best = _lowest_best(correct, thresholds)
    return float(correct[best] / n), float(thresholds[best])


def _lowest_best(correct: np.ndarray, thresholds: np.ndarray) -> int:
    winners = np.flatnonzero(correct == correct.max())
    return int(winners[np.argmin(thresholds[winners])])


def roc_points(labels: Any, p_fake: Any, max_points: int = 200) -> list[dict[str, float]]:
    """ROC curve as ``[{"fpr", "tpr", "threshold"}, ...]`` for plotting, at most ``max_points``.

    Points are kept evenly spaced along the curve's length (so steep parts keep their shape),
    always including the first and the last point. The first point's threshold, infinite in
    scikit-learn, is reported as the next float above the top score to stay JSON-safe.
    Returns an empty list when the labels hold a single class.
    """
    y = _as_labels(labels)
    s = _as_scores(p_fake, y.shape[0])
    if _single_class_reason(int((y == 0).sum()), int((y == 1).sum())) is not None:
        return []
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    fpr, tpr, thr = roc_curve(y, s, pos_label=1)
    thr = thr.astype(np.float64)
    thr[~np.isfinite(thr)] = np.nextafter(s.max(), np.inf)
    if len(fpr) > max_points:
        steps = np.hypot(np.diff(fpr), np.diff(tpr))
        along = np.r_[0.0, np.cumsum(steps)]
        wanted = np.linspace(0.0, along[-1], max_points)
        keep = np.unique(np.clip(np.searchsorted(along, wanted), 0, len(fpr) - 1))
        keep = np.unique(np.r_[0, keep, len(fpr) - 1])
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return [
        {"fpr": float(f), "tpr": float(t), "threshold": float(h)}
        for f, t, h in zip(fpr, tpr, thr, strict=True)
    ]


# --------------------------------------------------------------------------- video level


def _video_means(
    labels: np.ndarray, p_fake: np.ndarray, videos: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Per-video label and mean p(fake). A frame without a video id is its own video."""
    vids = pd.Series(np.asarray(videos, dtype=object))
    if len(vids) != len(labels):
        raise ValueError(f"videos must have one id per row ({len(labels)}), got {len(vids)}")
    missing = vids.isna() | (vids.astype(str) == "")
    vids = vids.astype(str).where(
        ~missing, "\0frame-" + pd.Series(np.arange(len(vids))).astype(str)
    )
    frame = pd.DataFrame({"video": vids, "label": labels, "p_fake": p_fake})
    grouped = frame.groupby("video", sort=True)
    label_span = grouped["label"].agg(["min", "max"])
    mixed = label_span.index[label_span["min"] != label_span["max"]]
    if len(mixed):
        raise DataError(
            f"video '{mixed[0]}' holds both real and fake frames ({len(mixed)} such video(s)); "
            "fix the video ids or labels in the list"
        )
    return label_span["min"].to_numpy(), grouped["p_fake"].mean().to_numpy()


# --------------------------------------------------------------------------- one subset


def compute_metrics(
    labels: Any,
    p_fake: Any,
    videos: Any | None = None,
    fpr_target: float = 0.01,
) -> dict[str, Any]:
    """All metrics of one subset (label 1 = fake, score = p(fake)).

    Keys: auc, ap (scikit-learn's roc_auc_score / average_precision_score, fake positive),
    eer (see `equal_error_rate`), acc / real_acc / fake_acc (fake when p_fake >= 0.5),
    video_auc (AUC of the mean p_fake per video; a video mixing labels raises DataError),
    tpr_at_1fpr (see `tpr_at_fpr`; the key follows `tpr_key(fpr_target)`), n_real, n_fake,
    oracle_best_threshold_acc and oracle_best_threshold (see `best_threshold_accuracy`: chosen
    on the test labels, an oracle; None for a single class, where it is trivially 1.0) and
    notes (metric -> reason for every None value).
    NaN scores raise ValueError: drop failed rows first.
    """
    y = _as_labels(labels)
    s = _as_scores(p_fake, y.shape[0])
    if not 0.0 < fpr_target < 1.0:
        raise ValueError(f"fpr_target must lie in (0, 1), got {fpr_target}")
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    tpr_name = tpr_key(fpr_target)
    out: dict[str, Any] = dict.fromkeys(
        ("auc", "ap", "eer", "acc", "real_acc", "fake_acc", "video_auc", tpr_name)
    )
    out.update(
        n_real=n_real, n_fake=n_fake, oracle_best_threshold_acc=None, oracle_best_threshold=None
    )
    notes: dict[str, str] = {}

    single = _single_class_reason(n_real, n_fake)
    if single is None:
        fpr, tpr, _ = roc_curve(y, s, pos_label=1)
        out["auc"] = float(roc_auc_score(y, s))
        out["ap"] = float(average_precision_score(y, s, pos_label=1))
        out["eer"] = equal_error_rate(fpr, tpr)
        out[tpr_name] = tpr_at_fpr(fpr, tpr, fpr_target)
    else:
        for key in ("auc", "ap", "eer", tpr_name):
            notes[key] = single

    predicted_fake = s >= 0.5
    if y.size:
        out["acc"] = float(np.mean(predicted_fake == (y == 1)))
    else:
        notes["acc"] = "no images"
    if single is None:
        best_acc, best_thr = best_threshold_accuracy(y, s)
        out["oracle_best_threshold_acc"] = best_acc
        out["oracle_best_threshold"] = best_thr
    else:
        # With one class an extreme threshold is trivially 100 % right; a 1.0 would only
        # inflate the mean oracle accuracy.
        notes["oracle_best_threshold_acc"] = notes["oracle_best_threshold"] = single
    if n_real:
        out["real_acc"] = float(np.mean(~predicted_fake[y == 0]))
    else:
        notes["real_acc"] = "no real images"
    if n_fake:
        out["fake_acc"] = float(np.mean(predicted_fake[y == 1]))
    else:
        notes["fake_acc"] = "no fake images"

    if videos is None:
        notes["video_auc"] = "no video ids"
    elif single is not None:
        notes["video_auc"] = single
    else:
        video_labels, video_scores = _video_means(y, s, videos)
        video_single = _single_class_reason(
            int((video_labels == 0).sum()), int((video_labels == 1).sum())
        )
        if video_single is None:
            out["video_auc"] = float(roc_auc_score(video_labels, video_scores))
        else:
            notes["video_auc"] = video_single.replace("images", "videos")

    out["notes"] = notes
    return out


# --------------------------------------------------------------------------- over subsets


def is_number(value: Any) -> TypeGuard[SupportsFloat]:
    """A finite int or float (numpy's too), not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _metric_keys(per_subset: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """MEAN_METRICS plus every TPR@FPR key that some subset holds."""
    keys = list(MEAN_METRICS)
    for subset_metrics in per_subset.values():
        keys += [k for k in subset_metrics if k.startswith("tpr_at_") and k not in keys]
    return keys


def _left_out_note(per_subset: Mapping[str, Mapping[str, Any]], key: str,
                   present: list[str]) -> str | None:
    """Which subsets a mean leaves out, each with the reason its value is undefined."""
    left_out = [n for n in per_subset if n not in present]
    if not left_out:
        return None
    reasons = []
    for name in left_out:
        why = (per_subset[name].get("notes") or {}).get(key)
        reasons.append(f"{name} ({why})" if why else name)
    return f"mean over {len(present)} of {len(per_subset)} subsets; left out: " + ", ".join(reasons)


def summarize(per_subset: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of every metric over subsets, skipping subsets where it is None.

    For each metric ``m``: ``m`` is the mean (None when no subset has it) and ``m_n_subsets``
    counts the subsets that contributed. ``n_real`` and ``n_fake`` are totals. The per-subset
    oracle thresholds are not averaged (a mean of thresholds chosen per subset means nothing).
    ``notes[m]`` names the subsets left out of a mean, with their reasons.
    """
    out: dict[str, Any] = {"n_subsets": len(per_subset)}
    notes: dict[str, str] = {}
    for key in _metric_keys(per_subset):
        present = [n for n in per_subset if is_number(per_subset[n].get(key))]
        if key.startswith("tpr_at_") and key != "tpr_at_1fpr" and not present:
            continue
        values = [float(per_subset[n][key]) for n in present]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_n_subsets"] = len(values)
        note = _left_out_note(per_subset, key, present)
        if note:
            notes[key] = note
    for key in COUNT_METRICS:
        out[key] = int(sum(int(per_subset[n].get(key) or 0) for n in per_subset))
    out["notes"] = notes
    return out


# --------------------------------------------------------------------------- calibration

CALIBRATION_BINS = 15  # equal-width bins on [0, 1], the usual count for ECE


def calibration_bins(labels: Any, p_fake: Any, n_bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """The non-empty equal-width bins of p(fake): ``count``, ``confidence`` (mean p_fake) and
    ``fraction_fake`` (share of label 1), in bin order.

    Binned as scikit-learn's ``calibration_curve(strategy="uniform")`` bins (a score on an inner
    edge joins the lower bin), so its two arrays are the last two columns here; this adds the
    counts that the expected calibration error weighs the bins by.
    """
    y = _as_labels(labels)
    s = _as_scores(p_fake, y.shape[0])
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("p_fake must lie in [0, 1] for calibration")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], s)
    count = np.bincount(bin_ids, minlength=n_bins)
    filled = count > 0
    return pd.DataFrame({
        "bin": np.flatnonzero(filled),
        "count": count[filled],
        "confidence": np.bincount(bin_ids, weights=s, minlength=n_bins)[filled] / count[filled],
        "fraction_fake": np.bincount(bin_ids, weights=y, minlength=n_bins)[filled] / count[filled],
    })


def expected_calibration_error(labels: Any, p_fake: Any,
                               n_bins: int = CALIBRATION_BINS) -> float | None:
    """ECE of p(fake): the sum over equal-width bins of (bin count / n) times the gap between
    the bin's share of fakes and its mean p(fake). 0 is perfectly calibrated; None without images."""
    bins = calibration_bins(labels, p_fake, n_bins)
    total = int(bins["count"].sum())
    if total == 0:
        return None
    gaps = (bins["fraction_fake"] - bins["confidence"]).abs()
    return float((bins["count"] / total * gaps).sum())


# --------------------------------------------------------------------------- per image and per video

WORST_ERRORS = 8  # false positives and false negatives a report shows, each


def subset_ece(clean: pd.DataFrame, subsets: Sequence[str]) -> dict[str, float | None]:
    """Expected calibration error of every subset's clean scores (p_fake clipped to [0, 1])."""
    out: dict[str, float | None] = {}
    for name in subsets:
        rows = clean[clean["subset"] == name]
        out[name] = expected_calibration_error(rows["label"].to_numpy(),
                                               rows["p_fake"].to_numpy().clip(0.0, 1.0))
    return out


def video_table(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per video of the clean scores: subset, video, label, frames and the mean, lowest
    and highest p(fake), worst first (`error`: distance of the mean from the label). A frame
    without a video id is its own video, named by its path."""
    frames = clean.assign(video=_video_ids(clean))
    table = (frames.groupby(["subset", "video"], sort=False)
             .agg(label=("label", "max"), frames=("p_fake", "size"), p_fake_mean=("p_fake", "mean"),
                  p_fake_min=("p_fake", "min"), p_fake_max=("p_fake", "max"))
             .reset_index())
    table["error"] = np.where(table["label"] == 1, 1.0 - table["p_fake_mean"], table["p_fake_mean"])
    return table.sort_values("error", ascending=False, kind="stable").reset_index(drop=True)


def _video_ids(clean: pd.DataFrame) -> pd.Series:
    path = clean["path"].astype(str) if "path" in clean.columns else pd.Series(
        [f"frame {i}" for i in range(len(clean))], index=clean.index)
    if "video" not in clean.columns:
        return path
    video = clean["video"]
    missing = video.isna() | (video.astype(str) == "")
    return video.astype(str).where(~missing, path)


def video_accuracy(videos: pd.DataFrame, threshold: float) -> pd.Series:
    called_fake = videos["p_fake_mean"] >= threshold
    return (called_fake == (videos["label"] == 1)).groupby(videos["subset"], sort=False).mean()


def distinct_images(clean: pd.DataFrame) -> pd.DataFrame:
    """One line per image of the clean scores: an image listed by several subsets (its entries
    share one score) once, under its first listing. The listed path names the image (the same
    file in every store); without paths, its store row."""
    key = ["path"] if "path" in clean.columns else [c for c in ("store", "row") if c in clean.columns]
    return clean.drop_duplicates(key) if "path" in key or "row" in key else clean


def classification_errors(images: pd.DataFrame,
                          threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every error at `threshold`, most confident first: real images at or above it (false
    positives, highest p(fake) first) and fakes below it (false negatives, lowest first)."""
    real = images[(images["label"] == 0) & (images["p_fake"] >= threshold)]
    fake = images[(images["label"] == 1) & (images["p_fake"] < threshold)]
    return (real.sort_values("p_fake", ascending=False, kind="stable"),
            fake.sort_values("p_fake", kind="stable"))


def worst_errors(clean: pd.DataFrame, threshold: float,
                 count: int = WORST_ERRORS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `count` most confident false positives and false negatives at `threshold`, each
    image once (`distinct_images`)."""
    false_pos, false_neg = classification_errors(distinct_images(clean), threshold)
    return false_pos.head(count), false_neg.head(count)
