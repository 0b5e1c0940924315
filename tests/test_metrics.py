"""Metrics of one subset and their mean: checked against scikit-learn and brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from clare.errors import DataError
from clare.metrics import (
    best_threshold_accuracy,
    calibration_bins,
    compute_metrics,
    equal_error_rate,
    expected_calibration_error,
    roc_points,
    summarize,
    tpr_at_fpr,
    tpr_key,
)

EXPECTED_KEYS = {
    "auc",
    "ap",
    "eer",
    "acc",
    "real_acc",
    "fake_acc",
    "video_auc",
    "tpr_at_1fpr",
    "n_real",
    "n_fake",
    "oracle_best_threshold_acc",
    "oracle_best_threshold",
    "notes",
}


def _random_case(seed: int, n: int = 300, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes, always
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return labels, scores


def _brute_best_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    candidates = list(np.unique(scores)) + [np.inf]
    return max(float(np.mean((scores >= t) == (labels == 1))) for t in candidates)


# --------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", range(5))
def test_auc_ap_agree_with_sklearn(seed: int, decimals: int | None) -> None:
    labels, scores = _random_case(seed, decimals=decimals)
    videos = [f"{label}-{i % 7}" for i, label in enumerate(labels)]  # one label per video
    m = compute_metrics(labels, scores, videos=videos)
    assert set(m) == EXPECTED_KEYS
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert m["n_real"] == int((labels == 0).sum()) and m["n_fake"] == int((labels == 1).sum())
    predicted = scores >= 0.5
    assert m["acc"] == pytest.approx(np.mean(predicted == labels))
    assert m["real_acc"] == pytest.approx(np.mean(~predicted[labels == 0]))
    assert m["fake_acc"] == pytest.approx(np.mean(predicted[labels == 1]))
    assert m["notes"] == {}
    json.dumps(m)  # plain Python numbers only


def test_eer_is_where_fpr_equals_miss_rate() -> None:
    labels, scores = _random_case(11, n=2000)
    eer = compute_metrics(labels, scores)["eer"]
    # Independent check: on the ROC segment where the miss rate drops below FPR, the EER
    # lies within the FPR range and within the miss-rate range of that segment.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    i = int(np.argmax(fnr <= fpr))
    assert fpr[i - 1] - 1e-12 <= eer <= fpr[i] + 1e-12
    assert fnr[i] - 1e-12 <= eer <= fnr[i - 1] + 1e-12
    assert 0.0 < eer < 0.5


# --------------------------------------------------------------------------- constructed curves


def test_perfect_separation() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    m = compute_metrics(labels, scores)
    assert m["auc"] == 1.0 and m["ap"] == 1.0
    assert m["eer"] == 0.0
    assert m["tpr_at_1fpr"] == 1.0
    assert m["acc"] == m["real_acc"] == m["fake_acc"] == 1.0
    assert m["oracle_best_threshold_acc"] == 1.0
    assert 0.3 < m["oracle_best_threshold"] <= 0.7


def test_fully_inverted_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    m = compute_metrics(labels, scores)
    assert m["auc"] == 0.0 and m["eer"] == 1.0 and m["tpr_at_1fpr"] == 0.0
    # Best oracle: call everything one class (50 %).
    assert m["oracle_best_threshold_acc"] == 0.5


def test_eer_interpolates_on_a_known_curve() -> None:
    # ROC points (0,0) -> (0,0.5) -> (0.5,0.5) -> (0.5,1) -> (1,1): the miss rate 0.5 meets
    # FPR on the flat segment from (0,0.5) to (0.5,0.5) at FPR = 0.5.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.7, 0.5, 0.3])
    assert compute_metrics(labels, scores)["eer"] == pytest.approx(0.5)
    # A sloped segment (as ties produce): (0, 0.2) -> (0.4, 1).
    fpr = np.array([0.0, 0.0, 0.4, 1.0])
    tpr = np.array([0.0, 0.2, 1.0, 1.0])
    # On the segment (0,0.2)-(0.4,1): 1 - tpr = fpr <=> 1 - (0.2 + 2 f) = f <=> f = 0.8/3.
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.8 / 3)


def test_tpr_at_fpr_interpolates_and_takes_top_of_steps() -> None:
    fpr = np.array([0.0, 0.0, 0.02, 0.02, 1.0])
    tpr = np.array([0.0, 0.4, 0.6, 0.8, 1.0])
    # Halfway along the segment (0, 0.4) -> (0.02, 0.6).
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.5)
    # Exactly at a vertical step: the best point with that FPR.
    assert tpr_at_fpr(fpr, tpr, 0.02) == pytest.approx(0.8)
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(0.4)


def test_tpr_at_1fpr_on_scores() -> None:
    # 200 reals, 100 fakes, in descending score order: 1 real (FPR 0.005), 50 fakes (TPR 0.5),
    # 2 reals (FPR 0.015), 50 fakes (TPR 1.0), the other reals. FPR 0.01 lies on the flat
    # segment (0.005, 0.5) -> (0.015, 0.5); FPR 0.05 lies after TPR reached 1.
    reals = np.r_[0.99, 0.80, 0.79, np.linspace(0.0, 0.3, 197)]
    fakes = np.r_[np.linspace(0.85, 0.95, 50), np.linspace(0.4, 0.6, 50)]
    labels = np.r_[np.zeros(200, int), np.ones(100, int)]
    m = compute_metrics(labels, np.r_[reals, fakes])
    assert m["tpr_at_1fpr"] == pytest.approx(0.5)
    m5 = compute_metrics(labels, np.r_[reals, fakes], fpr_target=0.05)
    assert "tpr_at_1fpr" not in m5 and tpr_key(0.05) == "tpr_at_5fpr"
    assert m5["tpr_at_5fpr"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- oracle threshold


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_best_threshold_matches_brute_force(decimals: int | None) -> None:
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        n = int(rng.integers(1, 60))
        labels = rng.integers(0, 2, n)
        scores = rng.random(n) if decimals is None else np.round(rng.random(n), decimals)
        acc, thr = best_threshold_accuracy(labels, scores)
        assert acc == pytest.approx(_brute_best_accuracy(labels, scores)), (seed, n)
        # The returned threshold achieves that accuracy under the ">=" rule.
        assert np.mean((scores >= thr) == (labels == 1)) == pytest.approx(acc)


def test_best_threshold_respects_ties() -> None:
    # Equal scores with different labels cannot be split by any threshold.
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    acc, _ = best_threshold_accuracy(labels, scores)
    assert acc == 0.5


# --------------------------------------------------------------------------- undefined cases


def test_single_class_subset_gives_none_with_reasons() -> None:
    labels = np.ones(12, dtype=int)
    scores = np.linspace(0.2, 0.9, 12)
    m = compute_metrics(labels, scores, videos=np.arange(12) // 4)
    for key in (
        "auc",
        "ap",
        "eer",
        "tpr_at_1fpr",
        "video_auc",
        "real_acc",
        "oracle_best_threshold_acc",
    ):
        assert m[key] is None, key
        assert m["notes"][key], key
    assert m["notes"]["auc"] == "single class: only fake images (12)"
    assert m["notes"]["real_acc"] == "no real images"
    assert m["fake_acc"] == pytest.approx(np.mean(scores >= 0.5))
    assert m["acc"] == m["fake_acc"]
    assert m["n_real"] == 0 and m["n_fake"] == 12
    assert roc_points(labels, scores) == []


def test_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.array([0, 1, 1]), np.array([0.1, np.nan, 0.7]))


def test_bad_labels_raise() -> None:
    with pytest.raises(ValueError, match="0 \\(real\\) or 1 \\(fake\\)"):
        compute_metrics(np.array([0, 2]), np.array([0.1, 0.2]))


# --------------------------------------------------------------------------- video level


def test_video_auc_uses_mean_per_video() -> None:
    # Frame AUC is imperfect, but the per-video means separate perfectly.
    videos = np.array(["r1", "r1", "r2", "r2", "f1", "f1", "f2", "f2"])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.7, 0.2, 0.3, 0.6, 0.65, 0.4, 0.9])
    m = compute_metrics(labels, scores, videos=videos)
    assert m["auc"] < 1.0
    assert m["video_auc"] == 1.0
    # Reorder: each video's mean must match, not its first frame.
    order = np.random.default_rng(0).permutation(8)
    assert compute_metrics(labels[order], scores[order], videos[order])["video_auc"] == 1.0
    # A case with a known non-trivial value: means r1 .4, r2 .25, f1 .625, f2 .3 -> AUC 3/4.
    scores2 = np.array([0.1, 0.7, 0.2, 0.3, 0.6, 0.65, 0.2, 0.4])
    expected = roc_auc_score([0, 0, 1, 1], [0.4, 0.25, 0.625, 0.3])
    assert compute_metrics(labels, scores2, videos=videos)["video_auc"] == pytest.approx(expected)
    assert expected == pytest.approx(0.75)


def test_video_mixing_labels_is_an_error() -> None:
    with pytest.raises(DataError, match="v1"):
        compute_metrics(
            np.array([0, 1, 0, 1]),
            np.array([0.1, 0.9, 0.2, 0.8]),
            videos=np.array(["v1", "v1", "v2", "v3"]),
        )


def test_no_video_ids_note() -> None:
    m = compute_metrics(np.array([0, 1]), np.array([0.2, 0.8]))
    assert m["video_auc"] is None and m["notes"]["video_auc"] == "no video ids"


def test_frames_without_video_id_count_as_their_own_video() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.5, 0.9])
    # Grouped, "v" would average to 0.35 and beat the fake at 0.5; alone, 0.6 > 0.5 costs a pair.
    m = compute_metrics(labels, scores, videos=np.array([None, "", "f1", "f2"], dtype=object))
    assert m["video_auc"] == pytest.approx(roc_auc_score(labels, scores))
    grouped = compute_metrics(labels, scores, videos=np.array(["v", "v", "f1", "f2"]))
    assert grouped["video_auc"] == 1.0


# --------------------------------------------------------------------------- ROC points


def test_roc_points_downsampled_keep_ends() -> None:
    labels, scores = _random_case(3, n=3000)
    points = roc_points(labels, scores, max_points=50)
    assert 2 <= len(points) <= 50
    assert points[0]["fpr"] == 0.0 and points[0]["tpr"] == 0.0
    assert points[-1]["fpr"] == 1.0 and points[-1]["tpr"] == 1.0
    fprs = [p["fpr"] for p in points]
    tprs = [p["tpr"] for p in points]
    assert fprs == sorted(fprs) and tprs == sorted(tprs)
    assert all(np.isfinite(p["threshold"]) for p in points)
    json.dumps(points)
    # Trapezoid area of the thinned curve stays close to the true AUC.
    assert np.trapezoid(tprs, fprs) == pytest.approx(roc_auc_score(labels, scores), abs=0.01)


# --------------------------------------------------------------------------- summary


def test_summarize_skips_none_and_counts_subsets() -> None:
    a_labels, a_scores = _random_case(1)
    b_labels, b_scores = _random_case(2)
    per_subset = {
        "a": compute_metrics(a_labels, a_scores),
        "b": compute_metrics(b_labels, b_scores),
        "only_fake": compute_metrics(np.ones(5, int), np.full(5, 0.9)),
    }
    s = summarize(per_subset)
    assert s["n_subsets"] == 3
    assert s["auc"] == pytest.approx((per_subset["a"]["auc"] + per_subset["b"]["auc"]) / 2)
    assert s["auc_n_subsets"] == 2
    assert s["acc_n_subsets"] == 3
    assert s["acc"] == pytest.approx(np.mean([m["acc"] for m in per_subset.values()]))
    assert s["video_auc"] is None and s["video_auc_n_subsets"] == 0
    assert s["n_real"] == per_subset["a"]["n_real"] + per_subset["b"]["n_real"]
    assert s["n_fake"] == sum(m["n_fake"] for m in per_subset.values())
    assert "only_fake (single class" in s["notes"]["auc"]
    assert "oracle_best_threshold" not in s
    json.dumps(s)


# --------------------------------------------------------------------------- calibration


def test_ece_is_zero_when_every_bin_is_calibrated() -> None:
    # Two bins: p = 0.25 with one fake in four, p = 0.8 with four fakes in five.
    p_fake = np.r_[np.full(4, 0.25), np.full(5, 0.8)]
    labels = np.r_[[1, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert expected_calibration_error(labels, p_fake) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_certain_scores_half_wrong_is_one_half() -> None:
    labels = np.r_[np.ones(10, int), np.zeros(10, int)]
    assert expected_calibration_error(labels, np.ones(20)) == pytest.approx(0.5)
    assert expected_calibration_error([], []) is None


def test_ece_weighs_bins_by_their_share_of_images() -> None:
    # Bin of 0.1 (3 images, all real: gap 0.1) and bin of 0.9 (1 image, real: gap 0.9).
    labels = np.zeros(4, int)
    p_fake = np.array([0.1, 0.1, 0.1, 0.9])
    assert expected_calibration_error(labels, p_fake) == pytest.approx(0.75 * 0.1 + 0.25 * 0.9)


def test_calibration_bins_match_scikit_learn() -> None:
    from sklearn.calibration import calibration_curve

    labels, scores = _random_case(5, n=500)
    scores = np.r_[scores, 1 / 15, 2 / 15, 0.0, 1.0]  # scores on bin edges join the lower bin
    labels = np.r_[labels, 1, 0, 0, 1]
    bins = calibration_bins(labels, scores, n_bins=15)
    fraction, confidence = calibration_curve(labels, scores, n_bins=15, strategy="uniform")
    np.testing.assert_allclose(bins["fraction_fake"], fraction)
    np.testing.assert_allclose(bins["confidence"], confidence)
    assert int(bins["count"].sum()) == len(scores)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_bins([0, 1], [0.5, 1.5])
