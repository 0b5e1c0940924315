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

A report is resampled as one data set (`resample_report`): DF40's test lists share their real
videos (every `_cdf` list names the same Celeb-DF reals), so one resample draws each distinct
video once, whichever subsets list it, and every subset that lists it sees the same count.
The draw is stratified by class and by the set of subsets that list a video: each stratum keeps
its size, so every subset keeps its numbers of real and fake videos (its AUC stays defined), and
a report whose subsets share nothing is resampled exactly as each subset on its own. Per-subset
and mean intervals come from the same draws, and two runs are compared (`paired_resamples`) on
the same draws of the videos both scored.

Where the resamples do not vary (AUC 1.0 or 0.0: every resample is perfect too; one video per
class) a percentile interval would have width zero. `auc_interval` then gives a one-sided exact
bound instead (see its docstring), or no interval, never a zero-width one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import cast

import numpy as np
import pandas as pd

from clare.errors import DataError

# Resamples processed together: a (chunk, N) int64 weight matrix is 80 MB at N = 10^5.
_CHUNK_ELEMENTS = 10_000_000


PERCENTILE = "percentile"
LOWER_BOUND = "lower bound"  # [low, 1]: AUC 1.0 observed, bound from the video count
UPPER_BOUND = "upper bound"  # [0, high]: AUC 0.0 observed
NO_INTERVAL = "none"  # the resamples do not vary and the value is not at a boundary


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval; `kind` says how it was made, `videos` the fewest videos per class
    behind it (bounds and missing intervals only)."""

    low: float
    high: float
    kind: str = PERCENTILE
    videos: int | None = None


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
    codes = video_codes(videos, len(np.asarray(labels)))
    return sort_coded(labels, scores, codes, int(codes.max()) + 1 if len(codes) else 0)


def sort_coded(labels: np.ndarray, scores: np.ndarray, codes: np.ndarray,
               n_videos: int) -> SortedScores:
    """`sort_scores` for frames whose videos are already codes in range(n_videos) (codes shared
    by several subsets of one report)."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
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


def draw_counts(strata: Sequence[np.ndarray], n_videos: int, n_resamples: int,
                rng: np.random.Generator) -> np.ndarray:
    """(R, V) how often each video is drawn: each stratum (an array of video codes) resampled
    with replacement to its own size, separately from the others."""
    counts = np.zeros(n_resamples * n_videos, dtype=np.int64)
    offsets = np.arange(n_resamples)[:, None] * n_videos
    for group in strata:
        if not len(group):
            continue
        drawn = group[rng.integers(0, len(group), size=(n_resamples, len(group)))]
        counts += np.bincount((offsets + drawn).ravel(), minlength=counts.size)
    return counts.reshape(n_resamples, n_videos)


