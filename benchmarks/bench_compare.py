"""Bootstrap AUC intervals of `clare compare`: clare.bootstrap against scikit-learn per resample.

Both compute the AUC of the same video-level resamples (one weight per frame: how often its
video was drawn). clare.bootstrap sorts once and counts weighted ranks, O(N) per resample;
the baseline calls `sklearn.metrics.roc_auc_score(labels, scores, sample_weight=w)` per
resample, which sorts every time. The baseline is timed on a few resamples and scaled to the
full count; the two agree on those resamples to float rounding.

    python -m benchmarks.bench_compare            # N = 10^5 frames, 1000 resamples, ~1 min
    python -m benchmarks.bench_compare --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import add_common_args, fill_defaults, print_table, time_call, write_results

NAME = "bench_compare"
DEFAULTS = {
    "full": {"n": 100_000, "resamples": 1000, "sklearn_resamples": 30, "frames_per_video": 8,
             "warmup": 1, "repeats": 3},
    "smoke": {"n": 5_000, "resamples": 100, "sklearn_resamples": 5, "frames_per_video": 8,
              "warmup": 0, "repeats": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--n", type=int, help="frames (scores)")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples")
    parser.add_argument("--sklearn-resamples", type=int, help="resamples timed with scikit-learn")
    parser.add_argument("--frames-per-video", type=int, help="frames per video id")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    return args


def synthetic(n: int, frames_per_video: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Labels by video (half fake); scores rounded to 3 decimals, so that ties occur."""
    videos = np.arange(n) // frames_per_video
    labels = (rng.random(videos[-1] + 1) < 0.5).astype(np.int64)[videos]
    scores = np.round(1.0 / (1.0 + np.exp(-(rng.standard_normal(n) + 1.5 * (labels - 0.5)))), 3)
    return labels, scores, videos


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
        "seconds_total": time.perf_counter() - started,
    }
    params = {k: getattr(args, k) for k in ("n", "resamples", "sklearn_resamples",
                                            "frames_per_video", "warmup", "repeats", "seed",
                                            "smoke")}
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
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
