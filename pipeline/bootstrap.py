"""Bootstrap confidence intervals for the AUC, resampling videos rather than frames.

Frames of one video are not independent draws (DF40 lists up to 32 frames per video), so a
frame-level bootstrap would report intervals that are too narrow. Each resample draws videos
with replacement, separately for real and fake videos (a stratified bootstrap: every resample
keeps both classes, so its AUC is defined), and gives each frame the weight "how many times
its video was drawn".

Cost: the real scores are sorted once and every fake score is placed among them by binary
search, O(N log N). A resample is then a weighted Mann-Whitney count, O(N): with weights w,

    AUC = sum over fake frames f of w_f * (W_real(score < s_f) + W_real(score == s_f) / 2)
          / (W_fake * W_real)

(ties count one half, as in scikit-learn's `roc_auc_score`). W_real(score < s_f) is a running
sum of the real weights in score order read at the precomputed position of f: one cumulative
sum per resample, never a new sort.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clare.errors import DataError

# Resamples processed together: a (chunk, N) int64 weight matrix is 80 MB at N = 10^5.
_CHUNK_ELEMENTS = 10_000_000


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval."""

    low: float
    high: float


@dataclass(frozen=True)
class SortedScores:
    """What every resample needs, computed once: each real frame's video in ascending score
    order, and for each fake frame how many real frames score below it and at most equal."""

    real_video: np.ndarray  # (N_real,) video code of each real frame, by ascending score
    fake_video: np.ndarray  # (N_fake,) video code of each fake frame
    reals_below: np.ndarray  # (N_fake,) real frames with a lower score
    reals_not_above: np.ndarray  # (N_fake,) real frames with a lower or equal score
    real_videos: np.ndarray  # codes of the real videos
    fake_videos: np.ndarray  # codes of the fake videos
    n_videos: int


def video_codes(videos: object, n: int) -> np.ndarray:
    """Integer code per frame, one per distinct video id (sorted). A frame without a video id
    (None, NaN or empty) is its own video, as in `clare.metrics`."""
    if videos is None:
        return np.arange(n, dtype=np.int64)
    ids = pd.Series(np.asarray(videos, dtype=object))
    if len(ids) != n:
        raise ValueError(f"videos must have one id per score ({n}), got {len(ids)}")
    missing = ids.isna() | (ids.astype(str) == "")
    keys = ids.astype(str).where(~missing, "\0frame-" + pd.Series(np.arange(n)).astype(str))
    codes, _ = pd.factorize(keys, sort=True)
    return codes.astype(np.int64)


def sort_scores(labels: np.ndarray, scores: np.ndarray, videos: object = None) -> SortedScores:
    """Sort the real scores once and place every fake score among them (binary search)."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    codes = video_codes(videos, len(labels))
    n_videos = int(codes.max()) + 1 if len(codes) else 0
    fake_frames = np.bincount(codes, weights=labels, minlength=n_videos)
    frames = np.bincount(codes, minlength=n_videos)
    mixed = np.flatnonzero((fake_frames > 0) & (fake_frames < frames))
    if len(mixed):
        raise DataError(
            f"{len(mixed)} video(s) hold both real and fake frames; fix the video ids or labels "
            "before bootstrapping"
        )
    is_fake = labels == 1
    real_order = np.argsort(scores[~is_fake], kind="stable")
    real_scores = scores[~is_fake][real_order]
    fake_scores = scores[is_fake]
    return SortedScores(
        real_video=codes[~is_fake][real_order],
        fake_video=codes[is_fake],
        reals_below=np.searchsorted(real_scores, fake_scores, side="left"),
        reals_not_above=np.searchsorted(real_scores, fake_scores, side="right"),
        real_videos=np.flatnonzero((frames > 0) & (fake_frames == 0)),
        fake_videos=np.flatnonzero(fake_frames > 0),
        n_videos=n_videos,
    )


def weighted_auc(data: SortedScores, video_weights: np.ndarray) -> np.ndarray:
    """AUC under each row of `video_weights` (R, V), a weight per video. O(R * N).

    Integer weights give an exact count: twice the numerator is
    sum_f w_f * (W_real(below f) + W_real(not above f)).
    """
    real = video_weights[:, data.real_video]
    cumulative = np.zeros((len(video_weights), real.shape[1] + 1), dtype=np.result_type(real, np.int64))
    np.cumsum(real, axis=1, out=cumulative[:, 1:])
    fake = video_weights[:, data.fake_video]
    twice_wins = (fake * (cumulative[:, data.reals_below] + cumulative[:, data.reals_not_above])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return twice_wins / (2.0 * cumulative[:, -1] * fake.sum(axis=1))


def draw_video_counts(data: SortedScores, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, V) how often each video is drawn: real and fake videos resampled separately."""
    counts = np.zeros(n_resamples * data.n_videos, dtype=np.int64)
    offsets = np.arange(n_resamples)[:, None] * data.n_videos
    for group in (data.real_videos, data.fake_videos):
        drawn = group[rng.integers(0, len(group), size=(n_resamples, len(group)))]
        counts += np.bincount((offsets + drawn).ravel(), minlength=counts.size)
    return counts.reshape(n_resamples, data.n_videos)


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, videos: object = None, *,
                  n_resamples: int = 1000, seed: int | list[int] = 0) -> np.ndarray:
    """AUC of `n_resamples` video-level bootstrap resamples, in a reproducible order.

    Returns an empty array when the data hold a single class (the AUC is undefined).
    """
    data = sort_scores(labels, scores, videos)
    if n_resamples <= 0 or not len(data.real_videos) or not len(data.fake_videos):
        return np.empty(0)
    rng = np.random.default_rng(seed)
    counts = draw_video_counts(data, n_resamples, rng)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(data.real_video) + len(data.fake_video)))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        out[start:start + chunk] = weighted_auc(data, counts[start:start + chunk])
    return out


def percentile_interval(resampled: np.ndarray, level: float = 0.95) -> Interval | None:
    """The central `level` interval of the resampled values (None when there are none)."""
    if resampled.size == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(resampled, [tail, 100.0 - tail])
    return Interval(float(low), float(high))


def subset_seed(seed: int, subset: str) -> list[int]:
    """A seed per (seed, subset): every run drawn on one subset gets the same video draws when
    its videos are the same, so runs are compared on paired resamples."""
    return [int(seed), zlib.crc32(subset.encode("utf-8"))]
