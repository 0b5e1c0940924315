"""`clare predict`: scores equal eval's, inputs, failed rows, threshold, videos, explain.

One module-scoped world: tiny models, 16 generated images, a train and a test store, a
10-step fit and one evaluation; every test predicts with that run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers_extract import make_config, make_image_tree

from clare.config import Config
from clare.errors import ConfigError, DataError, FingerprintError, RunError
from clare.runs import read_run
from clare.stages.evaluate import run_eval
from clare.stages.extract import run_extract
from clare.stages.fit import run_fit
from clare.stages.predict import PREDICTION_COLUMNS, PredictOptions, run_predict


@dataclass
class World:
    data: Path
    cfg: Config
    run_dir: Path
    scores: pd.DataFrame  # eval's scores of the test store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> World:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    make_image_tree(data, 16, seed=5)
    cfg = make_config(root / "work", tiny_models_dir, data, fit__max_steps=6, fit__batch_size=8,
                      fit__val_fraction=0.3, fit__device="cpu", eval__device="cpu",
                      eval__lare_examples=0)
    run_extract(cfg, split="train", quiet=True)
    run_extract(cfg, split="test", quiet=True)
    fit = run_fit(cfg, quiet=True)
    out_dir = run_eval(cfg, quiet=True)
    scores = pd.read_parquet(out_dir / "scores.parquet").query("store == 'test'")
    return World(data, cfg, fit.run_dir, scores)


def _predict(world: World, inputs: list[str], tmp_path: Path, **options) -> pd.DataFrame:
    list_file = options.pop("list_file", None)
    overrides = options.pop("overrides", None)
    summary = run_predict(world.run_dir, inputs, list_file=list_file, overrides=overrides,
                          options=PredictOptions(out_dir=tmp_path / "out", quiet=True, **options))
    return summary.predictions


# --------------------------------------------------------------------------- scores


def test_p_fake_equals_eval_score_for_the_same_images(world: World, tmp_path: Path) -> None:
    predictions = _predict(world, [str(world.data)], tmp_path, batch_size=3)
    assert list(predictions.columns) == list(PREDICTION_COLUMNS)
    assert (predictions["status"] == "ok").all()
    by_path = {str(Path(p).relative_to(world.data)): v
               for p, v in zip(predictions["input"], predictions["p_fake"], strict=True)}
    assert len(by_path) == len(world.scores) == 16
    for path, p_fake in zip(world.scores["path"], world.scores["p_fake"], strict=True):
        assert by_path[path] == pytest.approx(p_fake, abs=1e-5), path


def test_outputs_are_written_as_csv_and_parquet(world: World, tmp_path: Path) -> None:
    predictions = _predict(world, [str(world.data / "alpha")], tmp_path)
    csv = pd.read_csv(tmp_path / "out" / "predictions.csv")
    parquet = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(csv) == len(parquet) == len(predictions) == 8
    assert np.allclose(csv["p_fake"], parquet["p_fake"])
    assert (parquet["width"] > 0).all() and (parquet["height"] > 0).all()


# --------------------------------------------------------------------------- inputs


def test_folders_are_recursive_and_sorted_and_globs_and_lists_agree(world: World, tmp_path: Path) -> None:
    from_folder = _predict(world, [str(world.data / "beta")], tmp_path)
    files = sorted(str(p) for p in (world.data / "beta").rglob("*") if p.suffix in (".png", ".jpg"))
    assert list(from_folder["input"]) == files
    from_glob = _predict(world, [str(world.data / "beta" / "**" / "*.png")], tmp_path)
    assert list(from_glob["input"]) == [f for f in files if f.endswith(".png")]
    listed = tmp_path / "list.txt"
    listed.write_text("# two images\n" + "\n".join(files[:2]) + "\n\n")
    from_list = _predict(world, [], tmp_path, list_file=listed)
    assert list(from_list["input"]) == files[:2]
    assert np.allclose(from_list["p_fake"], from_folder["p_fake"][:2])


def test_bad_inputs_are_failed_rows_with_their_reason(world: World, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    good = next(iter(sorted((world.data / "alpha").rglob("*.png"))))
    listed = tmp_path / "list.txt"
    listed.write_text(f"{tmp_path / 'gone.png'}\n")
    predictions = _predict(world, [str(text), str(good)], tmp_path, list_file=listed)
    failed = predictions.set_index("input")
    assert failed.loc[str(text), "status"] == "failed"
    assert failed.loc[str(text), "error"].startswith("not an image")
    assert np.isnan(failed.loc[str(text), "p_fake"]) and failed.loc[str(text), "verdict"] == ""
    assert failed.loc[str(tmp_path / "gone.png"), "error"].startswith("missing")
    assert failed.loc[str(good), "status"] == "ok"


def test_paths_that_match_nothing_and_missing_runs_are_errors(world: World, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        _predict(world, [str(tmp_path / "nothing.png")], tmp_path)
    with pytest.raises(DataError, match="matches no image"):
        _predict(world, [str(tmp_path / "*.jpg")], tmp_path)
    with pytest.raises(RunError, match="not a finished run"):
        run_predict(tmp_path / "no-run", [str(world.data)], options=PredictOptions(quiet=True))


def test_overrides_that_change_features_are_refused_by_key(world: World, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^lare\.timestep: "):
        _predict(world, [str(world.data)], tmp_path, overrides=["lare.timestep=500"])
    with pytest.raises(ConfigError, match=r"^seed: "):
        _predict(world, [str(world.data)], tmp_path, overrides=["seed=3"])
    # Settings that do not shape a feature are free.
    ok = _predict(world, [str(world.data / "alpha")], tmp_path, overrides=["extract.batch_size=2"])
    assert (ok["status"] == "ok").all()


def test_other_weights_than_the_runs_are_refused(world: World, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(world.run_dir, copy)
    record = yaml.safe_load((copy / "run.yaml").read_text())
    record["store_fingerprint"]["weights"]["sd"]["files"] = {"unet.safetensors": "0" * 64}
    (copy / "run.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(FingerprintError, match="weights.sd"):
        run_predict(copy, [str(world.data)], options=PredictOptions(out_dir=tmp_path, quiet=True))


# --------------------------------------------------------------------------- threshold


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused_not_replaced(world: World, tmp_path: Path,
                                                        batch_size: int) -> None:
    with pytest.raises(ConfigError, match=rf"--batch-size {batch_size}: must be at least 1"):
        _predict(world, [str(world.data / "alpha")], tmp_path, batch_size=batch_size)


def test_threshold_is_the_runs_and_can_be_overridden(world: World, tmp_path: Path) -> None:
    recorded = read_run(world.run_dir).threshold
    assert recorded is not None
    predictions = _predict(world, [str(world.data)], tmp_path)
    assert (predictions["threshold"] == recorded).all()
    expected = np.where(predictions["p_fake"] >= recorded, "fake", "real")
    assert list(predictions["verdict"]) == list(expected)
    override = float(np.median(predictions["p_fake"]))
    again = _predict(world, [str(world.data)], tmp_path, threshold=override)
    assert (again["threshold"] == override).all()
    assert list(again["verdict"]) == list(np.where(again["p_fake"] >= override, "fake", "real"))


def test_a_run_without_threshold_uses_one_half(world: World, tmp_path: Path) -> None:
    import shutil

    from clare.files import file_sha256

    copy = tmp_path / "run"
    shutil.copytree(world.run_dir, copy)
    record = yaml.safe_load((copy / "run.yaml").read_text())
    record.pop("threshold")
    (copy / "run.yaml").write_text(yaml.safe_dump(record))
    assert record["model_sha256"] == file_sha256(copy / "model.safetensors")
    summary = run_predict(copy, [str(world.data / "alpha")],
                          options=PredictOptions(out_dir=tmp_path / "o", quiet=True))
    assert summary.threshold == 0.5
    assert (summary.predictions["threshold"] == 0.5).all()



def _edited_run(world: World, tmp_path: Path, edit: Any) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(world.run_dir, copy)
    record = yaml.safe_load((copy / "run.yaml").read_text())
    edit(record)
    (copy / "run.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    return copy


@pytest.mark.parametrize("edit,says", [
    (lambda r: r["threshold"].update(value=float("nan")), "key 'threshold.value'"),
    (lambda r: r["threshold"].update(value=7.5), "key 'threshold.value'"),
    (lambda r: r.update(threshold="high"), "key 'threshold'"),
    (lambda r: r.update(module="lare"), "module is 'lare' but config.fit.module is 'fusion'"),
    # Both edited alike: only the model file's own record shows the lie.
    (lambda r: (r.update(module="lare"), r["config"]["fit"].update(module="lare")),
     "config.fit.module is 'lare' but model.safetensors was trained with 'fusion'"),
    (lambda r: r["config"]["fit"]["head"].update(gate_hidden=7), "config.fit.head"),
])
def test_a_hand_edited_run_record_is_refused_before_scoring(world: World, tmp_path: Path,
                                                            edit: Any, says: str) -> None:
    """Before: a NaN or 7.5 threshold made every verdict "real" with exit 0, "high" was an
    internal error, and a fusion model was labelled lare."""
    run = _edited_run(world, tmp_path, edit)
    with pytest.raises(RunError, match=re.escape(says)):
        run_predict(run, [str(world.data / "alpha")],
                    options=PredictOptions(out_dir=tmp_path / "o", quiet=True))
    assert not (tmp_path / "o").exists()


def test_blocks_added_by_others_do_not_break_a_run(world: World, tmp_path: Path) -> None:
    run = _edited_run(world, tmp_path, lambda r: r.update(
        provenance={"git": "abc"},
        selection={"rule": "best val AUC", "step": r["best_step"], "val_auc": 0.9, "val_loss": None,
                   "decided_by": "val_auc"}))
    info = read_run(run)
    assert info.record.selection is not None and info.record.model_extra == {"provenance": {"git": "abc"}}
    assert info.threshold == read_run(world.run_dir).threshold



@pytest.mark.parametrize("option", ["out_dir", "store"])
def test_outputs_inside_an_input_folder_are_refused(world: World, tmp_path: Path, option: str) -> None:
    """The next predict of the folder would score predict's own explain/*.png."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world.data / "alpha", data)
    outputs = {"out_dir": tmp_path / "o", option: data / "sub" / "pred"}
    with pytest.raises(ConfigError, match=rf"^--{'out' if option == 'out_dir' else 'store'} "
                                          rf"{re.escape(str(data))}/sub/pred: inside the input folder"):
        run_predict(world.run_dir, [str(data)], options=PredictOptions(quiet=True, **outputs))
    assert not (data / "sub").exists()



