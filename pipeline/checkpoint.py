"""The fit checkpoint (`last.ckpt`): written after every validation, read by `clare fit --resume`.

A checkpoint holds the trainable tensors, the optimiser, the random states, the position in the
schedule and the best validation point so far, and the settings it was made with. It is read
with `torch.load(weights_only=True)`: plain tensors and containers only, never code. A
checkpoint of another format, with a part missing, or made with settings that change the
weights is refused in one line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from clare.cache.store import FeatureStore
from clare.config import Config
from clare.errors import CheckpointError
from clare.files import atomic_write_bytes

CHECKPOINT_FILE = "last.ckpt"  # in the run folder, beside the kept weights
CHECKPOINT_FORMAT = "clare-fit-checkpoint/3"
CHECKPOINT_KEYS = ("settings", "trainable", "optimizer", "rng", "step", "epoch", "skip", "best")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    # torch.save into a file reports a full disk as a RuntimeError from its zip writer;
    # serialised in memory, the write is an OSError that names the checkpoint.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# fit settings that do not change the numbers a fit produces; every other one does
RESULT_NEUTRAL_FIT_KEYS = frozenset({"name", "device", "prefetch", "cache"})


def fit_settings(cfg: Config, store: FeatureStore) -> dict[str, Any]:
    """Every setting that changes the weights a fit ends with, flat: fit.*, seed, the store."""
    values = cfg.fit.model_dump(mode="json", exclude=set(RESULT_NEUTRAL_FIT_KEYS))
    settings = dict(_flatten("fit", values))
    settings["seed"] = cfg.seed
    settings["store.fingerprint_sha256"] = store.meta.get("fingerprint_sha256")
    return settings


def _flatten(prefix: str, values: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(f"{prefix}.{key}", value)
        else:
            yield f"{prefix}.{key}", value


def _describe_settings(settings: dict[str, Any], keys: list[str]) -> str:
    shown = ", ".join(f"{key}={settings.get(key)!r}"[:80] for key in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint to resume from, refused when it was made with other `settings`."""
    payload = _read_checkpoint(path)
    stored = payload["settings"] if isinstance(payload["settings"], dict) else {}
    differing = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    if differing:
        raise CheckpointError(
            f"{path}: checkpoint is for {_describe_settings(stored, differing)} but the config "
            f"asks for {_describe_settings(settings, differing)}; resume with the settings it "
            "was started with, or start afresh with --overwrite"
        )
    return payload


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Plain tensors and containers only (weights_only), of this format, with every part."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from; run without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle payloads and corrupt files end here
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load checkpoint ({first}); only plain tensors are accepted, "
            "start afresh with --overwrite"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint; start afresh with "
                              "--overwrite")
    missing = [key for key in CHECKPOINT_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; start afresh with "
                              "--overwrite")
    return payload
