"""A Hugging Face hub without a network: its cache layout, and a fake for downloads.

- `hf_offline_cache` (fixture): HF_HOME points at an empty temp folder and HF_HUB_OFFLINE=1, as a
  user would set them before starting `clare`. huggingface_hub reads both into
  `huggingface_hub.constants` at import, so the fixture reloads that module after changing the
  environment (and again after restoring it); diffusers, transformers and huggingface_hub
  itself read `constants.X` at call time and so see the new values.
- `add_to_hub_cache` writes files in the hub's own cache layout
  (`models--org--name/blobs/<hash>`, `snapshots/<commit>/<path>` symlinks, `refs/main`).
- `FakeHub` stands in for `huggingface_hub.model_info` and `huggingface_hub.hf_hub_download`,
  serving repos from local folders, writing through the same `.incomplete` file a real
  `local_dir` download uses, and able to cut one transfer off half-way.
- `TINY_TAG_REPO`/`register_tiny_tag`: an open_clip pretrained-table entry for the tiny model,
  hub-hosted and QuickGELU like OpenAI's ViT-L-14 `openai` tag.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clare.models.tiny import TINY_CLIP_CONFIG, TINY_CLIP_NAME

TINY_TAG = "openai"
TINY_TAG_REPO = "clare-test/tiny-clip-openai"
TINY_QUICKGELU_NAME = f"{TINY_CLIP_NAME}-quickgelu"


@pytest.fixture
def hf_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty hub cache under HF_HOME, offline; yields the cache folder (HF_HOME/hub)."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importlib.reload(constants)
    assert Path(constants.HF_HUB_CACHE) == home / "hub" and constants.HF_HUB_OFFLINE
    yield home / "hub"
    monkeypatch.undo()
    importlib.reload(constants)


def add_to_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str) -> Path:
    """Put `files` (repo path -> local file) into the cache as `repo_id` at `commit`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def folder_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(Path(root).rglob("*")) if p.is_file()}


def register_tiny_tag(monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> Path:
    """Register the tiny config, its QuickGELU twin and a hub-hosted `openai` tag for it.

    Returns the twin's config file (pass it as models.clip.model_config_file).
    """
    import open_clip
    from open_clip import pretrained as table

    from clare.models.tiny import register_tiny_clip_config

    register_tiny_clip_config(config_dir)
    twin = config_dir / f"{TINY_QUICKGELU_NAME}.json"
    twin.write_text(json.dumps({**TINY_CLIP_CONFIG, "quick_gelu": True}, indent=2))
    open_clip.add_model_config(twin)
    monkeypatch.setitem(table._PRETRAINED, TINY_CLIP_NAME,
                        {TINY_TAG: {"url": "", "hf_hub": f"{TINY_TAG_REPO}/", "quick_gelu": True}})
    return twin


def blob_id(path: Path) -> str:
    """git's own id of a file (what the hub lists for small files), from git itself."""
    import subprocess

    done = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@dataclass
class FakeHub:
    """`model_info` + `hf_hub_download` over local folders: repo id -> {commit: folder}."""

    repos: dict[str, dict[str, Path]]
    branches: dict[str, str] = field(default_factory=dict)  # "repo@main" -> commit
    cut_after: dict[str, int] = field(default_factory=dict)  # file name -> bytes, then fail once
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    resumed_from: dict[str, int] = field(default_factory=dict)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "model_info", self.model_info)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)

    def _folder(self, repo_id: str, revision: str) -> tuple[str, Path]:
        from huggingface_hub.errors import RevisionNotFoundError

        commit = self.branches.get(f"{repo_id}@{revision}", revision)
        if commit not in self.repos[repo_id]:
            raise RevisionNotFoundError(f"{revision} not in {repo_id}", response=_Response())
        return commit, self.repos[repo_id][commit]

    def model_info(self, repo_id: str, *, revision: str, files_metadata: bool) -> Any:
        assert files_metadata
        commit, folder = self._folder(repo_id, revision)
        siblings = []
        for name, path in folder_files(folder).items():
            big = path.suffix == ".safetensors"  # stored with LFS on the hub
            lfs = {"size": path.stat().st_size,
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} if big else None
            siblings.append(SimpleNamespace(rfilename=name, size=path.stat().st_size,
                                            blob_id=None if big else blob_id(path), lfs=lfs))
        return SimpleNamespace(sha=commit, siblings=siblings)

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str, local_dir: Path,
                        **_: Any) -> str:
        from huggingface_hub._local_folder import get_local_download_paths

        self.calls.append((repo_id, filename, revision))
        _, folder = self._folder(repo_id, revision)
        data = (folder / filename).read_bytes()
        paths = get_local_download_paths(Path(local_dir), filename)
        partial = paths.incomplete_path(hashlib.sha256(data).hexdigest())
        start = partial.stat().st_size if partial.is_file() else 0
        if start:
            self.resumed_from[filename] = start
        with open(partial, "ab") as handle:
            if filename in self.cut_after:
                handle.write(data[start:self.cut_after.pop(filename)])
                raise ConnectionError("connection reset by peer")
            handle.write(data[start:])
        paths.file_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, paths.file_path)
        return str(paths.file_path)


class _Response:
    """The least an HfHubHTTPError needs from a response."""

    status_code = 404
    headers: dict[str, str] = {}
    url = "https://huggingface.co"
    request = None
