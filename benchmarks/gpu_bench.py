"""One command for a lent GPU: stage one at real size, the per-image reference, bare models, fit.

    python -m benchmarks.gpu_bench --out $OUT/gpu.json            # H200: under 8 minutes
    python -m benchmarks.gpu_bench --smoke --device cpu            # seconds, tiny models (CI)
    python -m benchmarks.gpu_bench --weights weights --out $OUT/gpu-real.json  # real weights

Without --weights the models are SD1.5-size and ViT-L-14-size with random weights; with
--weights DIR (a `clare models download` folder) they are the real ones.

Steps, in order of priority; before each the remaining time budget is checked and a step that
no longer fits is skipped with a note (a SIGALRM also cuts a step that overruns the budget):
1. SD1.5-size VAE/UNet/text encoder and open_clip ViT-L-14 with random weights, written to a
   temp folder and loaded through the real loaders (no network);
2. per batch size, interleaved repeats of `clare extract` (run_extract, one in-process
   worker, --precision bf16: images/s end to end and inside the shards) and of the bare
   LareExtractor + ClipImageEncoder forward on pre-decoded tensors (the same objects);
3. the LaRE² reference: one image per call, ensemble copies as the batch, fp32;
4. bf16 against fp32 on the same images and the same random draws: relative L2 difference and
   Pearson correlation of the LaRE maps, the CLIP tokens (as stored, fp16) and the CLS
   embeddings, overall and per image (the LaRE² reference runs fp32; configs/df40.yaml keeps
   fp32 unless these figures say bf16 is close). On a CPU clare never autocasts, so both
   passes are fp32 there and the smoke run only proves the comparison runs;
5. fit samples/s from `clare.stages.fit.run_fit` on the train store of step 2: after an untimed
   run, two runs with different max_steps, so fixed costs (CLIP load, one validation) cancel
   ("n/a" if fit is absent).
The JSON file is rewritten after every step, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_extract import measure_per_image, measure_stage_one
from benchmarks.common import (
    DEFAULT_MODELS_DIR,
    add_common_args,
    fmt,
    image_generators,
    int_list,
    print_table,
    real_size_models,
    seed_everything,
    write_results,
)
from clare.testing import ModelPaths, make_config, make_image_tree, tiny_models

NAME = "gpu_bench"

DEFAULTS = {
    "full": {"n": 512, "batch_sizes": "16,32,64", "per_image_n": 32, "image_size": 256,
             "ensemble": 4, "image_px": 256, "budget_s": 420.0, "fit_steps": "20,120",
             "fit_batch": 32, "val_fraction": 0.05, "warmup": 1, "repeats": 2,
             "precision_n": 64},
    "smoke": {"n": 16, "batch_sizes": "4,8", "per_image_n": 2, "image_size": 64,
              "ensemble": 2, "image_px": 64, "budget_s": 240.0, "fit_steps": "2,4",
              "fit_batch": 4, "val_fraction": 0.5, "warmup": 0, "repeats": 1,
             "precision_n": 4},
}
# Rough lower bounds (s) of what a step needs on the H200; a step starts only if they fit.
MIN_SECONDS = {"models": 90, "extract": 30, "per_image": 15, "precision": 20, "fit": 45}


class BudgetExceeded(Exception):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--n", type=int, help="images per extraction run")
    parser.add_argument("--batch-sizes", help="comma-separated extraction batch sizes")
    parser.add_argument("--per-image-n", type=int, help="images for the per-image reference")
    parser.add_argument("--image-size", type=int, help="LaRE input side")
    parser.add_argument("--ensemble", type=int)
    parser.add_argument("--image-px", type=int, help="side of the generated PNG files")
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--budget-s", type=float, help="stop starting steps after this many s")
    parser.add_argument("--fit-steps", help="two max_steps values for the fit runs")
    parser.add_argument("--fit-batch", type=int)
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--models-dir", type=Path,
                        help="benchmark model cache (default: a temp dir; smoke: the shared cache)")
    parser.add_argument("--work-dir", type=Path, help="images and stores (default: a temp dir)")
    parser.add_argument("--precision-n", type=int, help="images in the bf16 vs fp32 comparison")
    parser.add_argument("--weights", type=Path,
                        help="a `clare models download` folder: real weights instead of random ones")
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else "full"
    for key, value in DEFAULTS[args.mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


class Runner:
    """Runs steps against a deadline and rewrites the results file after each one."""

    def __init__(self, args: argparse.Namespace, params: dict[str, Any]) -> None:
        self.args = args
        self.params = params
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget_s
        self.results: dict[str, Any] = {"extract": {}, "bare": {}, "per_image": None,
                                        "precision": None, "fit": None, "skipped": [],
                                        "errors": {}, "steps_s": {}}
        self.notes: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def step(self, name: str, kind: str, fn: Callable[[], Any]) -> Any:
        if self.remaining() < MIN_SECONDS[kind] * (0.05 if self.args.smoke else 1.0):
            self.results["skipped"].append(name)
            self.notes.append(f"{name}: skipped, {self.remaining():.0f} s of the budget left")
            self.save()
            return None
        signal.alarm(max(1, int(self.remaining())))
        start = time.perf_counter()
        value = None
        try:
            value = fn()
        except BudgetExceeded:
            self.results["errors"][name] = "cut: the time budget ran out during this step"
        except Exception as exc:  # noqa: BLE001 - record it, keep the other figures
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            signal.alarm(0)
        self.results["steps_s"][name] = time.perf_counter() - start
        self.save()
        return value

    def save(self) -> None:
        self.results["seconds_total"] = time.perf_counter() - self.started
        write_results(self.args.out, NAME, self.params, self.results, self.notes)


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise BudgetExceeded()


def _cuda_memory(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _reset_cuda_memory(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def downloaded_models_paths(folder: Path) -> ModelPaths:
    """The real weights of a `clare models download` folder, as a benchmark model set."""
    from clare.models.hub import downloaded_models

    models = downloaded_models(folder)
    return ModelPaths("real", Path(models["sd"]["pretrained"]), models["clip"]["model"],
                      Path(models["clip"]["pretrained"]), None)


def model_set(args: argparse.Namespace, device: Any, log: Callable[[str], None]) -> ModelPaths:
    """Real weights (--weights), the tiny models (--smoke) or real-size random ones."""
    if args.weights is not None:
        return downloaded_models_paths(args.weights)
    if args.smoke:
        return tiny_models(args.models_dir)
    return real_size_models(args.models_dir, log=log, init_device=str(device))


def run_precision_step(runner: Runner, config: Callable[[], Any], device: Any,
                       paths: list[Path]) -> None:
    """Step 4: the extractor of the last batch size (cached), both precisions, one record."""
    args = runner.args

    def step() -> dict[str, Any]:
        from clare.features import get_extractor

        extractor = get_extractor(config(), device)
        batch = int_list(args.batch_sizes)[-1]
        return measure_precision(extractor, paths, image_size=args.image_size, seed=args.seed,
                                 batch_size=batch)

    runner.results["precision"] = runner.step("precision", "precision", step)
    if runner.results["precision"] is not None and not runner.results["precision"]["autocast_applied"]:
        runner.notes.append("precision: no autocast on this device, both passes ran fp32")


def compare_outputs(reference: Any, other: Any) -> dict[str, Any]:
    """Relative L2 difference ||o - r|| / ||r|| and Pearson correlation, overall and per image."""
    import torch

    ref, oth = reference.double().flatten(1), other.double().flatten(1)

    def rel_l2(a: Any, b: Any) -> Any:
        return (b - a).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-30)

    def corr(a: Any, b: Any) -> Any:
        a, b = a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True)
        return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)

    per_rel, per_corr = rel_l2(ref, oth), corr(ref, oth)
    whole_ref, whole_oth = ref.flatten()[None], oth.flatten()[None]
    return {"rel_l2": float(rel_l2(whole_ref, whole_oth)[0]),
            "corr": float(corr(whole_ref, whole_oth)[0]),
            "per_image_rel_l2_median": float(per_rel.median()),
            "per_image_rel_l2_max": float(per_rel.max()),
            "per_image_corr_median": float(per_corr.median()),
            "per_image_corr_min": float(per_corr.min()),
            "max_abs_diff": float((oth - ref).abs().max()),
            "n": int(ref.shape[0]), "identical": bool(torch.equal(reference, other))}


def measure_precision(extractor: Any, paths: list[Path], *, image_size: int, seed: int,
                      batch_size: int) -> dict[str, Any]:
    """bf16 vs fp32 on the same decoded images and the same per-image random draws.

    The extractor's `precision` attributes are switched between passes (they only choose the
    autocast context), so both passes use the very same loaded networks.
    """
    import torch
    from PIL import Image

    from clare.models.lare import lare_pixels

    images = [Image.open(path).convert("RGB") for path in paths]
    lare_in = torch.stack([lare_pixels(image, image_size) for image in images])
    clip_in = torch.stack([extractor.clip_preprocess(image) for image in images])
    before = (extractor.lare.precision, extractor.clip.precision)
    outputs: dict[str, dict[str, Any]] = {}
    try:
        for precision in ("fp32", "bf16"):
            extractor.lare.precision = extractor.clip.precision = precision
            generators = image_generators(seed, len(images))
            parts: dict[str, list[Any]] = {"lare": [], "cls": [], "tokens": []}
            for start in range(0, len(images), batch_size):
                stop = start + batch_size
                parts["lare"].append(extractor.lare(lare_in[start:stop], generators[start:stop]))
                cls, tokens = extractor.clip(clip_in[start:stop])
                parts["cls"].append(cls)
                parts["tokens"].append(tokens)
            outputs[precision] = {name: torch.cat(chunks) for name, chunks in parts.items()}
    finally:
        extractor.lare.precision, extractor.clip.precision = before
    autocast = extractor.lare.device.type == "cuda"
    return {"autocast_applied": autocast,
            **{name: compare_outputs(outputs["fp32"][name], outputs["bf16"][name])
               for name in ("lare", "tokens", "cls")}}


def measure_fit(cfg_for: Callable[[int], Any], steps: list[int], batch: int) -> dict[str, Any]:
    """Marginal fit samples/s: (steps_b - steps_a) * batch / (seconds_b - seconds_a)."""
    try:
        from clare.stages.fit import run_fit
    except ImportError as exc:
        return {"samples_per_s": "n/a", "reason": f"clare.stages.fit not importable ({exc})"}
    # An untimed first run pays the one-time costs (imports, kernels, file cache).
    run_fit(cfg_for(steps[0]), quiet=True, overwrite=True)
    runs = []
    for max_steps in steps:
        start = time.perf_counter()
        result = run_fit(cfg_for(max_steps), quiet=True, overwrite=True)
        runs.append({"max_steps": max_steps, "steps": result.steps,
                     "seconds": time.perf_counter() - start, "train_rows": result.train_rows})
    first, last = runs[0], runs[-1]
    extra_steps = last["steps"] - first["steps"]
    extra_s = last["seconds"] - first["seconds"]
    marginal = extra_steps * batch / extra_s if extra_steps > 0 and extra_s > 0 else None
    return {"samples_per_s": marginal, "batch_size": batch, "runs": runs,
            "end_to_end_samples_per_s": last["steps"] * batch / last["seconds"]}


def _params(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    params = {k: getattr(args, k) for k in ("mode", "device", "precision", "n", "batch_sizes",
                                            "per_image_n", "image_size", "ensemble", "image_px",
                                            "decode_threads", "budget_s", "fit_steps",
                                            "fit_batch", "warmup", "repeats", "seed",
                                            "precision_n")}
    params["weights"] = str(args.weights) if args.weights else None
    if device.type == "cuda":
        try:  # the fp32 reference's real precision: TF32 flags as this torch has them
            params["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
            params["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
        except (AttributeError, RuntimeError):
            params["tf32_matmul"] = params["tf32_cudnn"] = "unknown"
        params["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return params


def main(argv: list[str] | None = None) -> int:
    import torch

    from clare.models.loading import resolve_device

    args = parse_args(argv)
    seed_everything(args.seed)
    device = resolve_device(args.device)  # a clear error if CUDA is asked for and missing
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    temp = tempfile.TemporaryDirectory(prefix="clare-gpu-bench-")
    work = Path(args.work_dir or temp.name)
    if args.models_dir is None:
        args.models_dir = DEFAULT_MODELS_DIR if args.smoke else work / "models"
    batch_sizes = int_list(args.batch_sizes)
    runner = Runner(args, _params(args, device))
    signal.signal(signal.SIGALRM, _on_alarm)
    results = runner.results

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - runner.started:6.0f} s] {message}", file=sys.stderr, flush=True)

    log("models")
    models = runner.step("models", "models", lambda: model_set(args, device, log))
    if models is None:
        runner.notes.append("no models: nothing else could run")
        runner.save()
        return 1
    results["models"] = models.kind
    # make_config writes this tree's index for both splits.
    index = make_image_tree(work / "images", args.n, args.seed, side=args.image_px, jpeg=False,
                            frames_per_video=4)

    def config(batch_size: int, fit: dict[str, Any] | None = None) -> Any:
        extract = {"device": str(device), "batch_size": batch_size, "precision": args.precision,
                   "decode_threads": args.decode_threads}
        if args.smoke:
            extract["shard_rows"] = 4
        lare = {"timestep": 200, "ensemble": args.ensemble, "image_size": args.image_size,
                "prompt": "a photo of a face"}
        sections = {"lare": lare, "extract": extract, **({"fit": fit} if fit else {})}
        return make_config(work, models, work / "images", seed=args.seed, **sections)

    for batch_size in batch_sizes:
        log(f"extract and bare models, batch {batch_size}")

        def run_stage_one(bs: int = batch_size) -> dict[str, Any]:
            _reset_cuda_memory(device)
            out = measure_stage_one(config(bs), device, n=args.n, batch_size=bs,
                                    image_size=args.image_size, seed=args.seed,
                                    warmup=args.warmup, repeats=args.repeats, per_image=False,
                                    split="train", sync=sync)
            out["extract"]["cuda_peak_gib"] = _cuda_memory(device)
            return out

        value = runner.step(f"stage_one_bs{batch_size}", "extract", run_stage_one)
        if value is not None:
            results["extract"][str(batch_size)] = value["extract"]
            results["bare"][str(batch_size)] = value["bare"]

    log("per-image fp32 reference")

    def run_per_image_step() -> dict[str, Any]:
        from clare.features import get_extractor

        # The extractor of the last batch size (cached; batch size does not change the models).
        extractor = get_extractor(config(batch_sizes[-1]), device)
        _reset_cuda_memory(device)
        out = measure_per_image(extractor, n=args.per_image_n, image_size=args.image_size,
                                seed=args.seed, warmup=1, repeats=args.repeats, sync=sync)
        out["cuda_peak_gib"] = _cuda_memory(device)
        return out

    results["per_image"] = runner.step("per_image", "per_image", run_per_image_step)

    log("bf16 vs fp32 on the same draws")
    paths = [work / "images" / path for path in index["path"].iloc[: args.precision_n]]
    run_precision_step(runner, lambda: config(batch_sizes[-1]), device, paths)

    log("fit")
    if not any(str(bs) in results["extract"] for bs in batch_sizes):
        results["fit"] = {"samples_per_s": "n/a", "reason": "no train store was extracted"}
    else:
        def fit_config(max_steps: int) -> Any:
            fit = {"device": str(device), "max_steps": max_steps, "val_every": 10**9,
                   "batch_size": args.fit_batch, "val_fraction": args.val_fraction,
                   "name": f"bench-{max_steps}"}
            return config(batch_sizes[-1], fit=fit)

        results["fit"] = runner.step(
            "fit", "fit", lambda: measure_fit(fit_config, int_list(args.fit_steps), args.fit_batch))

    _summarise(results, batch_sizes)
    runner.save()
    _print(results, batch_sizes, args)
    temp.cleanup()
    return 1 if results["errors"] else 0


def _summarise(results: dict[str, Any], batch_sizes: list[int]) -> None:
    reference = results.get("per_image") or {}
    ref_rate = reference.get("images_per_s")
    for bs in map(str, batch_sizes):
        ext, bare = results["extract"].get(bs), results["bare"].get(bs)
        if ext and bare:
            ext["vs_bare"] = ext["images_per_s"] / bare["images_per_s"]
            ext["in_shards_vs_bare"] = ext["images_per_s_in_shards"] / bare["images_per_s"]
        if ext and ref_rate:
            ext["vs_per_image_fp32"] = ext["images_per_s"] / ref_rate


def _print(results: dict[str, Any], batch_sizes: list[int], args: argparse.Namespace) -> None:
    rows = []
    for bs in map(str, batch_sizes):
        ext, bare = results["extract"].get(bs) or {}, results["bare"].get(bs) or {}
        rows.append([bs, ext.get("images_per_s"), ext.get("images_per_s_in_shards"),
                     bare.get("images_per_s"), ext.get("vs_bare"), ext.get("vs_per_image_fp32"),
                     ext.get("cuda_peak_gib")])
    print_table(f"stage one, {results.get('models')} models, {args.precision}, N={args.n}",
                ["batch", "extract img/s", "in shards img/s", "bare img/s", "extract/bare",
                 "speed-up vs per-image fp32", "GPU peak GiB"], rows)
    reference = results.get("per_image") or {}
    fit = results.get("fit") or {}
    print(f"per-image fp32 reference: {fmt(reference.get('images_per_s'))} img/s; "
          f"fit: {fmt(fit.get('samples_per_s'))} samples/s")
    precision = results.get("precision")
    if precision:
        rows = [[name, precision[name]["rel_l2"], precision[name]["corr"],
                 precision[name]["per_image_rel_l2_max"], precision[name]["per_image_corr_min"]]
                for name in ("lare", "tokens", "cls")]
        applied = "" if precision["autocast_applied"] else " (no autocast on this device)"
        print_table(f"bf16 vs fp32, same draws, N={precision['lare']['n']}{applied}",
                    ["output", "rel. L2", "corr.", "worst image rel. L2", "worst image corr."], rows)
    for name, error in results["errors"].items():
        print(f"error in {name}: {error}")
    for name in results["skipped"]:
        print(f"skipped: {name}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
