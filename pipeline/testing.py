"""Inputs for tests and benchmarks: tiny models, a generated image tree, its index and a config.

The test suite and the benchmark scripts both build the same small world: random-weight models
in the real on-disk formats, a folder of generated images laid out like a prepared dataset, the
index files `clare extract` reads, and a validated config pointing at all of them. This module is
that world's one home. It lives in the installed package (as `clare.testing`, the way diffusers
ships `diffusers.utils.testing_utils`) so that `tests/` and `benchmarks/` import it by name, with
no `sys.path` edits and without one of them importing the other.

Nothing here needs pytest; fixtures that wrap these functions are in tests/conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from clare.config import Config
from clare.config_files import _set_dotted, load_config

INDEX_COLUMNS = ("path", "subset", "label", "video", "frame", "split")
# make_image_tree leaves a copy of its index here, so make_config finds it without being told.
SIDECAR_INDEX = "index.parquet"
TINY_FOLDER = "tiny"
# Every distinct detector (module, strategy, attention): strategy and attention do not apply to
# `lare`, attention not to `clipping`, so these seven are all the different models.
DISTINCT_DETECTORS = [
    ("fusion", "coop", "v1"),
    ("fusion", "coop", "v2"),
    ("fusion", "cocoop", "v1"),
    ("fusion", "cocoop", "v2"),
    ("lare", "coop", "v1"),
    ("clipping", "coop", "v2"),
    ("clipping", "cocoop", "v2"),
]

# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelPaths:
    """Where one model set lives on disk, in the formats `clare.models.loading` reads."""

    kind: str  # "tiny" or "sd15-random"
    root: Path  # the folder holding sd/ and clip/
    sd: Path
    clip_model: str
    clip_checkpoint: Path
    clip_config: Path | None  # open_clip config to register (None: built into open_clip)

    @classmethod
    def tiny_at(cls, root: Path) -> ModelPaths:
        """The paths of a tiny set that `build_tiny_models(root)` wrote."""
        from clare.models.tiny import TINY_CLIP_NAME

        root = Path(root)
        return cls("tiny", root, root / "sd", TINY_CLIP_NAME,
                   root / "clip" / "open_clip_model.safetensors",
                   root / "clip" / f"{TINY_CLIP_NAME}.json")

    def models_section(self) -> dict[str, Any]:
        """The `models:` section of a config that loads this set offline."""
        clip: dict[str, Any] = {"model": self.clip_model, "pretrained": str(self.clip_checkpoint)}
        if self.clip_config is not None:
            clip["model_config_file"] = str(self.clip_config)
        return {"sd": {"pretrained": str(self.sd)}, "clip": clip, "local_files_only": True}


def tiny_models(models_dir: Path) -> ModelPaths:
    """The tiny random-weight SD and CLIP models under `models_dir/tiny`, built on first use.

    The build is seeded (byte-identical files every time) and published atomically, so an
    existing folder is a finished one and is reused.
    """
    root = Path(models_dir) / TINY_FOLDER
    if not (root / "sd").is_dir():
        from clare.models.tiny import build_tiny_models

        build_tiny_models(root, seed=0)
    return ModelPaths.tiny_at(root)


# --------------------------------------------------------------------------- images and index


def _random_image(rng: np.random.Generator, side: int | None) -> Image.Image:
    if side is None:
        width, height = (int(v) for v in rng.integers(64, 301, size=2))
    else:
        width = height = side
    # Smooth gradients plus noise: more like a photo than pure noise, still cheap to write.
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(xs * rng.uniform(0.2, 1.5) + ys * rng.uniform(0.2, 1.5) + rng.uniform(0, 255)) % 256
         for _ in range(3)],
        axis=-1,
    )
    noise = rng.normal(0, 12, size=base.shape)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def make_image_tree(root: Path, n: int, seed: int, *, side: int | None = None,
                    jpeg: bool = True, frames_per_video: int = 2) -> pd.DataFrame:
    """Write n generated images under root; return their index (the columns `clare prepare` writes).

    Sizes: `side` x `side` pixels, or a random 64..300 px a side when `side` is None. With
    `jpeg`, every third image is a JPEG (quality 90), the rest PNG; without, all PNG. Two
    subsets (alpha, beta), labels alternate real/fake, `frames_per_video` images per video.
    Index columns: path (relative to root), subset, label (int8), video, frame (int32), split
    ("train"; `write_index` sets the split it writes). A copy of the index is left in
    `root/index.parquet` for make_config.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        label = i % 2
        subset = "alpha" if (i // 2) % 2 == 0 else "beta"
        video = f"{subset}_{'fake' if label else 'real'}_{i // (2 * frames_per_video):03d}"
        frame = (i // 2) % frames_per_video
        suffix = ".jpg" if jpeg and i % 3 == 2 else ".png"
        relative = Path(subset) / ("fake" if label else "real") / video / f"{frame:03d}{suffix}"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        image = _random_image(rng, side)
        if suffix == ".jpg":
            image.save(target, format="JPEG", quality=90)
        else:
            image.save(target, format="PNG")
        records.append({"path": relative.as_posix(), "subset": subset, "label": label,
                        "video": video, "frame": frame, "split": "train"})
    index = pd.DataFrame.from_records(records, columns=list(INDEX_COLUMNS))
    index = index.astype({"label": "int8", "frame": "int32"})
    index.to_parquet(root / SIDECAR_INDEX, index=False)
    return index


def write_index(index: pd.DataFrame, index_dir: Path, split: str) -> Path:
    """Write an index as `<index_dir>/<split>.parquet`, the file `clare extract` reads."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / f"{split}.parquet"
    index.assign(split=split).astype({"label": "int8", "frame": "int32"}).to_parquet(path, index=False)
    return path


# --------------------------------------------------------------------------- config


def make_config(
    work: Path,
    models: ModelPaths | Path,
    data_root: Path,
    *,
    index: pd.DataFrame | None = None,
    **overrides: Any,
) -> Config:
    """Write `work/config.yaml` for a model set and an image tree; return it validated.

    `models` is a ModelPaths or the folder of a tiny set. Every output (stores, runs,
    reports, index) goes under `work`. Defaults suit the tiny models on a CPU (batch 4,
    shards of 4 rows, one decode thread). Overrides use `__` for dots and replace what
    they name: `extract__max_failures=0.5` sets one key, `extract={...}` the whole section.
    The index (default: the one make_image_tree left in data_root) is written for both
    splits; a caller may then write another with `write_index`. Subprocess tests can run
    `clare ... --config work/config.yaml`.
    """
    work, data_root = Path(work), Path(data_root)
    paths = models if isinstance(models, ModelPaths) else ModelPaths.tiny_at(Path(models))
    tree: dict[str, Any] = {
        "seed": 0,
        "paths": {"stores": str(work / "stores"), "runs": str(work / "runs"),
                  "reports": str(work / "reports")},
        "data": {"root": str(data_root), "index_dir": str(work / "index")},
        "models": paths.models_section(),
        "extract": {"device": "cpu", "batch_size": 4, "shard_rows": 4, "decode_threads": 1},
    }
    for key, value in overrides.items():
        _set_dotted(tree, key.replace("__", "."), value, "make_config")
    path = work / "config.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    cfg = load_config(path)
    if index is None and (data_root / SIDECAR_INDEX).is_file():
        index = pd.read_parquet(data_root / SIDECAR_INDEX)
    if index is None:
        raise FileNotFoundError(f"{data_root}: no index; pass index= or build it with make_image_tree")
    for split in ("train", "test"):
        write_index(index, cfg.data.index_dir, split)
    return cfg
