"""`clare predict` throughput against `clare extract` on the same images, same run.

Both go through clare.features (decode, view 0, LaRE, CLIP); extract writes a store, predict
also runs the head and writes predictions.csv/.parquet. Each is timed end to end as a user
calls it, alternating, median of `--repeats`; the ratio predict/extract is the figure (target
>= 0.9). Extract runs `extract.cpu_threads` torch threads (bit-identical stores); predict uses
every core, as its interactive use asks, so the ratio also shows what that buys on this machine.

Beside it, the weight-hash cache (clare.hash_cache): hashing a `--hash-mb` file (200 MB, an
SD weight file's order of size) in a first process against a second one that finds the digest
in hashes.json; the second call reads no weight bytes.

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
DEFAULTS = {"tiny": {"n": 48, "batch_size": 16, "repeats": 3, "hash_mb": 200},
            "smoke": {"n": 8, "batch_size": 4, "repeats": 1, "hash_mb": 8}}


def hash_cache_seconds(root: Path, megabytes: int) -> dict[str, float]:
    """Seconds to get a weight file's sha256 in a first and a second process (the second
    simulated by forgetting this process's digests), the cache under `root`."""
    from clare import hash_cache

    weights = root / "weights.bin"
    chunk = os.urandom(1 << 20)
    with open(weights, "wb") as handle:
        for _ in range(megabytes):
            handle.write(chunk)
    saved = {name: os.environ.get(name) for name in (hash_cache.CACHE_ENV, "XDG_CACHE_HOME")}
    os.environ[hash_cache.CACHE_ENV], os.environ["XDG_CACHE_HOME"] = "on", str(root / "xdg")
    seconds = {}
    try:
        for call in ("first", "second"):
            hash_cache._READ.clear()  # a new process remembers nothing of its own
            started = time.perf_counter()
            hash_cache.weights_sha256(weights)
            seconds[call] = time.perf_counter() - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, NAME)
    parser.add_argument("--n", type=int, default=None, help="images")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--hash-mb", type=int, default=None, help="weight file size for the hash cache")
    args = parser.parse_args()
    sizes = DEFAULTS["smoke" if args.smoke else "tiny"]
    n, batch = args.n or sizes["n"], args.batch_size or sizes["batch_size"]
    repeats = args.repeats or sizes["repeats"]
    hash_mb = args.hash_mb or sizes["hash_mb"]
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
        hashing = hash_cache_seconds(root, hash_mb)
    rates = {name: n / statistics.median(values) for name, values in times.items()}
    results = {"images": n, "extract_img_s": rates["extract"], "predict_img_s": rates["predict"],
               "ratio_predict_over_extract": rates["predict"] / rates["extract"],
               "seconds": times, "cpu_count": os.cpu_count(),
               "hash_cache": {"megabytes": hash_mb, "first_s": hashing["first"],
                              "second_s": hashing["second"],
                              "speedup": hashing["first"] / max(hashing["second"], 1e-9)}}
    print_table(f"predict vs extract, {n} images, batch {batch}", ["what", "img/s"],
                [["clare extract (store)", rates["extract"]],
                 ["clare predict (csv+parquet)", rates["predict"]],
                 ["ratio predict/extract", results["ratio_predict_over_extract"]]])
    print_table(f"weight hash of a {hash_mb} MB file", ["process", "seconds"],
                [["first (reads the file)", hashing["first"]],
                 ["second (hashes.json)", hashing["second"]],
                 ["first / second", results["hash_cache"]["speedup"]]])
    path = write_results(args.out, NAME, {"seed": args.seed, "n": n, "batch_size": batch,
                                          "repeats": repeats, "hash_mb": hash_mb,
                                          "smoke": args.smoke}, results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
