"""Configuration errors name the file and key; the CLI turns them into one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clare.cli import app
from clare.config_files import load_config
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
    with pytest.raises(ConfigError, match=r"^--set fit\.nope: unknown key 'fit\.nope'"):
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


def test_help_lists_every_command(clare):
    result = clare("--help")
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
    from clare.models.clip_image import clip_dims
    from clare.models.loading import load_clip, load_stable_diffusion
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


# --------------------------------------------------------------------------- layered configs

BASE = "data: {root: base, train: [a, b]}\nfit: {lr: 0.01, epochs: 3, prompt: {n_ctx: 4}}\n"
LAYER = "fit: {lr: 0.002, prompt: {ctx_init: a photo of}}\ndata: {train: [c]}\n"


def _files(tmp_path: Path, *texts: str) -> list[Path]:
    paths = []
    for number, text in enumerate(texts):
        path = tmp_path / f"layer{number}.yaml"
        path.write_text(text)
        paths.append(path)
    return paths


def test_later_files_override_key_by_key_and_set_comes_last(tmp_path):
    base, layer = _files(tmp_path, BASE, LAYER)
    cfg = load_config([base, layer], ["fit.epochs=7"])
    assert cfg.fit.lr == 0.002  # the later file wins
    assert cfg.fit.prompt.n_ctx == 4 and cfg.fit.prompt.ctx_init == "a photo of"  # merged
    assert [s.name for s in cfg.data.train] == ["c"]  # a list is replaced whole
    assert str(cfg.data.root) == "base"  # kept from the earlier file
    assert cfg.fit.epochs == 7  # --set after every file
    assert load_config([layer, base]).fit.lr == 0.01  # order decides
    assert load_config([base, layer], ["fit.lr=0.5"]).fit.lr == 0.5


def test_unknown_key_names_the_layer_that_brought_it(tmp_path):
    base, good, bad = _files(tmp_path, BASE, LAYER, "fit: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: unknown key 'fit\.lrr'"):
        load_config([base, bad, good])
    section = tmp_path / "section.yaml"
    section.write_text("paperz: {lr: 1}\n")
    with pytest.raises(ConfigError, match=rf"^{section}: unknown key 'paperz'"):
        load_config([base, section])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("fit: {epochs: many}\n")
    with pytest.raises(ConfigError, match=rf"^{wrong}: key 'fit\.epochs'"):
        load_config([base, wrong, good])
    # Nobody set it: every file is named.
    with pytest.raises(ConfigError, match=rf"^{good} \+ {bad}: required key 'data\.root'"):
        load_config([good, bad])


def test_config_origins_show_which_layer_won(tmp_path, clare):
    base, layer = _files(tmp_path, BASE, LAYER)
    result = clare("config", "-c", base, "-c", layer, "--origins", "--set", "fit.epochs=9")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines())
    assert lines["fit.lr"] == f"0.002  # {layer}"
    assert lines["fit.prompt.n_ctx"] == f"4  # {base}"
    assert lines["fit.prompt.ctx_init"] == f'"a photo of"  # {layer}'
    assert lines["fit.epochs"] == "9  # --set fit.epochs"
    assert lines["fit.batch_size"] == "32  # default"
    assert lines["data.root"] == f'"base"  # {base}'
    assert lines["data.train"].endswith(f"# {layer}") and '"c"' in lines["data.train"]
    plain = clare("config", "-c", base, "-c", layer)
    assert plain.exit_code == 0 and "lr: 0.002" in plain.output and "#" not in plain.output


def test_every_config_command_takes_several_config_files():
    import typer.main

    command = typer.main.get_command(app)
    takes = []
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        subs = sub.commands.items() if hasattr(sub, "commands") else [(name, sub)]
        for sub_name, leaf in subs:
            option = next((p for p in leaf.params if "--config" in getattr(p, "opts", [])), None)
            if option is not None:
                takes.append(sub_name)
                assert option.multiple, f"{sub_name}: --config is not repeatable"
    assert {"prepare", "extract", "fit", "eval", "predict", "config"} <= set(takes)


def test_paper_layer_on_the_demo_and_warmup_in_steps_or_epochs(tmp_path):
    cfg = load_config([REPO / "configs" / "demo.yaml", REPO / "configs" / "clare-paper.yaml"])
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.models.clip.input == "clare-paper" and demo.models.clip.input == "open_clip"
    assert cfg.fit.optimizer == "sgd" and cfg.fit.batch_size == 64 and cfg.fit.warmup_epochs == 1
    # Only the recipe changes: the demo's paths, data and models stay.
    assert cfg.data == demo.data and cfg.paths == demo.paths
    assert cfg.models.clip.pretrained == demo.models.clip.pretrained
    assert demo.fit.warmup_epochs == 0  # the default keeps the old schedule
    with pytest.raises(ConfigError, match="warmup_steps and fit.warmup_epochs are both set"):
        load_config(REPO / "configs" / "demo.yaml", ["fit.warmup_steps=5", "fit.warmup_epochs=1"])