def draw_video_counts(data: SortedScores, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, V) how often each video is drawn: real and fake videos resampled separately."""
    return draw_counts((data.real_videos, data.fake_videos), data.n_videos, n_resamples, rng)


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


# --------------------------------------------------------------------------- a whole report

_FLAT = 1e-12  # resampled AUCs closer than this count as not varying


def _row_keys(values: object, prefix: str) -> pd.Series:
    """Strings of `values`; a missing or empty value gets a key of its own (its row number)."""
    series = pd.Series(np.asarray(values, dtype=object))
    missing = series.isna() | (series.astype(str) == "")
    return series.astype(str).where(~missing, prefix + pd.Series(np.arange(len(series))).astype(str))


def distinct_videos(videos: object, paths: object = None) -> np.ndarray:
    """A code per frame, one per distinct video of a report (codes follow the sorted ids).

    Frames with one video id are one video. With `paths`, videos that list a common frame file
    are one video too, whatever their ids: DF40 names a real video differently in each list
    (`<list>_Real/<id>`) but every list points at the same frame files. Without paths, equal
    ids are one video across subsets.
    """
    codes = video_codes(videos, len(np.asarray(videos, dtype=object)))
    if paths is None:
        return codes
    path_codes, _ = pd.factorize(_row_keys(paths, "\0path-"))
    linked = codes
    while True:  # a file takes its videos' lowest code, a video its files' lowest, until stable
        step = pd.Series(linked).groupby(path_codes).transform("min")
        step = step.groupby(codes).transform("min").to_numpy()
        if np.array_equal(step, linked):
            break
        linked = step
    return np.unique(linked, return_inverse=True)[1].astype(np.int64)


def _strata(subsets: np.ndarray, labels: np.ndarray, video: np.ndarray) -> list[np.ndarray]:
    """Video codes grouped by (class, the subsets that list the video), in a fixed order."""
    listed = pd.DataFrame({"video": video, "label": labels.astype(np.int64),
                           "subset": subsets.astype(str)}).drop_duplicates()
    classes = listed.groupby("video")["label"].agg(["min", "max"])
    mixed = int((classes["min"] != classes["max"]).sum())
    if mixed:
        raise DataError(f"{mixed} video(s) are real in one subset and fake in another, or hold "
                        "both; fix the labels or the video ids before bootstrapping")
    membership = (listed.drop_duplicates(["video", "subset"]).sort_values(["video", "subset"])
                  .groupby("video")["subset"].agg("\0".join))
    key = classes["min"].astype(str) + "|" + membership
    return [group.index.to_numpy(dtype=np.int64) for _key, group in key.groupby(key, sort=True)]


def _shared_rows(frame: pd.DataFrame, video: np.ndarray, n_runs: int) -> np.ndarray:
    """Rows whose (subset, video) every run scored."""
    pairs = pd.DataFrame({"subset": frame["subset"].astype(str).to_numpy(), "video": video,
                          "run": frame["run"].to_numpy()})
    runs_per_pair = pairs.groupby(["subset", "video"])["run"].transform("nunique")
    return (runs_per_pair == n_runs).to_numpy()


@dataclass
class RunResamples:
    """One run's resampled AUCs per subset (the draws shared with every run resampled with it),
    its AUC on all the videos resampled, and the fewer of its real and fake videos per subset."""

    resampled: dict[str, np.ndarray]  # subset -> (R,)
    observed: dict[str, float]
    videos: dict[str, int]

    def mean(self, subsets: Sequence[str]) -> np.ndarray:
        """The mean over `subsets` of each resample's AUCs."""
        return np.mean([self.resampled[s] for s in subsets], axis=0)


def _prepare(frame: pd.DataFrame, video: np.ndarray, n_runs: int) -> list[dict[str, SortedScores]]:
    """Sorted scores per run and subset; a subset with one class is left out."""
    labels = frame["label"].to_numpy().astype(np.int64)
    scores = frame["p_fake"].to_numpy()
    n_videos = int(video.max()) + 1 if len(video) else 0
    prepared: list[dict[str, SortedScores]] = [{} for _ in range(n_runs)]
    # pandas-stubs type a group key as any Hashable; these keys are (run, subset) pairs
    groups = cast(dict[tuple[int, str], np.ndarray], frame.groupby(["run", "subset"], sort=False).indices)
    for (run, subset), rows in groups.items():
        data = sort_coded(labels[rows], scores[rows], video[rows], n_videos)
        if len(data.real_video) and len(data.fake_video):
            prepared[int(run)][str(subset)] = data
    return prepared


def resample_runs(frames: Sequence[pd.DataFrame], subsets: Sequence[str], *,
                  n_resamples: int, seed: int, shared_only: bool = False) -> list[RunResamples]:
    """The AUC of every resample per run and subset, all runs and subsets on the same draws.

    `frames`: each run's scores (subset, label, video, p_fake, and path where known). One
    resample draws every distinct video of all runs once (`distinct_videos`), stratified by
    class and by the subsets that list it (`_strata`). `shared_only`: keep only the videos that
    every run scored in a subset (a paired comparison).
    """
    frame = pd.concat([f.assign(run=i) for i, f in enumerate(frames)], ignore_index=True)
    frame = frame[frame["subset"].astype(str).isin(list(subsets))].reset_index(drop=True)
    video = distinct_videos(frame["video"].to_numpy(),
                            frame["path"].to_numpy() if "path" in frame.columns else None)
    if shared_only:
        keep = _shared_rows(frame, video, len(frames))
        frame, video = frame[keep].reset_index(drop=True), video[keep]
    n_videos = int(video.max()) + 1 if len(video) else 0
    strata = _strata(frame["subset"].to_numpy(), frame["label"].to_numpy(), video)
    prepared = _prepare(frame, video, len(frames))
    widest = max([n_videos, 1] + [len(d.real_video) + len(d.fake_video)
                                  for per_run in prepared for d in per_run.values()])
    chunk = max(1, _CHUNK_ELEMENTS // widest)
    out = [RunResamples({s: np.empty(n_resamples) for s in per_run},
                        {s: float(weighted_auc(d, np.ones((1, n_videos), dtype=np.int64))[0])
                         for s, d in per_run.items()},
                        {s: int(min(len(np.unique(d.real_video)), len(np.unique(d.fake_video))))
                         for s, d in per_run.items()})
           for per_run in prepared]
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, chunk):
        counts = draw_counts(strata, n_videos, min(chunk, n_resamples - start), rng)
        for per_run, results in zip(prepared, out, strict=True):
            for subset, data in per_run.items():
                results.resampled[subset][start:start + chunk] = weighted_auc(data, counts)
    return out


