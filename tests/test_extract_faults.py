"""Stage one under faults: SIGKILL at several points, a concurrent writer, changed settings."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_extract import (
    assert_stores_equal,
    make_config,
    make_image_tree,
    store_arrays,
)

from clare.cache.checks import verify_store
from clare.cache.store import FeatureStore
from clare.cache.writer import StoreWriter
from clare.errors import StoreError
from clare.stages.extract import run_extract

N_IMAGES = 24  # shard_rows 4 -> 6 shards
N_SHARDS = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> dict:
    """The uninterrupted run every faulty run must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("faults")
    make_image_tree(root / "data", N_IMAGES, seed=7)
    cfg = make_config(root / "ref", tiny_models_dir, root / "data")
    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == N_SHARDS
    return {"root": root, "store": summary.store, "models": tiny_models_dir}


def _markers(store_path: Path) -> int:
    shards = store_path / "shards"
    return len(list(shards.glob("*.json"))) if shards.is_dir() else 0


def _extract_until_killed(config_file: Path, ready, log: Path) -> int:
    """Run `clare extract` in a subprocess, SIGKILL it as soon as ready() holds; its exit code."""
    # CPU float results depend on the intra-op thread count (reduction order), so the child
    # uses the same count as this process, which computes the reference and the resumed shards.
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "clare.cli", "extract", "--config", str(config_file),
             "--split", "train"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        try:
            deadline = time.monotonic() + 180
            while not ready() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            # Popen does not signal a child it has already reaped, so no stranger is hit.
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    return process.returncode


def test_sigkill_at_three_points_then_resume_is_bit_identical(reference: dict, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")
    config_file = tmp_path / "config.yaml"
    store_path = cfg.paths.stores / "train"
    log = tmp_path / "extract.log"
    kill_points = [
        ("store created, first shard running", lambda: (store_path / "store.json").is_file()),
        ("2 shards done", lambda: _markers(store_path) >= 2),
        ("4 shards done", lambda: _markers(store_path) >= 4),
    ]
    done_before = []
    for what, ready in kill_points:
        code = _extract_until_killed(config_file, ready, log)
        # -9: our SIGKILL ended it; anything else means it crashed or finished first.
        assert code == -signal.SIGKILL, f"{what}: exit {code}\n{log.read_text()[-2000:]}"
        done_before.append(_markers(store_path))
    assert done_before == sorted(done_before) and done_before[-1] < N_SHARDS, done_before
    assert not FeatureStore(store_path).is_complete()

    # Orphans of interrupted writes (Zarr's naming and ours) must be swept on resume.
    orphans = [store_path / "features.zarr" / "tokens" / "c" / "5.0123abcd.partial",
               store_path / "shards" / f"{N_SHARDS - 1:05d}.parquet.partial"]
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"half a write")

    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == N_SHARDS - done_before[-1]
    assert not any(orphan.exists() for orphan in orphans)
    assert not list(store_path.rglob("*.partial"))
    assert_stores_equal(store_path, reference["store"])
    assert verify_store(store_path).ok


