"""The Python API (clare.load / Predictor) and `clare export`: the README's example runs as
written; an export predicts what its run predicts, from another folder and from a hub cache;
edited exports, missing backbones and uncached hub ids are one-line errors (exit 2).

One module-scoped world: tiny models, 12 generated images, a train and a test store, a short
fit named `demo`, its evaluation, and `clare export` of it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_extract import make_config, make_image_tree
from test_bad_input_cli import assert_one_line_error, run_clare
from typer.testing import CliRunner

import clare
from clare.cli import app
from clare.errors import CheckpointError, ExportError, FingerprintError, ModelLoadError, RunError
from clare.predictor import PREDICTION_COLUMNS

README = Path(__file__).resolve().parents[1] / "README.md"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class World:
    root: Path
    data: Path
    run_dir: Path
    exported: Path
    models: Path  # the tiny models (sd/, clip/)
    image: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> World:
    from clare.stages.evaluate import run_eval
    from clare.stages.extract import run_extract
    from clare.stages.fit import run_fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    make_image_tree(data, 12, seed=3)
    cfg = make_config(root / "work", tiny_models_dir, data, fit__max_steps=4, fit__batch_size=6,
                      fit__val_fraction=0.3, fit__device="cpu", fit__name="demo",
                      eval__device="cpu", eval__lare_examples=0)
    run_extract(cfg, split="train", quiet=True)
    run_extract(cfg, split="test", quiet=True)
    run_dir = run_fit(cfg, quiet=True).run_dir
    run_eval(cfg, quiet=True)
    exported = root / "exported" / "demo"
    result = CliRunner().invoke(app, ["export", str(run_dir), str(exported),
                                      "--report", str(cfg.paths.reports / "demo")])
    assert result.exit_code == 0, result.output
    image = sorted(data.rglob("*.png"))[0]
    return World(root, data, run_dir, exported, tiny_models_dir, image)


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- python-api-example:.*?-->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its Python API example"
    return found.group(1)


def _weights_here(folder: Path, models: Path) -> None:
    """The backbones where an export of a run on the tiny models looks for them."""
    (folder / "weights" / "clip").mkdir(parents=True)
    (folder / "weights" / "sd").symlink_to(models / "sd", target_is_directory=True)
    checkpoint = models / "clip" / "open_clip_model.safetensors"
    (folder / "weights" / "clip" / checkpoint.name).symlink_to(checkpoint)


def _cli_predictions(run: str, image: Path, out: Path) -> pd.DataFrame:
    result = CliRunner().invoke(app, ["predict", "--run", run, str(image), "--out", str(out),
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out / "predictions.parquet")


# --------------------------------------------------------------------------- the API


def test_readme_example_runs_as_written(world: World, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(world.run_dir, target_is_directory=True)
    shutil.copy(world.image, tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(_readme_example(), str(README), "exec"), scope)  # noqa: S102 - our own README
    predictions = scope["predictions"]
    assert isinstance(predictions, pd.DataFrame)
    assert list(predictions.columns) == [*PREDICTION_COLUMNS, "explanation"]
    assert list(predictions["input"]) == ["photo.png", "<image 1>", "<array 2>"]
    assert (predictions["status"] == "ok").all()
    # The PIL image and its array are the same pixels, hence the same seed and score.
    assert predictions["p_fake"][1] == pytest.approx(predictions["p_fake"][2], abs=1e-7)
    assert np.asarray(scope["lare_map"]).ndim == 2
    assert np.asarray(scope["attention"]).shape == (8, 8)  # the tiny CLIP's patch grid


def test_api_scores_equal_clare_predict_and_failures_are_rows(world: World, tmp_path: Path) -> None:
    detector = clare.load(world.run_dir, device="cpu")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    frame = detector.predict([world.image, broken, np.zeros((4, 4, 2), dtype=np.uint8)])
    cli = _cli_predictions(str(world.run_dir), world.image, tmp_path / "out")
    assert frame["p_fake"][0] == pytest.approx(cli["p_fake"][0], abs=1e-7)
    assert list(frame["status"]) == ["ok", "failed", "failed"]
    assert frame["error"][1].startswith("not an image")
    assert frame["error"][2].startswith("not an image: array of shape (4, 4, 2)")
    assert set(clare.__all__) >= {"load", "Predictor", "PREDICTION_COLUMNS", "export_run"}


# --------------------------------------------------------------------------- export


def test_export_predicts_what_the_run_predicts_from_another_folder(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _cli_predictions(str(world.run_dir), world.image, tmp_path / "from-run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _weights_here(elsewhere, world.models)
    monkeypatch.chdir(elsewhere)
    got = _cli_predictions(str(world.exported), world.image, tmp_path / "from-export")
    assert abs(got["p_fake"][0] - expected["p_fake"][0]) <= 1e-6
    assert got["threshold"][0] == expected["threshold"][0]


def test_export_holds_no_local_path_and_a_model_card(world: World) -> None:
    names = {p.name for p in world.exported.iterdir()}
    assert names == {"model.safetensors", "run.yaml", "export.json", "README.md", "LICENSE.txt",
                     "SHA256SUMS", "clip-model.json"}
    for name in ("run.yaml", "export.json", "README.md"):
        text = (world.exported / name).read_text(encoding="utf-8")
        assert str(world.root) not in text and str(world.models) not in text, name
        assert "/tmp" not in text, name
    card = (world.exported / "README.md").read_text(encoding="utf-8")
    for heading in ("## Intended use and limits", "## Training data and protocol", "## Metrics",
                    "## Backbones"):
        assert heading in card
    assert re.search(r"\| (alpha|beta) \| [0-9.]+ \| (\[[0-9.]+, [0-9.]+\]|\w+) \|", card)
    assert f"clare {clare.__version__}" in card
    listed = (world.exported / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in listed) == sorted(names - {"SHA256SUMS"})


def test_edited_export_is_refused_by_its_sha256(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(world.exported, copy)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* SHA256SUMS records"):
        clare.load(copy)
    assert_one_line_error(run_clare(["predict", "--run", copy, world.image], capsys, monkeypatch),
                          "model.safetensors", "SHA256SUMS")


def test_missing_backbones_are_named_with_the_command(world: World, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        clare.load(world.exported)
    message = str(caught.value)
    sd_files = sorted(p.relative_to(world.models / "sd").as_posix()
                      for p in (world.models / "sd").rglob("*") if p.is_file())
    assert "unet/diffusion_pytorch_model.safetensors" in sd_files
    assert all(name in message for name in sd_files), message  # each file named
    assert "weights/clip/open_clip_model.safetensors" in message
    assert "--set models.sd.pretrained=DIR" in message and "\n" not in message
    assert_one_line_error(run_clare(["predict", "--run", world.exported, world.image], capsys,
                                    monkeypatch), "in weights/sd: ", "backbone files missing")


def test_other_backbones_are_refused_by_the_fingerprint(world: World, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other-sd"
    shutil.copytree(world.models / "sd", other)
    scheduler = other / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text() + " ")
    _weights_here(tmp_path, world.models)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FingerprintError, match="weights.sd.files.scheduler/scheduler_config.json"):
        clare.load(world.exported, overrides=[f"models.sd.pretrained={other}"])


# --------------------------------------------------------------------------- the hub cache


def _fill_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """A hub cache as huggingface_hub lays it out, holding `folder` as the repo's main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT)


