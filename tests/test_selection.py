"""The checkpoint selection rules (clare.selection): saturation, ties, undefined AUC, replay."""

from __future__ import annotations

import math

import pytest

from clare.selection import SELECT_RULES, beats, explain_choice, selection_key, summary_line

# A run whose validation AUC saturates at step 6 while its loss keeps falling until step 30,
# then rises again: the demo's shape before issue 26.
SATURATING = [
    {"step": 3, "val_auc": 0.909, "val_loss": 0.659},
    {"step": 6, "val_auc": 1.0, "val_loss": 0.626},
    {"step": 9, "val_auc": 1.0, "val_loss": 0.576},
    {"step": 12, "val_auc": 0.9996, "val_loss": 0.301},  # equal to 1.0 at 3 decimals
    {"step": 15, "val_auc": 1.0, "val_loss": 0.254},
    {"step": 18, "val_auc": 1.0, "val_loss": 0.270},
]


def replay(rule: str, history: list[dict], digits: int = 3) -> int:
    """The step a fit keeps when it validates at each point in turn (what clare fit does)."""
    kept = None
    for point in history:
        if beats(rule, point, kept, digits):
            kept = point
    assert kept is not None
    return int(kept["step"])


def test_default_rule_keeps_the_lowest_loss_among_the_saturated_points():
    assert replay("auc_loss", SATURATING) == 15
    assert replay("auc_first", SATURATING) == 6  # the old rule: the first saturated point


def test_auc_digits_decide_what_counts_as_a_tie():
    # At 4 decimals 0.9996 is below 1.0, so step 12's lower loss no longer competes with it.
    assert replay("auc_loss", SATURATING[:4], digits=3) == 12
    assert replay("auc_loss", SATURATING[:4], digits=4) == 9


def test_a_higher_auc_still_wins_over_a_lower_loss():
    history = [{"step": 1, "val_auc": 0.8, "val_loss": 0.2}, {"step": 2, "val_auc": 0.9, "val_loss": 0.6}]
    assert replay("auc_loss", history) == 2
    assert replay("loss", history) == 1
    assert replay("last", history) == 2


@pytest.mark.parametrize("rule", SELECT_RULES)
def test_replay_equals_the_maximum_over_the_whole_history(rule):
    """The kept point depends on the history only, not on when it was seen: a resumed fit that
    replays the same points keeps the same one, and so does the order-free maximum."""
    best = max(SATURATING, key=lambda p: selection_key(rule, p))
    assert replay(rule, SATURATING) == best["step"]
    # split into two halves, as a fit killed and resumed between them
    kept = None
    for point in SATURATING[:3]:
        kept = point if beats(rule, point, kept) else kept
    for point in SATURATING[3:]:
        kept = point if beats(rule, point, kept) else kept
    assert kept is not None and kept["step"] == best["step"]


def test_equal_loss_and_auc_keep_the_later_step():
    history = [{"step": 1, "val_auc": 1.0, "val_loss": 0.3}, {"step": 2, "val_auc": 1.0, "val_loss": 0.3}]
    assert replay("auc_loss", history) == 2
    assert explain_choice("auc_loss", history, 2)["decided_by"] == "step"


def test_undefined_auc_ranks_below_any_defined_one_and_loss_decides_without_any():
    mixed = [{"step": 1, "val_auc": None, "val_loss": 0.1}, {"step": 2, "val_auc": 0.6, "val_loss": 0.9}]
    assert replay("auc_loss", mixed) == 2
    none = [{"step": 1, "val_auc": None, "val_loss": 0.7},
            {"step": 2, "val_auc": float("nan"), "val_loss": 0.4},
            {"step": 3, "val_auc": None, "val_loss": float("nan")}]
    assert replay("auc_loss", none) == 2
    block = explain_choice("auc_loss", none, 2)
    assert block["decided_by"] == "val_loss" and block["runner_up_step"] == 1
    assert "no validation point had a defined AUC" in block["note"]
    assert block["val_auc"] is None and math.isclose(block["val_loss"], 0.4)
    line = summary_line(block)
    assert "\n" not in line and "rule auc_loss" in line and "decided by val_loss" in line


def test_explain_choice_names_the_criterion_that_separated_the_kept_point():
    block = explain_choice("auc_loss", SATURATING, 15)
    assert block == {
        "rule": "auc_loss", "step": 15, "val_auc": 1.0, "val_loss": 0.254, "points": 6,
        "decided_by": "val_loss", "runner_up_step": 18, "description": block["description"],
    }
    assert "then lowest validation loss" in block["description"]
    assert explain_choice("auc_loss", SATURATING[:1], 3)["decided_by"] == "the only validation point"
    assert explain_choice("auc_loss", SATURATING[:2], 6)["decided_by"] == "val_auc"


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown selection rule 'best'"):
        selection_key("best", SATURATING[0])
