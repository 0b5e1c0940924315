"""Stage two: a training epoch from the feature store against an end-to-end epoch.

Both paths train the same fusion detector (v2 attention) with the same AdamW groups,
learning-rate rule and gradient clipping as `clare fit`, at batch `--batch-size`, once with
CoOp and once with CoCoOp prompts:

- store:       batches of cls + tokens + LaRE from `StoreLoader` (shuffled, prefetch 2), the
               frozen CLIP image tower is never run. Whole epochs are timed.
- end to end:  what the CLaRE research code does: every step runs the frozen CLIP image tower
               (`ClipImageEncoder`, no grad) on the batch's pixels to get cls + tokens, then the
               same head step. Pixels are random tensors at the model's input size, so image
               decoding and preprocessing are left out (the ratio is a lower bound); LaRE and
               labels come from the store. A CLIP forward at ViT-L/14 size costs seconds per
               image on a CPU, so `--e2e-steps` steps are timed (one CLIP forward each, then the
               step of every detector measured) and the epoch is extrapolated per sample:
               epoch = N x median(step seconds / batch rows).

A CoCoOp step runs the text tower once per image (seconds on a CPU at ViT-L/14 size), so
its store epochs cover the first `--cocoop-rows` rows; ratios are per sample.

It also measures the parts of the store path: the loader alone (one epoch, no model), the
training step alone (on one batch in memory), the step's split (text tower, head, optimiser,
and the loader wait inside a store epoch), and a store epoch over batches read into memory
first, which tells the loader's own cost in an epoch from the cost of fresh batches.

"before" runs the same detectors with `Detector.use_exact_shortcuts(False)`: the
straightforward computation of the step before issue 25 (all 77 text positions, the
batch-first text tower, the v2 lift on every position, keys and values of every token).

The store holds random data at the model's sizes (ViT-L/14: tokens 256x1024 fp16, cls 768,
LaRE 4x32x32) in a temp dir; it is read right after it is written, so from the page cache.
Models have random weights (`open_clip.create_model(..., pretrained=None)`); nothing is
downloaded. torch keeps its default thread count, which the results record.

    python -m benchmarks.bench_fit                  # ViT-L/14, N=256, batch 32 (~5 min quiet, 2 CPUs)
    python -m benchmarks.bench_fit --device cuda    # same on a GPU (bf16 autocast, as clare fit)
    python -m benchmarks.bench_fit --smoke          # tiny ViT, N=16, seconds (CI)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_common_args,
    clip_input_size,
    dir_bytes,
    fill_defaults,
    peak_rss_mib,
    print_table,
    seed_everything,
    time_call,
    write_results,
)

NAME = "bench_fit"
TINY = "tiny"

DEFAULTS = {
    "full": {"model": "ViT-L-14", "n": 256, "batch_size": 32, "shard_rows": None, "lare_side": 32,
             "e2e_steps": 2, "step_repeats": 2, "warmup": 1, "repeats": 1, "cocoop_rows": 64},
    "smoke": {"model": TINY, "n": 16, "batch_size": 8, "shard_rows": 8, "lare_side": 8,
              "e2e_steps": 2, "step_repeats": 2, "warmup": 1, "repeats": 1, "cocoop_rows": 8},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--model", help=f"open_clip model name, or '{TINY}' for the project's tiny "
                                        "ViT (default ViT-L-14; --smoke: tiny)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--n", type=int, help="images in the store (rows)")
    parser.add_argument("--batch-size", type=int, help="training batch (clare fit default: 32)")
    parser.add_argument("--shard-rows", type=int,
                        help="rows per store shard (default: the product's, 128 for ViT-L/14)")
    parser.add_argument("--lare-side", type=int, help="LaRE map side (32 at 256 px)")
    parser.add_argument("--e2e-steps", type=int, help="end-to-end steps timed (then extrapolated)")
    parser.add_argument("--step-repeats", type=int, help="timed in-memory training steps")
    parser.add_argument("--cocoop-rows", type=int,
                        help="rows of a CoCoOp store epoch (its text tower runs per image, seconds "
                             "a step on a CPU; ratios are per sample, so fewer rows suffice)")
    parser.add_argument("--work-dir", type=Path, help="where the store goes (default: temp)")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    for key in ("n", "batch_size", "e2e_steps", "step_repeats", "repeats", "lare_side",
                "cocoop_rows"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


# --------------------------------------------------------------------------- models


def create_clip(model: str, work: Path) -> tuple[Any, Any]:
    """A random-weight open_clip model (frozen, eval) and its tokenizer; nothing is downloaded."""
    import open_clip

    if model == TINY:
        from clare.models.tiny import TINY_CLIP_NAME, register_tiny_clip_config

        register_tiny_clip_config(work)
        model = TINY_CLIP_NAME
    # open_clip warns that no pretrained weights were loaded: random weights are the point here.
    logging.getLogger("root").setLevel(logging.ERROR)
    clip = open_clip.create_model(model, pretrained=None)
    clip.requires_grad_(False).eval()
    return clip, open_clip.get_tokenizer(model)


@dataclass
class Trainer:
    """The detector and the optimiser step of `clare fit`, shared by both paths."""

    detector: Any
    optimizer: Any
    params: list[Any]
    device: Any
    amp: bool
    grad_clip: float | None
    total_steps: int
    step: int = 0
    last_loss: float = float("nan")

    def train_step(self, cls: Any, tokens: Any, lare: Any, label: Any) -> float:
        import torch
        import torch.nn.functional as F

        from clare.models.precision import autocast_context
        from clare.scoring import to_device
        from clare.stages.fit import learning_rate

        for group in self.optimizer.param_groups:
            # Never past the schedule's end: the benchmark runs more steps than it plans for.
            group["lr"] = learning_rate(group["base_lr"], self.step % self.total_steps,
                                        self.total_steps, 0, 0.0)
        device = self.device
        with autocast_context(device, "bf16" if self.amp else "fp32"):
            logits = self.detector(to_device(cls, device), to_device(tokens, device),
                                   to_device(lare, device))
        loss = F.cross_entropy(logits.float(), label.to(device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.last_loss = loss.detach().item()
        if not math.isfinite(self.last_loss):
            raise RuntimeError(f"training loss became {self.last_loss} at step {self.step}")
        return self.last_loss


def build_trainer(clip: Any, tokenizer: Any, device: Any, steps_per_epoch: int,
                  strategy: str = "coop", exact_shortcuts: bool = True) -> Trainer:
    """Fusion / v2 with clare fit's defaults: two AdamW groups (prompt, head). The same seed
    for every detector, so "before" and "after" train the same weights."""
    import torch

    from clare.config import FitConfig
    from clare.models.detector import Detector
    from clare.stages.fit import make_optimizer

    fit = FitConfig(strategy=strategy)
    torch.manual_seed(0)
    detector = Detector.from_config(fit.detector(), clip, tokenizer).to(device)
    detector.use_exact_shortcuts(exact_shortcuts).train()
    groups = detector.trainable_parameters()
    params = [p for params in groups.values() for p in params]
    return Trainer(detector, make_optimizer(fit, groups), params, device,
                   amp=fit.amp and device.type == "cuda", grad_clip=fit.grad_clip,
                   total_steps=steps_per_epoch * fit.epochs)


# --------------------------------------------------------------------------- store


def build_random_store(path: Path, n: int, dims: dict[str, int], lare_side: int,
                       shard_rows: int, seed: int) -> Any:
    """A finished FeatureStore of random features: half real, half fake, 8 frames per video."""
    import pandas as pd

    from clare.cache.store import MANIFEST_COLUMNS
    from clare.cache.writer import StoreWriter

    shapes = {"lare": (4, lare_side, lare_side), "cls": (dims["embed"],),
              "tokens": (dims["tokens"], dims["width"])}
    writer = StoreWriter.create(path, n_rows=n, shapes=shapes, shard_rows=shard_rows,
                                meta={"benchmark": NAME})
    store = writer.store
    rng = np.random.default_rng(seed)
    for index in range(store.n_shards):
        start, stop = store.shard_bounds(index)
        rows = np.arange(start, stop)
        count = len(rows)
        arrays = {
            # LaRE maps are non-negative squared errors; cls and tokens roughly unit scale.
            "lare": rng.exponential(0.5, size=(count, *shapes["lare"])).astype(np.float32),
            "cls": rng.standard_normal((count, *shapes["cls"]), dtype=np.float32),
            "tokens": rng.standard_normal((count, *shapes["tokens"]), dtype=np.float32).astype(np.float16),
        }
        videos = [f"v{r // 8:05d}" for r in rows]
        paths = [f"bench/{video}/{r % 8:03d}.png" for video, r in zip(videos, rows, strict=True)]
        manifest = pd.DataFrame({
            "row": rows, "path": paths,
            "subset": "bench", "label": (rows % 2).astype(np.int8), "video": videos,
            "frame": (rows % 8).astype(np.int32), "view": np.zeros(count, np.int16),
            "perturb": "", "status": "ok", "error": "", "sha256": "0" * 64,
            "width": np.full(count, 256, np.int32), "height": np.full(count, 256, np.int32),
        })[list(MANIFEST_COLUMNS)]
        writer.write_shard(index, arrays, manifest)
    writer.finalize()
    return store


def make_loader(store: Any, batch_size: int, seed: int, *, read_tokens: bool,
                device: Any = None, rows: int | None = None) -> Any:
    """The loader `clare fit` builds for a training epoch (its shuffle window and prefetch, and
    page-locked batches on CUDA), over the first `rows` store rows (default: all)."""
    from clare.cache.loader import StoreLoader
    from clare.config import FitConfig

    fit = FitConfig()
    manifest = store.manifest().iloc[:rows]
    return StoreLoader(store, manifest["row"].to_numpy(), manifest["label"].to_numpy(),
                       batch_size=batch_size, seed=seed, shuffle=True,
                       shuffle_window=fit.shuffle_window, prefetch=fit.prefetch,
                       read_tokens=read_tokens, read_lare=True,
                       pin_memory=device is not None and device.type == "cuda")


# --------------------------------------------------------------------------- measuring


class EpochCounter:
    """Each timed pass reads a fresh epoch, so no two passes share a batch order."""

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def measure_loader(loader: Any, args: argparse.Namespace, epochs: EpochCounter) -> dict[str, Any]:
    delivered: list[int] = []

    def one_epoch() -> None:
        delivered.append(sum(len(batch.rows) for batch in loader.epoch(epochs.next())))

    timing = time_call(one_epoch, warmup=args.warmup, repeats=args.repeats)
    if any(count != args.n for count in delivered):
        raise RuntimeError(f"the loader delivered {delivered} rows per epoch, expected {args.n}")
    return {**timing.as_dict(), "samples_per_epoch": delivered[-1],
            "samples_per_s": args.n / timing.median_s}


def measure_train_step(trainer: Trainer, batch: Any, args: argparse.Namespace,
                       sync: Callable[[], None] | None) -> dict[str, Any]:
    """Forward + backward + step on one batch already in memory (no loader, no CLIP)."""
    rows = len(batch.rows)
    timing = time_call(lambda: trainer.train_step(batch.cls, batch.tokens, batch.lare, batch.label),
                       warmup=args.warmup, repeats=args.step_repeats, sync=sync)
    return {**timing.as_dict(), "batch_rows": rows, "samples_per_s": rows / timing.median_s}


def measure_split(trainer: Trainer, batch: Any, args: argparse.Namespace,
                  sync: Callable[[], None] | None) -> dict[str, float]:
    """Median seconds of the step's parts on one in-memory batch: the prompts through the text
    tower (forward + backward), the image head (forward + backward), and the optimiser
    (gradient clipping + AdamW step). Each part is backpropagated from a fixed random
    cotangent, so it costs what it costs inside the step."""
    import torch

    from clare.scoring import to_device

    detector, device = trainer.detector, trainer.device
    cls, tokens, lare = (to_device(t, device) for t in (batch.cls, batch.tokens, batch.lare))
    with torch.no_grad():
        image = detector.features(cls, tokens, lare)
    image_grad = torch.randn_like(image)
    text_grad = torch.randn_like(detector.prompt(image).detach())

    def text_tower() -> None:
        torch.autograd.backward(detector.prompt(image), text_grad)

    def head() -> None:
        torch.autograd.backward(detector.features(cls, tokens, lare), image_grad)

    def optimiser() -> None:
        if trainer.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainer.params, trainer.grad_clip)
        trainer.optimizer.step()

    parts = {"text_tower_s": text_tower, "head_s": head, "optimiser_s": optimiser}
    return {name: time_call(part, warmup=args.warmup, repeats=args.step_repeats,
                            sync=sync).median_s for name, part in parts.items()}


def measure_store_epoch(trainer: Trainer, loader: Any, args: argparse.Namespace,
                        epochs: EpochCounter, sync: Callable[[], None] | None) -> dict[str, Any]:
    """Whole epochs of loader batches into the step, and the time the step waited for them."""
    steps: list[int] = []
    waits: list[float] = []
    rows = len(loader.rows)

    def one_epoch() -> None:
        batches = iter(loader.epoch(epochs.next()))
        count, waited = 0, 0.0
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            trainer.train_step(batch.cls, batch.tokens, batch.lare, batch.label)
            count += 1
        steps.append(count)
        waits.append(waited)

    timing = time_call(one_epoch, warmup=args.warmup, repeats=args.repeats, sync=sync)
    return {**timing.as_dict(), "rows": rows, "steps": steps[-1],
            "samples_per_s": rows / timing.median_s,
            "loader_wait_s": statistics.median(waits[args.warmup:])}


def measure_preread_epoch(trainer: Trainer, loader: Any, args: argparse.Namespace,
                          epochs: EpochCounter, sync: Callable[[], None]) -> dict[str, Any]:
    """The steps of whole epochs whose batches were read into memory first: fresh batches as
    in a store epoch, but no loader thread running beside the step."""
    runs: list[float] = []
    for index in range(args.warmup + args.repeats):
        batches = list(loader.epoch(epochs.next()))
        started = time.perf_counter()
        for batch in batches:
            trainer.train_step(batch.cls, batch.tokens, batch.lare, batch.label)
        sync()
        if index >= args.warmup:
            runs.append(time.perf_counter() - started)
    median = statistics.median(runs)
    return {"median_s": median, "min_s": min(runs), "runs_s": runs,
            "samples_per_s": args.n / median}


def measure_end_to_end(trainers: dict[str, Trainer], clip: Any, store: Any,
                       args: argparse.Namespace, sync: Callable[[], None]) -> dict[str, Any]:
    """`--e2e-steps` batches through the frozen image tower, each followed by the step of every
    detector in `trainers`; per detector: (read + CLIP + its step) per sample, extrapolated."""
    import torch

    from clare.models.clip_image import ClipImageEncoder

    first = next(iter(trainers.values()))
    precision = "bf16" if first.amp else "fp32"
    encoder = ClipImageEncoder(clip, first.device, precision)
    side = clip_input_size(clip.visual)
    generator = torch.Generator().manual_seed(args.seed)

    def pixels(rows: int) -> Any:
        return torch.randn((rows, 3, side, side), generator=generator)

    # Warm-up on two images only: a full-batch CLIP step costs minutes on a CPU, and the head
    # steps are already warm from the measurements before this one.
    for _ in range(args.warmup):
        encoder(pixels(min(2, args.batch_size)))
    sync()
    # Only LaRE and labels come from the store; cls and tokens come from CLIP each step.
    loader = make_loader(store, args.batch_size, args.seed, read_tokens=False, device=first.device)
    read_s: list[float] = []
    clip_s: list[float] = []
    step_s: dict[str, list[float]] = {name: [] for name in trainers}
    rows_per_step: list[int] = []
    epoch = 0
    while len(clip_s) < args.e2e_steps:
        batches = iter(loader.epoch(epoch))
        while len(clip_s) < args.e2e_steps:
            started = time.perf_counter()
            batch = next(batches, None)
            fetched = time.perf_counter()
            if batch is None:
                break
            images = pixels(len(batch.rows))  # stands in for decoding: not timed
            clip_started = time.perf_counter()
            cls, tokens = encoder(images)
            sync()
            clip_s.append(time.perf_counter() - clip_started)
            read_s.append(fetched - started)
            rows_per_step.append(len(batch.rows))
            for name, trainer in trainers.items():
                step_started = time.perf_counter()
                trainer.train_step(cls, tokens.float(), batch.lare, batch.label)
                sync()
                step_s[name].append(time.perf_counter() - step_started)
        epoch += 1

    def per_sample(seconds: list[float]) -> float:
        return statistics.median(s / r for s, r in zip(seconds, rows_per_step, strict=True))

    per_detector = {}
    for name, steps in step_s.items():
        total = [r + c + s for r, c, s in zip(read_s, clip_s, steps, strict=True)]
        per_detector[name] = {"step_s": total, "per_sample_s": per_sample(total),
                              "epoch_s_extrapolated": args.n * per_sample(total),
                              "samples_per_s": 1.0 / per_sample(total)}
    return {"steps_timed": len(clip_s), "rows_per_step": rows_per_step, "clip_s": clip_s,
            "clip_per_sample_s": per_sample(clip_s), "read_s": read_s, "precision": precision,
            "input_px": side, "detectors": per_detector}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    import torch

    from clare.cache.writer import default_shard_rows
    from clare.models.clip_image import clip_dims
    from clare.models.loading import resolve_device

    args = parse_args(argv)
    seed_everything(args.seed)
    started = time.perf_counter()
    temp = None
    if args.work_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="clare-bench-fit-")
        args.work_dir = Path(temp.name)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    clip, tokenizer = create_clip(args.model, work)
    dims = clip_dims(clip)
    if args.shard_rows is None:
        args.shard_rows = default_shard_rows(dims["tokens"], dims["width"])
    build_started = time.perf_counter()
    store = build_random_store(work / "store", args.n, dims, args.lare_side, args.shard_rows,
                               args.seed)
    store_build_s = time.perf_counter() - build_started
    store_bytes, _files = dir_bytes(store.zarr_path)
    steps_per_epoch = -(-args.n // args.batch_size)
    # The detectors keep only CLIP's text parts; the image tower is used by the end-to-end path.
    trainers = {f"{strategy}{suffix}": build_trainer(clip, tokenizer, device, steps_per_epoch,
                                                     strategy, exact_shortcuts=not suffix)
                for suffix in ("", BEFORE) for strategy in ("coop", "cocoop")}
    epochs = EpochCounter()
    loader = make_loader(store, args.batch_size, args.seed, read_tokens=True, device=device)
    batch = next(iter(loader.epoch(0)))

    cocoop_loader = make_loader(store, args.batch_size, args.seed, read_tokens=True,
                                device=device, rows=min(args.cocoop_rows, args.n))
    detectors: dict[str, dict[str, Any]] = {}
    for name, trainer in trainers.items():
        epoch_loader = cocoop_loader if name.startswith("cocoop") else loader
        # The in-memory step runs first, so it also warms the detector for what follows.
        detectors[name] = {
            "train_step": measure_train_step(trainer, batch, args, sync),
            "split": measure_split(trainer, batch, args, sync),
            "store_epoch": measure_store_epoch(trainer, epoch_loader, args, epochs, sync),
        }
    loader_alone = measure_loader(loader, args, epochs)
    preread = measure_preread_epoch(trainers["coop"], loader, args, epochs, sync)
    end_to_end = measure_end_to_end(trainers, clip, store, args, sync)
    for name, entry in detectors.items():
        e2e, epoch = end_to_end["detectors"][name], entry["store_epoch"]
        # Per sample: a CoCoOp store epoch may cover fewer rows than the store (--cocoop-rows).
        entry["e2e_vs_store"] = e2e["per_sample_s"] * epoch["samples_per_s"]
        # 1.0: the store epoch costs exactly its training steps; above 1: time lost around them.
        entry["store_epoch_vs_steps"] = (entry["train_step"]["samples_per_s"]
                                         / epoch["samples_per_s"])
        entry["final_loss"] = trainers[name].last_loss

    coop = detectors["coop"]
    results: dict[str, Any] = {
        "model": args.model,
        "dims": dims,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "trainable_parameters": sum(p.numel() for p in trainers["coop"].params),
        "steps_per_epoch": steps_per_epoch,
        "store_bytes_per_image": store_bytes / args.n,
        "store_build_s": store_build_s,
        # The headline detector (fusion / CoOp / v2, as built) keeps the top-level keys.
        "train_step": coop["train_step"],
        "loader": loader_alone,
        "store_epoch": coop["store_epoch"],
        "store_epoch_preread": preread,
        "end_to_end": {**end_to_end, **end_to_end["detectors"]["coop"]},
        "e2e_vs_store": coop["e2e_vs_store"],
        "loader_vs_step": loader_alone["samples_per_s"] / coop["train_step"]["samples_per_s"],
        "store_epoch_vs_steps": coop["store_epoch_vs_steps"],
        "preread_epoch_vs_steps": preread["median_s"] / (args.n / coop["train_step"]["samples_per_s"]),
        "detectors": detectors,
        "final_loss": coop["final_loss"],
        "peak_rss_mib": peak_rss_mib(),
        "seconds_total": time.perf_counter() - started,
    }
    params = {k: getattr(args, k) for k in ("model", "device", "n", "batch_size", "shard_rows",
                                            "lare_side", "e2e_steps", "step_repeats", "warmup",
                                            "repeats", "cocoop_rows", "seed", "smoke")}
    params["torch_threads"] = results["torch_threads"]
    write_results(args.out, NAME, params, results, NOTES)
    report(results, args, device)
    if temp is not None:
        temp.cleanup()
    return 0


BEFORE = "_before"
NOTES = [
    "detectors: fusion / v2 with clare fit's defaults (AdamW, two groups, lr 5e-4, cosine rule, "
    "grad clip 1.0), CoOp and CoCoOp; random-weight CLIP; bf16 autocast on cuda only",
    "*_before: the same detector with Detector.use_exact_shortcuts(False), the step as computed "
    "before issue 25; same seed, same weights at the start",
    "store epoch: median of `repeats` whole epochs after `warmup` untimed, loader with shuffle "
    "window and prefetch as `clare fit` sets them (defaults 4 and 2), store read from the page cache; loader_wait_s: time the step "
    "waited for batches in the median epoch; CoCoOp epochs cover the first `cocoop_rows` rows "
    "and every ratio is per sample",
    "store_epoch_preread: the same epochs with their batches read into memory first (no loader "
    "thread beside the step), fusion / CoOp",
    "end to end: `e2e_steps` timed steps, each one batch read + one CLIP image tower forward on "
    "random pixels + the step of each detector; per detector (read + CLIP + its step) per "
    "sample, extrapolated to the epoch; decoding and preprocessing are not counted, so the "
    "ratio is a lower bound",
    "split: median seconds of the step's parts on one in-memory batch, each backpropagated from "
    "a fixed random cotangent: text tower (prompts, forward + backward), head (image features, "
    "forward + backward), optimiser (clipping + AdamW step)",
]


def report(results: dict[str, Any], args: argparse.Namespace, device: Any) -> None:
    """The console tables: per detector, the ratio and the step's split; then the store path."""
    detectors = results["detectors"]
    end_to_end = results["end_to_end"]
    print_table(
        f"training epoch, {args.model} (random weights) on {device}, N={args.n}, batch "
        f"{args.batch_size}, {results['steps_per_epoch']} steps, {results['torch_threads']} "
        f"threads, load average {results['load_average'][0]:.2f}",
        ["detector", "store epoch s", "end to end s", "e2e / store", "step s", "text tower s",
         "head s", "optimiser s", "loader wait s", "epoch / steps"],
        [[name, entry["store_epoch"]["median_s"],
          end_to_end["detectors"][name]["epoch_s_extrapolated"], entry["e2e_vs_store"],
          entry["train_step"]["median_s"], entry["split"]["text_tower_s"],
          entry["split"]["head_s"], entry["split"]["optimiser_s"],
          entry["store_epoch"]["loader_wait_s"] / entry["store_epoch"]["steps"],
          entry["store_epoch_vs_steps"]] for name, entry in detectors.items()],
    )
    print_table(
        "store path (fusion / CoOp), its parts alone",
        ["part", "samples/s", "s"],
        [["StoreLoader, one epoch, no model", results["loader"]["samples_per_s"],
          results["loader"]["median_s"]],
         ["training step on an in-memory batch", results["train_step"]["samples_per_s"],
          results["train_step"]["median_s"]],
         ["store epoch, batches read first", results["store_epoch_preread"]["samples_per_s"],
          results["store_epoch_preread"]["median_s"]],
         ["CLIP image tower (end to end)", 1.0 / end_to_end["clip_per_sample_s"],
          args.n * end_to_end["clip_per_sample_s"]]],
    )
    coop, before = detectors["coop"], detectors["coop" + BEFORE]
    print(f"fusion/CoOp end to end / store per epoch: {coop['e2e_vs_store']:.1f}x "
          f"(before: {before['e2e_vs_store']:.1f}x); fusion/CoCoOp: "
          f"{detectors['cocoop']['e2e_vs_store']:.1f}x (before: "
          f"{detectors['cocoop' + BEFORE]['e2e_vs_store']:.1f}x); step "
          f"{before['train_step']['median_s'] / coop['train_step']['median_s']:.2f}x faster")
    print(f"loader / step samples/s: {results['loader_vs_step']:.1f}x; store epoch / its steps "
          f"alone: {results['store_epoch_vs_steps']:.2f} (batches read first: "
          f"{results['preread_epoch_vs_steps']:.2f})")
    print(f"results: {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
