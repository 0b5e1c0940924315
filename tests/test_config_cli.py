"""Configuration errors name the file and key; the CLI turns them into one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clare.cli import app
from clare.config import load_config
from clare.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
GOOD = "data: {root: data/demo}\nfit: {lr: 0.01}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,expected",
    [
        ("data: {root: x}\nfit: {lrr: 0.1}\n", r"c\.yaml: unknown key 'fit\.lrr'"),
        ("data: {root: x}\nfit: {lr: fast}\n", r"c\.yaml: key 'fit\.lr': .*number.*'fast'"),
        ("data: {root: x}\nfit: {module: vit}\n", r"key 'fit\.module'.*'vit'"),
        ("fit: {lr: 0.1}\n", r"required key 'data' is missing"),
        ("data: {root: x\n", r"c\.yaml: malformed YAML at line \d+"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("data: {root: x}\nlare: {timestep: 1000}\n", r"key 'lare\.timestep'"),
        ("data: {root: x}\nextract: {batch_size: 0}\n", r"key 'extract\.batch_size'"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_config(path, ["fit.lr=0.5", "fit.prompt.n_ctx=4", "data.train=[a, b]"])
    assert cfg.fit.lr == 0.5 and cfg.fit.prompt.n_ctx == 4
    assert [s.name for s in cfg.data.train] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"with --set overrides\): unknown key 'fit\.nope'"):
        load_config(path, ["fit.nope=1"])
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(path, ["fit.lr"])
    with pytest.raises(ConfigError, match=r"'lr' is not a section"):
        load_config(path, ["fit.lr.x=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_hold_the_design_settings():
    real = load_config(REPO / "configs" / "df40.yaml")
    # Local weights as `clare models download --out weights` lays them out; OpenAI's CLIP
    # weights as a file need the QuickGELU config.
    assert real.models.sd.pretrained == "weights/sd15" and real.models.local_files_only
    assert (real.models.clip.model, real.models.clip.pretrained) == (
        "ViT-L-14-quickgelu", "weights/clip/ViT-L-14-openai/open_clip_model.safetensors")
    assert real.extract.precision == "fp32"  # the LaRE² reference precision
    assert (real.lare.timestep, real.lare.ensemble, real.lare.image_size) == (200, 4, 256)
    assert real.lare.prompt == "a photo of a face"
    assert len(real.data.train) == 10 and all(s.name.endswith("_ff") for s in real.data.train)
    assert len(real.data.test) == 17
    # DeepfakeBench's frame choice, as the published DF40 numbers used; the demo keeps `even`.
    assert real.data.frame_sampling == "first"
    assert load_config(REPO / "configs" / "demo.yaml").data.frame_sampling == "even"
    assert "real" not in real.lare.prompt and "fake" not in real.lare.prompt  # no label leak


def test_cli_prints_one_line_and_exits_2(tmp_path):
    bad = write(tmp_path, "data: {root: x}\nfit: {lrr: 1}\n")
    done = subprocess.run([sys.executable, "-m", "clare.cli", "config", "--config", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [f"error: {bad}: unknown key 'fit.lrr'; remove it or fix its spelling"]
    debug = subprocess.run([sys.executable, "-m", "clare.cli", "--debug", "config", "--config",
                            str(bad)], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("prepare", "extract", "fit", "eval", "show", "info", "verify", "models",
                    "demo-data", "config"):
        assert command in result.output


def test_missing_weight_folder_is_one_clear_error(tmp_path):
    from clare.config import ClipConfig, StableDiffusionConfig
    from clare.errors import ModelLoadError
    from clare.models.loading import load_clip, load_stable_diffusion

    with pytest.raises(ModelLoadError, match=r"not found at '.*nowhere'.*clare models tiny"):
        load_stable_diffusion(StableDiffusionConfig(pretrained=str(tmp_path / "nowhere")))
    (tmp_path / "sd").mkdir()
    with pytest.raises(ModelLoadError, match=r"lacks subfolder\(s\) vae, unet"):
        load_stable_diffusion(StableDiffusionConfig(pretrained=str(tmp_path / "sd")))
    with pytest.raises(ModelLoadError, match=r"checkpoint '.*clip\.safetensors' not found"):
        load_clip(ClipConfig(model="ViT-B-32", pretrained=str(tmp_path / "clip.safetensors")))


def test_tiny_models_round_trip_through_the_real_loaders(tiny_models_dir, tmp_path):
    import hashlib

    import torch

    from clare.config import ClipConfig, StableDiffusionConfig
    from clare.models.loading import clip_dims, load_clip, load_stable_diffusion
    from clare.models.tiny import build_tiny_models

    sd = load_stable_diffusion(StableDiffusionConfig(pretrained=str(tiny_models_dir / "sd")))
    assert sd.scheduler.config.beta_schedule == "scaled_linear"
    assert sd.vae.config.scaling_factor == pytest.approx(0.18215)
    clip = load_clip(ClipConfig(
        model="clare-tiny-vit",
        pretrained=str(tiny_models_dir / "clip" / "open_clip_model.safetensors"),
        model_config_file=tiny_models_dir / "clip" / "clare-tiny-vit.json",
    ))
    dims = clip_dims(clip.model)
    assert dims["grid"] ** 2 == dims["tokens"] and len({dims["embed"], dims["width"], dims["text_width"]}) == 3
    # SD's tokenizer and open_clip's tokenize prompts identically (same BPE vocabulary).
    sd_ids = sd.tokenizer("a photo of a face").input_ids
    clip_ids = clip.tokenizer(["a photo of a face"])[0].tolist()
    assert sd_ids == clip_ids[: len(sd_ids)]
    with torch.no_grad():
        latent = sd.vae.encode(torch.zeros(1, 3, 256, 256)).latent_dist.mean
    assert latent.shape == (1, 4, 32, 32)
    # The loaded weights are the saved ones, and a second build writes identical files.
    build_tiny_models(tmp_path / "again", seed=0)
    for path in sorted(p for p in tiny_models_dir.rglob("*") if p.is_file()):
        twin = tmp_path / "again" / path.relative_to(tiny_models_dir)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest(), path
