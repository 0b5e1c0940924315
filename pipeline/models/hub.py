"""Where the real weights come from: hub repositories, open_clip tags, and what a file is.

- `tag_source(model, tag)` reads open_clip's own pretrained table: the hub repo and file a tag
  downloads, and whether the weights were trained with QuickGELU.
- `checkpoint_origin(path)` says which hub repo a local checkpoint came from, when that is
  known: from the `SOURCE.json` that `clare models download` writes next to it, or from the
  Hugging Face cache layout (`models--org--name/snapshots/<commit>/file`).
- `resolve_tag_checkpoint` turns a tag into a local file through huggingface_hub (cache,
  `local_files_only`, HF_HOME / HF_HUB_CACHE as the user set them).

The download command itself lives in `clare.models.download`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clare.errors import ModelLoadError
from clare.files import read_record_bytes

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# A named revision, not a commit: the commit it resolves to is recorded in SOURCE.json and
# weights/README, and `--sd-revision <commit>` repeats a download exactly.
SD15_REVISION = "main"
CLIP_MODEL = "ViT-L-14"
CLIP_TAG = "openai"
CLIP_REVISION = "main"
# The open_clip model config that builds the network OpenAI's weights were trained with.
CLIP_MODEL_QUICKGELU = "ViT-L-14-quickgelu"
SOURCE_FILE = "SOURCE.json"
# Layout of a `clare models download --out DIR` folder (configs/df40.yaml names it).
SD15_DIR = "sd15"
CLIP_DIR = "clip/ViT-L-14-openai"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class TagSource:
    """One entry of open_clip's pretrained table, reduced to what loading needs."""

    model: str
    tag: str
    repo_id: str | None  # None: the tag downloads from a plain URL, not from the hub
    filename: str
    quick_gelu: bool
    preprocess: dict[str, Any] = field(default_factory=dict)


def tag_source(model: str, tag: str) -> TagSource | None:
    """The hub repo, file and activation of an open_clip tag; None if `tag` is no tag of `model`."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    entry = open_clip.get_pretrained_cfg(model, tag)
    if not entry:
        return None
    repo_id, filename = os.path.split(str(entry.get("hf_hub", "")).strip())
    if filename.endswith(_PICKLE_SUFFIXES):
        # open_clip tries the safetensors twin first; we never take the pickle.
        filename = filename.rsplit(".", 1)[0] + ".safetensors"
    preprocess = {f"image_{key}": entry[key] for key in ("mean", "std", "interpolation", "resize_mode")
                  if key in entry}
    # No file named: open_clip's default file, whose safetensors twin it tries first.
    return TagSource(model, tag, repo_id or None, filename or HF_SAFE_WEIGHTS_NAME,
                     bool(entry.get("quick_gelu", False)), preprocess)


def repo_tag_source(repo_id: str) -> TagSource | None:
    """The open_clip tag whose weights live in hub repo `repo_id` (first match), if any."""
    import open_clip

    for model, tag in open_clip.list_pretrained():
        source = tag_source(model, tag)
        if source is not None and source.repo_id == repo_id:
            return source
    return None


# --------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class CheckpointOrigin:
    repo_id: str
    how: str  # where we learned it: "SOURCE.json" or "hub cache path"
    source: TagSource | None  # the open_clip tag of that repo (None: not an open_clip repo)


def read_source_record(folder: Path) -> dict[str, Any] | None:
    """The SOURCE.json of a downloaded folder, or None if there is none."""
    path = Path(folder) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(read_record_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: unreadable ({type(exc).__name__}); delete it and run `clare models download` again"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("repo_id"), str):
        raise ModelLoadError(f"{path}: not a SOURCE.json written by `clare models download`; delete it")
    return record


def _repo_from_cache_path(path: Path) -> str | None:
    # <cache>/models--org--name/snapshots/<commit>/<file...>
    for parent in path.parents:
        if parent.parent.name == "snapshots" and parent.parent.parent.name.startswith("models--"):
            org, _, name = parent.parent.parent.name[len("models--"):].partition("--")
            return f"{org}/{name}" if name else None
    return None


def checkpoint_origin(path: Path) -> CheckpointOrigin | None:
    """Which hub repo a local checkpoint file came from, when its location says so."""
    path = Path(path).absolute()
    record = read_source_record(path.parent)
    if record is not None and path.name in record.get("files", {}):
        repo_id = record["repo_id"]
        return CheckpointOrigin(repo_id, f"{path.parent / SOURCE_FILE}", repo_tag_source(repo_id))
    repo_id = _repo_from_cache_path(path)
    if repo_id is not None:
        return CheckpointOrigin(repo_id, "its Hugging Face cache path", repo_tag_source(repo_id))
    return None


# --------------------------------------------------------------------------- tags -> files


def resolve_tag_checkpoint(source: TagSource, *, local_files_only: bool, fetch: bool = True) -> Path | None:
    """The local file of a hub-hosted tag: from the hub cache, downloading it if allowed.

    `fetch=False` only looks in the cache (None when absent): fingerprints never download.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    assert source.repo_id is not None
    if not fetch:
        cached = try_to_load_from_cache(source.repo_id, source.filename)
        return Path(cached) if isinstance(cached, str) else None
    try:
        return Path(hf_hub_download(source.repo_id, source.filename, local_files_only=local_files_only))
    except Exception as exc:  # noqa: BLE001 - offline, missing, network: one message either way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"models.clip.pretrained: could not get '{source.tag}' for '{source.model}' "
            f"({source.repo_id}/{source.filename}: {first[:160]}); on an offline machine run "
            "`clare models download --out weights` elsewhere, copy weights/ and point "
            "models.clip.pretrained at the file"
        ) from None


# --------------------------------------------------------------------------- download layout


def downloaded_models(out: Path) -> dict[str, Any]:
    """The `models:` section that uses a `clare models download --out OUT` folder."""
    clip = tag_source(CLIP_MODEL, CLIP_TAG)
    if clip is None:
        raise ModelLoadError(f"open_clip has no {CLIP_MODEL}/{CLIP_TAG} tag; install open_clip_torch>=2.26")
    filename = clip.filename
    return {
        "sd": {"pretrained": (Path(out) / SD15_DIR).as_posix()},
        "clip": {"model": CLIP_MODEL_QUICKGELU,
                 "pretrained": (Path(out) / CLIP_DIR / filename).as_posix()},
        "local_files_only": True,
    }


def is_download_folder(folder: Path) -> bool:
    return (Path(folder) / SD15_DIR).is_dir() or (Path(folder) / CLIP_DIR).is_dir()
