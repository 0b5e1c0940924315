"""`clare info` and `clare verify`: counts, damaged shards named and redone, a full disk."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_extract import (
    assert_stores_equal,
    make_config,
    make_image_tree,
)

from clare.cache.checks import store_info, verify_store
from clare.cache.store import FeatureStore
from clare.cache.writer import StoreWriter
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


def test_healthy_store_verifies_and_info_prints_counts(reference: dict, clare) -> None:
    report = verify_store(reference["store"], repair=False)
    assert report.ok, report.checks
    assert not report.damaged and not report.incomplete

    info = store_info(reference["store"])
    assert (info["rows"], info["ok"], info["failed"]) == (N_IMAGES, N_IMAGES, 0)
    assert info["shards"] == {"total": 3, "complete": 3, "missing": []}
    assert info["arrays"]["tokens"]["dtype"] == "float16"
    assert info["arrays"]["lare"]["shape"] == [N_IMAGES, 4, 32, 32]
    assert info["bytes_per_image"] > 0

    result = clare("info", reference["store"])
    assert result.exit_code == 0, result.output
    assert f"{N_IMAGES} ({N_IMAGES} distinct images x 1 view(s); {N_IMAGES} listed entries)" in result.output
    assert "3/3 complete" in result.output
    assert "float16" in result.output
    result = clare("verify", reference["store"])
    assert result.exit_code == 0, result.output
    assert "store is sound" in result.output


def test_info_on_an_unfinished_store_reads_the_shard_parts(reference: dict, tmp_path: Path,
                                                            clare) -> None:
    _, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    (store_path / "manifest.parquet").unlink()
    StoreWriter(store).invalidate_shard(2)
    store.meta["shards"]["state"] = "incomplete"
    StoreWriter(store).save_meta()

    info = store_info(store_path)
    assert info["complete"] is False
    assert info["shards"] == {"total": 3, "complete": 2, "missing": [2]}
    assert info["rows_done"] == 8 and info["ok"] == 8
    result = clare("info", store_path)
    assert result.exit_code == 0, result.output
    assert "incomplete" in result.output and "2/3 shards done" in result.output

    report = verify_store(store_path, repair=False)
    assert not report.ok and report.incomplete == [2] and not report.damaged


def test_info_and_verify_on_a_missing_store_name_the_build_command(tmp_path: Path) -> None:
    for call in (store_info, verify_store):
        with pytest.raises(StoreError, match=r"clare extract --config CONFIG --split SPLIT"):
            call(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("metadata", ["not json", '{"zarr_format": 3, "node_type": "array"}'])
def test_damaged_array_metadata_is_a_store_error_naming_the_file(
    reference: dict, tmp_path: Path, metadata: str
) -> None:
    # fit, eval and predict open arrays here: this was an "internal error" (exit code 3).
    _cfg, store_path = _copy(reference, tmp_path)
    (store_path / "features.zarr" / "tokens" / "zarr.json").write_text(metadata)
    with pytest.raises(StoreError, match=r"features\.zarr/tokens/zarr\.json is unreadable .*--overwrite"):
        FeatureStore(store_path).read("tokens", 0, 1)


@pytest.mark.parametrize("array", ["tokens", "lare"])
def test_flipped_bytes_are_found_and_only_that_shard_is_redone(
    reference: dict, tmp_path: Path, array: str, clare
) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    damaged = FeatureStore(store_path).shard_files(1)[array]
    _flip_bytes(damaged)

    result = clare("verify", store_path)
    assert result.exit_code == 1, result.output
    assert "damaged shard 1" in result.output
    assert f"1 of {FeatureStore(store_path).n_shards} damaged: shard(s) 1" in result.output
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
    store.array("cls", write=True)[4:8] = cls
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
    StoreWriter(store).save_meta()
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
    original = StoreWriter.write_shard
    calls = {"n": 0}

    def fills_the_disk(self, index, arrays, manifest):
        calls["n"] += 1
        if calls["n"] == 2:
            # Half a shard reaches the disk, then the device is full.
            start, stop = self.store.shard_bounds(index)
            self.store.array("lare", write=True)[start:stop] = arrays["lare"]
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, index, arrays, manifest)

    monkeypatch.setattr(StoreWriter, "write_shard", fills_the_disk)
    with pytest.raises(StoreError) as caught:
        run_extract(cfg, split="train", quiet=True)
    store_path = cfg.paths.stores / "train"
    assert str(caught.value) == (
        f"no space left on {store_path}; free space and rerun the same command to resume"
    )
    assert FeatureStore(store_path).completed_shards() == {0}

    monkeypatch.setattr(StoreWriter, "write_shard", original)
    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == 2
    assert_stores_equal(store_path, reference["store"])
    assert verify_store(store_path).ok


def test_other_os_errors_are_not_disguised(reference: dict, tmp_path: Path, monkeypatch) -> None:
    cfg = make_config(tmp_path, reference["models"], reference["root"] / "data")

    def broken(self, index, arrays, manifest):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(StoreWriter, "write_shard", broken)
    with pytest.raises(OSError) as caught:
        run_extract(cfg, split="train", quiet=True)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, StoreError)


# --------------------------------------------------------------------------- issue 12, class 3:
# a store that verify calls sound is sound; every read of a damaged byte fails loudly.


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def other_store(reference: dict) -> Path:
    """A second store of the same images with another index (subset beta only)."""
    cfg = make_config(reference["root"] / "other", reference["models"], reference["root"] / "data")
    return run_extract(cfg, split="train", subsets=["beta"], quiet=True).store


def _marker(store_path: Path, index: int) -> dict:
    return json.loads((store_path / "shards" / f"{index:05d}.json").read_text())


def _flip_labels(store_path: Path, *, forge_markers: bool) -> None:
    """Flip every label in every manifest part and in manifest.parquet (and re-sign the markers)."""
    store = FeatureStore(store_path)
    for index in range(store.n_shards):
        part_path = store.part_path(index)
        part = pd.read_parquet(part_path)
        part["label"] = (1 - part["label"]).astype(part["label"].dtype)
        part.to_parquet(part_path, index=False)
        if forge_markers:
            marker = _marker(store_path, index)
            marker["manifest_sha256"] = file_sha256(part_path)
            (store_path / "shards" / f"{index:05d}.json").write_text(json.dumps(marker))
    manifest = pd.read_parquet(store.manifest_path)
    manifest["label"] = (1 - manifest["label"]).astype(manifest["label"].dtype)
    manifest.to_parquet(store.manifest_path, index=False)


@pytest.mark.parametrize("repair_with", ["verify", "extract"])
def test_shard_copied_from_another_store_is_damaged_and_redone(
    reference: dict, other_store: Path, tmp_path: Path, repair_with: str
) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    foreign, target = FeatureStore(other_store), FeatureStore(store_path)
    for name, source in foreign.shard_files(0).items():
        shutil.copy2(source, target.shard_files(0)[name])
    for source in (foreign.marker_path(0), foreign.part_path(0)):
        shutil.copy2(source, store_path / "shards" / source.name)
    target.meta["shards"]["state"] = "incomplete"  # as if the copy happened before finalize
    StoreWriter(target).save_meta()
    (store_path / "manifest.parquet").unlink()

    if repair_with == "verify":
        report = verify_store(store_path)
        assert set(report.damaged) == {0}, report.damaged
        assert "another fingerprint" in report.damaged[0]
        assert report.invalidated == [0]
    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == 1
    assert_stores_equal(store_path, reference["store"])
    assert set(FeatureStore(store_path).entries()["subset"]) == {"alpha", "beta"}
    assert verify_store(store_path).ok


@pytest.mark.parametrize("forge_markers", [False, True], ids=["markers-kept", "markers-forged"])
def test_flipped_labels_are_never_sound(clare,
    reference: dict, tmp_path: Path, forge_markers: bool, capsys, monkeypatch
) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    _flip_labels(store_path, forge_markers=forge_markers)

    # fit and eval read manifest.parquet: it no longer matches what extraction wrote.
    with pytest.raises(StoreError, match=r"manifest.parquet: its paths, labels or order differ"):
        FeatureStore(store_path).manifest()

    code, out, _ = clare("verify", str(store_path))
    assert code == 1 and "store is sound" not in out
    expected = "index rows" if forge_markers else "manifest part changed since it was written"
    for index in range(3):
        assert f"damaged shard {index}" in out
    assert expected in out
    # The damaged side (the parts) is never used: every shard is recomputed from the index.
    assert run_extract(cfg, split="train", quiet=True).shards_run == 3
    assert_stores_equal(store_path, reference["store"])
    assert verify_store(store_path).ok


def test_edited_shard_digests_in_store_json_fail_the_index_check(reference: dict, tmp_path: Path) -> None:
    # Everything re-signed except the fingerprint: only its index digest can tell.
    cfg, store_path = _copy(reference, tmp_path)
    _flip_labels(store_path, forge_markers=True)
    store = FeatureStore(store_path)
    from clare.cache.entries import rows_digest

    store.meta["index_shards_sha256"] = [rows_digest(pd.read_parquet(store.part_path(i)))
                                         for i in range(store.n_shards)]
    store.meta["manifest_sha256"] = file_sha256(store.manifest_path)
    StoreWriter(store).save_meta()

    report = verify_store(store_path, repair=False)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert set(failed) == {"index"}, failed
    assert "do not match the layout digest the fingerprint records" in failed["index"]
    assert not report.ok and "--overwrite" in (report.advice() or "")
    # extract trusts the index (it matches the fingerprint), not store.json: it redoes every shard.
    assert run_extract(cfg, split="train", quiet=True).shards_run == 3
    assert_stores_equal(store_path, reference["store"])
    assert verify_store(store_path).ok


def test_finalize_refuses_a_part_that_does_not_match_the_index(
    reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    _flip_labels(store_path, forge_markers=True)
    store = FeatureStore(store_path)
    store.manifest_path.unlink()
    store.meta["shards"]["state"] = "incomplete"
    StoreWriter(store).save_meta()
    # Skip the resume check, as if the parts changed while the run was going.
    monkeypatch.setattr(StoreWriter, "drop_unsound_shards", lambda self: {})
    with pytest.raises(StoreError) as caught:
        run_extract(cfg, split="train", quiet=True)
    assert str(caught.value).startswith(f"{store_path}: shard 0: its rows are not the store's index rows")
    assert "marked for recomputation" in str(caught.value)
    assert not store.manifest_path.exists()  # nothing written from the damaged side
    assert 0 not in FeatureStore(store_path).completed_shards()


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_bit_fails_every_read_naming_store_array_and_shard(
    reference: dict, tmp_path: Path, where: str
) -> None:
    from clare.cache.loader import StoreLoader

    _, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    shard_file = store.shard_files(1)["lare"]
    data = bytearray(shard_file.read_bytes())
    position = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[position] ^= 0x01
    shard_file.write_bytes(bytes(data))

    expected = rf"^{re.escape(str(store_path))}: array lare, shard 1 is damaged \(checksum mismatch on read\); run `clare verify"
    with pytest.raises(StoreError, match=expected):
        FeatureStore(store_path).read("lare", 0, N_IMAGES)
    with pytest.raises(StoreError, match=expected):
        FeatureStore(store_path).read_rows("lare", np.array([9, 7, 4, 6, 5, 2]))
    assert FeatureStore(store_path).read("lare", 0, 4).shape == (4, 4, 32, 32)  # other shards read
    loader = StoreLoader(FeatureStore(store_path), np.arange(N_IMAGES), np.arange(N_IMAGES) % 2,
                         batch_size=4, seed=0, prefetch=2)
    with pytest.raises(StoreError, match=expected):
        list(loader.epoch(0))
    # A head that never reads lare does not meet the damage.
    clean = StoreLoader(FeatureStore(store_path), np.arange(N_IMAGES), np.arange(N_IMAGES) % 2,
                        batch_size=4, seed=0, read_lare=False)
    assert sum(len(batch.rows) for batch in clean.epoch(0)) == N_IMAGES


def test_token_rows_used_in_place_are_the_rows_zarr_decodes(reference: dict) -> None:
    """The loader's tokens come from the mapped shard files (clare.cache.mapped): the values
    zarr decodes, repeated rows included; compressed arrays are never mapped."""
    from clare.cache.loader import StoreLoader

    store = FeatureStore(reference["store"])
    rows = np.array([4, 4, 5, 7])  # shard 1 holds rows 4..7
    mapped = store.mapped_rows("tokens", rows)
    assert mapped is not None and not any(row.flags.writeable for row in mapped)
    assert np.array_equal(np.stack(mapped), store.read_rows("tokens", rows))
    assert store.mapped_rows("lare", rows) is None and store.mapped_rows("cls", rows) is None
    loader = StoreLoader(store, np.arange(N_IMAGES), np.arange(N_IMAGES) % 2, batch_size=5, seed=1,
                         prefetch=0)
    batches = list(loader.epoch(0))
    assert sum(len(batch.rows) for batch in batches) == N_IMAGES
    for batch in batches:
        assert np.array_equal(batch.tokens.numpy(), store.read_rows("tokens", batch.rows))


@pytest.mark.parametrize("where", ["row", "index"])
def test_a_flipped_bit_in_mapped_tokens_fails_the_loader_naming_the_shard(
    reference: dict, tmp_path: Path, where: str
) -> None:
    from clare.cache.loader import StoreLoader

    _, store_path = _copy(reference, tmp_path)
    shard_file = FeatureStore(store_path).shard_files(1)["tokens"]
    data = bytearray(shard_file.read_bytes())
    data[{"row": 10, "index": len(data) - 10}[where]] ^= 0x01
    shard_file.write_bytes(bytes(data))
    store = FeatureStore(store_path)
    assert store.mapped_rows("tokens", np.arange(4, 8)) is None  # declined: zarr reads it
    assert store.mapped_rows("tokens", np.arange(0, 4)) is not None
    loader = StoreLoader(store, np.arange(N_IMAGES), np.arange(N_IMAGES) % 2, batch_size=4, seed=0)
    expected = (rf"^{re.escape(str(store_path))}: array tokens, shard 1 is damaged "
                r"\(checksum mismatch on read\); run `clare verify")
    with pytest.raises(StoreError, match=expected):
        list(loader.epoch(0))


def test_a_missing_shard_file_fails_the_loader_instead_of_dropping_rows(reference: dict, tmp_path: Path) -> None:
    from clare.cache.loader import StoreLoader

    _, store_path = _copy(reference, tmp_path)
    FeatureStore(store_path).shard_files(2)["tokens"].unlink()  # reads back as NaN
    loader = StoreLoader(FeatureStore(store_path), np.arange(N_IMAGES), np.arange(N_IMAGES) % 2,
                         batch_size=4, seed=0, shuffle=False, prefetch=0)
    with pytest.raises(StoreError, match=r"array tokens, row 8 \(shard 2\) holds NaN or inf although "
                                         r"the manifest calls it ok"):
        list(loader.epoch(0))
    report = verify_store(store_path, repair=False)
    assert report.damaged == {2: "tokens: shard file features.zarr/tokens/c/2/0/0 is missing"}


def test_arrays_without_checksums_fail_verify(reference: dict, tmp_path: Path) -> None:
    import zarr

    _, store_path = _copy(reference, tmp_path)
    metadata_file = store_path / "features.zarr" / "cls" / "zarr.json"
    metadata = json.loads(metadata_file.read_text())
    inner = metadata["codecs"][0]["configuration"]["codecs"]
    assert inner[-1]["name"] == "crc32c"
    metadata["codecs"][0]["configuration"]["codecs"] = inner[:-1]
    metadata_file.write_text(json.dumps(metadata))
    assert zarr.open_array(store_path / "features.zarr" / "cls", mode="r").shape[0] == N_IMAGES
    report = verify_store(store_path, repair=False)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert failed["arrays"] == "cls: chunks carry no crc32c checksum"


@pytest.mark.parametrize("old", ["clare-store/1", "clare-store/2"])
def test_old_format_store_is_one_line_naming_format_and_rebuild(clare,
    reference: dict, tmp_path: Path, capsys, monkeypatch, old: str
) -> None:
    from clare.cache.meta import FORMAT

    cfg, store_path = _copy(reference, tmp_path)
    meta = json.loads((store_path / "store.json").read_text())
    meta["format"] = old
    (store_path / "store.json").write_text(json.dumps(meta))
    rebuild = "clare extract --config CONFIG --split train --overwrite"
    for command in ("info", "verify"):
        code, _, err = clare(command, str(store_path))
        line = _one_error_line(err)
        assert code == 2
        assert f"store format {old} is not {FORMAT}" in line and rebuild in line
    from clare.cache.store import open_store

    with pytest.raises(StoreError, match=old):
        open_store(store_path)
    with pytest.raises(StoreError, match=old):
        run_extract(cfg, split="train", quiet=True)
    assert run_extract(cfg, split="train", overwrite=True, quiet=True).shards_run == 3
    assert_stores_equal(store_path, reference["store"])


STORE_JSON_EDITS = {
    "n_rows as text": lambda m: m.update(n_rows="12"),
    "shard_rows null": lambda m: m.update(shard_rows=None),
    "n_rows zero": lambda m: m.update(n_rows=0),
    "shapes without tokens": lambda m: m["shapes"].pop("tokens"),
    "shard state unknown": lambda m: m["shards"].update(state="done"),
    "completed not a list": lambda m: m["shards"].update(completed="0,1,2"),
    "fingerprint a list": lambda m: m.update(fingerprint=[1, 2]),
    "shard digests too short": lambda m: m["index_shards_sha256"].pop(),
    "boolean views": lambda m: m.update(views=True),
}


@pytest.mark.parametrize("edit", list(STORE_JSON_EDITS), ids=list(STORE_JSON_EDITS))
def test_store_json_with_wrong_types_is_one_line(clare,
    reference: dict, tmp_path: Path, edit: str, capsys, monkeypatch
) -> None:
    _, store_path = _copy(reference, tmp_path)
    meta = json.loads((store_path / "store.json").read_text())
    STORE_JSON_EDITS[edit](meta)
    (store_path / "store.json").write_text(json.dumps(meta))
    for command in ("info", "verify"):
        code, _, err = clare(command, str(store_path))
        line = _one_error_line(err)
        assert code == 2 and f"{store_path / 'store.json'}:" in line and "--overwrite" in line


@pytest.mark.parametrize("content", [b"[1, 2]", b"{not json", b"\xff\xfe\x00", b"[" * 100_000],
                         ids=["list", "bad-json", "not-utf8", "deep"])
def test_unreadable_store_json_is_one_line(clare, reference: dict, tmp_path: Path, content: bytes,
                                           capsys, monkeypatch) -> None:
    _, store_path = _copy(reference, tmp_path)
    (store_path / "store.json").write_bytes(content)
    code, _, err = clare("info", str(store_path))
    line = _one_error_line(err)
    assert code == 2 and str(store_path / "store.json") in line and len(line) < 300


@pytest.mark.parametrize("stray", ["notes.json", "00001.json.bak", "README", "00002.parquet/"])
def test_stray_file_in_shards_is_one_line(clare, reference: dict, tmp_path: Path, stray: str,
                                          capsys, monkeypatch) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    target = store_path / "shards" / stray.rstrip("/")
    if stray.endswith("/"):
        target.unlink()
        target.mkdir()
    else:
        target.write_text("hello")
    for command in ("info", "verify"):
        code, _, err = clare(command, str(store_path))
        line = _one_error_line(err)
        assert code == 2 and f"{target}: not a file of this store" in line and "move it out" in line
    with pytest.raises(StoreError, match="not a file of this store"):
        run_extract(cfg, split="train", quiet=True)


def _read_only(monkeypatch: pytest.MonkeyPatch, store_path: Path) -> None:
    """Make every write under the store fail as on a read-only mount (root ignores chmod)."""
    import builtins

    from clare import files as files_module
    from clare.cache import writer as writer_module

    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and str(file).startswith(str(store_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_unlink(self, missing_ok=False):
        if str(self).startswith(str(store_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    def guarded_lock(path, error):  # the lock file is opened by os.open (never via a link)
        if str(path).startswith(str(store_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_lock(path, error)

    real_unlink = Path.unlink
    real_lock = files_module.open_lock_file
    monkeypatch.setattr(writer_module, "open_lock_file", guarded_lock)
    monkeypatch.setattr(writer_module, "open", guarded_open, raising=False)
    monkeypatch.setattr(files_module, "open", guarded_open, raising=False)
    monkeypatch.setattr(Path, "unlink", guarded_unlink)


def test_read_only_store_is_read_and_verified_but_never_written(clare,
    reference: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    from clare.cache.loader import StoreLoader
    from clare.cache.store import open_store

    cfg, store_path = _copy(reference, tmp_path)
    _flip_bytes(FeatureStore(store_path).shard_files(1)["cls"])
    before = {p: p.stat().st_mtime_ns for p in store_path.rglob("*") if p.is_file()}
    _read_only(monkeypatch, store_path)

    store = open_store(store_path)  # fit and eval read a read-only store
    ok = store.manifest()
    loader = StoreLoader(store, ok["row"].to_numpy()[:4], ok["label"].to_numpy()[:4], batch_size=4, seed=0)
    assert sum(len(b.rows) for b in loader.epoch(0)) == 4

    code, out, _ = clare("verify", str(store_path))
    assert code == 1 and "damaged shard 1" in out and "read-only, so nothing was marked" in out
    with pytest.raises(StoreError) as caught:
        run_extract(cfg, split="train", overwrite=True, quiet=True)
    assert str(caught.value) == (
        f"{store_path}: cannot write to the store (Read-only file system); make it writable, "
        "or point paths.stores at a writable folder"
    )
    after = {p: p.stat().st_mtime_ns for p in store_path.rglob("*") if p.is_file()}
    assert after == before


def test_shards_swapped_within_a_store_are_both_damaged(reference: dict, tmp_path: Path) -> None:
    cfg, store_path = _copy(reference, tmp_path)
    store = FeatureStore(store_path)
    pairs = [*zip(store.shard_files(0).values(), store.shard_files(1).values(), strict=True),
             (store.marker_path(0), store.marker_path(1)), (store.part_path(0), store.part_path(1))]
    for first, second in pairs:
        swap = first.with_name(first.name + ".swap")
        first.rename(swap)
        second.rename(first)
        swap.rename(second)
    report = verify_store(store_path)
    assert report.damaged == {0: "marker does not describe this shard's rows",
                              1: "marker does not describe this shard's rows"}
    assert run_extract(cfg, split="train", quiet=True).shards_run == 2
    assert_stores_equal(store_path, reference["store"])
