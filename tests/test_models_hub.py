"""Loading by hub id and by open_clip tag, offline, and the QuickGELU rule for local files.

Everything runs against a Hugging Face cache built from the tiny models in the hub's own
layout, with HF_HOME pointing at it and HF_HUB_OFFLINE=1: no test downloads anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_hub import (
    TINY_QUICKGELU_NAME,
    TINY_TAG,
    TINY_TAG_REPO,
    add_to_hub_cache,
    folder_files,
    hf_offline_cache,  # noqa: F401 - fixture
    register_tiny_tag,
)

from clare.config import ClipConfig, ModelsConfig, StableDiffusionConfig
from clare.errors import ModelLoadError
from clare.models.clip_image import ClipImageEncoder
from clare.models.loading import load_clip, load_stable_diffusion, weights_fingerprint
from clare.models.tiny import TINY_CLIP_NAME

SD_REPO = "clare-test/tiny-sd"
SD_COMMIT = "a" * 40
CLIP_COMMIT = "b" * 40


def _features(clip_parts, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    cls, tokens = ClipImageEncoder(clip_parts.model, torch.device("cpu"))(pixels)
    return cls.numpy(), tokens.float().numpy()


def _activations(model) -> set[str]:
    return {type(block.mlp.gelu).__name__ for block in model.visual.transformer.resblocks}


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_tag(monkeypatch, tmp_path) -> Path:
    return register_tiny_tag(monkeypatch, tmp_path / "openclip-configs")


def test_sd_hub_id_loads_offline_from_the_cache(hf_offline_cache, tiny_models_dir):  # noqa: F811
    snapshot = add_to_hub_cache(hf_offline_cache, SD_REPO, folder_files(tiny_models_dir / "sd"),
                                SD_COMMIT)
    by_id = load_stable_diffusion(StableDiffusionConfig(pretrained=SD_REPO), local_files_only=True)
    by_folder = load_stable_diffusion(StableDiffusionConfig(pretrained=str(tiny_models_dir / "sd")))
    for name in ("vae", "unet", "text_encoder"):
        want, got = getattr(by_folder, name).state_dict(), getattr(by_id, name).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert by_id.tokenizer("a photo of a face").input_ids == by_folder.tokenizer("a photo of a face").input_ids
    # A pinned revision resolves to the same snapshot; the fingerprint hashes its files.
    pinned = StableDiffusionConfig(pretrained=SD_REPO, revision=SD_COMMIT)
    load_stable_diffusion(pinned, local_files_only=True)
    models = ModelsConfig(sd=pinned, clip=ClipConfig(
        model=TINY_CLIP_NAME, pretrained=str(tiny_models_dir / "clip" / "open_clip_model.safetensors"),
        model_config_file=tiny_models_dir / "clip" / f"{TINY_CLIP_NAME}.json"))
    files = weights_fingerprint(models)["sd"]["files"]
    assert files["unet/diffusion_pytorch_model.safetensors"] == weights_fingerprint(
        models.model_copy(update={"sd": StableDiffusionConfig(pretrained=str(snapshot))})
    )["sd"]["files"]["unet/diffusion_pytorch_model.safetensors"]


def test_sd_hub_id_missing_from_the_cache_is_one_error(hf_offline_cache):  # noqa: F811
    with pytest.raises(ModelLoadError, match=r"could not load 'clare-test/absent'.*local diffusers folder"):
        load_stable_diffusion(StableDiffusionConfig(pretrained="clare-test/absent"), local_files_only=True)


def test_default_sd_is_the_maintained_repo_not_the_removed_one():
    assert StableDiffusionConfig().pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_tag_and_file_give_identical_features_with_quickgelu(
        hf_offline_cache, tiny_models_dir, tiny_tag, tmp_path, pixels):  # noqa: F811
    checkpoint = tiny_models_dir / "clip" / "open_clip_model.safetensors"
    add_to_hub_cache(hf_offline_cache, TINY_TAG_REPO, {"open_clip_model.safetensors": checkpoint},
                     CLIP_COMMIT)
    tag_cfg = ClipConfig(model=TINY_CLIP_NAME, pretrained=TINY_TAG)
    by_tag = load_clip(tag_cfg, local_files_only=True)
    local = tmp_path / "local" / "clip.safetensors"
    local.parent.mkdir()
    shutil.copy(checkpoint, local)
    file_cfg = ClipConfig(model=TINY_QUICKGELU_NAME, pretrained=str(local), model_config_file=tiny_tag)
    by_file = load_clip(file_cfg)
    # The tag builds the activation of its table entry even on a GELU base config.
    assert _activations(by_tag.model) == _activations(by_file.model) == {"QuickGELU"}
    for want, got in zip(_features(by_tag, pixels), _features(by_file, pixels), strict=True):
        np.testing.assert_array_equal(want, got)
    # Same weights under plain GELU: other features, which is why the rule exists.
    plain = load_clip(ClipConfig(model=TINY_CLIP_NAME, pretrained=str(local)))
    assert _activations(plain.model) == {"GELU"}
    assert not np.allclose(_features(plain, pixels)[0], _features(by_file, pixels)[0])
    # The fingerprint records the activation and hashes the tag's cached file.
    fp_tag = weights_fingerprint(ModelsConfig(clip=tag_cfg, sd=StableDiffusionConfig(pretrained=str(tmp_path))))
    fp_file = weights_fingerprint(ModelsConfig(clip=file_cfg, sd=StableDiffusionConfig(pretrained=str(tmp_path))))
    assert fp_tag["clip"]["quick_gelu"] is True and fp_file["clip"]["quick_gelu"] is True
    assert fp_tag["clip"]["sha256"] == fp_file["clip"]["sha256"] is not None


def test_known_quickgelu_checkpoint_under_gelu_config_is_refused(
        hf_offline_cache, tiny_models_dir, tiny_tag, tmp_path):  # noqa: F811
    checkpoint = tiny_models_dir / "clip" / "open_clip_model.safetensors"
    snapshot = add_to_hub_cache(hf_offline_cache, TINY_TAG_REPO,
                                {"open_clip_model.safetensors": checkpoint}, CLIP_COMMIT)
    fix = rf"trained with QuickGELU, but '{TINY_CLIP_NAME}' builds plain GELU; set models\.clip\.model: {TINY_QUICKGELU_NAME}"
    # Known from the hub-cache path it sits in ...
    with pytest.raises(ModelLoadError, match=rf"{TINY_TAG_REPO}, known from its Hugging Face cache path\), {fix}"):
        load_clip(ClipConfig(model=TINY_CLIP_NAME, pretrained=str(snapshot / "open_clip_model.safetensors")))
    # ... or from the SOURCE.json `clare models download` writes next to it.
    folder = tmp_path / "weights" / "clip"
    folder.mkdir(parents=True)
    shutil.copy(checkpoint, folder / "open_clip_model.safetensors")
    (folder / "SOURCE.json").write_text(json.dumps(
        {"repo_id": TINY_TAG_REPO, "files": {"open_clip_model.safetensors": {}}}))
    with pytest.raises(ModelLoadError, match=rf"SOURCE\.json\), {fix}"):
        load_clip(ClipConfig(model=TINY_CLIP_NAME, pretrained=str(folder / "open_clip_model.safetensors")))
    ok = load_clip(ClipConfig(model=TINY_QUICKGELU_NAME, pretrained=str(folder / "open_clip_model.safetensors"),
                              model_config_file=tiny_tag))
    assert _activations(ok.model) == {"QuickGELU"}


def test_openai_vit_l14_file_under_vit_l14_names_the_quickgelu_config(tiny_models_dir, tmp_path):
    """The real table entry: a file recorded as timm/vit_large_patch14_clip_224.openai."""
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(tiny_models_dir / "clip" / "open_clip_model.safetensors", folder / "w.safetensors")
    (folder / "SOURCE.json").write_text(json.dumps(
        {"repo_id": "timm/vit_large_patch14_clip_224.openai", "files": {"w.safetensors": {}}}))
    with pytest.raises(ModelLoadError, match=r"ViT-L-14/openai weights .*trained with QuickGELU, but "
                                             r"'ViT-L-14' builds plain GELU; set models\.clip\.model: ViT-L-14-quickgelu"):
        load_clip(ClipConfig(model="ViT-L-14", pretrained=str(folder / "w.safetensors")))


def test_tag_not_in_cache_offline_is_one_error(hf_offline_cache, tiny_tag):  # noqa: F811
    with pytest.raises(ModelLoadError, match=rf"could not get '{TINY_TAG}' for '{TINY_CLIP_NAME}' \({TINY_TAG_REPO}/open_clip_model\.safetensors.*clare models download"):
        load_clip(ClipConfig(model=TINY_CLIP_NAME, pretrained=TINY_TAG), local_files_only=True)
    with pytest.raises(ModelLoadError, match=r"'laion' is neither a checkpoint file nor an open_clip tag of 'clare-tiny-vit' \(its tags: openai\)"):
        load_clip(ClipConfig(model=TINY_CLIP_NAME, pretrained="laion"))


def test_openai_tag_resolves_to_the_timm_repo_with_quickgelu():
    from clare.models.hub import CLIP_MODEL_QUICKGELU, tag_source

    source = tag_source("ViT-L-14", "openai")
    assert source is not None
    assert (source.repo_id, source.filename, source.quick_gelu) == (
        "timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors", True)
    import open_clip

    assert open_clip.get_model_config(CLIP_MODEL_QUICKGELU)["quick_gelu"] is True
