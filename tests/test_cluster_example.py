"""examples/slurm_extract.py, the README's cluster example, up to the point that needs SLURM: a
Dask LocalCluster stands in for the SLURMCluster. It starts the cluster, extracts the store
`clare extract` would write without one, and stops the cluster; without dask-jobqueue the
SLURM path is one line naming the extra.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers_extract import assert_stores_equal, make_config, make_image_tree

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "slurm_extract.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slurm_extract", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_cluster_extracts_the_plain_store_and_stops(tmp_path: Path, tiny_models_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from clare.stages.extract import run_extract

    example = _example()
    data = tmp_path / "data"
    make_image_tree(data, 6, seed=2)
    plain = make_config(tmp_path / "plain", tiny_models_dir, data)
    run_extract(plain, split="train", quiet=True)
    config = make_config(tmp_path / "cluster", tiny_models_dir, data)
    started: list[Any] = []

    def start() -> Any:
        cluster = example.local_cluster(1)()
        started.append(cluster)
        return cluster

    summary = example.extract_on_cluster(start, tmp_path / "cluster" / "config.yaml", "train",
                                         quiet=True)
    assert summary.ok == 6 and summary.failed == 0
    assert_stores_equal(config.paths.stores / "train", plain.paths.stores / "train")
    assert started and started[0].status.name == "closed"  # stopped, not left running
    # The command line, as the README runs it (--local in place of the SLURM options).
    assert example.main(["--config", str(tmp_path / "cluster" / "config.yaml"), "--split", "test",
                         "--local", "1", "--quiet"]) == 0
    assert "the cluster is stopped" in capsys.readouterr().out


def test_without_dask_jobqueue_the_slurm_path_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example()
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if not installed
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{root: {tmp_path}}}\n")
    assert example.main(["--config", str(config), "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: dask-jobqueue is not installed; pip install 'clare[cluster]'"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--wait", "-1", "--wait -1: must be a positive number of seconds"),  # was Dask's traceback
    ("--wait", "nan", "--wait nan: must be a positive number of seconds"),
    ("--local", "-3", "--local -3: must be at least 1"),  # was a silent wait of --wait seconds
    ("--jobs", "0", "--jobs 0: must be at least 1"),
    ("--gpus", "-1", "--gpus -1: must be at least 0"),
])
def test_a_number_that_cannot_work_is_one_line_before_any_cluster(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str,
        message: str) -> None:
    code = _example().main(["--config", str(tmp_path / "never-read.yaml"), option, value])
    assert code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
