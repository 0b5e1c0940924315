"""Bootstrap AUC intervals of `clare compare`: clare.bootstrap against scikit-learn per resample.

Both compute the AUC of the same video-level resamples (one weight per frame: how often its
video was drawn). clare.bootstrap sorts once and counts weighted ranks, O(N) per resample;
the baseline calls `sklearn.metrics.roc_auc_score(labels, scores, sample_weight=w)` per
resample, which sorts every time. The baseline is timed on a few resamples and scaled to the
full count; the two agree on those resamples to float rounding.

It also measures how often the intervals of `clare compare` hold the truth (coverage), on
DF40-shaped reports drawn from a known model: `--subsets` test lists that all name the same
real videos (each list under its own video ids, pointing at the same frame files, as DF40's
lists do) and fakes of their own. Reported: the coverage of the per-subset and the mean
intervals, before (each subset resampled on its own, as `clare compare` did) and after (one
draw of every distinct video for all subsets), their widths, and the paired test's rate of
false positives on two runs of equal true AUC.

    python -m benchmarks.bench_compare            # N = 10^5 frames, 1000 resamples, ~5 min
    python -m benchmarks.bench_compare --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import math
import time
from statistics import NormalDist

import numpy as np
import pandas as pd

from benchmarks.common import add_common_args, fill_defaults, print_table, time_call, write_results

NAME = "bench_compare"
DEFAULTS = {
    "full": {"n": 100_000, "resamples": 1000, "sklearn_resamples": 30, "frames_per_video": 8,
             "warmup": 1, "repeats": 3, "replicates": 500, "subsets": 10, "videos": 20,
             "coverage_resamples": 1000, "paired_replicates": 400},
    "smoke": {"n": 5_000, "resamples": 100, "sklearn_resamples": 5, "frames_per_video": 8,
              "warmup": 0, "repeats": 1, "replicates": 10, "subsets": 3, "videos": 20,
              "coverage_resamples": 100, "paired_replicates": 10},
}
LEVEL = 0.95
FRAMES = 4  # frames per video in the coverage reports
FRAME_SD = 0.5  # spread of a video's frames around the video's own score
RUN_NOISE = 0.7  # spread of one run's scores around the shared ones (the paired null)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--n", type=int, help="frames (scores)")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples")
    parser.add_argument("--sklearn-resamples", type=int, help="resamples timed with scikit-learn")
    parser.add_argument("--frames-per-video", type=int, help="frames per video id")
    parser.add_argument("--replicates", type=int, help="simulated reports for the coverage")
    parser.add_argument("--subsets", type=int, help="test lists per simulated report")
    parser.add_argument("--videos", type=int, help="real (shared) and fake videos per list")
    parser.add_argument("--coverage-resamples", type=int, help="resamples per simulated interval")
    parser.add_argument("--paired-replicates", type=int, help="simulated run pairs (null)")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    return args


def synthetic(n: int, frames_per_video: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Labels by video (half fake); scores rounded to 3 decimals, so that ties occur."""
    videos = np.arange(n) // frames_per_video
    labels = (rng.random(videos[-1] + 1) < 0.5).astype(np.int64)[videos]
    scores = np.round(1.0 / (1.0 + np.exp(-(rng.standard_normal(n) + 1.5 * (labels - 0.5)))), 3)
    return labels, scores, videos


def shared_reals_report(rng: np.random.Generator, n_subsets: int, n_videos: int,
                        ) -> tuple[pd.DataFrame, np.ndarray]:
    """Scores of a DF40-shaped report and each subset's true AUC.

    Video scores are N(0, 1) for reals and N(shift_s, 1) for the fakes of subset s, a frame
    adds N(0, FRAME_SD). The real videos are the same in every subset (same files and scores,
    ids that differ per list); so the truth is P(fake frame > real frame) =
    Phi(shift / sqrt(2 (1 + FRAME_SD^2)))."""
    shifts = 0.6 + 1.2 * np.arange(n_subsets) / max(1, n_subsets - 1)
    real = rng.normal(0.0, 1.0, (n_videos, 1)) + rng.normal(0.0, FRAME_SD, (n_videos, FRAMES))
    parts = []
    frame_no = np.tile(np.arange(FRAMES), n_videos)
    video_no = np.repeat(np.arange(n_videos), FRAMES)
    for s, shift in enumerate(shifts):
        name = f"method{s}_cdf"
        fake = rng.normal(shift, 1.0, (n_videos, 1)) + rng.normal(0.0, FRAME_SD, (n_videos, FRAMES))
        for label, scores, folder in ((0, real, "celeb/real"), (1, fake, f"{name}/fake")):
            parts.append(pd.DataFrame({
                "subset": name, "label": label, "p_fake": scores.ravel(),
                "video": [f"{name}_{'Fake' if label else 'Real'}/v{v}" for v in video_no],
                "path": [f"{folder}/v{v}/{f:03d}.png" for v, f in zip(video_no, frame_no, strict=True)],
            }))
    truth = np.array([NormalDist().cdf(shift / math.sqrt(2 * (1 + FRAME_SD ** 2))) for shift in shifts])
    return pd.concat(parts, ignore_index=True), truth


