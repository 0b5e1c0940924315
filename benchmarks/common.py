"""Shared pieces of the benchmark scripts: timing, results files, tables and real-size models.

The scripts run as modules of the `benchmarks` package from the repository root
(`python -m benchmarks.bench_store`). Their inputs (tiny models, generated images, index,
config) come from `clare.testing`, the same ones the test suite uses.

Conventions:
- times are medians over `repeats` timed runs after `warmup` untimed ones (time.perf_counter);
- MB is 10^6 bytes, MiB 2^20 bytes;
- a results file is JSON: {"benchmark", "created", "machine", "params", "results", "notes"}.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clare.testing import ModelPaths, tiny_models

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# Models are cached across runs: the real-size random-weight set is ~6 GB and slow to build.
DEFAULT_MODELS_DIR = Path(tempfile.gettempdir()) / "clare-bench-models"

# --------------------------------------------------------------------------- arguments


def default_out(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--out", type=Path, default=default_out(name),
                        help=f"JSON results file (default benchmarks/results/{name}.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="shrink every size so the script finishes in seconds (CI)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first")


def fill_defaults(args: argparse.Namespace, defaults: dict[str, dict[str, Any]]) -> None:
    """Every size the command line left unset, from `defaults["smoke"]` under --smoke and
    `defaults["full"]` otherwise."""
    for key, value in defaults["smoke" if args.smoke else "full"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def int_list(text: str) -> list[int]:
    """'64,256' -> [64, 256]; '' -> []."""
    return [int(part) for part in text.split(",") if part.strip()]


# --------------------------------------------------------------------------- measuring


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Timing:
    median_s: float
    min_s: float
    runs_s: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "min_s": self.min_s, "runs_s": self.runs_s}


def time_call(fn: Callable[[], Any], *, warmup: int, repeats: int,
              sync: Callable[[], None] | None = None) -> Timing:
    """Median wall time of fn(); `sync` (e.g. torch.cuda.synchronize) runs before each stop."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        runs.append(time.perf_counter() - start)
    return Timing(statistics.median(runs), min(runs), runs)


def time_alternating(fns: dict[str, Any], *, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median and fastest seconds of each fn, the fns run in turn (order reversed every round).

    The fastest run is the one least disturbed by other work on a shared machine; on a quiet
    one the two agree.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(max(1, repeats)):
        names = list(fns) if round_ % 2 == 0 else list(reversed(fns))
        for name in names:
            start = time.perf_counter()
            fns[name]()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median": float(np.median(times)), "min": float(np.min(times))}
            for name, times in runs.items()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS mark (VmHWM) at the current RSS; False where unsupported.

    Imports alone (torch, diffusers, ...) reach over 1 GB; resetting after them lets a
    measurement show what the work itself adds.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def window_peak_rss_mib() -> float | None:
    """Peak RSS since the last reset_peak_rss() (VmHWM), or None off Linux."""
    return _status_mib("VmHWM")


def current_rss_mib() -> float | None:
    return _status_mib("VmRSS")


def dir_bytes(path: Path) -> tuple[int, int]:
    """(total bytes, number of files) under path."""
    total = files = 0
    for item in Path(path).rglob("*"):
        if item.is_file():
            total += item.stat().st_size
            files += 1
    return total, files


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda}
    return info


# --------------------------------------------------------------------------- output


def write_results(path: Path, name: str, params: dict[str, Any], results: dict[str, Any],
                  notes: Sequence[str] = ()) -> Path:
    payload = {
        "benchmark": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": params,
        "results": results,
        "notes": list(notes),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(fmt(cell) for cell in row))
    Console(width=140).print(table)


# --------------------------------------------------------------------------- models

# SD1.5's architecture (the weights are random): the cost of a forward depends only on this.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
REAL_CLIP_MODEL = "ViT-L-14"


