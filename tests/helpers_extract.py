"""Shared helpers for tests that run stage one on tiny models and tiny generated images.

Import from a test module (tests/ is on sys.path because it has no __init__.py):

    from helpers_extract import make_config, make_image_tree  # tiny_models_dir: conftest.py

`tiny_models_dir` is a session-scoped fixture registered in conftest.py: any test can ask for it,
and the models are built once per pytest session whichever module asks first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from clare.config import Config, load_config

INDEX_COLUMNS = ("path", "subset", "label", "video", "frame", "split")
SIDECAR_INDEX = "index.parquet"

# Built tiny model folders, keyed by the root they were built under, so tests that call
# tiny_models() directly (without the fixture) also build only once per session.
_BUILT: dict[str, Path] = {}


def tiny_models(tmp_root: Path) -> Path:
    """Build the tiny random-weight SD and CLIP models under tmp_root once; return their folder."""
    key = str(Path(tmp_root).resolve())
    if key not in _BUILT:
        from clare.models.tiny import build_tiny_models

        out = Path(tmp_root) / "tiny-models"
        if not (out / "sd").is_dir():
            build_tiny_models(out, seed=0)
        _BUILT[key] = out
    return _BUILT[key]


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder for the whole session, whichever module requests it first.
    if _BUILT:
        return next(iter(_BUILT.values()))
    return tiny_models(tmp_path_factory.mktemp("models"))


def _random_image(rng: np.random.Generator) -> Image.Image:
    width, height = (int(v) for v in rng.integers(64, 301, size=2))
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


def make_image_tree(root: Path, n: int, seed: int) -> pd.DataFrame:
    """Write n random PNG/JPEG images (64..300 px a side) under root; return their index.

    The index has the columns `clare prepare` writes: path (relative to root), subset,
    label (int8), video, frame (int32), split. Two subsets, half real and half fake, two
    images per video.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        label = i % 2
        subset = "alpha" if (i // 2) % 2 == 0 else "beta"
        video = f"{subset}_{'fake' if label else 'real'}_{i // 4:03d}"
        frame = (i // 2) % 2
        suffix = ".jpg" if i % 3 == 2 else ".png"
        relative = Path(subset) / ("fake" if label else "real") / video / f"{frame:03d}{suffix}"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        image = _random_image(rng)
        if suffix == ".jpg":
            image.save(target, format="JPEG", quality=90)
        else:
            image.save(target, format="PNG")
        records.append({"path": relative.as_posix(), "subset": subset, "label": label,
                        "video": video, "frame": frame, "split": "train"})
    index = pd.DataFrame.from_records(records, columns=list(INDEX_COLUMNS))
    index = index.astype({"label": "int8", "frame": "int32"})
    # A sidecar copy lets make_config find the index when the caller does not pass it.
    index.to_parquet(root / SIDECAR_INDEX, index=False)
    return index


def write_index(index: pd.DataFrame, index_dir: Path, split: str) -> Path:
    """Write an index as `<index_dir>/<split>.parquet`, the file `clare extract` reads."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / f"{split}.parquet"
    index.assign(split=split).astype({"label": "int8", "frame": "int32"}).to_parquet(path, index=False)
    return path


def _merge(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def make_config(
    tmp: Path,
    models_dir: Path,
    data_root: Path,
    *,
    index: pd.DataFrame | None = None,
    **overrides: Any,
) -> Config:
    """Write `tmp/config.yaml` for the tiny models and data_root; return it validated.

    Overrides use `__` for dots: `make_config(..., extract__max_failures=0.5)`. The index
    (default: the one make_image_tree left in data_root) is written to
    `<index_dir>/train.parquet` and `<index_dir>/test.parquet`. Subprocess tests can run
    `clare ... --config tmp/config.yaml`.
    """
    tmp, models_dir, data_root = Path(tmp), Path(models_dir), Path(data_root)
    tree: dict[str, Any] = {
        "seed": 0,
        "paths": {"stores": str(tmp / "stores"), "runs": str(tmp / "runs"),
                  "reports": str(tmp / "reports")},
        "data": {"root": str(data_root), "index_dir": str(tmp / "index")},
        "models": {
            "sd": {"pretrained": str(models_dir / "sd")},
            "clip": {
                "model": "clare-tiny-vit",
                "pretrained": str(models_dir / "clip" / "open_clip_model.safetensors"),
                "model_config_file": str(models_dir / "clip" / "clare-tiny-vit.json"),
            },
            "local_files_only": True,
        },
        "extract": {"device": "cpu", "batch_size": 4, "shard_rows": 4, "decode_threads": 1},
    }
    for key, value in overrides.items():
        _merge(tree, key.replace("__", "."), value)
    path = tmp / "config.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    cfg = load_config(path)
    if index is None and (data_root / SIDECAR_INDEX).is_file():
        index = pd.read_parquet(data_root / SIDECAR_INDEX)
    if index is None:
        raise FileNotFoundError(f"{data_root}: no index; pass index= or build it with make_image_tree")
    for split in ("train", "test"):
        write_index(index, cfg.data.index_dir, split)
    return cfg


def store_arrays(store_path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, read whole (tests only: the stores here are tiny)."""
    from clare.cache.store import ARRAYS, FeatureStore

    store = FeatureStore(store_path)
    return {name: store.read(name, 0, store.n_rows) for name in ARRAYS}


def assert_stores_equal(actual: Path, expected: Path) -> None:
    """Arrays bit for bit (NaN payloads included) and manifests equal."""
    from clare.cache.store import FeatureStore

    got, want = store_arrays(actual), store_arrays(expected)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), f"{name} differs"
    pd.testing.assert_frame_equal(FeatureStore(actual).manifest(), FeatureStore(expected).manifest())