def _independent(frame: pd.DataFrame, subsets: list[str], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Before: each subset resampled on its own (its own seed), as `clare compare` did."""
    from clare.bootstrap import bootstrap_auc, subset_seed

    return {str(s): bootstrap_auc(rows["label"].to_numpy(), rows["p_fake"].to_numpy(),
                                  rows["video"].to_numpy(), n_resamples=resamples,
                                  seed=subset_seed(seed, str(s)))
            for s, rows in frame.groupby("subset", sort=False) if s in subsets}


def _covers(resampled: np.ndarray, truth: float, value: float | None = None,
            videos: int | None = None) -> tuple[bool, float]:
    """Whether the interval holds the truth, and its width. With `value` and `videos`, the
    interval `clare compare` shows (clare.bootstrap.auc_interval), else the plain percentile
    interval that it showed before."""
    from clare.bootstrap import auc_interval, percentile_interval

    if value is None or videos is None:
        interval = percentile_interval(resampled, LEVEL)
    else:
        interval = auc_interval(value, resampled, videos, LEVEL)
    assert interval is not None
    return bool(interval.low <= truth <= interval.high), interval.high - interval.low


def interval_coverage(args: argparse.Namespace) -> dict[str, float]:
    """Coverage and width of the per-subset and mean intervals, before and after."""
    from clare.bootstrap import resample_runs

    hits: dict[str, list[bool]] = {k: [] for k in ("subset", "mean", "subset_before", "mean_before")}
    widths: dict[str, list[float]] = {"mean": [], "mean_before": []}
    points = []
    for replicate in range(args.replicates):
        frame, truth = shared_reals_report(np.random.default_rng([args.seed, replicate]),
                                           args.subsets, args.videos)
        subsets = list(dict.fromkeys(frame["subset"]))
        after = resample_runs([frame], subsets, n_resamples=args.coverage_resamples,
                              seed=replicate).pop()
        mean = float(np.mean([after.observed[s] for s in subsets]))
        points.append(mean)
        hits["subset"] += [_covers(after.resampled[s], t, after.observed[s], after.videos[s])[0]
                           for s, t in zip(subsets, truth, strict=True)]
        covered, width = _covers(after.mean(subsets), float(truth.mean()), mean,
                                 min(after.videos.values()))
        hits["mean"].append(covered)
        widths["mean"].append(width)
        before = _independent(frame, subsets, args.coverage_resamples, replicate)
        hits["subset_before"] += [_covers(before[s], t)[0] for s, t in zip(subsets, truth, strict=True)]
        covered, width = _covers(np.mean([before[s] for s in subsets], axis=0), float(truth.mean()))
        hits["mean_before"].append(covered)
        widths["mean_before"].append(width)
    z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
    return {
        "coverage_per_subset": float(np.mean(hits["subset"])),
        "coverage_mean_shared_reals": float(np.mean(hits["mean"])),
        "coverage_per_subset_before": float(np.mean(hits["subset_before"])),
        "coverage_mean_shared_reals_before": float(np.mean(hits["mean_before"])),
        "coverage_mean_width": float(np.mean(widths["mean"])),
        "coverage_mean_width_before": float(np.mean(widths["mean_before"])),
        # what a 95 % interval of the mean should span: the spread of the mean over replicates
        "coverage_mean_width_true": float(2 * z * np.std(points, ddof=1)),
    }


def paired_null(args: argparse.Namespace) -> dict[str, float]:
    """How often `clare compare` would mark a run best when two runs have the same true AUC:
    both score the same videos, each adds its own noise to the same underlying scores."""
    from clare.bootstrap import percentile_interval, resample_runs, separates

    marked: dict[str, list[bool]] = {"subset": [], "mean": [], "percentile": []}
    for replicate in range(args.paired_replicates):
        rng = np.random.default_rng([args.seed, 10_000 + replicate])
        frame, _truth = shared_reals_report(rng, max(1, args.subsets // 2), args.videos)
        subsets = list(dict.fromkeys(frame["subset"]))
        pair = [frame.assign(p_fake=frame["p_fake"] + rng.normal(0.0, RUN_NOISE, len(frame)))
                for _ in range(2)]
        first, second = resample_runs(pair, subsets, n_resamples=args.coverage_resamples,
                                      seed=replicate, shared_only=True)
        for s in subsets:
            observed = first.observed[s] - second.observed[s]
            sign = 1.0 if observed >= 0 else -1.0  # the best of the column against the runner-up
            differences = sign * (first.resampled[s] - second.resampled[s])
            marked["subset"].append(separates(sign * observed, differences, first.videos[s]))
            interval = percentile_interval(differences, LEVEL)
            marked["percentile"].append(interval is not None and interval.low > 0)
        observed = float(np.mean([first.observed[s] - second.observed[s] for s in subsets]))
        sign = 1.0 if observed >= 0 else -1.0
        marked["mean"].append(separates(sign * observed, sign * (first.mean(subsets) - second.mean(subsets)),
                                        min(first.videos.values())))
    return {
        "coverage_paired_false_positive_rate": float(np.mean(marked["subset"])),
        "coverage_paired_false_positive_rate_mean": float(np.mean(marked["mean"])),
        "coverage_paired_false_positive_rate_percentile": float(np.mean(marked["percentile"])),
    }


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from clare.bootstrap import (
        bootstrap_auc,
        draw_video_counts,
        sort_scores,
        video_codes,
        weighted_auc,
    )

    args = parse_args(argv)
    started = time.perf_counter()
    labels, scores, videos = synthetic(args.n, args.frames_per_video, np.random.default_rng(args.seed))

    ours = time_call(lambda: bootstrap_auc(labels, scores, videos, n_resamples=args.resamples,
                                           seed=args.seed),
                     warmup=args.warmup, repeats=args.repeats)

    data = sort_scores(labels, scores, videos)
    codes = video_codes(videos, args.n)
    counts = draw_video_counts(data, args.sklearn_resamples, np.random.default_rng(args.seed))

    def sklearn_all() -> list[float]:
        return [roc_auc_score(labels, scores, sample_weight=c[codes]) for c in counts]

    baseline = time_call(sklearn_all, warmup=0, repeats=args.repeats)
    agreement = float(np.max(np.abs(weighted_auc(data, counts) - np.array(sklearn_all()))))
    sklearn_per_resample = baseline.median_s / args.sklearn_resamples
    ours_per_resample = ours.median_s / args.resamples
    results = {
        "clare_bootstrap_s": ours.median_s,
        "clare_per_resample_s": ours_per_resample,
        "sklearn_per_resample_s": sklearn_per_resample,
        "sklearn_extrapolated_s": sklearn_per_resample * args.resamples,
        "speedup_vs_sklearn": sklearn_per_resample / ours_per_resample,
        "max_abs_diff_vs_sklearn": agreement,
        **interval_coverage(args),
        **paired_null(args),
        "seconds_total": time.perf_counter() - started,
    }
    params = {k: getattr(args, k) for k in ("n", "resamples", "sklearn_resamples",
                                            "frames_per_video", "warmup", "repeats", "seed",
                                            "smoke", "replicates", "subsets", "videos",
                                            "coverage_resamples", "paired_replicates")}
    notes = ["clare time includes the one sort and drawing the resamples",
             "scikit-learn timed on sklearn_resamples resamples and scaled per resample"]
    write_results(args.out, NAME, params, results, notes)
    print_table(
        f"AUC of {args.resamples} video resamples of N = {args.n:,} scores",
        ["measure", "seconds"],
        [["clare.bootstrap (sort once, weighted ranks)", ours.median_s],
         ["roc_auc_score per resample, scaled", results["sklearn_extrapolated_s"]]],
    )
    print(f"speed-up per resample: {results['speedup_vs_sklearn']:,.1f}x; "
          f"largest difference {agreement:.2e}")
    print_table(
        f"Coverage at nominal {LEVEL}: {args.replicates} reports of {args.subsets} lists sharing "
        f"{args.videos} real videos ({args.videos} fakes each, {FRAMES} frames per video)",
        ["interval", "before", "after"],
        [["per subset", results["coverage_per_subset_before"], results["coverage_per_subset"]],
         ["mean over subsets", results["coverage_mean_shared_reals_before"],
          results["coverage_mean_shared_reals"]],
         ["mean: width (true width " + f"{results['coverage_mean_width_true']:.3f})",
          results["coverage_mean_width_before"], results["coverage_mean_width"]]],
    )
    print(f"paired test, false positives under a null ({args.paired_replicates} run pairs): "
          f"{results['coverage_paired_false_positive_rate']:.3f} per subset, "
          f"{results['coverage_paired_false_positive_rate_mean']:.3f} for the mean "
          f"(uncorrected percentile test {results['coverage_paired_false_positive_rate_percentile']:.3f})")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
