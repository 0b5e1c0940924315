"""The synthetic mini-DF40: layout and list format, reproducibility, learnable artifact."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clare.data.demo import (
    KNOWN_METHODS,
    LIST_PATH_PREFIX,
    PLANTED_TRAPS,
    UNKNOWN_METHODS,
    write_demo_dataset,
)

KNOWN_STEMS = [f"{m}_{d}" for m in KNOWN_METHODS for d in ("ff", "cdf")]
ALL_STEMS = KNOWN_STEMS + list(UNKNOWN_METHODS)


def _load(root: Path, stem: str) -> dict:
    return json.loads((root / "lists" / f"{stem}.json").read_text(encoding="utf-8"))


def _local(root: Path, listed: str) -> Path:
    assert listed.startswith(LIST_PATH_PREFIX), listed
    return root / listed[len(LIST_PATH_PREFIX):]


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_lists_follow_deepfakebench_format(demo_data_dir: Path) -> None:
    lists = sorted(p.stem for p in (demo_data_dir / "lists").glob("*.json"))
    assert lists == sorted(ALL_STEMS)
    for stem in ALL_STEMS:
        tree = _load(demo_data_dir, stem)
        assert list(tree) == [stem]
        assert sorted(tree[stem]) == sorted([f"{stem}_Real", f"{stem}_Fake"])
        expected_splits = ["test"] if stem in UNKNOWN_METHODS else ["test", "train", "val"]
        for label_name, splits in tree[stem].items():
            assert sorted(splits) == expected_splits
            for videos in splits.values():
                assert videos, f"{stem}/{label_name} has an empty split"
                for entry in videos.values():
                    assert entry["label"] == label_name
                    assert isinstance(entry["frames"], list) and entry["frames"]
                    assert all(f.startswith(LIST_PATH_PREFIX) for f in entry["frames"])
        if stem in KNOWN_STEMS:
            # DF40 trap reproduced: val equals test; train is disjoint from both.
            for splits in tree[stem].values():
                assert splits["val"] == splits["test"]
                assert not set(splits["train"]) & set(splits["test"])


def test_files_sit_in_df40_layout(demo_data_dir: Path) -> None:
    real_roots = {
        "ff": "FaceForensics++/original_sequences/youtube/c23/frames/",
        "cdf": "Celeb-DF-v2/Celeb-real/frames/",
    }
    fake_sizes, fake_exts = set(), set()
    for stem in ALL_STEMS:
        method, _, domain = stem.rpartition("_") if stem in KNOWN_STEMS else (stem, "", "")
        for label_name, splits in _load(demo_data_dir, stem)[stem].items():
            for entry in (e for videos in splits.values() for e in videos.values()):
                for listed in entry["frames"]:
                    rel = listed[len(LIST_PATH_PREFIX):]
                    is_real = label_name.endswith("_Real")
                    if stem in KNOWN_STEMS:
                        prefix = real_roots[domain] if is_real else f"DF40/{method}/{domain}/"
                    else:
                        prefix = f"DF40/{method}/{'real' if is_real else 'fake'}/"
                    assert rel.startswith(prefix), (stem, rel)
                    path = demo_data_dir / rel
                    if not path.is_file():
                        continue  # a planted trap, checked below
                    try:
                        with Image.open(path) as image:
                            size, fmt = image.size, image.format
                    except OSError:
                        continue  # the planted unreadable frame
                    assert size[0] == size[1] and 256 <= size[0] <= 512
                    if is_real:
                        assert (size, fmt, path.suffix) == ((256, 256), "PNG", ".png")
                    else:
                        fake_sizes.add(size[0])
                        fake_exts.add(path.suffix)
                        assert fmt == ("PNG" if path.suffix == ".png" else "JPEG")
    # Fakes come in mixed sizes and formats, as in DF40.
    assert fake_sizes == {256, 384, 512}
    assert fake_exts == {".png", ".jpg", ".jpeg"}


def test_planted_traps_are_present(demo_data_dir: Path) -> None:
    def fake_train_videos(stem: str) -> list[dict]:
        return list(_load(demo_data_dir, stem)[stem][f"{stem}_Fake"]["train"].values())

    stem = PLANTED_TRAPS["missing_frame"][0]
    frames = [_local(demo_data_dir, f) for f in fake_train_videos(stem)[0]["frames"]]
    assert [p.is_file() for p in frames] == [True, True, True, False]

    stem = PLANTED_TRAPS["empty_folder"][0]
    frames = [_local(demo_data_dir, f) for f in fake_train_videos(stem)[4]["frames"]]
    assert len(frames) == 4 and frames[0].parent.is_dir()
    assert not any(frames[0].parent.iterdir())

    stem = PLANTED_TRAPS["unreadable_header"][0]
    bad = _local(demo_data_dir, fake_train_videos(stem)[1]["frames"][2])
    assert bad.is_file()
    with pytest.raises(OSError):
        Image.open(bad)

    stem = PLANTED_TRAPS["duplicate_video"][0]
    reals = _load(demo_data_dir, stem)[stem][f"{stem}_Real"]["test"]
    assert reals["000_dup"]["frames"] == reals["000"]["frames"]


def test_same_seed_writes_identical_bytes_and_rerun_is_idempotent(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    reference = _hashes(demo_data_dir)
    out = tmp_path / "again"
    summary = write_demo_dataset(out, seed=0)
    assert _hashes(out) == reference
    # Rerunning over an existing tree rewrites the same bytes and keeps the traps.
    write_demo_dataset(out, seed=0)
    assert _hashes(out) == reference

    assert summary.root == out and summary.lists_dir == out / "lists"
    assert summary.n_lists == len(ALL_STEMS)
    images = [p for p in out.rglob("*") if p.suffix in {".png", ".jpg", ".jpeg"}]
    assert summary.n_images == len(images) - 1  # less the planted unreadable file
    assert 250 <= summary.n_images <= 600


def test_other_seed_changes_the_images(tmp_path: Path) -> None:
    from clare.data.demo import _render_face

    a, b = (_render_face(seed, "real/ff/000", 0, 256) for seed in (0, 1))
    assert np.abs(a - b).mean() > 5.0


# --------------------------------------------------------------------------- learnability


def _welch_spectrum(path: Path, degrade: bool) -> np.ndarray:
    """Log magnitude spectrum averaged over 16-px tiles: a generic, linear-probe feature."""
    image = Image.open(path).convert("RGB").resize((256, 256), Image.BICUBIC)
    if degrade:  # what CLIP's centre crop and a JPEG re-save do to the artifact
        image = image.crop((16, 16, 240, 240))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        image = Image.open(buffer)
    grey = np.asarray(image.convert("L"), np.float32)
    n = grey.shape[0] // 16 * 16
    tiles = grey[:n, :n].reshape(n // 16, 16, n // 16, 16).transpose(0, 2, 1, 3).reshape(-1, 16, 16)
    tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
    return np.log(np.abs(np.fft.rfft2(tiles)).mean(axis=0) + 1e-3).ravel()


def _features(root: Path, stems: list[str], split: str, degrade: bool) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for stem in stems:
        for label_name, splits in _load(root, stem)[stem].items():
            for entry in splits[split].values():
                for listed in entry["frames"]:
                    try:
                        features.append(_welch_spectrum(_local(root, listed), degrade))
                    except OSError:
                        continue  # planted traps
                    labels.append(int(label_name.endswith("_Fake")))
    return np.stack(features), np.asarray(labels)


@pytest.mark.parametrize("degrade", [False, True], ids=["clean", "crop224-jpeg75"])
def test_artifact_is_learnable_on_held_out_videos(demo_data_dir: Path, degrade: bool) -> None:
    ff = [s for s in KNOWN_STEMS if s.endswith("_ff")]
    cdf = [s for s in KNOWN_STEMS if s.endswith("_cdf")]
    x_train, y_train = _features(demo_data_dir, ff, "train", degrade)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    probe.fit(x_train, y_train)
    # Trained on FF++-domain train videos; scored on unseen test videos of both domains.
    for stems in (ff, cdf):
        x_test, y_test = _features(demo_data_dir, stems, "test", degrade)
        assert 0 < y_test.mean() < 1
        auc = roc_auc_score(y_test, probe.decision_function(x_test))
        assert auc >= 0.95, (stems, auc)
