"""`clare predict` throughput against `clare extract` on the same images, same run.

Both go through clare.features (decode, view 0, LaRE, CLIP); extract writes a store, predict
also runs the head and writes predictions.csv/.parquet. Each is timed end to end as a user
calls it, alternating, median of `--repeats`; the ratio predict/extract is the figure (target
>= 0.9). Extract runs `extract.cpu_threads` torch threads (bit-identical stores); predict uses
every core, as its interactive use asks, so the ratio also shows what that buys on this machine.

    python -m benchmarks.bench_predict            # tiny models, ~2 min on 2 CPU cores
    python -m benchmarks.bench_predict --smoke    # seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_common_args, print_table, seed_everything, write_results
from clare.testing import make_config, make_image_tree, tiny_models

NAME = "bench_predict"
DEFAULTS = {"tiny": {"n": 48, "batch_size": 16, "repeats": 3},
            "smoke": {"n": 8, "batch_size": 4, "repeats": 1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, NAME)
    parser.add_argument("--n", type=int, default=None, help="images")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    sizes = DEFAULTS["smoke" if args.smoke else "tiny"]
    n, batch = args.n or sizes["n"], args.batch_size or sizes["batch_size"]
    repeats = args.repeats or sizes["repeats"]
    seed_everything(args.seed)

    from clare.stages.extract import run_extract
    from clare.stages.fit import run_fit
    from clare.stages.predict import PredictOptions, run_predict

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = tiny_models(root / "models")
        make_image_tree(root / "data", n, seed=args.seed, side=256)
        cfg = make_config(root / "work", models, root / "data", extract__batch_size=batch,
                          extract__shard_rows=batch, fit__max_steps=2, fit__device="cpu",
                          fit__val_fraction=0.3)
        run_extract(cfg, split="train", quiet=True)
        run_dir = run_fit(cfg, quiet=True).run_dir

        def extract() -> None:
            run_extract(cfg, split="test", overwrite=True, quiet=True)

        def predict() -> None:
            run_predict(run_dir, [str(root / "data")], options=PredictOptions(
                out_dir=root / "pred", batch_size=batch, device="cpu", quiet=True))

        extract(), predict()  # warm-up: model loads and caches
        times: dict[str, list[float]] = {"extract": [], "predict": []}
        for _ in range(repeats):
            for name, call in (("extract", extract), ("predict", predict)):
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
    rates = {name: n / statistics.median(values) for name, values in times.items()}
    results = {"images": n, "extract_img_s": rates["extract"], "predict_img_s": rates["predict"],
               "ratio_predict_over_extract": rates["predict"] / rates["extract"],
               "seconds": times, "cpu_count": os.cpu_count()}
    print_table(f"predict vs extract, {n} images, batch {batch}", ["what", "img/s"],
                [["clare extract (store)", rates["extract"]],
                 ["clare predict (csv+parquet)", rates["predict"]],
                 ["ratio predict/extract", results["ratio_predict_over_extract"]]])
    path = write_results(args.out, NAME, {"seed": args.seed, "n": n, "batch_size": batch,
                                          "repeats": repeats, "smoke": args.smoke}, results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
