"""`clare info` and `clare verify`: counts, damaged shards named and redone, a full disk."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_extract import (
    assert_stores_equal,
    make_config,
    make_image_tree,
)
from typer.testing import CliRunner

from clare.cache.inspect import store_info, verify_store
from clare.cache.store import FeatureStore
from clare.cli import app
from clare.errors import StoreError
from clare.files import file_sha256
from clare.stages.extract import run_extract

N_IMAGES = 12  # shard_rows 4 -> 3 shards


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> dict:
    """One uninterrupted store; tests work on copies of it."""
    root = tmp_path_factory.mktemp("verify")
    make_image_tree(root / "data", N_IMAGES, seed=3)
    cfg = make_config(root / "ref", tiny_models_dir, root / "data")
    summary = run_extract(cfg, split="train", quiet=True)
    return {"root": root, "store": summary.store, "models": tiny_models_dir}


def _copy(reference: dict, tmp_path: Path):
    """A config whose train store is a copy of the reference store."""
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")
    target = cfg.paths.stores / "train"
    shutil.copytree(reference["store"], target)
    return cfg, target


def _flip_bytes(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def test_healthy_store_verifies_and_info_prints_counts(reference: dict) -> None:
    report = verify_store(reference["store"], repair=False)
    assert report.ok, report.checks
    assert not report.damaged and not report.incomplete

    info = store_info(reference["store"])
    assert (info["rows"], info["ok"], info["failed"]) == (N_IMAGES, N_IMAGES, 0)
    assert info["shards"] == {"total": 3, "complete": 3, "missing": []}
    assert info["arrays"]["tokens"]["dtype"] == "float16"
    assert info["arrays"]["lare"]["shape"] == [N_IMAGES, 4, 32, 32]
    assert info["bytes_per_image"] > 0

    runner = CliRunner()
    result = runner.invoke(app, ["info", str(reference["store"])])
    assert result.exit_code == 0, result.output
    assert f"{N_IMAGES} ({N_IMAGES} images x 1 view(s))" in result.output
    assert "3/3 complete" in result.output
    assert "float16" in result.output
    result = runner.invoke(app, ["verify", str(reference["store"])])
    assert result.exit_code == 0, result.output
    assert "store is sound" in result.output


def test_info_on_an_unfinished_store_reads_the_shard_parts(reference: dict, tmp_path: Path) -> None:
    _, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    (store_path / "manifest.parquet").unlink()
    store.invalidate_shard(2)
    store.meta["shards"]["state"] = "incomplete"
    store.save_meta()

    info = store_info(store_path)
    assert info["complete"] is False
    assert info["shards"] == {"total": 3, "complete": 2, "missing": [2]}
    assert info["rows_done"] == 8 and info["ok"] == 8
    result = CliRunner().invoke(app, ["info", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "incomplete" in result.output and "2/3 shards done" in result.output

    report = verify_store(store_path, repair=False)
    assert not report.ok and report.incomplete == [2] and not report.damaged


def test_info_and_verify_on_a_missing_store_name_the_build_command(tmp_path: Path) -> None:
    for call in (store_info, verify_store):
        with pytest.raises(StoreError, match=r"clare extract --config CONFIG --split SPLIT"):
            call(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("array", ["tokens", "lare"])
def test_flipped_bytes_are_found_and_only_that_shard_is_redone(
    reference: dict, tmp_path: Path, array: str
) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    damaged = FeatureStore(store_path).shard_files(1)[array]
    _flip_bytes(damaged)

    result = CliRunner().invoke(app, ["verify", str(store_path)])
    assert result.exit_code == 1, result.output
    assert "damaged shard 1" in result.output
    assert "damaged shard 0" not in result.output and "damaged shard 2" not in result.output
    assert f"{array}: checksum mismatch" in result.output

    store = FeatureStore(store_path)
    assert store.completed_shards() == {0, 2}
    assert store.meta["shards"]["state"] == "incomplete"
    assert not store.is_complete()

    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == 1
    assert_stores_equal(store_path, reference["store"])
    assert verify_store(store_path).ok


def test_undecodable_shard_is_damaged_even_with_a_matching_checksum(reference: dict, tmp_path: Path) -> None:
    # A shard that was bad from the start: its marker agrees with the broken bytes.
    cfg, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    shard_file = store.shard_files(0)["tokens"]
    shard_file.write_bytes(shard_file.read_bytes()[:-40])  # cut into the shard index
    marker_path = store.shards_dir / "00000.json"
    marker = json.loads(marker_path.read_text())
    marker["checksums"]["tokens"] = file_sha256(shard_file)
    marker_path.write_text(json.dumps(marker))

    report = verify_store(store_path)
    assert set(report.damaged) == {0}
    assert report.damaged[0].startswith("tokens: cannot decode (")
    assert report.invalidated == [0]

    assert run_extract(cfg, split="train", quiet=True).shards_run == 1
    assert_stores_equal(store_path, reference["store"])


def test_nan_in_an_ok_row_is_damage(reference: dict, tmp_path: Path) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    cls = store.read("cls", 4, 8)
    cls[1, 0] = np.nan
    store.array("cls")[4:8] = cls
    marker_path = store.shards_dir / "00001.json"
    marker = json.loads(marker_path.read_text())
    marker["checksums"]["cls"] = file_sha256(store.shard_files(1)["cls"])
    marker_path.write_text(json.dumps(marker))

    report = verify_store(store_path)
    assert report.damaged == {1: "cls: ok row 5 holds NaN or inf"}
    assert run_extract(cfg, split="train", quiet=True).shards_run == 1
    assert_stores_equal(store_path, reference["store"])


def test_edited_fingerprint_and_broken_manifest_are_reported(reference: dict, tmp_path: Path) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    store.meta["fingerprint"]["seed"] = 99  # edited by hand: the digest no longer matches
    store.save_meta()
    report = verify_store(store_path, repair=False)
    failed = {c.name for c in report.checks if not c.ok}
    assert failed == {"fingerprint"}

    _, store_path = _copy(reference, tmp_path / "second")
    (store_path / "manifest.parquet").write_bytes(b"not parquet")
    assert store_info(store_path)["ok"] == N_IMAGES  # info still counts, from the shard parts
    report = verify_store(store_path)
    assert {c.name for c in report.checks if not c.ok} == {"manifest"}
    assert report.manifest_removed and not report.damaged
    # Every shard is still good: the rerun computes nothing and rewrites the manifest.
    cfg2 = make_config(tmp_path / "second", reference["models"], reference["root"] / "data")
    assert run_extract(cfg2, split="train", quiet=True).shards_run == 0
    assert_stores_equal(store_path, reference["store"])


def test_full_disk_is_a_clear_error_and_the_store_resumes(
    reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")
    original = FeatureStore.write_shard
    calls = {"n": 0}

    def fills_the_disk(self, index, arrays, manifest):
        calls["n"] += 1
        if calls["n"] == 2:
            # Half a shard reaches the disk, then the device is full.
            start, stop = self.shard_bounds(index)
            self.array("lare")[start:stop] = arrays["lare"]
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, index, arrays, manifest)

    monkeypatch.setattr(FeatureStore, "write_shard", fills_the_disk)
    with pytest.raises(StoreError) as caught:
        run_extract(cfg, split="train", quiet=True)
    store_path = cfg.paths.stores / "train"
    assert str(caught.value) == (
        f"no space left on {store_path}; free space and rerun the same command to resume"
    )
    assert FeatureStore(store_path).completed_shards() == {0}

    monkeypatch.setattr(FeatureStore, "write_shard", original)
    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == 2
    assert_stores_equal(store_path, reference["store"])
    assert verify_store(store_path).ok


def test_other_os_errors_are_not_disguised(reference: dict, tmp_path: Path, monkeypatch) -> None:
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")

    def broken(self, index, arrays, manifest):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(FeatureStore, "write_shard", broken)
    with pytest.raises(OSError) as caught:
        run_extract(cfg, split="train", quiet=True)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, StoreError)
