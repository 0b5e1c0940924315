"""clare.fingerprint: one rule for what must agree, compared by content, described in one line."""

from __future__ import annotations

import copy

import pytest

from clare import fingerprint as fp
from clare.errors import FingerprintError, StoreError


def _store_fp() -> dict:
    return {
        "weights": {
            "sd": {"pretrained": "org/sd15", "revision": None,
                   "files": {"unet/w.safetensors": "aa" * 32, "vae/w.safetensors": "bb" * 32}},
            "clip": {"model": "ViT-L-14", "pretrained": "/w/clip.bin", "sha256": "cc" * 32,
                     "model_config_sha256": None},
        },
        "lare": {"timestep": 200, "ensemble": 4, "image_size": 256, "prompt": "a photo of a face"},
        "clip": {"model": "ViT-L-14", "pretrained": "/w/clip.bin", "preprocess": "default"},
        "precision": "fp32",
        "views": 1,
        "augment": None,
        "perturb": None,
        "decode": {"min_image_size": 8, "max_image_pixels": 1000},
        "seed": 0,
        "index_sha256": "dd" * 32,
        "clare_version": "0.1.0",
    }


def test_equal_fingerprints_have_equal_digests_and_no_differences() -> None:
    a, b = _store_fp(), _store_fp()
    assert fp.digest(a) == fp.digest(b)
    assert fp.differences(a, b, fp.STORE) == []
    b["seed"] = 1
    assert fp.digest(a) != fp.digest(b)
    assert fp.differences(a, b, fp.STORE) == ["seed"]


def test_scopes_decide_what_must_agree() -> None:
    train, test = _store_fp(), _store_fp()
    test["index_sha256"] = "ee" * 32  # other rows
    test["perturb"] = "jpeg=50"
    assert fp.differences(train, test, fp.FEATURES) == []  # a head may read another store's rows
    assert fp.differences(train, test, fp.STORE) == ["index_sha256", "perturb"]
    test["lare"]["timestep"] = 500
    assert fp.differences(train, test, fp.FEATURES) == ["lare.timestep"]
    assert fp.differences(train, test, fp.CLIP) == []  # scoring needs only the same CLIP


def test_changed_clip_file_is_a_difference_in_every_scope() -> None:
    before, after = _store_fp(), _store_fp()
    after["weights"]["clip"]["sha256"] = "ff" * 32
    for scope in (fp.STORE, fp.FEATURES, fp.CLIP):
        assert fp.differences(before, after, scope) == ["weights.clip.sha256"]


def test_same_files_from_another_location_agree() -> None:
    hub, local = _store_fp(), _store_fp()
    local["weights"]["sd"]["pretrained"] = "weights/sd15"
    local["weights"]["clip"]["pretrained"] = "weights/clip/open_clip_model.safetensors"
    local["clip"]["pretrained"] = "weights/clip/open_clip_model.safetensors"
    assert fp.differences(hub, local, fp.FEATURES) == []


def test_without_hashes_the_identifiers_are_compared() -> None:
    a, b = _store_fp(), _store_fp()
    for side in (a, b):
        side["weights"]["clip"]["sha256"] = None
        side["weights"]["sd"]["files"] = {}
    b["weights"]["clip"]["pretrained"] = "laion2b"
    b["clip"]["pretrained"] = "laion2b"
    b["weights"]["sd"]["revision"] = "abc"
    assert fp.differences(a, b, fp.FEATURES) == [
        "clip.pretrained", "weights.clip.pretrained", "weights.sd.revision"]


def test_a_missing_part_is_a_difference() -> None:
    a, b = _store_fp(), _store_fp()
    del b["lare"]
    assert "lare.timestep" in fp.differences(a, b, fp.FEATURES)


def test_require_match_raises_one_bounded_line_naming_both_sides_and_the_fix() -> None:
    a, b = _store_fp(), _store_fp()
    b["lare"]["prompt"] = "x" * 10_000
    b["lare"]["timestep"] = 500
    b["precision"] = "bf16"
    b["decode"]["max_image_pixels"] = 5
    with pytest.raises(FingerprintError) as caught:
        fp.require_match(a, b, fp.FEATURES, expected_name="run runs/demo",
                         actual_name="store stores/test", fix="re-extract with the run's config")
    message = str(caught.value)
    assert isinstance(caught.value, StoreError)  # exit code 2 like every store problem
    assert "\n" not in message and len(message) < 400
    assert message.startswith("store stores/test differs from run runs/demo in ")
    assert "lare.timestep 200 vs 500" in message and "and 1 more" in message
    assert message.endswith("re-extract with the run's config")


def test_comparable_does_not_modify_its_input() -> None:
    a = _store_fp()
    kept = copy.deepcopy(a)
    fp.comparable(a)
    fp.differences(a, _store_fp())
    assert a == kept


def test_summary_shortens_hashes() -> None:
    summary = fp.summary(_store_fp())
    assert summary["clip_sha256"] == "cc" * 6
    assert summary["sd_files"].startswith("2 files, digest ")
    assert summary["lare"]["timestep"] == 200
