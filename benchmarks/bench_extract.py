"""Stage one throughput: `clare extract` against the bare models, batched against per-image.

(a) images/s of `run_extract` (decode, preprocess, models, store writes) against the bare
    forward of the same LareExtractor and ClipImageEncoder objects on pre-decoded tensors at
    the same batch size; the ratio shows what the pipeline around the models costs (target
    >= 0.9). Two rates are given for extract: end to end (store creation, fingerprint, manifest
    included) and inside the shards (decode + models + shard writes). Peak RSS of a fresh
    process extracting two different N shows that memory is bounded by the shard, not by N.
(b) the batched LareExtractor against the LaRE² reference loop: one image per call with its
    ensemble copies as the batch, fp32; CLIP likewise one image per call.
(c) --real-size: the same with SD1.5-size VAE/UNet/text encoder and open_clip ViT-L-14 with
    random weights, written to disk and loaded through the real loaders (seconds per image on a
    CPU: keep N small).

    python -m benchmarks.bench_extract                 # tiny models, ~2 min on 2 CPU cores
    python -m benchmarks.bench_extract --real-size     # SD1.5/ViT-L-14 sizes, N=4
    python -m benchmarks.bench_extract --smoke         # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_MODELS_DIR,
    REPO_ROOT,
    add_common_args,
    clip_input_size,
    current_rss_mib,
    image_generators,
    int_list,
    lare_one_image_at_a_time,
    peak_rss_mib,
    print_table,
    real_size_models,
    reset_peak_rss,
    seed_everything,
    window_peak_rss_mib,
    write_results,
)
from clare.testing import ModelPaths, make_config, make_image_tree, tiny_models, write_index

NAME = "bench_extract"

# Defaults per mode; explicit arguments win. Tiny defaults fit ~2 min on a 2-core CPU.
DEFAULTS = {
    "tiny": {"n": 64, "rss_n": "64,256", "batch_size": 16, "image_size": 256, "ensemble": 4,
             "image_px": 256, "shard_rows": 32, "warmup": 1, "repeats": 3},
    "real": {"n": 4, "rss_n": "", "batch_size": 4, "image_size": 256, "ensemble": 4,
             "image_px": 256, "shard_rows": None, "warmup": 0, "repeats": 1},
    "smoke": {"n": 8, "rss_n": "4,8", "batch_size": 4, "image_size": 64, "ensemble": 2,
              "image_px": 64, "shard_rows": 4, "warmup": 0, "repeats": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--real-size", action="store_true",
                        help="SD1.5 / ViT-L-14 architectures with random weights")
    parser.add_argument("--n", type=int, help="images per timed run")
    parser.add_argument("--rss-n", help="comma-separated N for the peak-RSS runs ('' to skip)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int, help="LaRE input side (lare.image_size)")
    parser.add_argument("--ensemble", type=int)
    parser.add_argument("--image-px", type=int, help="side of the generated PNG files")
    parser.add_argument("--shard-rows", type=int, help="rows per shard (default: product's)")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch intra-op threads, for extract (extract.cpu_threads) and bare alike")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help="cache of built benchmark models (reused across runs)")
    parser.add_argument("--work-dir", type=Path, help="images and stores (default: a temp dir)")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else ("real" if args.real_size else "tiny")
    args.mode = mode
    for key, value in DEFAULTS[mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def load_models(args: argparse.Namespace) -> ModelPaths:
    if args.real_size:
        return real_size_models(args.models_dir, log=lambda m: print(m, file=sys.stderr))
    return tiny_models(args.models_dir)


def build_config(args: argparse.Namespace, models: ModelPaths, work: Path, data_root: Path) -> Any:
    extract = {"device": args.device, "batch_size": args.batch_size, "precision": "fp32",
               "decode_threads": args.decode_threads, "cpu_threads": args.cpu_threads}
    if args.shard_rows:
        extract["shard_rows"] = args.shard_rows
    lare = {"timestep": 200, "ensemble": args.ensemble, "image_size": args.image_size,
            "prompt": "a photo of a face"}
    return make_config(work, models, data_root, lare=lare, extract=extract, seed=args.seed)


# --------------------------------------------------------------------------- measuring


class ExtractTimer:
    """Times whole run_extract calls and, inside them, the compute_shard calls.

    _run_shards looks compute_shard up as a module global, so while this context is open a
    wrapper sees every shard of an in-process (one worker) run.
    """

    def __init__(self, cfg: Any, n: int, split: str) -> None:
        self.cfg, self.n, self.split = cfg, n, split
        self.shard_seconds: list[float] = []
        self.bytes_per_row = float("nan")

    def __enter__(self) -> ExtractTimer:
        import clare.stages.extract as extract_stage

        self._module = extract_stage
        self._original = extract_stage.compute_shard

        def timed_shard(job: Any, index: int) -> Any:
            result = self._original(job, index)
            self.shard_seconds.append(result.seconds)
            return result

        extract_stage.compute_shard = timed_shard
        return self

    def __exit__(self, *exc: Any) -> None:
        self._module.compute_shard = self._original

    def run(self) -> tuple[float, float]:
        """One run into a fresh store: (wall seconds, seconds inside shards)."""
        self.shard_seconds.clear()
        start = time.perf_counter()
        summary = self._module.run_extract(self.cfg, split=self.split, overwrite=True, quiet=True)
        wall = time.perf_counter() - start
        if summary.ok != self.n:
            raise RuntimeError(f"extract wrote {summary.ok} ok rows of {self.n}: {summary.reasons}")
        self.bytes_per_row = summary.bytes_per_row
        return wall, sum(self.shard_seconds)


class ModelPasses:
    """Forward passes of the extractor's own objects on random pre-decoded tensors.

    batched_*: the extractor at `batch_size` (what extract runs, minus decoding and writes);
    per_image_*: the LaRE² reference, one image per call, ensemble copies as the batch, fp32.
    Each method returns its wall time in seconds.
    """

    def __init__(self, extractor: Any, n: int, batch_size: int, image_size: int, seed: int,
                 sync: Any = None) -> None:
        import torch

        self.extractor, self.n, self.seed, self.sync = extractor, n, seed, sync
        generator = torch.Generator().manual_seed(seed)
        self.lare_in = torch.rand((n, 3, image_size, image_size), generator=generator) * 2 - 1
        side = clip_input_size(extractor.clip.visual)
        self.clip_in = torch.randn((n, 3, side, side), generator=generator)
        self.bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]

    def _timed(self, fn: Any) -> float:
        start = time.perf_counter()
        fn()
        if self.sync:
            self.sync()
        return time.perf_counter() - start

    def batched_lare(self) -> float:
        generators = image_generators(self.seed, self.n)
        return self._timed(lambda: [self.extractor.lare(self.lare_in[a:b], generators[a:b])
                                    for a, b in self.bounds])

    def batched_clip(self) -> float:
        return self._timed(lambda: [self.extractor.clip(self.clip_in[a:b]) for a, b in self.bounds])

    def per_image_lare(self) -> float:
        generators = image_generators(self.seed, self.n)
        return self._timed(
            lambda: lare_one_image_at_a_time(self.extractor.lare, self.lare_in, generators))

    def per_image_clip(self) -> float:
        import torch

        visual, device = self.extractor.clip.visual, self.extractor.clip.device

        def run() -> None:
            with torch.no_grad():
                for image in self.clip_in:
                    visual(image[None].to(device))

        return self._timed(run)

    def reference_agreement(self) -> dict[str, float]:
        """Same draws, same networks: the reference maps must match the batched extractor's."""
        check = min(self.n, 4)
        reference = lare_one_image_at_a_time(self.extractor.lare, self.lare_in[:check],
                                             image_generators(self.seed, check))
        batched = self.extractor.lare(self.lare_in[:check], image_generators(self.seed, check))
        return {"max_abs_diff_vs_batched": float((reference - batched).abs().max()),
                "max_abs_lare": float(reference.abs().max())}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def measure_stage_one(cfg: Any, device: Any, *, n: int, batch_size: int, image_size: int,
                      seed: int, warmup: int, repeats: int, per_image: bool, split: str = "test",
                      sync: Any = None) -> dict[str, Any]:
    """(a) and (b) with interleaved repeats: extract, bare passes, per-image passes, again.

    Interleaving puts every measure under the same conditions (a shared machine's load
    drifts); medians over the repeats are reported.
    """
    from clare.features import get_extractor

    samples: dict[str, list[float]] = {}
    with ExtractTimer(cfg, n, split) as timer:
        for _ in range(max(1, warmup)):  # the first run loads the models: never timed
            timer.run()
        extractor = get_extractor(cfg, device)  # the very objects run_extract used (cached)
        passes = ModelPasses(extractor, n, batch_size, image_size, seed, sync)
        kinds = ["batched_lare", "batched_clip"]
        if per_image:
            kinds += ["per_image_lare", "per_image_clip"]
        for _ in range(warmup):
            for kind in kinds:
                getattr(passes, kind)()
        for _ in range(max(1, repeats)):
            wall, inside = timer.run()
            samples.setdefault("wall", []).append(wall)
            samples.setdefault("inside", []).append(inside)
            for kind in kinds:
                samples.setdefault(kind, []).append(getattr(passes, kind)())
    wall, inside = _median(samples["wall"]), _median(samples["inside"])
    lare_s, clip_s = _median(samples["batched_lare"]), _median(samples["batched_clip"])
    out: dict[str, Any] = {
        "extract": {"n": n, "batch_size": batch_size, "wall_s": wall, "shards_s": inside,
                    "runs_wall_s": samples["wall"], "images_per_s": n / wall,
                    "images_per_s_in_shards": n / inside, "bytes_per_row": timer.bytes_per_row},
        "bare": {"n": n, "batch_size": batch_size, "lare_s": lare_s, "clip_s": clip_s,
                 "total_s": lare_s + clip_s, "images_per_s": n / (lare_s + clip_s)},
    }
    if per_image:
        ref_lare, ref_clip = _median(samples["per_image_lare"]), _median(samples["per_image_clip"])
        out["per_image"] = {"n": n, "lare_s": ref_lare, "clip_s": ref_clip,
                            "total_s": ref_lare + ref_clip,
                            "images_per_s": n / (ref_lare + ref_clip),
                            **passes.reference_agreement()}
    return out


