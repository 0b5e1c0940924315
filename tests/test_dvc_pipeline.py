"""`dvc repro` on the demo config, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the tracked files, as a fresh clone would have them, in its own git repo."""
    root = tmp_path_factory.mktemp("dvc") / "clare"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fit"]["epochs"] = 2  # the chain is under test here, not the learning
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "copy"], root, env)
    return root, env


def test_repro_runs_every_stage_then_nothing_then_only_what_changed(project):
    root, env = project
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], root, env)
    assert _stages_run(first) == {"prepare", "extract_train", "extract_test",
                                  "extract_robust@jpeg50", "fit", "eval"}
    metrics = json.loads((root / "reports" / "demo" / "metrics.json").read_text())
    assert set(metrics["subsets"]) == {"DiT_cdf", "StyleGAN2_cdf", "sd2.1_cdf", "heygen",
                                       "whichisreal"}
    assert "test-jpeg50" in metrics["robustness"]
    assert (root / "reports" / "demo" / "report.html").is_file()
    assert (root / "runs" / "demo" / "model.safetensors").is_file()

    second = _run([*dvc, "repro"], root, env)
    assert _stages_run(second) == set()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fit"]["lr"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*dvc, "repro"], root, env)
    assert _stages_run(third) == {"fit", "eval"}

    shown = _run([*dvc, "metrics", "show", "--json"], root, env)
    assert "reports/demo/metrics.json" in shown
