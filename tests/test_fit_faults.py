"""SIGKILL `clare fit`: resuming gives the weights of an uninterrupted run; a killed fit never
changes a published run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_extract import make_config, make_image_tree
from safetensors.torch import load_file

from clare.checkpoint import CHECKPOINT_FILE
from clare.runs import MODEL_FILE, StagedFolder
from clare.stages.extract import run_extract

FIT_ARGS = ["--set", "fit.max_steps=60", "--set", "fit.val_every=5", "--set", "fit.batch_size=8",
            "--set", "fit.val_fraction=0.3", "--set", "fit.prefetch=0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models_dir):
    tmp = tmp_path_factory.mktemp("fitkill")
    root = tmp / "images"
    make_image_tree(root, 24, seed=11)
    cfg = make_config(tmp, tiny_models_dir, root)
    run_extract(cfg, split="train", quiet=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return tmp / "config.yaml", cfg, env


def _fit(config: Path, name: str, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clare.cli", "fit", "--config", str(config), "--name", name,
         *FIT_ARGS, *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def test_sigkill_at_three_points_then_resume_equals_uninterrupted(setup):
    config, cfg, env = setup
    reference = _fit(config, "whole", env)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    run_dir = cfg.paths.runs / "killed"
    # An unfinished fit lives in its staging folder; the run folder appears when it publishes.
    staged = StagedFolder(run_dir, "clare fit").staging / CHECKPOINT_FILE
    checkpoint = run_dir / CHECKPOINT_FILE
    kill_after = sorted(random.Random(7).sample(range(5, 55, 5), 3))
    for number, step in enumerate(kill_after):
        process = _fit(config, "killed", env, *(["--resume"] if number else []))
        deadline = time.monotonic() + 300
        while _checkpoint_step(staged) < step and process.poll() is None:
            assert time.monotonic() < deadline, "fit made no progress"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, f"fit ended before the kill at step {step}"
        assert _checkpoint_step(staged) < 60
        assert not run_dir.exists()  # nothing is published before the fit ends
    final = _fit(config, "killed", env, "--resume")
    assert final.wait(timeout=300) == 0, final.stderr.read()

    whole = cfg.paths.runs / "whole"
    want = torch.load(whole / CHECKPOINT_FILE, weights_only=True)
    got = torch.load(checkpoint, weights_only=True)
    assert got["step"] == want["step"] == 60
    for key, value in want["trainable"].items():
        assert torch.equal(value, got["trainable"][key]), key
    best_want, best_got = load_file(str(whole / MODEL_FILE)), load_file(str(run_dir / MODEL_FILE))
    assert all(torch.equal(best_want[k], best_got[k]) for k in best_want)
    assert got["best"]["step"] == want["best"]["step"]


def _run_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_sigkilled_replacing_fit_leaves_the_finished_run_whole(setup):
    """The issue's example: a finished `base`, then a fit with another lr killed after its
    first validation. The published run must stay the old one, byte for byte, and readable."""
    from clare.runs import read_run

    config, cfg, env = setup
    run_dir = cfg.paths.runs / "base"
    short = ("--set", "fit.max_steps=15")
    first = _fit(config, "base", env, *short)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    published = _run_files(run_dir)

    refused = _fit(config, "base", env, *short, "--set", "fit.lr=0.05")
    assert refused.wait(timeout=300) == 2
    assert "holds a finished run; pass --overwrite" in refused.stderr.read()

    staged = StagedFolder(run_dir, "clare fit").staging / CHECKPOINT_FILE
    replacing = _fit(config, "base", env, *short, "--set", "fit.lr=0.05", "--overwrite")
    deadline = time.monotonic() + 300
    while _checkpoint_step(staged) < 5 and replacing.poll() is None:
        assert time.monotonic() < deadline, "fit made no progress"
        time.sleep(0.005)
    # A second fit of the same run while the first one is alive is refused, not interleaved
    # (the first is stopped meanwhile, so it cannot finish before the second asks).
    replacing.send_signal(signal.SIGSTOP)
    second = _fit(config, "base", env, *short, "--set", "fit.lr=0.05", "--overwrite")
    assert second.wait(timeout=300) == 2
    assert "another clare fit is writing it" in second.stderr.read()
    replacing.send_signal(signal.SIGKILL)
    replacing.wait(timeout=60)
    assert replacing.returncode == -signal.SIGKILL, "fit ended before the kill"

    assert _run_files(run_dir) == published
    assert read_run(run_dir).config.fit.lr == cfg.fit.lr  # record and weights still agree

    other = _fit(config, "base", env, *short, "--set", "fit.lr=0.01", "--resume")
    assert other.wait(timeout=300) == 2
    assert "fit.lr=0.05 but the config asks for fit.lr=0.01" in other.stderr.read()
    resumed = _fit(config, "base", env, *short, "--set", "fit.lr=0.05", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    info = read_run(run_dir)
    assert info.config.fit.lr == 0.05 and info.record.steps == 15
    assert not staged.parent.exists()