def measure_per_image(extractor: Any, *, n: int, image_size: int, seed: int, warmup: int,
                      repeats: int, sync: Any = None) -> dict[str, Any]:
    """(b)'s reference loop alone (the GPU script runs it once, not per batch size)."""
    passes = ModelPasses(extractor, n, 1, image_size, seed, sync)
    for _ in range(warmup):
        passes.per_image_lare()
        passes.per_image_clip()
    lare_s = _median([passes.per_image_lare() for _ in range(max(1, repeats))])
    clip_s = _median([passes.per_image_clip() for _ in range(max(1, repeats))])
    return {"n": n, "lare_s": lare_s, "clip_s": clip_s, "total_s": lare_s + clip_s,
            "images_per_s": n / (lare_s + clip_s), **passes.reference_agreement()}


# --------------------------------------------------------------------------- peak RSS


def rss_child(args: argparse.Namespace) -> None:
    """Fresh process: one cold extract of the first N images; print its peak RSS as JSON."""
    from clare.stages.extract import run_extract

    n = args.rss_child
    work = Path(args.work_dir) / f"rss-{n}"
    import pandas as pd

    index = pd.read_parquet(Path(args.work_dir) / "index" / "test.parquet").iloc[:n]
    models = load_models(args)
    cfg = build_config(args, models, work, Path(args.work_dir) / "images")
    write_index(index, cfg.data.index_dir, "test")
    # Import what extraction imports first, then restart the peak mark: the imports alone
    # reach over 1 GB and would hide what the extraction itself needs.
    import diffusers  # noqa: F401
    import open_clip  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    before = current_rss_mib()
    window = reset_peak_rss()
    start = time.perf_counter()
    summary = run_extract(cfg, split="test", overwrite=True, quiet=True)
    print(json.dumps({"n": n, "ok": summary.ok, "seconds": time.perf_counter() - start,
                      "peak_rss_mib": peak_rss_mib(), "rss_before_extract_mib": before,
                      "extract_peak_rss_mib": window_peak_rss_mib() if window else None}))


