"""Which code made a result: the clare version, the git commit when clare runs from a checkout,
and the versions of the libraries that shape its numbers. run.yaml, metrics.json, the report
header and every `clare compare` table record it (docs/design.md §7)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# The libraries whose versions can change a feature or a score.
LIBRARIES = ("torch", "open_clip_torch", "diffusers")
_GIT_TIMEOUT_S = 5


def _library_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(folder: Path, *args: str) -> str | None:
    """A git command's output in `folder`, or None when git, the repository or time is missing."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def git_commit(package_dir: Path | None = None) -> str | None:
    """The short commit of the checkout clare runs from; None for an installed copy.

    Only a checkout whose top level holds clare's own pyproject.toml counts: an installed clare
    inside a virtual environment that lives in some other git repository must not record that
    repository's commit.
    """
    import clare

    package_dir = package_dir or Path(clare.__file__).resolve().parent
    source_root = package_dir.parent
    if not (source_root / "pyproject.toml").is_file():
        return None
    top = _git(source_root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != source_root.resolve():
        return None
    commit = _git(source_root, "rev-parse", "--short=12", "HEAD")
    if commit is None:
        return None
    dirty = _git(source_root, "status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty else commit


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """{clare, git_commit, libraries: {torch, open_clip_torch, diffusers}}: read once a process."""
    import clare

    return {"clare": clare.__version__, "git_commit": git_commit(),
            "libraries": {name: _library_version(name) for name in LIBRARIES}}


def provenance_line(record: Any) -> str:
    """`clare 0.1.0 (commit 1a2b3c4d5e6f), torch 2.4.1, open_clip_torch 2.26.1, diffusers 0.30.0`
    for a provenance record; `unrecorded` for a result written before clare recorded one."""
    if not isinstance(record, dict) or not record.get("clare"):
        return "clare version unrecorded"
    commit = f" (commit {record['git_commit']})" if record.get("git_commit") else ""
    libraries = record.get("libraries")
    if not isinstance(libraries, dict):
        libraries = {}
    parts = [f"{name} {value}" for name, value in libraries.items() if value]
    return ", ".join([f"clare {record['clare']}{commit}", *parts])