def small_sample_scale(videos: int, level: float = 0.95) -> float:
    """How much wider than its percentile interval an interval resting on `videos` videos per
    class is drawn: sqrt(m / (m - 1)) * t_{m-1} / z for the fewest videos per class m.

    A bootstrap of m draws estimates a variance (m - 1) / m of the truth, and the spread it
    reads is itself uncertain with about m - 1 degrees of freedom, the reason a t quantile
    replaces z in a small-sample mean. The plain percentile interval covered 0.927 per subset
    and 0.916 for the mean at 20 videos per class, nominal 0.95 (bench_compare); 1.10 times
    wider at m = 20, 1.04 at m = 50, 1.01 at m = 200.
    """
    from scipy.stats import t as student

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return math.sqrt(videos / (videos - 1)) * float(student.ppf(0.5 + level / 2.0, videos - 1)) / z


def _widen(interval: Interval, value: float, scale: float) -> Interval:
    """Each end moved away from `value` by `scale` times its distance, within [0, 1]."""
    low = interval.low if interval.low >= value else value - (value - interval.low) * scale
    high = interval.high if interval.high <= value else value + (interval.high - value) * scale
    return Interval(max(0.0, low), min(1.0, high), PERCENTILE, None)


def auc_interval(value: float, resampled: np.ndarray, videos: int,
                 level: float = 0.95) -> Interval | None:
    """The percentile interval of the resampled AUCs, widened for few videos
    (`small_sample_scale`), where they vary; else an exact bound.

    At AUC 1.0 every resample is perfect too, whatever the truth, so a percentile interval is
    [1, 1] and says nothing. A bound does: take `videos` disjoint (real, fake) video pairs, one
    frame of each; each pair is ordered right with probability AUC, independently, and all were,
    which has probability AUC ** videos. So AUC >= (1 - level) ** (1 / videos) at `level`
    (Clopper-Pearson for no failure in `videos` trials): 20 videos per class give >= 0.861,
    one gives >= 0.05. For a mean over subsets, `videos` is the fewest of any subset: a mean
    below the bound needs a subset below it. At 0.0 the mirror image. Flat resamples anywhere
    else, or one video in a class, give no interval.
    """
    finite = resampled[np.isfinite(resampled)]
    if not finite.size or not np.isfinite(value):
        return None
    if float(np.ptp(finite)) > _FLAT and videos >= 2:
        interval = percentile_interval(finite, level)
        assert interval is not None  # finite is not empty
        widened = _widen(interval, value, small_sample_scale(videos, level))
        if widened.high - widened.low > _FLAT:  # not when 95 % of the resamples agree exactly
            return widened
    bound = (1.0 - level) ** (1.0 / max(videos, 1))
    if value >= 1.0 - _FLAT:
        return Interval(bound, 1.0, LOWER_BOUND, videos)
    if value <= _FLAT:
        return Interval(0.0, 1.0 - bound, UPPER_BOUND, videos)
    return Interval(math.nan, math.nan, NO_INTERVAL, videos)


def separates(observed: float, differences: np.ndarray, videos: int, level: float = 0.95) -> bool:
    """The paired test: True where `observed` (one run's AUC minus another's, on the same
    videos) is above zero at `level`, two-sided.

    z = observed / sd, with sd the spread of the differences over the shared resamples, scaled
    by sqrt(m / (m - 1)) for the fewest videos per class m: a bootstrap of m draws estimates a
    variance (m - 1) / m of the truth. The percentile interval of the differences, without the
    correction, rejected a true null 6.5 % of the time at 20 videos per class (bench_compare);
    this test 4-5 %.
    """
    finite = differences[np.isfinite(differences)]
    if finite.size < 2 or videos < 2 or not math.isfinite(observed):
        return False
    spread = float(np.std(finite, ddof=1)) * math.sqrt(videos / (videos - 1))
    if spread <= _FLAT:  # the resamples do not move (both perfect, say): nothing to separate
        return False
    return observed / spread > NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