def measure_rss(args: argparse.Namespace, sizes: list[int], argv: list[str]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        command = [sys.executable, "-m", "benchmarks.bench_extract", *argv,
                   "--rss-child", str(n), "--work-dir", str(args.work_dir),
                   "--models-dir", str(args.models_dir)]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"peak-RSS run for N={n} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    seed_everything(args.seed)
    import torch

    # Same intra-op threads for every measurement, or the ratios compare thread counts.
    torch.set_num_threads(args.cpu_threads)
    if args.rss_child is not None:
        rss_child(args)
        return 0
    temp = None
    if args.work_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="clare-bench-extract-")
        args.work_dir = Path(temp.name)
    work = Path(args.work_dir)
    rss_sizes = int_list(args.rss_n)
    started = time.perf_counter()

    models = load_models(args)
    n_images = max([args.n, *rss_sizes])
    index = make_image_tree(work / "images", n_images, args.seed, side=args.image_px,
                            jpeg=False, frames_per_video=4)
    write_index(index, work / "index", "test")

    cfg = build_config(args, models, work / "main", work / "images")
    write_index(index.iloc[: args.n], cfg.data.index_dir, "test")

    from clare.models.loading import resolve_device

    device = resolve_device(args.device)
    sync = None
    if device.type == "cuda":
        import torch

        sync = torch.cuda.synchronize
    measured = measure_stage_one(cfg, device, n=args.n, batch_size=args.batch_size,
                                 image_size=args.image_size, seed=args.seed, warmup=args.warmup,
                                 repeats=args.repeats, per_image=True, sync=sync)
    extract, bare, per_image = measured["extract"], measured["bare"], measured["per_image"]
    # Children are handed the same sizes; they rebuild the config from them.
    child_argv = _strip_option(raw_argv, ("--work-dir", "--models-dir", "--out", "--rss-child"))
    rss = measure_rss(args, rss_sizes, child_argv) if rss_sizes else []

    results = {
        "models": models.kind,
        "extract": extract,
        "bare": bare,
        "extract_vs_bare": extract["images_per_s"] / bare["images_per_s"],
        "extract_in_shards_vs_bare": extract["images_per_s_in_shards"] / bare["images_per_s"],
        "per_image": per_image,
        "batched_speedup_lare": per_image["lare_s"] / bare["lare_s"],
        "batched_speedup_total": per_image["total_s"] / bare["total_s"],
        "peak_rss": rss,
        "seconds_total": time.perf_counter() - started,
    }
    params = {k: getattr(args, k) for k in ("mode", "n", "rss_n", "batch_size", "image_size",
                                            "ensemble", "image_px", "shard_rows",
                                            "decode_threads", "cpu_threads", "device",
                                            "warmup", "repeats",
                                            "seed")}
    params["precision"] = "fp32"
    notes = [
        "repeats interleave extract, bare and per-image passes; medians reported",
        "extract: timed runs follow one warm-up run that loads the models; "
        "wall = whole run_extract call, in shards = sum of compute_shard times",
        "bare: the same LareExtractor/ClipImageEncoder objects on random pre-decoded tensors",
        "per_image: one image per call, ensemble copies as the UNet batch, fp32 (LaRE² style)",
        "peak_rss: fresh process per N, one cold extract (models loaded inside); "
        "extract_peak_rss_mib = VmHWM reset after the imports, peak_rss_mib = whole process",
    ]
    if args.real_size:
        notes.append("real-size: SD1.5 / ViT-L-14 architectures with random weights")
    write_results(args.out, NAME, params, results, notes)
    _print(results, args)
    if temp is not None:
        temp.cleanup()
    return 0