def real_size_models(models_dir: Path, log: Callable[[str], None] = print,
                     init_device: str = "cpu") -> ModelPaths:
    """SD1.5-size VAE/UNet/text encoder and open_clip ViT-L-14 with random weights, on disk.

    Written with the same savers as real checkpoints (diffusers/transformers save_pretrained,
    a safetensors open_clip state dict) so extraction loads them through the real loaders.
    The tokenizer and scheduler folders are copied from the tiny set (same BPE vocabulary and
    DDPM schedule as SD1.5). About 6 GB; built once, a marker file says it is complete.
    `init_device` (e.g. "cuda") draws the random weights there, which is much faster than on
    a CPU; on any failure there the build is redone on the CPU.
    """
    import torch

    out = Path(models_dir) / "sd15-random"
    paths = ModelPaths("sd15-random", out, out / "sd", REAL_CLIP_MODEL,
                       out / "clip" / "open_clip_model.safetensors", None)
    if (out / "complete").is_file():
        return paths
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = tiny_models(models_dir)
    staging = out.with_name(out.name + ".partial")
    started = time.perf_counter()

    def build(device: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        sd = staging / "sd"
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(0)
            log(f"building SD1.5-size UNet (random weights, on {device})...")
            UNet2DConditionModel(**SD15_UNET).save_pretrained(sd / "unet", safe_serialization=True)
            log("building SD1.5-size VAE...")
            AutoencoderKL(**SD15_VAE).save_pretrained(sd / "vae", safe_serialization=True)
            log("building SD1.5-size text encoder...")
            CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).save_pretrained(
                sd / "text_encoder", safe_serialization=True)
            log(f"building open_clip {REAL_CLIP_MODEL}...")
            clip = open_clip.create_model(REAL_CLIP_MODEL, pretrained=None)
            (staging / "clip").mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
            save_file(state, str(staging / "clip" / "open_clip_model.safetensors"))
            del clip, state

    try:
        build(init_device)
    except Exception as exc:  # noqa: BLE001 - any failure off the CPU: redo it on the CPU
        if init_device == "cpu":
            raise
        log(f"building on {init_device} failed ({type(exc).__name__}: {exc}); building on the CPU")
        build("cpu")
    sd = staging / "sd"
    for part in ("scheduler", "tokenizer"):
        shutil.copytree(tiny.sd / part, sd / part)
    shutil.copy2(tiny.sd / "model_index.json", sd / "model_index.json")
    (staging / "complete").write_text(f"built in {time.perf_counter() - started:.0f} s\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return paths


def clip_input_size(clip_visual: Any) -> int:
    size = getattr(clip_visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# --------------------------------------------------------------------------- reference LaRE


def lare_one_image_at_a_time(lare: Any, pixels: Any, generators: Sequence[Any]) -> Any:
    """The LaRE² reference loop: one image per call, its ensemble copies as the UNet batch, fp32.

    Same networks, prompt embedding and per-image random draws (VAE sample, then ensemble
    noise, on the CPU) as `LareExtractor`, so the maps agree with the batched extractor; only
    the batching and the precision differ. Returns (N, 4, h, w) float32 on the CPU.
    """
    import torch

    parts, device, ensemble = lare.parts, lare.device, lare.cfg.ensemble
    maps = []
    with torch.no_grad():
        for image, generator in zip(pixels, generators, strict=True):
            posterior = parts.vae.encode(image[None].to(device)).latent_dist
            shape = tuple(posterior.mean.shape[1:])
            vae_noise = torch.randn(shape, generator=generator)
            noise = torch.randn((ensemble, *shape), generator=generator).to(device)
            latent = (posterior.mean[0] + posterior.std[0] * vae_noise.to(device)) * lare.scaling
            latents = latent.expand(ensemble, *shape)
            steps = torch.full((ensemble,), lare.cfg.timestep, device=device, dtype=torch.long)
            noisy = parts.scheduler.add_noise(latents, noise, steps)
            if lare.prediction_type == "epsilon":
                target = noise
            else:
                target = parts.scheduler.get_velocity(latents, noise, steps)
            condition = lare.condition.expand(ensemble, -1, -1)
            predicted = parts.unet(noisy, steps, encoder_hidden_states=condition).sample
            maps.append((predicted - target).pow(2).mean(dim=0).cpu())
    return torch.stack(maps)


def image_generators(seed: int, n: int) -> list[Any]:
    import torch

    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(n)]
