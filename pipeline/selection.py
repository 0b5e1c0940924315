"""Which validation point's weights a fit keeps: the selection rule, in one place.

`clare fit` validates at fixed points (every epoch, or every `fit.val_every` steps) and keeps
the weights of one of them. The old rule, "the first point whose validation AUC beats every
earlier one", kept an undertrained detector whenever validation AUC saturated early (on the
demo at step 6 of 30, on DF40 whose validation videos come from the training methods), while
the validation loss went on falling.

Each rule is a sort key over a validation point; the kept point is the one with the largest
key. A key is a total order, so keeping a point when its key beats the kept one's gives the
maximum over the whole history: the choice needs only the kept point, never the weights of
the others, and a resumed fit (which continues the same history) keeps the same point.

- `auc_loss` (default): highest validation AUC compared at `digits` decimals (3, the
  precision reports print: a difference below 0.001 on a validation set is noise, not a
  better detector), then the lowest validation loss, then the later step. On a saturated
  plateau the loss decides.
- `loss`: lowest validation loss, then the later step.
- `last`: the final validation point (the weights the schedule ends with).
- `auc_first`: the old rule, first point with the highest exact AUC; only for comparison
  with runs made before it changed.

An undefined AUC (one class among the scored validation images) or a non-finite loss ranks
below every defined value, so a run whose history has no finite AUC still keeps a point and
says which criterion decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

SelectRule = Literal["auc_loss", "loss", "last", "auc_first"]
SELECT_RULES: tuple[str, ...] = ("auc_loss", "loss", "last", "auc_first")

# The criteria of each rule's key, most significant first (the names run.yaml's `decided_by` uses).
CRITERIA: dict[str, tuple[str, ...]] = {
    "auc_loss": ("val_auc", "val_loss", "step"),
    "loss": ("val_loss", "step"),
    "last": ("step",),
    "auc_first": ("val_auc", "step"),
}

DESCRIPTIONS: dict[str, str] = {
    "auc_loss": "highest validation AUC at {digits} decimals, then lowest validation loss, "
                "then the later step",
    "loss": "lowest validation loss, then the later step",
    "last": "the last validation point",
    "auc_first": "first point with the highest validation AUC (the rule of earlier clare versions; "
                 "keeps an early point when AUC saturates)",
}

_WORST = -math.inf


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def selection_key(rule: str, point: Mapping[str, Any], digits: int = 3) -> tuple[float, ...]:
    """The sort key of one validation point (`step`, `val_auc`, `val_loss`) under `rule`."""
    auc, loss, step = _finite(point.get("val_auc")), _finite(point.get("val_loss")), point["step"]
    auc_rank = _WORST if auc is None else round(auc, digits)
    loss_rank = _WORST if loss is None else -loss
    if rule == "auc_loss":
        return (auc_rank, loss_rank, float(step))
    if rule == "loss":
        return (loss_rank, float(step))
    if rule == "last":
        return (float(step),)
    if rule == "auc_first":
        return (_WORST if auc is None else auc, -float(step))
    raise ValueError(f"unknown selection rule {rule!r}; choose one of {', '.join(SELECT_RULES)}")


def beats(rule: str, point: Mapping[str, Any], kept: Mapping[str, Any] | None, digits: int = 3) -> bool:
    """Whether `point` replaces the `kept` point (None: nothing kept yet)."""
    return kept is None or selection_key(rule, point, digits) > selection_key(rule, kept, digits)


def describe(rule: str, digits: int = 3) -> str:
    return DESCRIPTIONS[rule].format(digits=digits)


def explain_choice(rule: str, history: Sequence[Mapping[str, Any]], kept_step: int,
                   digits: int = 3) -> dict[str, Any]:
    """run.yaml's `selection` block: the rule, the kept point's figures, and which criterion
    separated it from the runner-up (the best of the other points under the same rule)."""
    kept = next(p for p in history if p["step"] == kept_step)
    others = [p for p in history if p["step"] != kept_step]
    block: dict[str, Any] = {
        "rule": rule, "description": describe(rule, digits), "step": int(kept_step),
        "val_auc": _finite(kept.get("val_auc")), "val_loss": _finite(kept.get("val_loss")),
        "points": len(history),
    }
    if not others:
        block.update(decided_by="the only validation point", runner_up_step=None)
    else:
        runner_up = max(others, key=lambda p: selection_key(rule, p, digits))
        mine, theirs = selection_key(rule, kept, digits), selection_key(rule, runner_up, digits)
        criterion = next(name for name, a, b in zip(CRITERIA[rule], mine, theirs, strict=True) if a != b)
        block.update(decided_by=criterion, runner_up_step=int(runner_up["step"]))
    if all(_finite(p.get("val_auc")) is None for p in history) and "val_auc" in CRITERIA[rule]:
        block["note"] = ("no validation point had a defined AUC (one class among the scored "
                         "validation images); the later criteria decided")
    return block


def summary_line(block: Mapping[str, Any]) -> str:
    """One line for the console and the fit log."""
    line = f"kept step {block['step']} by rule {block['rule']} ({block['description']})"
    if block.get("runner_up_step") is not None:
        line += f"; decided by {block['decided_by']} over step {block['runner_up_step']}"
    if block.get("note"):
        line += f"; {block['note']}"
    return line
