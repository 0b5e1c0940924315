"""Provenance: `clare --version`, the git commit of a checkout (and none elsewhere), the line
every result prints, and the compare tables that carry it."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from test_compare import SUBSETS, frames_of, write_report

from clare.compare import run_compare
from clare.provenance import git_commit, provenance_line

RECORD = {"clare": "9.8.7", "git_commit": "abcdef123456",
          "libraries": {"torch": "2.4.1", "open_clip_torch": "2.26.1", "diffusers": "0.30.0"}}


def test_version_option_prints_the_package_metadata_version(clare):
    code, out, _err = clare("--version")
    assert code == 0
    assert out.strip() == f"clare {version('clare')}"


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _checkout(root: Path) -> Path:
    """A git repository laid out like clare's: pyproject.toml at the top, the package below."""
    package = root / "pipeline"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'clare'\n")
    (package / "__init__.py").write_text("")
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return package


def test_git_commit_of_a_checkout_and_its_uncommitted_changes(tmp_path):
    package = _checkout(tmp_path / "repo")
    head = _git(tmp_path / "repo", "rev-parse", "--short=12", "HEAD")
    assert git_commit(package) == head
    (package / "__init__.py").write_text("# edited\n")
    assert git_commit(package) == f"{head}-dirty"


def test_no_commit_for_an_installed_copy_inside_another_repository(tmp_path):
    # A virtual environment kept inside some project's repository: not clare's commit.
    _checkout(tmp_path / "project")
    installed = tmp_path / "project" / "venv" / "site-packages" / "clare"
    installed.mkdir(parents=True)
    assert git_commit(installed) is None


def test_no_commit_without_git_or_without_a_repository(tmp_path, monkeypatch):
    package = _checkout(tmp_path / "repo")
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))
    assert git_commit(package) is None
    monkeypatch.undo()
    plain = tmp_path / "plain" / "pipeline"
    plain.mkdir(parents=True)
    (plain.parent / "pyproject.toml").write_text("")
    assert git_commit(plain) is None


def test_provenance_line_names_version_commit_and_libraries():
    assert provenance_line(RECORD) == ("clare 9.8.7 (commit abcdef123456), torch 2.4.1, "
                                       "open_clip_torch 2.26.1, diffusers 0.30.0")
    assert provenance_line({**RECORD, "git_commit": None}).startswith("clare 9.8.7, torch")
    assert provenance_line(None) == "clare version unrecorded"


def test_every_compare_output_names_the_code_of_each_run(tmp_path):
    old = write_report(tmp_path / "old", frames_of(SUBSETS, 1.0, seed=1))
    new = write_report(tmp_path / "new", frames_of(SUBSETS, 2.0, seed=2))
    metrics = json.loads((new / "metrics.json").read_text())
    (new / "metrics.json").write_text(json.dumps({**metrics, "provenance": RECORD}))
    out = run_compare([old, new], out_dir=tmp_path / "out", n_resamples=0, quiet=True)
    line = provenance_line(RECORD)
    for path in (out.markdown, out.html, out.latex):
        text = path.read_text()
        assert line in text, path.name
        assert "clare version unrecorded" in text, path.name
    csv = pd.read_csv(out.csv)
    assert set(csv.loc[csv["run"] == "new", "made_by"]) == {line}
    assert set(csv.loc[csv["run"] == "old", "made_by"]) == {"clare version unrecorded"}
