"""store.json: its schema, and reading it into one StoreError naming the file and the fix.

What clare reads from it is checked on every open (`read_meta`); keys it does not read are
kept as they are, so a writer that adds one breaks no reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clare.errors import StoreError
from clare.files import read_record_bytes

FORMAT = "clare-store/3"
BUILD_HINT = "clare extract --config CONFIG --split SPLIT"


class _ShardState(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    total: int = Field(ge=1)
    completed: list[int]
    state: Literal["complete", "incomplete"]


class _Shapes(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    lare: list[int]
    cls: list[int]
    tokens: list[int]


class _StoreMeta(BaseModel):
    """What clare reads from store.json; other keys are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")
    format: str
    n_rows: int = Field(ge=1)
    shard_rows: int = Field(ge=1)
    shapes: _Shapes
    shards: _ShardState
    fingerprint: dict[str, Any] | None = None
    fingerprint_sha256: str | None = None
    index_shards_sha256: list[str] | None = None
    manifest_sha256: str | None = None
    views: int = Field(default=1, ge=1)
    n_images: int | None = None
    split: str | None = None
    perturb: str | None = None
    subsets: list[str] | None = None


def rebuild_command(meta: dict[str, Any] | None = None, *, overwrite: bool = True) -> str:
    """The `clare extract` command that builds a store like this one (from what store.json says)."""
    meta = meta if isinstance(meta, dict) else {}
    split = meta.get("split") if meta.get("split") in ("train", "test") else "SPLIT"
    command = f"clare extract --config CONFIG --split {split}"
    perturb = meta.get("perturb")
    if isinstance(perturb, str) and perturb:
        command += f" --perturb {perturb}"
    return command + (" --overwrite" if overwrite else "")


def _parse_meta(path: Path) -> dict[str, Any]:
    """store.json as a mapping of this clare's format, else a StoreError naming the file and fix."""
    if not path.is_file():
        raise StoreError(f"{path.parent}: feature store not found (no store.json); build it with `{BUILD_HINT}`")
    try:
        raw = json.loads(read_record_bytes(path).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise StoreError(
            f"{path}: unreadable store.json ({type(exc).__name__}); rebuild with `{rebuild_command()}`"
        ) from None
    if not isinstance(raw, dict):
        raise StoreError(f"{path}: store.json must hold a mapping; rebuild with `{rebuild_command()}`")
    if raw.get("format") != FORMAT:
        found = raw.get("format")
        shown = found if isinstance(found, str) and len(found) <= 40 else "unknown"
        raise StoreError(
            f"{path}: store format {shown} is not {FORMAT}, the format this clare reads; "
            f"rebuild the store with `{rebuild_command(raw)}`"
        )
    return raw


def read_meta(path: Path) -> dict[str, Any]:
    """Parse and check store.json; every problem is one StoreError naming the file and the fix."""
    raw = _parse_meta(path)
    try:
        checked = _StoreMeta.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise StoreError(
            f"{path}: key '{key}': {error['msg']}; rebuild with `{rebuild_command(raw)}`"
        ) from None
    n_shards = -(-checked.n_rows // checked.shard_rows)
    digests = checked.index_shards_sha256
    if checked.shards.total != n_shards or (digests is not None and len(digests) != n_shards):
        raise StoreError(
            f"{path}: shard counts disagree with n_rows and shard_rows; rebuild with `{rebuild_command(raw)}`"
        )
    return raw
