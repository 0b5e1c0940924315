"""Stage two: a training epoch from the feature store against an end-to-end epoch.

Both paths train the same fusion detector (CoOp prompts, v2 attention) with the same AdamW
groups, learning-rate rule and gradient clipping as `clare fit`, at batch `--batch-size`:

- store:       batches of cls + tokens + LaRE from `StoreLoader` (shuffled, prefetch 2), the
               frozen CLIP image tower is never run. Whole epochs are timed.
- end to end:  what the CLaRE research code does: every step runs the frozen CLIP image tower
               (`ClipImageEncoder`, no grad) on the batch's pixels to get cls + tokens, then the
               same head step. Pixels are random tensors at the model's input size, so image
               decoding and preprocessing are left out (the ratio is a lower bound); LaRE and
               labels come from the store. A CLIP forward at ViT-L/14 size costs seconds per
               image on a CPU, so `--e2e-steps` steps are timed and the epoch is extrapolated
               per sample: epoch = N x median(step seconds / batch rows).

It also measures the two halves of the store path alone: the loader (one epoch, no model)
and the training step (forward + backward + optimiser step on tensors already in memory), in
samples/s, to show whether the loader can keep up with the step.

The store holds random data at the model's sizes (ViT-L/14: tokens 256x1024 fp16, cls 768,
LaRE 4x32x32) in a temp dir; it is read right after it is written, so from the page cache.
Models have random weights (`open_clip.create_model(..., pretrained=None)`); nothing is
downloaded. torch keeps its default thread count, which the results record.

    python -m benchmarks.bench_fit                  # ViT-L/14, N=256, batch 32 (~6 min, 2 CPUs)
    python -m benchmarks.bench_fit --device cuda    # same on a GPU (bf16 autocast, as clare fit)
    python -m benchmarks.bench_fit --smoke          # tiny ViT, N=16, seconds (CI)
"""

from __future__ import annotations

import argparse
import logging
import math
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
             "e2e_steps": 2, "step_repeats": 3, "warmup": 1, "repeats": 2},
    "smoke": {"model": TINY, "n": 16, "batch_size": 8, "shard_rows": 8, "lare_side": 8,
              "e2e_steps": 2, "step_repeats": 2, "warmup": 1, "repeats": 1},
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
    parser.add_argument("--work-dir", type=Path, help="where the store goes (default: temp)")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    for key in ("n", "batch_size", "e2e_steps", "step_repeats", "repeats", "lare_side"):
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


def build_trainer(clip: Any, tokenizer: Any, device: Any, steps_per_epoch: int) -> Trainer:
    """Fusion / CoOp / v2 with clare fit's defaults: two AdamW groups (prompt, head)."""

    from clare.config import FitConfig
    from clare.models.detector import Detector
    from clare.stages.fit import make_optimizer

    fit = FitConfig()
    detector = Detector.from_config(fit.detector(), clip, tokenizer).to(device)
    detector.train()
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
                device: Any = None) -> Any:
    """The loader `clare fit` builds for a training epoch (its shuffle window and prefetch, and
    page-locked batches on CUDA)."""
    from clare.cache.loader import StoreLoader
    from clare.config import FitConfig

    fit = FitConfig()
    manifest = store.manifest()
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


def measure_train_step(trainer: Trainer, store: Any, args: argparse.Namespace,
                       sync: Callable[[], None] | None) -> dict[str, Any]:
    """Forward + backward + step on one batch already in memory (no loader, no CLIP)."""
    loader = make_loader(store, args.batch_size, args.seed, read_tokens=True, device=trainer.device)
    batch = next(iter(loader.epoch(0)))
    rows = len(batch.rows)
    timing = time_call(lambda: trainer.train_step(batch.cls, batch.tokens, batch.lare, batch.label),
                       warmup=args.warmup, repeats=args.step_repeats, sync=sync)
    return {**timing.as_dict(), "batch_rows": rows, "samples_per_s": rows / timing.median_s}


def measure_store_epoch(trainer: Trainer, loader: Any, args: argparse.Namespace,
                        epochs: EpochCounter, sync: Callable[[], None] | None) -> dict[str, Any]:
    steps: list[int] = []

    def one_epoch() -> None:
        count = 0
        for batch in loader.epoch(epochs.next()):
            trainer.train_step(batch.cls, batch.tokens, batch.lare, batch.label)
            count += 1
        steps.append(count)

    timing = time_call(one_epoch, warmup=args.warmup, repeats=args.repeats, sync=sync)
    return {**timing.as_dict(), "steps": steps[-1], "samples_per_s": args.n / timing.median_s}


