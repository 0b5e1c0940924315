"""One DVC project for the whole session: the tracked files in a fresh git repository, after
one `dvc repro` of the demo (fit.epochs = 2: the chain is under test here, not the learning).

tests/test_dvc_experiments.py runs its experiments in a copy, then checks that first repro
and changes this project (its last test); the stores are extracted once. The two users are
one module so that pytest-xdist's --dist loadfile builds the project in one process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


@dataclass
class DvcProject:
    root: Path
    env: dict[str, str]
    first_repro: str  # output of the first `dvc repro`


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_project(source: DvcProject, dest: Path) -> DvcProject:
    """A copy with its own git repository, DVC cache and workspace (links stay links)."""
    shutil.copytree(source.root, dest, symlinks=True)
    return DvcProject(dest, source.env, source.first_repro)


@pytest.fixture(scope="session")
def dvc_project(tmp_path_factory) -> DvcProject:
    root = tmp_path_factory.mktemp("dvc") / "clare"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    demo = yaml.safe_load((root / "configs" / "demo.yaml").read_text())
    demo["fit"]["epochs"] = 2
    (root / "configs" / "demo.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "copy"], root, env)
    return DvcProject(root, env, run([*DVC, "repro"], root, env))
