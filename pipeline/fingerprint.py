"""The store fingerprint, in one place: what it holds, how two are compared, how a mismatch reads.

A fingerprint records everything that changes the numbers in a feature store (docs/design.md,
"Fingerprint"): the frozen weights (file hashes), the CLIP model and its preprocessing, the LaRE
settings, the precision, the decode limits, the views and augmentations, the perturbation, the
seed and a digest of the listed rows. Batch size, worker count and device do not belong in it.

Consumers never compare fingerprints by hand. They name a *scope*, the part that must agree for
what they are about to do:

- ``STORE``: extending or resuming a store, and resuming a fit: everything.
- ``FEATURES``: reading the features of one store with a head trained on another, or predicting
  with a run: the frozen models and the settings that shape a feature (weights, CLIP, LaRE,
  precision, decode), not the rows, views or perturbation.
- ``CLIP``: what a trained head still runs at scoring time from a store (the frozen CLIP text
  tower): the CLIP weights and model.
- ``TRAINING``: what `clare fit` checks between its config and the train store: the CLIP it
  builds the head on, and the LaRE settings its run record will claim.

Weights are compared by content. Where a file hash is recorded, the path or hub id it was
loaded from is not compared, so a store built from a hub id and a run pointed at a downloaded
copy of the same files agree; where no hash could be taken (an open_clip tag resolved by
open_clip itself) the identifiers are compared instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from clare.errors import FingerprintError

if TYPE_CHECKING:
    from clare.config import Config

# Dotted paths into a fingerprint; a path covers everything below it.
STORE: tuple[str, ...] = ("*",)
FEATURES: tuple[str, ...] = ("weights.sd", "weights.clip", "clip", "lare", "precision", "decode")
CLIP: tuple[str, ...] = ("weights.clip", "clip.model", "clip.preprocess")
TRAINING: tuple[str, ...] = (*CLIP, "lare")

_MISSING = "<absent>"
_SHOWN = 40  # characters of one value in a message: a mismatch stays one readable line


# --------------------------------------------------------------------------- what is in it


def feature_settings(cfg: Config, *, sd: bool = True) -> dict[str, Any]:
    """The FEATURES part of the fingerprint a store built now with `cfg` would record.

    `sd=False` leaves out the Stable Diffusion weights (hashing them reads gigabytes): for a
    consumer that compares only CLIP, such as scoring a store with a trained head.
    """
    from clare.models.clip_input import FINGERPRINT_TEXT
    from clare.models.loading import clip_weights_fingerprint, sd_weights_fingerprint

    weights = {"clip": clip_weights_fingerprint(cfg.models)}
    if sd:
        weights["sd"] = sd_weights_fingerprint(cfg.models)
    return {
        "weights": weights,
        "lare": cfg.lare.model_dump(mode="json"),
        "clip": {"model": cfg.models.clip.model, "pretrained": cfg.models.clip.pretrained,
                 "preprocess": FINGERPRINT_TEXT[cfg.models.clip.input]},
        "precision": cfg.extract.precision,
        "decode": {"min_image_size": cfg.extract.min_image_size,
                   "max_image_pixels": cfg.extract.max_image_pixels,
                   "max_aspect_ratio": cfg.extract.max_aspect_ratio},
    }


def store_fingerprint(cfg: Config, *, index_sha256: str, views: int,
                      perturb: str | None) -> dict[str, Any]:
    """Everything that changes the numbers in a store; batch size, workers and device do not."""
    import clare

    return {
        **feature_settings(cfg),
        "views": views,
        "augment": cfg.extract.augment.model_dump(mode="json") if views > 1 else None,
        "perturb": perturb,
        "seed": cfg.seed,
        "index_sha256": index_sha256,
        "clare_version": clare.__version__,
    }


# --------------------------------------------------------------------------- comparing


def digest(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON form: equal fingerprints, equal digests."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def comparable(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint as compared: locations dropped where the content hash identifies the file."""
    out = json.loads(json.dumps(fingerprint, default=str))  # a deep, plain copy
    weights = out.get("weights")
    if isinstance(weights, dict):
        sd = weights.get("sd")
        if isinstance(sd, dict) and sd.get("files"):
            sd.pop("pretrained", None)
            sd.pop("revision", None)
        clip_weights = weights.get("clip")
        if isinstance(clip_weights, dict) and clip_weights.get("sha256"):
            clip_weights.pop("pretrained", None)
            clip = out.get("clip")
            if isinstance(clip, dict):
                clip.pop("pretrained", None)
    return out


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        if not value:
            return {prefix: {}}
        found: dict[str, Any] = {}
        for key in sorted(value, key=str):
            found.update(_leaves(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {prefix: value}


def _within(path: str, scope: Iterable[str]) -> bool:
    return any(s == "*" or path == s or path.startswith(s + ".") for s in scope)


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any],
                scope: Iterable[str] = STORE) -> list[str]:
    """Dotted paths of the leaves inside `scope` whose values differ (sorted)."""
    scope = tuple(scope)
    left = _leaves(comparable(expected), "")
    right = _leaves(comparable(actual), "")
    paths = {p for p in set(left) | set(right) if _within(p, scope)}
    return sorted(p for p in paths if left.get(p, _MISSING) != right.get(p, _MISSING))


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def describe(expected: Mapping[str, Any], actual: Mapping[str, Any], paths: list[str],
             limit: int = 3) -> str:
    """`lare.timestep 200 vs 500, weights.clip.sha256 3f2a… vs 9c8d…` (the first `limit` paths)."""
    left = _leaves(comparable(expected), "")
    right = _leaves(comparable(actual), "")
    parts = [f"{p} {_shown(left.get(p, _MISSING))} vs {_shown(right.get(p, _MISSING))}"
             for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(parts) + more


def require_match(expected: Mapping[str, Any], actual: Mapping[str, Any], scope: Iterable[str],
                  *, expected_name: str, actual_name: str, fix: str) -> None:
    """Raise FingerprintError, one line naming both sides, what differs and the fix."""
    paths = differences(expected, actual, scope)
    if paths:
        raise FingerprintError(
            f"{actual_name} differs from {expected_name} in "
            f"{describe(expected, actual, paths)}; {fix}"
        )


def summary(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The parts a person compares by eye, file hashes shortened (for `clare info`)."""

    def short(text: Any) -> Any:
        return text[:12] if isinstance(text, str) else text

    weights = fingerprint.get("weights") or {}
    sd = weights.get("sd") or {}
    clip_weights = weights.get("clip") or {}
    files = sd.get("files") or {}
    return {
        "sd": sd.get("pretrained"),
        "sd_revision": sd.get("revision"),
        "sd_files": f"{len(files)} files, digest {short(digest(files))}" if files else None,
        "clip": f"{clip_weights.get('model')} / {clip_weights.get('pretrained')}",
        "clip_sha256": short(clip_weights.get("sha256")),
        **{key: fingerprint.get(key) for key in
           ("lare", "precision", "views", "augment", "perturb", "decode", "seed")},
        "index_sha256": short(fingerprint.get("index_sha256")),
        "clare_version": fingerprint.get("clare_version"),
    }
