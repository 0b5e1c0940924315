"""SIGKILL `clare fit` at three points, resume each time: same weights as an uninterrupted run."""

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

from clare.runs import CHECKPOINT_FILE, MODEL_FILE
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
    checkpoint = run_dir / CHECKPOINT_FILE
    kill_after = sorted(random.Random(7).sample(range(5, 55, 5), 3))
    for number, step in enumerate(kill_after):
        process = _fit(config, "killed", env, *(["--resume"] if number else []))
        deadline = time.monotonic() + 300
        while _checkpoint_step(checkpoint) < step and process.poll() is None:
            assert time.monotonic() < deadline, "fit made no progress"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, f"fit ended before the kill at step {step}"
        assert _checkpoint_step(checkpoint) < 60
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
    assert got["best_step"] == want["best_step"]
