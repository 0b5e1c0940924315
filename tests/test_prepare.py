"""DF40 index (`clare.data.df40`) and the `clare prepare` stage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from clare.config import Config
from clare.config_files import load_config
from clare.data.df40 import DataIndexError, build_index, sample_frame_indices
from clare.errors import DataError
from clare.stages.prepare import run_prepare

REPO = Path(__file__).resolve().parents[1]
PREFIX = "deepfakes_detection_datasets/"
DEMO_TRAIN = ["DiT_ff", "StyleGAN2_ff", "sd2.1_ff"]
DEMO_TEST = ["DiT_cdf", "StyleGAN2_cdf", "sd2.1_cdf", "heygen", "whichisreal"]


def _config(root: Path, lists_dir: Path | None, train: list[Any] = (), test: list[Any] = (),
            **data: Any) -> Config:
    tree = {
        "data": {
            "root": str(root),
            "lists_dir": None if lists_dir is None else str(lists_dir),
            "index_dir": str(root.parent / "index"),
            "train": list(train),
            "test": list(test),
            **data,
        }
    }
    return Config.model_validate(tree)


def _png(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (120, 90, 60)).save(path)
    return path


def _write_list(lists_dir: Path, stem: str, videos: dict[str, dict[str, list[str]]],
                splits: tuple[str, ...] = ("train",), top: str | None = None) -> Path:
    """videos: label_name -> {video_id: [frame paths as listed]}, listed under each split."""
    body = {
        label: {
            split: {vid: {"label": label, "frames": frames} for vid, frames in vids.items()}
            for split in splits
        }
        for label, vids in videos.items()
    }
    lists_dir.mkdir(parents=True, exist_ok=True)
    path = lists_dir / f"{stem}.json"
    path.write_text(json.dumps({top or stem: body}), encoding="utf-8")
    return path


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    """root/ with two real and two fake videos of 3 frames each; lists go to tmp/lists."""
    root = tmp_path / "root"
    for kind in ("real", "fake"):
        for vid in ("v0", "v1"):
            for n in range(3):
                _png(root / kind / vid / f"{n:03d}.png")
    return root


def _tiny_list(root: Path, stem: str = "mini") -> Path:
    return _write_list(root.parent / "lists", stem, {
        f"{stem}_Real": {v: [f"{PREFIX}real/{v}/{n:03d}.png" for n in range(3)] for v in ("v0", "v1")},
        f"{stem}_Fake": {v: [f"{PREFIX}fake/{v}/{n:03d}.png" for n in range(3)] for v in ("v0", "v1")},
    }, splits=("train", "val", "test"))


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["demo.yaml", "df40.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    if name == "demo.yaml":
        assert [s.name for s in cfg.data.train] == DEMO_TRAIN
        assert [s.name for s in cfg.data.test] == DEMO_TEST
        assert cfg.demo is not None and cfg.demo.data_out == Path("data/demo")
        assert cfg.data.root == Path("data/demo") and cfg.data.on_missing == "skip"
    else:
        assert len(cfg.data.train) == 10 and all(s.name.endswith("_ff") for s in cfg.data.train)
        assert len(cfg.data.test) == 17
        # OpenAI's CLIP weights as a local file need QuickGELU; fp32 as the LaRE² reference.
        assert cfg.models.clip.model == "ViT-L-14-quickgelu" and cfg.extract.precision == "fp32"


# --------------------------------------------------------------------------- demo index


def test_demo_index_counts_planted_traps(demo_data_dir: Path) -> None:
    cfg = _config(demo_data_dir, demo_data_dir / "lists", DEMO_TRAIN, DEMO_TEST)
    train, train_checks = build_index(cfg, "train")
    test, test_checks = build_index(cfg, "test")
    checks = {c.subset: c for c in train_checks + test_checks}

    assert list(train.columns) == ["path", "subset", "label", "video", "frame", "split"]
    assert str(train["label"].dtype) == "int8" and str(train["frame"].dtype) == "int32"
    for column in ("path", "subset", "video", "split"):
        assert pd.api.types.is_string_dtype(train[column]), column

    assert checks["StyleGAN2_ff"].missing == 1 and checks["StyleGAN2_ff"].found == 39
    assert checks["sd2.1_ff"].empty_folders == 1 and checks["sd2.1_ff"].found == 36
    assert checks["sd2.1_ff"].missing == 0  # frames of an empty folder are not double-counted
    assert checks["DiT_ff"].unreadable == 1 and checks["DiT_ff"].found == 40
    assert checks["whichisreal"].duplicates == 4 and checks["whichisreal"].found == 48
    for check in checks.values():
        assert check.real + check.fake == check.found
        assert check.rejected == 0 and check.unknown_labels == 0
        assert (train["subset"] == check.subset).sum() + (test["subset"] == check.subset).sum() == check.found

    # Dropped frames are not in the index; every indexed path exists.
    assert all((demo_data_dir / p).is_file() for p in pd.concat([train, test])["path"])
    # A train index holds train videos only (fake val/test ids 005..007 are held out; reals
    # come from a window per method, so real 005..007 may be a neighbouring list's train video).
    fakes = train[train["label"] == 1]
    assert not fakes["video"].str.contains("/00[5-7]", regex=True).any()
    assert set(train["split"]) == {"train"} and set(test["split"]) == {"test"}
    # Deterministic.
    again, _ = build_index(cfg, "train")
    pd.testing.assert_frame_equal(train, again)


def test_on_missing_error_names_subset_count_and_path(demo_data_dir: Path) -> None:
    cfg = _config(demo_data_dir, demo_data_dir / "lists", ["StyleGAN2_ff"], on_missing="error")
    with pytest.raises(DataError, match=r"StyleGAN2_ff.*1 listed frames.*000_100/003\.jpg"):
        build_index(cfg, "train")


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "entry",
    [f"{PREFIX}../../etc/passwd", "/etc/passwd", f"{PREFIX}real/v0/../../../outside.png"],
    ids=["dotdot", "absolute", "dotdot-inside"],
)
def test_paths_leaving_the_root_are_refused(tiny_tree: Path, entry: str) -> None:
    lists = tiny_tree.parent / "lists"
    _write_list(lists, "evil", {"evil_Real": {"v0": [f"{PREFIX}real/v0/000.png", entry]}})
    cfg = _config(tiny_tree, lists, ["evil"])
    with pytest.raises(DataIndexError, match=r"evil\.json.*leave data\.root") as caught:
        build_index(cfg, "train")
    assert entry.removeprefix(PREFIX) in str(caught.value)
    assert caught.value.checks[0].rejected == 1


def test_prefix_map_cannot_be_used_to_escape(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    _write_list(lists, "evil", {"evil_Real": {"v0": ["data/real/v0/000.png"]}})
    cfg = _config(tiny_tree, lists, ["evil"], prefix_map={"data/": "../"})
    with pytest.raises(DataError, match="leave data.root"):
        build_index(cfg, "train")


def test_symlink_out_of_the_root_is_refused(tiny_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _png(outside / "000.png")
    os.symlink(outside, tiny_tree / "real" / "linked")
    lists = tiny_tree.parent / "lists"
    _write_list(lists, "evil", {"evil_Real": {"v0": [f"{PREFIX}real/linked/000.png"]}})
    with pytest.raises(DataError, match=r"evil\.json.*real/linked/000\.png"):
        build_index(_config(tiny_tree, lists, ["evil"]), "train")


def test_unknown_label_names_the_label_and_the_fix(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    _write_list(lists, "odd", {
        "odd_Real": {"v0": [f"{PREFIX}real/v0/000.png"]},
        "odd_Synthetic": {"v0": [f"{PREFIX}fake/v0/000.png", f"{PREFIX}fake/v0/001.png"]},
    })
    cfg = _config(tiny_tree, lists, ["odd"])
    with pytest.raises(DataIndexError, match=r"odd_Synthetic.*odd\.json.*data\.label_map") as caught:
        build_index(cfg, "train")
    assert caught.value.checks[0].unknown_labels == 2

    cfg = _config(tiny_tree, lists, ["odd"], label_map={"odd_Synthetic": 1})
    index, checks = build_index(cfg, "train")
    assert index["label"].tolist() == [0, 1, 1] and checks[0].unknown_labels == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], r"top level expected a mapping"),
        ({"a": {}, "b": {}}, r"top-level key 'broken'.*missing"),
        ({"broken": {"x_Real": {"test": {}}}}, r"'broken/x_Real' has no 'train' split"),
        ({"broken": {"x_Real": {"train": {"v": {"label": "x_Real", "frames": "a.png"}}}}},
         r"'broken/x_Real/train/v'/frames expected a list"),
        ({"broken": {"x_Real": {"train": ["v"]}}}, r"'broken/x_Real/train' expected a mapping"),
    ],
    ids=["list-top", "several-top-keys", "no-split", "frames-not-list", "videos-not-mapping"],
)
def test_wrong_list_structure_names_the_file(tiny_tree: Path, content: Any, message: str) -> None:
    lists = tiny_tree.parent / "lists"
    lists.mkdir()
    (lists / "broken.json").write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json.*" + message):
        build_index(_config(tiny_tree, lists, ["broken"]), "train")


def test_invalid_json_and_missing_list_are_errors(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    lists.mkdir()
    (lists / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON \(line 1"):
        build_index(_config(tiny_tree, lists, ["bad"]), "train")
    with pytest.raises(DataError, match=r"nothere\.json: list for subset 'nothere' not found"):
        build_index(_config(tiny_tree, lists, ["nothere"]), "train")


def test_single_mismatched_top_key_is_accepted_and_noted(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    _write_list(lists, "renamed", {"x_Real": {"v0": [f"{PREFIX}real/v0/000.png"]}}, top="other")
    index, checks = build_index(_config(tiny_tree, lists, ["renamed"]), "train")
    assert len(index) == 1
    assert any("top key 'other'" in note for note in checks[0].notes)


# --------------------------------------------------------------------------- sampling and more


def test_sample_frame_indices_even_ordered_deterministic() -> None:
    assert sample_frame_indices(10, 4) == [0, 3, 6, 9]
    assert sample_frame_indices(32, 8) == [0, 4, 9, 13, 18, 22, 27, 31]
    assert sample_frame_indices(3, 8) == [0, 1, 2]
    assert sample_frame_indices(5, 5) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(0, 4) == []
    assert sample_frame_indices(100, 1) == [0]


def test_frames_per_video_sampling_keeps_listed_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # Listed out of name order on purpose: the index must follow the list, not the disk.
    names = [f"{n:03d}.png" for n in (9, 8, 7, 6, 5, 4, 3, 2, 1, 0)]
    for name in names:
        _png(root / "fake" / "v" / name)
    lists = tmp_path / "lists"
    _write_list(lists, "s", {"s_Fake": {"v": [f"{PREFIX}fake/v/{n}" for n in names]}}, splits=("test",))
    cfg = _config(root, lists, test=["s"], frames_per_video={"train": 2, "test": 4})
    index, checks = build_index(cfg, "test")
    assert index["frame"].tolist() == [0, 3, 6, 9]
    assert index["path"].tolist() == [f"fake/v/{names[i]}" for i in (0, 3, 6, 9)]
    assert index["video"].unique().tolist() == ["s_Fake/v"]
    assert checks[0].listed == 4 and checks[0].found == 4


def test_sample_frame_indices_first_takes_the_list_head() -> None:
    assert sample_frame_indices(10, 4, "first") == [0, 1, 2, 3]
    assert sample_frame_indices(3, 8, "first") == [0, 1, 2]
    assert sample_frame_indices(10, 4, "even") == sample_frame_indices(10, 4) == [0, 3, 6, 9]


def test_frame_sampling_first_keeps_the_first_listed_frames(tmp_path: Path) -> None:
    root = tmp_path / "root"
    names = [f"{n:03d}.png" for n in (9, 8, 7, 6, 5, 4, 3, 2, 1, 0)]
    for name in names:
        _png(root / "fake" / "v" / name)
        _png(root / "folder" / "real" / "v" / name)
    lists = tmp_path / "lists"
    _write_list(lists, "s", {"s_Fake": {"v": [f"{PREFIX}fake/v/{n}" for n in names]}}, splits=("test",))
    cfg = _config(root, lists, test=["s", {"name": "f", "folder": "folder"}],
                  frames_per_video={"train": 2, "test": 4}, frame_sampling="first")
    index, _checks = build_index(cfg, "test")
    listed = index[index["subset"] == "s"]
    # The first four in list order (not in name order), as DeepfakeBench takes them.
    assert listed["path"].tolist() == [f"fake/v/{n}" for n in names[:4]]
    assert listed["frame"].tolist() == [0, 1, 2, 3]
    # A folder's frames are listed by name: the first four names.
    assert index[index["subset"] == "f"]["path"].tolist() == [
        f"folder/real/v/{n:03d}.png" for n in range(4)]
    assert Config.model_validate({"data": {"root": "x"}}).data.frame_sampling == "even"
    with pytest.raises(ValueError, match="frame_sampling"):
        _config(root, lists, test=["s"], frame_sampling="random")


def test_duplicates_within_a_subset_are_counted_and_kept_once(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    frames = [f"{PREFIX}real/v0/{n:03d}.png" for n in range(3)]
    _write_list(lists, "dup", {"dup_Real": {"v0": frames, "v0_again": frames}})
    index, checks = build_index(_config(tiny_tree, lists, ["dup"]), "train")
    assert checks[0].duplicates == 3 and len(index) == 3
    assert set(index["video"]) == {"dup_Real/v0"}


def test_reals_listed_by_two_subsets_are_entries_of_one_image_each(tiny_tree: Path, capsys) -> None:
    lists = tiny_tree.parent / "lists"
    _tiny_list(tiny_tree, "one")
    _tiny_list(tiny_tree, "two")  # the same real and fake frames again, as DF40's reals
    index, checks = build_index(_config(tiny_tree, lists, ["one", "two"]), "train")
    assert len(index) == 24 and index["path"].nunique() == 12  # both lists keep their entries
    assert [(c.found, c.shared) for c in checks] == [(12, 0), (12, 12)]
    cfg = _config(tiny_tree, lists, ["one", "two"], ["one"])
    run_prepare(cfg)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "extractions saved" in out and "distinct images" in out
    assert "train: 24 entries, 12 distinct images: 12 extractions saved (50.0%)" in out


def test_one_image_listed_as_real_and_as_fake_is_an_error_or_dropped(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    _tiny_list(tiny_tree, "one")
    _write_list(lists, "liar", {  # lists one of one's real frames as fake
        "liar_Fake": {"v9": [f"{PREFIX}real/v0/000.png", f"{PREFIX}fake/v1/000.png"]}})
    with pytest.raises(DataIndexError) as caught:
        build_index(_config(tiny_tree, lists, ["one", "liar"]), "train")
    message = str(caught.value)
    assert message.startswith("real/v0/000.png is listed as real by one (")
    assert f"as fake by liar ({lists / 'liar.json'})" in message
    assert "data.on_label_conflict: skip" in message

    index, checks = build_index(_config(tiny_tree, lists, ["one", "liar"],
                                        on_label_conflict="skip"), "train")
    assert "real/v0/000.png" not in set(index["path"])
    assert [c.label_conflicts for c in checks] == [1, 1]
    assert [(c.found, c.real, c.fake) for c in checks] == [(11, 5, 6), (1, 0, 1)]


def test_one_list_naming_an_image_real_and_fake_is_a_label_conflict(tiny_tree: Path) -> None:
    """The same frame under both labels of one list is not a duplicate to drop silently
    (keeping whichever label came first): it is a label conflict, refused or dropped."""
    lists = tiny_tree.parent / "lists"
    frame = f"{PREFIX}real/v0/000.png"
    _write_list(lists, "torn", {"torn_Real": {"v0": [frame, f"{PREFIX}real/v0/001.png"]},
                                "torn_Fake": {"v9": [frame]}})
    with pytest.raises(DataIndexError, match=r"real/v0/000.png is listed as real by torn \("):
        build_index(_config(tiny_tree, lists, ["torn"]), "train")
    index, checks = build_index(_config(tiny_tree, lists, ["torn"], on_label_conflict="skip"),
                                "train")
    assert index["path"].tolist() == ["real/v0/001.png"]
    assert (checks[0].label_conflicts, checks[0].duplicates, checks[0].found) == (2, 0, 1)


def test_folder_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for n in range(5):
        _png(root / "mine" / "real" / "clip1" / f"{n}.png")
    _png(root / "mine" / "fake" / "a.jpg")  # loose files: one video each
    _png(root / "mine" / "fake" / "b.png")
    (root / "mine" / "fake" / "notes.txt").write_text("not an image")
    (root / "mine" / "fake" / "empty_video").mkdir()
    cfg = _config(root, None, test=[{"name": "mine", "folder": "mine"}],
                  frames_per_video={"train": 2, "test": 3})
    index, checks = build_index(cfg, "test")
    assert index["path"].tolist() == ["mine/real/clip1/0.png", "mine/real/clip1/2.png",
                                      "mine/real/clip1/4.png", "mine/fake/a.jpg", "mine/fake/b.png"]
    assert index["label"].tolist() == [0, 0, 0, 1, 1]
    assert index["video"].tolist() == ["real/clip1"] * 3 + ["fake/a", "fake/b"]
    assert checks[0].empty_folders == 1 and (checks[0].real, checks[0].fake) == (3, 2)

    with pytest.raises(DataError, match=r"nothing.*real/ and/or fake/"):
        build_index(_config(root, None, test=[{"name": "x", "folder": "nothing"}]), "test")


# --------------------------------------------------------------------------- run_prepare


def test_run_prepare_writes_parquet_and_checks(tiny_tree: Path, capsys) -> None:
    _tiny_list(tiny_tree, "mini")
    _tiny_list(tiny_tree, "other")
    cfg = _config(tiny_tree, tiny_tree.parent / "lists", ["mini"], ["other"])
    written = run_prepare(cfg)
    index_dir = tiny_tree.parent / "index"
    assert written == {"train": index_dir / "train.parquet", "test": index_dir / "test.parquet"}

    train = pd.read_parquet(written["train"])
    assert list(train.columns) == ["path", "subset", "label", "video", "frame", "split"]
    assert str(train["label"].dtype) == "int8" and str(train["frame"].dtype) == "int32"
    assert pd.api.types.is_string_dtype(train["path"])
    assert len(train) == 12 and train["label"].sum() == 6
    assert train["path"].iloc[0] == "real/v0/000.png"

    checks = json.loads((index_dir / "checks.json").read_text())
    assert checks["train"]["mini"]["found"] == 12 and checks["test"]["other"]["real"] == 6
    assert not list(index_dir.glob("*.partial"))
    table = capsys.readouterr().err
    assert "mini" in table and "empty folders" in table and "unreadable headers" in table

    # Preparing one split keeps the other's checks; a failing run leaves the index whole.
    run_prepare(cfg, splits=("test",))
    assert set(json.loads((index_dir / "checks.json").read_text())) == {"train", "test"}
    before = written["train"].read_bytes()
    (tiny_tree.parent / "lists" / "mini.json").write_text("[]")
    with pytest.raises(DataError):
        run_prepare(cfg)
    assert written["train"].read_bytes() == before


def test_run_prepare_refuses_missing_inputs_and_empty_splits(tiny_tree: Path) -> None:
    lists = tiny_tree.parent / "lists"
    with pytest.raises(DataError, match=r"data\.root .*nope does not exist; point it at"):
        run_prepare(_config(tiny_tree.parent / "nope", lists, ["mini"], ["mini"]))
    with pytest.raises(DataError, match=r"data\.lists_dir .*lists does not exist"):
        run_prepare(_config(tiny_tree, lists, ["mini"], ["mini"]))
    _tiny_list(tiny_tree, "mini")
    with pytest.raises(DataError, match=r"split 'test' has no subsets.*data\.test"):
        run_prepare(_config(tiny_tree, lists, ["mini"], []))
    # Everything listed is missing: the split is empty.
    _write_list(lists, "ghost", {"ghost_Real": {"v": [f"{PREFIX}real/none/000.png"]}})
    with pytest.raises(DataError, match=r"split 'train': no images found.*data\.train"):
        run_prepare(_config(tiny_tree, lists, ["ghost"], ["mini"]))


def test_run_prepare_builds_demo_inputs_once(demo_data_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import clare.data.demo
    import clare.models.tiny

    calls: list[tuple[str, Path, int]] = []

    def fake_demo(out: Path, seed: int = 0):
        calls.append(("data", out, seed))
        shutil.copytree(demo_data_dir, out, dirs_exist_ok=True)  # prepare made it, marked
        return clare.data.demo.DemoSummary(0, 0, out, out / "lists")

    def fake_models(out: Path, seed: int = 0):
        calls.append(("models", out, seed))
        out.mkdir(parents=True)
        return {}

    monkeypatch.setattr(clare.data.demo, "write_demo_dataset", fake_demo)
    monkeypatch.setattr(clare.models.tiny, "build_tiny_models", fake_models)
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "seed=3",
        f"demo.data_out={tmp_path / 'data'}",
        f"demo.models_out={tmp_path / 'models'}",
        f"data.root={tmp_path / 'data'}",
        f"data.lists_dir={tmp_path / 'data' / 'lists'}",
        f"data.index_dir={tmp_path / 'index'}",
    ])
    written = run_prepare(cfg)
    assert [(kind, seed) for kind, _, seed in calls] == [("models", 3), ("data", 3)]
    # The demo tree is written next to its target and renamed, never in place.
    assert calls[1][1] != tmp_path / "data" and (tmp_path / "data" / "lists").is_dir()
    assert not list(tmp_path.glob("*.partial"))
    test = pd.read_parquet(written["test"])
    assert list(dict.fromkeys(test["subset"])) == DEMO_TEST

    run_prepare(cfg)  # inputs exist now: nothing is rebuilt
    assert len(calls) == 2