def measure_end_to_end(trainer: Trainer, clip: Any, store: Any, args: argparse.Namespace,
                       sync: Callable[[], None]) -> dict[str, Any]:
    """`--e2e-steps` steps that each run the frozen image tower, extrapolated to an epoch."""
    import torch

    from clare.models.clip_image import ClipImageEncoder

    precision = "bf16" if trainer.amp else "fp32"
    encoder = ClipImageEncoder(clip, trainer.device, precision)
    side = clip_input_size(clip.visual)
    generator = torch.Generator().manual_seed(args.seed)

    def pixels(rows: int) -> Any:
        return torch.randn((rows, 3, side, side), generator=generator)

    # Warm-up on two images only: a full-batch CLIP step costs minutes on a CPU, and the head
    # step is already warm from the measurements before this one.
    for _ in range(args.warmup):
        encoder(pixels(min(2, args.batch_size)))
    sync()
    # Only LaRE and labels come from the store; cls and tokens come from CLIP each step.
    loader = make_loader(store, args.batch_size, args.seed, read_tokens=False, device=trainer.device)
    step_s: list[float] = []
    clip_s: list[float] = []
    rows_per_step: list[int] = []
    epoch = 0
    while len(step_s) < args.e2e_steps:
        batches = iter(loader.epoch(epoch))
        while len(step_s) < args.e2e_steps:
            started = time.perf_counter()
            batch = next(batches, None)
            fetched = time.perf_counter()
            if batch is None:
                break
            images = pixels(len(batch.rows))  # stands in for decoding: not timed
            clip_started = time.perf_counter()
            cls, tokens = encoder(images)
            sync()
            clip_done = time.perf_counter()
            trainer.train_step(cls, tokens.float(), batch.lare, batch.label)
            sync()
            finished = time.perf_counter()
            clip_s.append(clip_done - clip_started)
            step_s.append((fetched - started) + (finished - clip_started))
            rows_per_step.append(len(batch.rows))
        epoch += 1
    per_sample = statistics.median(s / r for s, r in zip(step_s, rows_per_step, strict=True))
    clip_per_sample = statistics.median(s / r for s, r in zip(clip_s, rows_per_step, strict=True))
    return {
        "steps_timed": len(step_s),
        "rows_per_step": rows_per_step,
        "step_s": step_s,
        "clip_s": clip_s,
        "per_sample_s": per_sample,
        "clip_per_sample_s": clip_per_sample,
        "epoch_s_extrapolated": args.n * per_sample,
        "samples_per_s": 1.0 / per_sample,
        "precision": precision,
        "input_px": side,
    }


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
    # The detector keeps only CLIP's text parts; the image tower is used by the end-to-end path.
    trainer = build_trainer(clip, tokenizer, device, steps_per_epoch)
    epochs = EpochCounter()

    # The in-memory step runs first, so it also warms the head for everything after it.
    train_step = measure_train_step(trainer, store, args, sync)
    loader = make_loader(store, args.batch_size, args.seed, read_tokens=True, device=device)
    loader_alone = measure_loader(loader, args, epochs)
    store_epoch = measure_store_epoch(trainer, loader, args, epochs, sync)
    end_to_end = measure_end_to_end(trainer, clip, store, args, sync)

    results: dict[str, Any] = {
        "model": args.model,
        "dims": dims,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for p in trainer.params),
        "steps_per_epoch": steps_per_epoch,
        "store_bytes_per_image": store_bytes / args.n,
        "store_build_s": store_build_s,
        "train_step": train_step,
        "loader": loader_alone,
        "store_epoch": store_epoch,
        "end_to_end": end_to_end,
        "e2e_vs_store": end_to_end["epoch_s_extrapolated"] / store_epoch["median_s"],
        "loader_vs_step": loader_alone["samples_per_s"] / train_step["samples_per_s"],
        # 1.0: the store epoch costs exactly its training steps; above 1: time lost to reading.
        "store_epoch_vs_steps": store_epoch["median_s"] / (args.n / train_step["samples_per_s"]),
        "final_loss": trainer.last_loss,
        "peak_rss_mib": peak_rss_mib(),
        "seconds_total": time.perf_counter() - started,
    }
    params = {k: getattr(args, k) for k in ("model", "device", "n", "batch_size", "shard_rows",
                                            "lare_side", "e2e_steps", "step_repeats", "warmup",
                                            "repeats", "seed", "smoke")}
    params["torch_threads"] = results["torch_threads"]
    notes = [
        "detector: fusion / coop / v2 with clare fit's defaults (AdamW, two groups, lr 5e-4, "
        "cosine rule, grad clip 1.0); random-weight CLIP; bf16 autocast on cuda only",
        f"store epoch: median of {args.repeats} whole epochs after {args.warmup} untimed, loader "
        "with shuffle window 2 and prefetch 2, store read from the page cache",
        f"end to end: {end_to_end['steps_timed']} timed steps (batch read + CLIP image tower on "
        "random pixels + head step), extrapolated per sample to the epoch; image decoding and "
        "preprocessing are not counted, so the ratio is a lower bound",
        "end to end on cuda: ClipImageEncoder returns features on the CPU, so each step also "
        "copies the tokens back to the device (as the store path does)",
        "loader: one epoch with no model; train step: forward + backward + optimiser step on "
        "one batch already in memory",
    ]
    write_results(args.out, NAME, params, results, notes)

    clip_epoch_s = args.n * end_to_end["clip_per_sample_s"]
    print_table(
        f"training epoch, {args.model} (random weights) on {device}, N={args.n}, "
        f"batch {args.batch_size}, {steps_per_epoch} steps, {results['torch_threads']} threads",
        ["path", "epoch s", "samples/s", "how"],
        [["store", store_epoch["median_s"], store_epoch["samples_per_s"],
          f"median of {args.repeats} epochs"],
         ["end to end", end_to_end["epoch_s_extrapolated"], end_to_end["samples_per_s"],
          f"{end_to_end['steps_timed']} steps, extrapolated"],
         ["  of which CLIP image tower", clip_epoch_s, 1.0 / end_to_end["clip_per_sample_s"],
          "same steps"]],
    )
    print_table(
        "store path, its two halves alone",
        ["part", "samples/s", "s"],
        [["StoreLoader, one epoch, no model", loader_alone["samples_per_s"],
          loader_alone["median_s"]],
         ["training step on an in-memory batch", train_step["samples_per_s"],
          train_step["median_s"]]],
    )
    print(f"end to end / store per epoch: {results['e2e_vs_store']:.1f}x; loader / step samples/s: "
          f"{results['loader_vs_step']:.1f}x; store epoch / its steps alone: "
          f"{results['store_epoch_vs_steps']:.2f}")
    print(f"results: {args.out}")
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