def _strip_option(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Drop `--name VALUE` / `--name=VALUE` pairs for the given option names."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in names:
            skip = True
            continue
        if any(item.startswith(name + "=") for name in names):
            continue
        kept.append(item)
    return kept


def _print(results: dict[str, Any], args: argparse.Namespace) -> None:
    ext, bare, ref = results["extract"], results["bare"], results["per_image"]
    print_table(
        f"(a) clare extract vs bare models ({results['models']}, N={args.n}, "
        f"batch {args.batch_size}, {args.device})",
        ["measure", "images/s", "seconds", "ratio to bare (target >= 0.9)"],
        [
            ["extract, end to end", ext["images_per_s"], ext["wall_s"], results["extract_vs_bare"]],
            ["extract, inside shards", ext["images_per_s_in_shards"], ext["shards_s"],
             results["extract_in_shards_vs_bare"]],
            ["bare forward (LaRE + CLIP)", bare["images_per_s"], bare["total_s"], 1.0],
        ],
    )
    print_table(
        "(b) batched extractor vs one image at a time (fp32)",
        ["part", "batched s", "per-image s", "speed-up"],
        [
            ["LaRE (VAE + UNet x ensemble)", bare["lare_s"], ref["lare_s"],
             results["batched_speedup_lare"]],
            ["CLIP visual", bare["clip_s"], ref["clip_s"], ref["clip_s"] / bare["clip_s"]],
            ["total", bare["total_s"], ref["total_s"], results["batched_speedup_total"]],
        ],
    )
    print(f"reference vs batched LaRE maps: max |diff| {ref['max_abs_diff_vs_batched']:.2e} "
          f"(max |LaRE| {ref['max_abs_lare']:.2e})")
    if results["peak_rss"]:
        print_table("peak RSS of one cold extract (fresh process, models loaded inside)",
                    ["N", "RSS before MiB", "peak during extract MiB", "process peak MiB",
                     "seconds"],
                    [[r["n"], r["rss_before_extract_mib"], r["extract_peak_rss_mib"],
                      r["peak_rss_mib"], r["seconds"]] for r in results["peak_rss"]])
    print(f"results: {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