def test_hostile_names_are_escaped_in_the_csv_and_printed_as_text(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Issue 23: `=1+2.png` or a --list line `=HYPERLINK(...)` landed at the start of a CSV
    cell; `[/x].png` or `--out 'pred_[/y]'` crashed predict after scoring (MarkupError)."""
    good = next(iter(sorted((world.data / "alpha").rglob("*.png"))))
    folder = tmp_path / "in"
    (folder / "[").mkdir(parents=True)
    names = ["=1+2.png", "@SUM(A1).png", "+A1.png", "-A1.png", "[/x].png", "[bold]y.png"]
    for name in names:
        (folder / name).write_bytes(good.read_bytes())
    listed = tmp_path / "list.txt"
    listed.write_text('=HYPERLINK("http://example.invalid","click")\n')
    monkeypatch.chdir(folder)
    capsys.readouterr()
    summary = run_predict(world.run_dir, names, list_file=listed,
                          options=PredictOptions(out_dir=tmp_path / "pred_[/y]", quiet=False))
    csv = pd.read_csv(tmp_path / "pred_[/y]" / "predictions.csv")
    expected = [("'" + n if n[0] in "=@+-" else n) for n in names]
    hyperlink = str(Path('=HYPERLINK("http://example.invalid","click")'))  # as a path: "//" is "/"
    assert list(csv["input"]) == [*expected, "'" + hyperlink]
    raw = pd.read_parquet(tmp_path / "pred_[/y]" / "predictions.parquet")
    assert list(raw["input"])[:len(names)] == names  # the data file keeps the names as they are
    assert (summary.predictions["status"].iloc[:len(names)] == "ok").all()
    printed = capsys.readouterr().err
    assert "[/x].png" in printed and "[bold]y.png" in printed and "pred_[/y]" in printed.replace("\n", "")



def test_nan_weights_are_blamed_on_the_model_not_the_images(world: World, tmp_path: Path) -> None:
    """Every row was "non-finite features", blaming the image; now the model file is refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from clare.errors import CheckpointError
    from clare.files import file_sha256

    def poison(record: dict) -> None:
        model = copy / "model.safetensors"
        with safe_open(str(model), framework="pt") as handle:
            metadata = handle.metadata()
        state = load_file(str(model))
        name = sorted(state)[0]
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("nan")
        save_file(state, str(model), metadata=metadata)
        record["model_sha256"] = file_sha256(model)

    copy = tmp_path / "run"
    run = _edited_run(world, tmp_path, poison)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weight .* holds NaN or inf.*refit"):
        run_predict(run, [str(world.data / "alpha")],
                    options=PredictOptions(out_dir=tmp_path / "o", quiet=True))



@pytest.mark.parametrize("option", ["--out", "--store"])
def test_a_second_predict_into_the_same_output_is_refused(world: World, tmp_path: Path,
                                                          option: str) -> None:
    """Two predicts into one --out interleaved their files silently, and two into one new
    --store failed with a spill-file error that hid the race."""
    import os

    from clare.stages.predict import output_locks

    target = tmp_path / "shared"
    options = {"out_dir": target} if option == "--out" else {"out_dir": tmp_path / "o", "store": target}
    with output_locks({option: target}):  # the first predict, still running
        with pytest.raises(ConfigError, match=rf"^{option} {re.escape(str(target))}: another clare "
                                              rf"predict is writing it \(pid {os.getpid()}\)"):
            run_predict(world.run_dir, [str(world.data / "alpha")],
                        options=PredictOptions(quiet=True, **options))
    assert not any(target.iterdir())  # the second wrote nothing into it


# --------------------------------------------------------------------------- command line


def _clare(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from clare.cli import main; sys.argv = ['clare', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_counts_failures_and_fail_on_error_exits_one(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    good = str(next(iter(sorted((world.data / "alpha").rglob("*.png")))))
    base = ["predict", "--run", str(world.run_dir), "--out", str(tmp_path / "out"),
            "--device", "cpu", good, str(bad)]
    done = _clare(*base)
    assert done.returncode == 0, done.stderr
    assert re.search(r"2 inputs, \d+ fake at threshold [0-9.]+, 1 failed", done.stderr)
    # The table names every input. Its input column folds long paths over lines, at a place
    # that moves with the length of pytest's numbered folder: read the column's lines joined.
    inputs = "".join(line.split("│")[1].strip() for line in done.stderr.splitlines()
                     if line.startswith("│"))
    assert str(bad) in inputs
    assert _clare(*base, "--fail-on-error").returncode == 1
    missing = _clare("predict", "--run", str(tmp_path / "none"), good)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "not a finished run" in missing.stderr


# --------------------------------------------------------------------------- videos


def _write_mp4(path: Path, frames: int, side: int = 64) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_gives_frame_rows_and_a_mean_video_row(world: World, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    _write_mp4(video, frames=20)
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(video.read_bytes()[:200] + b"\x00" * 300)
    predictions = _predict(world, [str(video), str(corrupt)], tmp_path,
                           overrides=["predict.video_frames=4"])
    frames = predictions[(predictions["input"] == str(video)) & (predictions["kind"] == "frame")]
    assert list(frames["frame"]) == [0, 6, 13, 19]  # evenly spaced over 20 frames
    assert (frames["status"] == "ok").all() and (frames["width"] == 64).all()
    row = predictions[(predictions["input"] == str(video)) & (predictions["kind"] == "video")]
    assert len(row) == 1 and row["status"].item() == "ok"
    assert row["p_fake"].item() == pytest.approx(frames["p_fake"].mean(), abs=1e-12)
    broken = predictions[predictions["input"] == str(corrupt)]
    assert list(broken["kind"]) == ["video"] and broken["status"].item() == "failed"
    assert re.match(r"(corrupt video|no frames)", broken["error"].item())


# --------------------------------------------------------------------------- explain


def test_explain_writes_a_png_per_image_and_a_self_contained_gallery(world: World, tmp_path: Path) -> None:
    from PIL import Image

    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    predictions = _predict(world, [str(world.data / "alpha"), str(bad)], tmp_path, explain=True)
    out = tmp_path / "out"
    pngs = sorted((out / "explain").glob("*.png"))
    assert len(pngs) == int((predictions["status"] == "ok").sum()) == 8
    with Image.open(pngs[0]) as image:
        assert image.format == "PNG" and image.width > image.height  # three panels side by side
    page = (out / "gallery.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # nothing to fetch
    assert page.count("data:image/png;base64,") == 8
    shown = [float(v) for v in re.findall(r"p_fake ([0-9.]+),", page)]
    assert shown == sorted(shown, reverse=True) and len(shown) == 8
    assert "bad.png" in page and "not an image" in page


def test_attention_map_leaves_the_outputs_alone(world: World) -> None:
    from clare.runs import load_detector

    detector = load_detector(read_run(world.run_dir), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    grid, dims = detector.grid, detector.dims
    cls = torch.randn(3, dims["embed"], generator=generator)
    tokens = torch.randn(3, grid * grid, dims["width"], generator=generator)
    lare = torch.rand(3, 4, 32, 32, generator=generator)
    before = detector(cls, tokens, lare)
    weights = detector.attention_map(cls, tokens, lare)
    assert torch.equal(detector(cls, tokens, lare), before)
    assert weights.shape == (3, grid, grid)
    assert (weights >= 0).all() and (weights.sum(dim=(1, 2)) <= 1 + 1e-6).all()


# --------------------------------------------------------------------------- faces


def test_faces_detect_crops_a_photograph_to_its_face_and_fails_a_blank_image(
        world: World, tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data  # astronaut.png ships inside the scikit-image wheel

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(blank)
    predictions = _predict(world, [str(photo), str(blank)], tmp_path, faces="detect",
                           store=tmp_path / "store")
    rows = predictions.set_index("input")
    face = rows.loc[str(photo)]
    assert face["status"] == "ok" and (face["width"], face["height"]) == (512, 512)
    box = tuple(int(face[c]) for c in ("face_x0", "face_y0", "face_x1", "face_y1"))
    x0, y0, x1, y1 = box
    # Eileen Collins' face is centred near (224, 117) of the 512 x 512 photograph; the box is
    # the aligned crop's square mapped back into it (the face with DF40's margin).
    assert x0 < 224 < x1 and y0 < 117 < y1
    assert 90 <= x1 - x0 <= 300 and 90 <= y1 - y0 <= 300
    none = rows.loc[str(blank)]
    assert none["status"] == "failed" and none["error"].startswith("no face")
    assert pd.isna(none["p_fake"]) and pd.isna(none["face_x0"])
    # Stage one saw the crop: the store's row is the crop's pixels and size.
    from clare.cache.store import open_store
    from clare.data.faces import CROP_SIDE, largest_aligned_face
    from clare.data.images import pixels_sha256

    row = open_store(tmp_path / "store").manifest().iloc[0]
    with Image.open(photo) as image:
        aligned = largest_aligned_face(image.convert("RGB"))
    assert aligned is not None and aligned.box == box
    assert row["sha256"] == pixels_sha256(aligned.crop)
    assert (row["width"], row["height"]) == (CROP_SIDE, CROP_SIDE)


def test_faces_detect_without_the_extra_is_one_line_naming_it(world: World, tmp_path: Path) -> None:
    good = str(next(iter(sorted((world.data / "alpha").rglob("*.png")))))
    code = ("import sys; sys.modules['facenet_pytorch'] = None; from clare.cli import main; "
            "sys.argv = ['clare', *sys.argv[1:]]; main()")
    done = subprocess.run([sys.executable, "-c", code, "predict", "--run", str(world.run_dir),
                           "--out", str(tmp_path), "--faces", "detect", good],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "pip install 'clare[faces]'" in done.stderr


# --------------------------------------------------------------------------- --store


def test_store_holds_the_features_of_the_scored_images_and_verifies(world: World, tmp_path: Path) -> None:
    from clare.cache.store import open_store
    from clare.store_view import run_verify

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    video = tmp_path / "clip.mp4"
    _write_mp4(video, frames=6)
    store_dir = tmp_path / "store"
    predictions = _predict(world, [str(world.data / "alpha"), str(bad), str(video)], tmp_path,
                           store=store_dir, overrides=["predict.video_frames=2"])
    assert run_verify(store_dir)
    store = open_store(store_dir)
    manifest = store.manifest()
    entries = store.entry_rows().sort_values("row")  # one entry per scored image or frame
    scored = predictions[(predictions["kind"] != "video") & (predictions["status"] == "ok")]
    assert store.n_rows == len(manifest) == len(entries) == len(scored) == 8 + 2
    assert (manifest["status"] == "ok").all() and (manifest["label"] == -1).all()
    assert sorted(zip(entries["video"], entries["frame"], strict=True)) == sorted(
        (p, 0 if pd.isna(f) else int(f)) for p, f in zip(scored["input"], scored["frame"], strict=True))
    # A video frame's row is named by its file and frame number.
    assert {p for p in manifest["path"] if p.startswith(str(video))} == {
        f"{video}#{int(f)}" for f in scored.loc[scored["input"] == str(video), "frame"]}
    assert not (store_dir / ".predict-spill").exists()
    # The same features `clare extract` stored for the same images (matched by content).
    extracted = open_store(world.cfg.paths.stores / "test")
    theirs = extracted.manifest().set_index("sha256")["row"]
    images = manifest[~manifest["path"].str.startswith(str(video))]
    for name in ("cls", "tokens", "lare"):
        ours = store.read_rows(name, images["row"].to_numpy())
        expected = extracted.read_rows(name, theirs.loc[images["sha256"]].to_numpy())
        assert np.allclose(ours, expected, atol=1e-5), name


def test_an_output_folder_that_cannot_be_made_fails_before_scoring(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clare.stages.predict as predict

    def no_scoring(*args, **kwargs):
        raise AssertionError("inputs were scored before the output folder was checked")

    monkeypatch.setattr(predict, "_score_with_progress", no_scoring)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError):
        run_predict(world.run_dir, [str(world.data / "alpha")],
                    options=PredictOptions(out_dir=tmp_path / "a-file" / "out", quiet=True))


def test_store_refuses_a_folder_that_is_not_empty(world: World, tmp_path: Path) -> None:
    from clare.errors import StoreError

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an empty folder"):
        _predict(world, [str(world.data / "alpha")], tmp_path, store=taken)
    assert (taken / "notes.txt").read_text() == "mine"
