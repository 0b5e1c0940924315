"""The detector on store batches: one forward pass for training, validation and evaluation.

`clare fit` (training steps and validation) and `clare eval` both go through here, so a
score means the same thing wherever it is computed. p(fake) = softmax(logits)[:, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clare.cache.loader import StoreLoader


class Scores(NamedTuple):
    """p(fake), labels and store rows of every scored image, in loader order, and the mean loss."""

    probs: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    loss: float


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """p(fake) of logits (B, 2): softmax over the two classes in float32, the fake column."""
    return logits.float().softmax(dim=-1)[:, 1]


def to_device(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A batch tensor on the device as float32: the loader keeps tokens float16 on the host
    (half the bytes to move), and the cast runs on the device after the copy."""
    return None if tensor is None else tensor.to(device, non_blocking=True).float()


def batch_logits(detector: torch.nn.Module, batch: Any, device: torch.device, amp: bool) -> torch.Tensor:
    """Logits (B, 2) of one loader batch; bf16 autocast when `amp` (CUDA only)."""
    from clare.models.precision import autocast_context

    with autocast_context(device, "bf16" if amp else "fp32"):
        return detector(to_device(batch.cls, device), to_device(batch.tokens, device),
                        to_device(batch.lare, device))


@torch.no_grad()
def score_loader(detector: torch.nn.Module, loader: StoreLoader, device: torch.device, amp: bool,
                 on_batch: Callable[[int], None] | None = None) -> Scores:
    """Score every batch of an (unshuffled) loader; `on_batch(rows)` reports progress."""
    detector.eval()
    probs, labels, rows, loss_sum, count = [], [], [], 0.0, 0
    for batch in loader.epoch(0):
        logits = batch_logits(detector, batch, device, amp).float()
        loss_sum += float(F.cross_entropy(logits, batch.label.to(device), reduction="sum"))
        count += len(batch.rows)
        probs.append(fake_probability(logits).cpu().numpy())
        labels.append(batch.label.numpy())
        rows.append(batch.rows)
        if on_batch is not None:
            on_batch(len(batch.rows))
    if not probs:
        return Scores(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                      float("nan"))
    return Scores(np.concatenate(probs), np.concatenate(labels), np.concatenate(rows),
                  loss_sum / max(count, 1))


def entry_scores(scores: Scores, entries: pd.DataFrame) -> np.ndarray:
    """p(fake) of every line of `entries` (a table with a `row` column, see
    `clare.cache.entries`): each store row is scored once and its score is shared by every
    entry that names its image; NaN for a row that was not scored."""
    by_row = pd.Series(scores.probs, index=scores.rows)
    return by_row.reindex(entries["row"].to_numpy()).to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------- operating threshold

THRESHOLD_RULE = "EER point on the run's held-out validation videos"


def eer_threshold(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The operating threshold `clare fit` chooses: the ROC point of these (validation) scores
    where the false-positive rate and the miss rate are closest, read at a real score so that
    "fake when p >= threshold" gives exactly those rates here. Needs both classes."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probs, pos_label=1, drop_intermediate=False)
    # Point 0 is sklearn's "nothing is fake" (threshold +inf): never an operating point.
    gap = np.abs((1.0 - tpr[1:]) - fpr[1:])
    point = 1 + int(np.argmin(gap))
    return {"value": float(thresholds[point]), "fpr": float(fpr[point]),
            "fnr": float(1.0 - tpr[point])}


FIXED_THRESHOLD_RULE = ("fixed 0.5: the validation videos scored at the kept step did not "
                        "hold both classes, so no EER point exists")


def validation_threshold(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The threshold run.yaml records for the kept step, with its rule: the EER point of the
    validation scores, or 0.5 (said so) when the finite scores do not hold both classes."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    scored = np.isfinite(probs)
    if set(labels[scored].tolist()) != {0, 1}:
        return {"value": 0.5, "fpr": None, "fnr": None, "rule": FIXED_THRESHOLD_RULE}
    return {**eer_threshold(labels[scored], probs[scored]), "rule": THRESHOLD_RULE}


def accuracy_at(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float | None:
    """Accuracy with "fake when p >= threshold"; None without images."""
    if len(labels) == 0:
        return None
    return float(np.mean((np.asarray(probs) >= threshold) == (np.asarray(labels) == 1)))