def test_second_concurrent_extract_is_refused(reference: dict, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")
    store_path = cfg.paths.stores / "train"
    with StoreWriter(store_path).lock():
        with pytest.raises(StoreError) as caught:
            run_extract(cfg, split="train", quiet=True)
    message = str(caught.value)
    assert message.startswith(f"{store_path}: another extract is writing this store")
    assert f"pid {os.getpid()}" in message  # names the holder of the lock
    assert not (store_path / "store.json").exists()  # refused before touching anything
    # Once the lock is released the same command runs.
    assert run_extract(cfg, split="train", quiet=True).shards_run == N_SHARDS


def test_changed_settings_are_refused_until_overwrite(reference: dict, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")
    store_path = cfg.paths.stores / "train"
    shutil.copytree(reference["store"], store_path)
    assert run_extract(cfg, split="train", quiet=True).shards_run == 0  # same settings: reused

    changed = make_config(tmp_path, reference["models"], reference["root"] / "data",
                          lare__timestep=500)
    with pytest.raises(StoreError) as caught:
        run_extract(changed, split="train", quiet=True)
    message = str(caught.value)
    assert "lare.timestep 200 vs 500" in message and "--overwrite" in message
    assert FeatureStore(store_path).meta["fingerprint"]["lare"]["timestep"] == 200  # untouched

    summary = run_extract(changed, split="train", overwrite=True, quiet=True)
    assert summary.shards_run == N_SHARDS
    rebuilt = FeatureStore(store_path)
    assert rebuilt.meta["fingerprint"]["lare"]["timestep"] == 500
    new, old = store_arrays(store_path), store_arrays(reference["store"])
    assert new["lare"].tobytes() != old["lare"].tobytes()  # the LaRE maps depend on t
    assert new["cls"].tobytes() == old["cls"].tobytes()  # CLIP features do not
    assert verify_store(store_path).ok


def test_overwrite_keeps_the_writer_lock(reference: dict, tmp_path: Path, monkeypatch) -> None:
    # Issue 12: --overwrite used to delete the folder holding .lock, so a second extract could
    # lock a fresh file and write (or delete) the same store.
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data", lare__timestep=500)
    store_path = cfg.paths.stores / "train"
    shutil.copytree(reference["store"], store_path)
    lock_inode = (store_path / ".lock").stat().st_ino
    original = StoreWriter.write_shard
    refused: list[str] = []

    def second_writer_meanwhile(self, index, arrays, manifest):
        if not refused:  # a second `clare extract --overwrite` while the first one rebuilds
            with pytest.raises(StoreError) as caught:
                run_extract(cfg, split="train", overwrite=True, quiet=True)
            refused.append(str(caught.value))
        with pytest.raises(StoreError) as caught:  # any writer, e.g. clare verify's repair
            with StoreWriter(store_path).lock():
                pass
        refused.append(str(caught.value))
        assert (store_path / ".lock").stat().st_ino == lock_inode
        return original(self, index, arrays, manifest)

    monkeypatch.setattr(StoreWriter, "write_shard", second_writer_meanwhile)
    summary = run_extract(cfg, split="train", overwrite=True, quiet=True)
    assert summary.shards_run == N_SHARDS and len(refused) == N_SHARDS + 1
    assert all(m.startswith(f"{store_path}: another extract is writing this store") for m in refused)
    assert FeatureStore(store_path).meta["fingerprint"]["lare"]["timestep"] == 500
    monkeypatch.setattr(StoreWriter, "write_shard", original)
    assert verify_store(store_path).ok


def test_leftovers_of_an_interrupted_overwrite_are_not_taken_for_shards(reference: dict, tmp_path: Path) -> None:
    # store.json is deleted first; a kill right after leaves old markers and parts behind.
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data", lare__timestep=500)
    store_path = cfg.paths.stores / "train"
    shutil.copytree(reference["store"], store_path)
    (store_path / "store.json").unlink()
    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == N_SHARDS
    assert FeatureStore(store_path).meta["fingerprint"]["lare"]["timestep"] == 500
    assert verify_store(store_path).ok


def test_a_workers_gpu_is_the_same_in_every_process_and_spread() -> None:
    """Non-numeric Dask worker names picked their GPU by hash(name), which Python salts per
    process: the choice changed from run to run. Now: the name's number, else its CRC-32."""
    import os
    import subprocess
    import sys

    from clare.stages.extract import worker_slot

    assert [worker_slot(n) % 4 for n in (0, 1, "2", "SLURMCluster-3", "SLURMCluster-0-5")] == [0, 1, 2, 3, 1]
    names = [f"gpu-node-{chr(97 + i)}" for i in range(8)]
    here = [worker_slot(n) for n in names]
    code = ("import sys; from clare.stages.extract import worker_slot; "
            "print([worker_slot(n) for n in sys.argv[1:]])")
    for seed in ("1", "2"):  # other str-hash salts
        other = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        assert other.stdout.strip() == str(here)
    assert len({slot % 2 for slot in here}) == 2  # names without numbers still use both GPUs


@pytest.mark.parametrize("raised,one_line", [
    # What zarrs' Rust codec pipeline raises on a full disk (seen on a 2 MiB tmpfs).
    (RuntimeError("No space left on device (os error 28)"), True),
    (RuntimeError("Disk quota exceeded (os error 122)"), True),
    (RuntimeError("a bug elsewhere (os error 2)"), False),
])
def test_a_full_disk_under_the_zarrs_pipeline_is_one_line(reference: dict, tmp_path: Path, monkeypatch,
                                                          raised: RuntimeError, one_line: bool) -> None:
    """It was "internal error ... (os error 28)", exit 3; CLARE_ZARRS=0 gave the one line."""
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")

    def fills_the_disk(self, index, arrays, manifest):
        raise raised

    monkeypatch.setattr(StoreWriter, "write_shard", fills_the_disk)
    expected = StoreError if one_line else RuntimeError
    with pytest.raises(expected) as caught:
        run_extract(cfg, split="train", quiet=True)
    if one_line:
        assert str(caught.value) == (f"no space left on {cfg.paths.stores / 'train'}; free space "
                                     "and rerun the same command to resume")