def test_hub_id_loads_offline_from_a_filled_cache(world: World, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub-cache"
    _fill_cache(cache, "someone/clare-demo", world.exported)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    _weights_here(work, world.models)
    monkeypatch.chdir(work)
    from_hub = clare.load("someone/clare-demo", device="cpu").predict([world.image])
    from_folder = clare.load(world.exported, device="cpu").predict([world.image])
    assert from_hub["p_fake"][0] == pytest.approx(from_folder["p_fake"][0], abs=1e-7)
    with pytest.raises(RunError) as caught:
        clare.load("someone/not-cached")
    assert str(cache) in str(caught.value)
    assert "huggingface-cli download someone/not-cached" in str(caught.value)
    capsys.readouterr()  # the loads' progress lines so far
    assert_one_line_error(run_clare(["predict", "--run", "someone/not-cached", world.image],
                                    capsys, monkeypatch), str(cache), "huggingface-cli download")


def test_export_refuses_a_used_folder_and_an_export_without_its_manifest(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert_one_line_error(run_clare(["export", world.run_dir, used], capsys, monkeypatch),
                          str(used), "not an empty folder")
    assert [p.name for p in used.iterdir()] == ["notes.txt"]
    copy = tmp_path / "copy"
    shutil.copytree(world.exported, copy)
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(ExportError, match=r"SHA256SUMS: missing or unreadable"):
        clare.load(copy)


def test_missing_standard_backbones_name_the_download_command(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from clare.config import Config
    from clare.export import require_backbones

    monkeypatch.chdir(tmp_path)
    models = {"sd": {"pretrained": "./weights/sd15"},
              "clip": {"model": "ViT-L-14-quickgelu",
                       "pretrained": "./weights/clip/ViT-L-14-openai/open_clip_model.safetensors"},
              "local_files_only": True}
    cfg = Config.model_validate({"data": {"root": "data"}, "models": models})
    run = SimpleNamespace(store_fingerprint={"weights": {
        "sd": {"pretrained": "./weights/sd15", "files": {"unet/config.json": "0" * 64}},
        "clip": {"pretrained": models["clip"]["pretrained"], "sha256": "1" * 64}}})
    with pytest.raises(ModelLoadError) as caught:
        require_backbones(run, cfg)
    message = str(caught.value)
    assert "in weights/sd15: model_index.json, unet/config.json" in message
    assert "weights/clip/ViT-L-14-openai/open_clip_model.safetensors" in message
    assert "run `clare models download --out weights` in this folder" in message


def test_an_edited_record_is_refused_and_an_edited_card_is_not(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _weights_here(tmp_path, world.models)
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(world.exported, copy)
    (copy / "README.md").write_text("# my own card\n")  # a card edited on the hub page
    clare.Predictor.open(copy)  # loads: the card does not make the scores
    record = copy / "run.yaml"
    record.write_text(record.read_text().replace("value: ", "value: 0.0 #", 1))
    with pytest.raises(CheckpointError, match=r"run\.yaml: sha256 .* SHA256SUMS records"):
        clare.Predictor.open(copy)
    sums = copy / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines()
                            if not line.endswith("run.yaml")))
    with pytest.raises(ExportError, match=r"run\.yaml: not listed in SHA256SUMS"):
        clare.Predictor.open(copy)
