"""Tiny random-weight models in the exact on-disk formats of the real ones.

`build_tiny_models(out)` writes
- `out/sd/`: a diffusers Stable Diffusion folder (vae, unet, scheduler, text_encoder,
  tokenizer, model_index.json). The tokenizer's vocabulary and merges are open_clip's own BPE
  vocabulary, which is the one SD1.5's tokenizer uses, so prompts tokenize as in the real model.
- `out/clip/`: an open_clip model config (`clare-tiny-vit.json`) and a safetensors checkpoint
  for a small ViT with the structure of ViT-L/14 (CLS token, square patch grid, separate
  image and text towers, E != W != T so that any mixed-up width fails loudly).

The weights come from a seeded generator, so two builds give byte-identical files, and they
are read back through `clare.models.loading`, the same code that loads real weights.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import torch

from clare.files import fresh_partial_folder, publish_partial_folder

TINY_CLIP_NAME = "clare-tiny-vit"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 112,
        "layers": 2,
        "width": 64,
        "head_width": 16,
        "mlp_ratio": 2.0,
        "patch_size": 14,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 48,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}


def _write_tokenizer(out: Path) -> None:
    """A transformers CLIPTokenizer built from open_clip's shipped BPE vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    out.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    # open_clip spells the two special tokens differently from SD's tokenizer; same ids.
    renamed = {bpe.sot_token_id: "<|startoftext|>", bpe.eot_token_id: "<|endoftext|>"}
    inverse = {index: token for token, index in bpe.encoder.items()}
    vocab = {renamed.get(index, inverse[index]): index for index in sorted(inverse)}
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])
    lines = ["#version: 0.2"] + [f"{a} {b}" for (a, b), _ in merges]
    merges_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:  # transformers >= 5 takes `vocab`/`merges`; 4.x took `vocab_file`/`merges_file`
        tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
    except TypeError:
        tokenizer = CLIPTokenizer(
            vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=77
        )
    tokenizer.save_pretrained(out)


def _build_sd(out: Path) -> None:
    # From the modules that define them: diffusers' top-level names are lazy, and a type checker
    # reads them as the placeholder classes diffusers exports when torch is missing.
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    # Four blocks give the VAE SD's downsampling factor of 8: 256 px -> 4x32x32 latents.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        # Attention only at the coarse level keeps a CPU forward cheap (16x16 = 256 tokens).
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    # SD1.5's forward process: scaled_linear betas 0.00085 -> 0.012 over 1000 steps.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )
    vae.save_pretrained(out / "vae", safe_serialization=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    _write_tokenizer(out / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def register_tiny_clip_config(folder: Path) -> Path:
    """Write the tiny model's open_clip config JSON into `folder` and make open_clip know it."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n", encoding="utf-8")
    open_clip.add_model_config(config_path)
    return config_path


def _build_clip(out: Path) -> tuple[Path, Path]:
    import open_clip
    from safetensors.torch import save_file

    config_path = register_tiny_clip_config(out)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    checkpoint = out / "open_clip_model.safetensors"
    save_file(state, str(checkpoint))
    return config_path, checkpoint


def build_tiny_models(out: Path | str, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SD folder and tiny open_clip model under `out`; returns their paths."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= {"sd", "clip"}):
        # It is replaced whole below: only an earlier set of tiny models may be.
        raise FileExistsError(errno.EEXIST, "exists and holds more than tiny models (sd/, clip/); "
                              "choose another folder, clare replaces only its own", str(out))
    staging = fresh_partial_folder(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _build_sd(staging / "sd")
        torch.manual_seed(seed + 1)
        config_path, checkpoint = _build_clip(staging / "clip")
    # Publish atomically so an interrupted build never looks like a finished one.
    shutil.rmtree(out, ignore_errors=True)
    publish_partial_folder(staging, out)
    return {
        "sd": out / "sd",
        "clip_config": out / "clip" / config_path.name,
        "clip_checkpoint": out / "clip" / checkpoint.name,
    }
