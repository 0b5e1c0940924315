"""Evaluation cost: compute_metrics and the O(N log N) oracle threshold at 10^6 scores,
against a naive O(N^2) threshold sweep timed on subsamples and extrapolated.

The naive sweep is the CLaRE research code's approach: every distinct score is tried as the
threshold and the accuracy is recomputed over all N scores each time. It is vectorised with
NumPy per threshold (a pure Python inner loop would be far slower still), timed at a few small
N, fitted with t(N) = a N^2 + b N (least squares) and extrapolated to the full N.

    python -m benchmarks.bench_eval            # N = 10^6, ~1 min on 2 CPU cores
    python -m benchmarks.bench_eval --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.common import (
    add_common_args,
    fill_defaults,
    int_list,
    print_table,
    seed_everything,
    time_call,
    write_results,
)

NAME = "bench_eval"
DEFAULTS = {
    "full": {"n": 1_000_000, "naive_sizes": "1000,2000,4000", "frames_per_video": 8,
             "warmup": 1, "repeats": 3},
    "smoke": {"n": 20_000, "naive_sizes": "100,200,400", "frames_per_video": 8,
              "warmup": 0, "repeats": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--n", type=int, help="scores for compute_metrics / the oracle")
    parser.add_argument("--naive-sizes", help="comma-separated subsample sizes for the O(N^2) sweep")
    parser.add_argument("--frames-per-video", type=int, help="frames per video id (video AUC)")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    return args


def synthetic_scores(n: int, frames_per_video: int, rng: np.random.Generator) -> dict[str, Any]:
    """Labels 50/50 by video; p(fake) = sigmoid of a shifted normal (AUC around 0.9)."""
    videos = np.arange(n) // frames_per_video
    video_labels = rng.integers(0, 2, size=videos[-1] + 1)
    labels = video_labels[videos]
    logits = rng.standard_normal(n) + 2.5 * (labels - 0.5)
    return {"labels": labels, "p_fake": 1.0 / (1.0 + np.exp(-logits)),
            "videos": np.char.add("v", videos.astype(str)).astype(object)}


def naive_best_threshold(labels: np.ndarray, p_fake: np.ndarray) -> float:
    """O(N^2): every distinct score as the threshold, accuracy recomputed over all N."""
    is_fake = labels == 1
    best = float(np.mean(~is_fake))  # threshold above the top score: everything real
    for threshold in np.unique(p_fake):
        best = max(best, float(np.mean((p_fake >= threshold) == is_fake)))
    return best


def fit_quadratic(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares t = a N^2 + b N; falls back to t = a N^2 if the fit bends downwards."""
    n = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([n**2, n], axis=1), t, rcond=None)
    if a <= 0:
        a, b = float(np.sum(t * n**2) / np.sum(n**4)), 0.0
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    from clare.metrics import best_threshold_accuracy, compute_metrics

    args = parse_args(argv)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    data = synthetic_scores(args.n, args.frames_per_video, rng)
    labels, p_fake, videos = data["labels"], data["p_fake"], data["videos"]

    metrics_t = time_call(lambda: compute_metrics(labels, p_fake, videos), warmup=args.warmup,
                          repeats=args.repeats)
    metrics_no_video_t = time_call(lambda: compute_metrics(labels, p_fake), warmup=args.warmup,
                                   repeats=args.repeats)
    oracle_t = time_call(lambda: best_threshold_accuracy(labels, p_fake), warmup=args.warmup,
                         repeats=args.repeats)
    metrics = compute_metrics(labels, p_fake, videos)

    naive_rows = []
    for size in int_list(args.naive_sizes):
        pick = rng.choice(args.n, size=size, replace=False)
        sub_labels, sub_scores = labels[pick], p_fake[pick]
        timing = time_call(lambda sl=sub_labels, ss=sub_scores: naive_best_threshold(sl, ss),
                           warmup=args.warmup, repeats=args.repeats)
        fast_acc, _ = best_threshold_accuracy(sub_labels, sub_scores)
        naive_acc = naive_best_threshold(sub_labels, sub_scores)
        naive_rows.append({"n": size, "seconds": timing.median_s, "accuracy": naive_acc,
                           "fast_accuracy": fast_acc, "agrees": abs(naive_acc - fast_acc) < 1e-12})
    a, b = fit_quadratic([r["n"] for r in naive_rows], [r["seconds"] for r in naive_rows])
    naive_at_n = a * args.n**2 + b * args.n

    results = {
        "n": args.n,
        "compute_metrics_s": metrics_t.median_s,
        "compute_metrics_no_videos_s": metrics_no_video_t.median_s,
        "best_threshold_s": oracle_t.median_s,
        "naive": naive_rows,
        "naive_fit": {"a": a, "b": b, "formula": "seconds = a*N^2 + b*N"},
        "naive_extrapolated_s": naive_at_n,
        "speedup_vs_naive": naive_at_n / oracle_t.median_s,
        "metrics": {k: metrics[k] for k in ("auc", "ap", "eer", "acc", "video_auc",
                                            "oracle_best_threshold_acc")},
        "seconds_total": time.perf_counter() - started,
    }
    params = {k: getattr(args, k) for k in ("n", "naive_sizes", "frames_per_video", "warmup",
                                            "repeats", "seed", "smoke")}
    notes = ["naive sweep vectorised per threshold with NumPy; extrapolated from its fit",
             "compute_metrics with video ids includes the per-video grouping (video AUC)"]
    write_results(args.out, NAME, params, results, notes)
    print_table(
        f"evaluation at N = {args.n:,}",
        ["measure", "seconds"],
        [["compute_metrics (with video AUC)", metrics_t.median_s],
         ["compute_metrics (no video ids)", metrics_no_video_t.median_s],
         ["best_threshold_accuracy, O(N log N)", oracle_t.median_s],
         [f"naive O(N^2) sweep, extrapolated to N = {args.n:,}", naive_at_n]],
    )
    print_table("naive O(N^2) sweep on subsamples", ["N", "seconds", "same accuracy as O(N log N)"],
                [[r["n"], r["seconds"], r["agrees"]] for r in naive_rows])
    print(f"speed-up of the O(N log N) oracle over the naive sweep at N = {args.n:,}: "
          f"{results['speedup_vs_naive']:,.0f}x")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
