"""A trained run on disk: `runs/<name>/` with model.safetensors, run.yaml and last.ckpt.

`model.safetensors` holds the trainable parameters only (megabytes); the frozen CLIP weights
are rebuilt from the config and checked against the store fingerprint recorded in run.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clare.config import Config
from clare.errors import ClareError, StoreError

MODEL_FILE = "model.safetensors"
RUN_FILE = "run.yaml"
CHECKPOINT_FILE = "last.ckpt"


@dataclass
class RunInfo:
    path: Path
    config: Config
    record: dict[str, Any]  # the whole run.yaml

    @property
    def store_fingerprint(self) -> dict[str, Any]:
        return self.record["store_fingerprint"]


def read_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    run_file, model_file = run_dir / RUN_FILE, run_dir / MODEL_FILE
    if not run_file.is_file() or not model_file.is_file():
        raise ClareError(
            f"{run_dir}: not a finished run (needs {RUN_FILE} and {MODEL_FILE}); "
            "train one with `clare fit --config CONFIG`"
        )
    record = yaml.safe_load(run_file.read_text())
    if not isinstance(record, dict) or "config" not in record:
        raise ClareError(f"{run_file}: malformed run record; rerun `clare fit`")
    return RunInfo(run_dir, Config.model_validate(record["config"]), record)


def model_settings(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The part of a store fingerprint that must agree between training and test stores."""
    return {
        "clip": fingerprint.get("clip"),
        "clip_weights": fingerprint.get("weights", {}).get("clip"),
        "sd_weights": fingerprint.get("weights", {}).get("sd"),
        "lare": fingerprint.get("lare"),
        "precision": fingerprint.get("precision"),
        "decode": fingerprint.get("decode"),
    }


def check_compatible(train_fp: dict[str, Any], other_fp: dict[str, Any], train_name: str,
                     other_name: str) -> None:
    """Raise when two stores were built with different frozen models or LaRE settings."""
    a, b = model_settings(train_fp), model_settings(other_fp)
    differing = sorted(key for key in a if a[key] != b[key])
    if differing:
        key = differing[0]
        theirs, ours = _differing_parts(b[key], a[key])
        raise StoreError(
            f"{other_name} was built with other {', '.join(differing)} than {train_name} "
            f"({key}: {_short(theirs)} vs {_short(ours)}); rebuild one of them with the same config"
        )


def _differing_parts(left: Any, right: Any) -> tuple[Any, Any]:
    """For two mappings, only the entries that differ, so a long setting stays readable."""
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
        return {k: left.get(k) for k in keys}, {k: right.get(k) for k in keys}
    return left, right


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_detector(info: RunInfo, device: Any) -> Any:
    """Rebuild the run's detector from its config and load its trained weights."""
    from safetensors.torch import load_file

    from clare.models.detector import build_detector
    from clare.models.loading import load_clip

    cfg = info.config
    clip = load_clip(cfg.models.clip, local_files_only=cfg.models.local_files_only)
    detector = build_detector(
        cfg.fit.module, cfg.fit.strategy, cfg.fit.attention, clip.model, clip.tokenizer,
        cfg.fit.prompt, dropout=cfg.fit.dropout,
    )
    detector.load_trainable_state_dict(load_file(str(info.path / MODEL_FILE)),
                                       source=str(info.path / MODEL_FILE))
    return detector.to(device).eval()
