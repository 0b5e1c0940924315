"""`clare models check`: every way a weights folder can be incomplete gives its own one line."""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clare.config import ClipConfig, ModelsConfig, StableDiffusionConfig
from clare.models.check import check_models, check_target
from clare.models.tiny import TINY_CLIP_NAME

UNET = "unet/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"
TEXT = "text_encoder/model.safetensors"


@pytest.fixture
def sd_copy(tiny_models_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "weights" / "sd15"
    shutil.copytree(tiny_models_dir / "sd", root)
    return root


def _models(tiny_models_dir: Path, sd: Path, **clip: str) -> ModelsConfig:
    clip_cfg = {"model": TINY_CLIP_NAME,
                "pretrained": str(tiny_models_dir / "clip" / "open_clip_model.safetensors"),
                "model_config_file": str(tiny_models_dir / "clip" / f"{TINY_CLIP_NAME}.json"), **clip}
    return ModelsConfig(sd=StableDiffusionConfig(pretrained=str(sd)), clip=ClipConfig(**clip_cfg),
                        local_files_only=True)


def _resave(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _raw_header(path: Path, header: dict, payload: int) -> None:
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + b"\0" * payload)


def test_complete_folder_and_config_pass_with_the_fingerprint(tiny_models_dir, sd_copy):
    report = check_target(sd_copy)
    assert report.problems == []
    assert {line.split(":")[0] for line in report.ok} == {str(sd_copy / n) for n in (UNET, VAE, TEXT)}
    full = check_models(_models(tiny_models_dir, sd_copy))
    assert full.problems == []
    assert full.fingerprint["sd"]["files"][UNET] and full.fingerprint["clip"]["sha256"]
    assert full.fingerprint["clip"]["quick_gelu"] is False


def _truncate(root: Path) -> None:
    path = root / UNET
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shape(root: Path) -> None:
    def change(tensors):
        tensors["conv_in.weight"] = torch.zeros(32, 5, 3, 3)

    _resave(root / UNET, change)


def _missing_tensor(root: Path) -> None:
    _resave(root / UNET, lambda tensors: tensors.pop("conv_in.bias"))


def _extra_tensor(root: Path) -> None:
    _resave(root / VAE, lambda tensors: tensors.update({"head.weight": torch.zeros(2)}))


def _header_length_2_62(root: Path) -> None:
    path = root / UNET
    path.write_bytes(struct.pack("<Q", 2**62) + path.read_bytes()[8:])


def _huge_shape(root: Path) -> None:
    _raw_header(root / UNET, {"conv_in.weight": {"dtype": "F32", "shape": [2**40, 2**40],
                                                  "data_offsets": [0, 64]}}, 64)


def _bad_json(root: Path) -> None:
    (root / "unet" / "config.json").write_text('{"in_channels": 4,,}')


def _pickle_only(root: Path) -> None:
    (root / UNET).unlink()
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")


def _no_unet(root: Path) -> None:
    shutil.rmtree(root / "unet")


def _bad_vocab(root: Path) -> None:
    (root / "tokenizer" / "vocab.json").write_text("{")


DAMAGE = [
    (_no_unet, r"sd15/unet: missing; run `clare models download --out .*weights` \(it resumes and repairs\)$"),
    (_truncate, rf"{UNET}: not a complete safetensors file \(incomplete metadata, file not fully covered\); the file is truncated"),
    (_wrong_shape, rf"{UNET}: tensor 'conv_in.weight' has shape \[32, 5, 3, 3\] but unet/config.json makes \[32, 4, 3, 3\]; weights and config come from different models"),
    (_missing_tensor, rf"{UNET}: 1 tensor\(s\) that unet/config.json needs are missing \(first: 'conv_in.bias'\)"),
    (_extra_tensor, rf"{VAE}: 1 tensor\(s\) that vae/config.json does not have \(first: 'head.weight'\)"),
    (_header_length_2_62, rf"{UNET}: not a complete safetensors file \(header too large\)"),
    (_huge_shape, rf"{UNET}: not a complete safetensors file \(overflow computing buffer size"),
    (_bad_json, r"unet/config.json: not valid JSON \(line 1, column 19\); the download is damaged"),
    (_pickle_only, rf"{UNET}: missing \(only the pickle diffusion_pytorch_model.bin, which is never loaded\); download the safetensors file"),
    (_bad_vocab, r"tokenizer/vocab.json: not valid JSON \(line 1, column 2\)"),
]


@pytest.mark.parametrize("damage,expected", DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_each_damage_is_one_line(sd_copy, damage, expected):
    damage(sd_copy)
    report = check_target(sd_copy)
    assert len(report.problems) == 1, report.problems
    (problem,) = report.problems
    assert "\n" not in problem
    assert problem.startswith(str(sd_copy))
    assert re.search(expected, problem), problem


def test_files_written_by_older_libraries_pass_and_load(sd_copy, tiny_models_dir):
    """SD1.5's own files: VAE attention as query/key/value/proj_attn, text encoder under
    `text_model.` with its position_ids; both libraries map them on load, and so does the check."""
    from clare.models.loading import load_stable_diffusion

    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def old_attention(tensors):
        for name in [n for n in tensors if ".attentions." in n]:
            for new, old in renames.items():
                if f".{new}." in name:
                    tensors[name.replace(f".{new}.", f".{old}.")] = tensors.pop(name)

    _resave(sd_copy / VAE, old_attention)
    assert any(".query." in name for name in load_file(str(sd_copy / VAE)))

    def old_prefix(tensors):
        for name in list(tensors):
            tensors[f"text_model.{name}"] = tensors.pop(name)
        tensors["text_model.embeddings.position_ids"] = torch.arange(77)[None]

    _resave(sd_copy / TEXT, old_prefix)
    assert check_target(sd_copy).problems == []
    old = load_stable_diffusion(StableDiffusionConfig(pretrained=str(sd_copy)))
    new = load_stable_diffusion(StableDiffusionConfig(pretrained=str(tiny_models_dir / "sd")))
    for part in ("vae", "text_encoder"):
        want, got = getattr(new, part).state_dict(), getattr(old, part).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), part


def test_clip_file_of_another_model_is_named(tiny_models_dir, sd_copy, tmp_path):
    models = _models(tiny_models_dir, sd_copy, model="ViT-B-32")
    models.clip.model_config_file = None
    report = check_models(models)
    assert report.fingerprint is None and len(report.problems) >= 1
    assert any(p.startswith(f"{tiny_models_dir / 'clip' / 'open_clip_model.safetensors'}: tensor '")
               and "open_clip config 'ViT-B-32'" in p for p in report.problems), report.problems
    truncated = tmp_path / "clip.safetensors"
    truncated.write_bytes((tiny_models_dir / "clip" / "open_clip_model.safetensors").read_bytes()[:-1000])
    report = check_models(_models(tiny_models_dir, sd_copy, pretrained=str(truncated)))
    assert report.problems == [f"{truncated}: not a complete safetensors file (incomplete metadata, "
                               "file not fully covered); the file is truncated or damaged"]


def test_config_naming_uncached_hub_ids_says_check_never_downloads(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("data: {root: x}\nmodels: {sd: {pretrained: clare-test/nowhere}}\n")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    report = check_target(config)
    assert any("models.sd.pretrained: hub id 'clare-test/nowhere' is not in the Hugging Face cache "
               "and `clare models check` never downloads" in p for p in report.problems)
    assert any("models.clip.pretrained: tag 'openai' is not in the Hugging Face cache" in p
               for p in report.problems)


def test_cli_prints_ok_lines_fingerprint_and_exit_2_on_problems(clare, tiny_models_dir, sd_copy, tmp_path,
                                                               monkeypatch, capsys):
    models = _models(tiny_models_dir, sd_copy).model_dump(mode="json")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"root": "x"}, "models": models}))
    code, out, err = clare("models", "check", str(config))
    assert code == 0, err
    assert f"ok: {sd_copy / UNET}: tensors match unet/config.json" in out
    fingerprint = json.loads(out.split("fingerprint stores will record:\n", 1)[1])
    assert fingerprint["clip"]["model"] == TINY_CLIP_NAME
    _no_unet(sd_copy)
    _truncate_text = sd_copy / TEXT
    _truncate_text.write_bytes(_truncate_text.read_bytes()[:100])
    code, out, err = clare("models", "check", str(config))
    lines = err.strip().splitlines()
    assert code == 2
    assert [line.split(":")[0] for line in lines] == ["problem", "problem", "error"]
    assert lines[-1].startswith(f"error: {sd_copy / 'unet'}: missing;") and lines[-1].endswith("(1 more above)")
    assert "fingerprint" not in out
