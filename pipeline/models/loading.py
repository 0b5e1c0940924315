"""The one loading path for the frozen backbones, real or tiny.

Stable Diffusion parts come through diffusers/transformers `from_pretrained` (a hub id or a
local folder with `vae`, `unet`, `scheduler`, `text_encoder`, `tokenizer` subfolders); CLIP comes
through open_clip (`pretrained` is a tag, fetched through the Hugging Face cache, or a local
checkpoint file), with the activation the weights were trained with (`resolve_clip`). Tests and
the demo load the tiny models of `clare.models.tiny` through exactly these functions.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clare.config import ClipConfig, ModelsConfig, StableDiffusionConfig
from clare.errors import ModelLoadError, one_line
from clare.files import read_record_bytes
from clare.hash_cache import weights_sha256

SD_SUBFOLDERS = ("vae", "unet", "scheduler", "text_encoder", "tokenizer")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class StableDiffusionParts:
    """The frozen SD components LaRE needs (no pipeline object: we never sample images)."""

    vae: Any
    unet: Any
    scheduler: Any
    text_encoder: Any
    tokenizer: Any
    source: str


@dataclass
class ClipParts:
    model: Any
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str


def looks_local(name: str) -> bool:
    """Whether a `pretrained` setting names a path rather than a hub id: a hub id is
    "org/name"; anything else (or anything that exists on disk) is a path."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1


def _sd_missing_message(where: str, key: str) -> str:
    return (
        f"{key}: Stable Diffusion weights not found at '{where}'; download them with "
        "`clare models download --out weights` (then `clare models check weights`) "
        "or build test models with `clare models tiny --out models/tiny`"
    )


def load_stable_diffusion(
    cfg: StableDiffusionConfig, *, local_files_only: bool = False
) -> StableDiffusionParts:
    """Load VAE, UNet, DDPM scheduler, text encoder and tokenizer; all frozen, eval mode, fp32."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTokenizer

    source = cfg.pretrained
    kwargs: dict[str, Any] = {"revision": cfg.revision} if cfg.revision else {}
    if looks_local(source):
        root = Path(source).expanduser()
        if not root.is_dir():
            raise ModelLoadError(_sd_missing_message(source, "models.sd.pretrained"))
        missing = [sub for sub in SD_SUBFOLDERS if not (root / sub).is_dir()]
        if missing:
            raise ModelLoadError(
                f"models.sd.pretrained: '{source}' lacks subfolder(s) {', '.join(missing)}; "
                "point it at a diffusers Stable Diffusion folder"
            )
        source, local_files_only = str(root), True
    kwargs["local_files_only"] = local_files_only
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
        # SD1.5 ships a PNDM config; its betas define the same DDPM forward process.
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        # A truncated weight file (a safetensors header error) ends here too.
        raise ModelLoadError(
            f"models.sd.pretrained: could not load '{cfg.pretrained}' ({one_line(exc)}); "
            "on an offline machine point it at a local diffusers folder "
            "(`clare models download --out weights` writes weights/sd15)"
        ) from None
    for module in (vae, unet, text_encoder):
        module.requires_grad_(False).eval()
    return StableDiffusionParts(vae, unet, scheduler, text_encoder, tokenizer, cfg.pretrained)


def register_clip_config(cfg: ClipConfig) -> None:
    """Make a custom open_clip model config (e.g. the tiny test model) known to open_clip."""
    import open_clip

    if cfg.model_config_file is None:
        return
    path = Path(cfg.model_config_file)
    if not path.is_file():
        raise ModelLoadError(
            f"models.clip.model_config_file: '{path}' not found; "
            "build it with `clare models tiny --out models/tiny` or remove the key"
        )
    if path.stem != cfg.model:
        path = _config_named_as_model(path, cfg.model)
    open_clip.add_model_config(path)


_NAMED_CONFIGS: dict[tuple[str, bytes], Path] = {}  # (model, config bytes) -> the copy registered


def _config_named_as_model(path: Path, model: str) -> Path:
    """A copy of `path` named `<model>.json`: open_clip names a config after its file's stem,
    and an export bundles it as `clip-model.json`, so the original would register under the
    wrong name in a process that had not registered the model before. The copy lives in a
    temporary folder for the life of the process (open_clip rescans its files later)."""
    if not model or Path(model).name != model or model.startswith("."):
        raise ModelLoadError(f"models.clip.model: '{model}' is not a valid open_clip model name "
                             "for a custom config; use a plain name such as the config's file name")
    try:
        data = read_record_bytes(path)
    except OSError as exc:
        raise ModelLoadError(f"models.clip.model_config_file: '{path}' is unreadable "
                             f"({exc.strerror or one_line(exc)}); restore the file") from None
    known = _NAMED_CONFIGS.get((model, data))
    if known is not None:
        return known
    folder = Path(tempfile.mkdtemp(prefix="clare-clip-config-"))
    atexit.register(shutil.rmtree, folder, True)
    copy = folder / f"{model}.json"
    copy.write_bytes(data)
    _NAMED_CONFIGS[(model, data)] = copy
    return copy


@dataclass(frozen=True)
class ClipNetwork:
    """What `load_clip` builds: open_clip config, weights, activation, preprocessing overrides."""

    model: str
    checkpoint: str | None  # a local file; a URL-only tag; None: a tag not in the cache yet
    quick_gelu: bool
    origin: str  # where the weights come from, in words
    preprocess: dict[str, Any]


def _config_quick_gelu(model: str) -> bool:
    import open_clip

    return bool((open_clip.get_model_config(model) or {}).get("quick_gelu", False))


def _activation_fix(model: str, want_quick_gelu: bool) -> str:
    import open_clip

    if not want_quick_gelu and model.endswith("-quickgelu"):
        return f"set models.clip.model: {model.removesuffix('-quickgelu')}"
    twin = f"{model}-quickgelu"
    if want_quick_gelu and twin in open_clip.list_models():
        return f"set models.clip.model: {twin}"
    value = "true" if want_quick_gelu else "false"
    return f'set "quick_gelu": {value} in the open_clip config of \'{model}\''


def _file_network(cfg: ClipConfig) -> ClipNetwork:
    from clare.models.hub import checkpoint_origin

    path = Path(cfg.pretrained).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            f"models.clip.pretrained: checkpoint '{cfg.pretrained}' not found; get it with "
            "`clare models download --out weights` or build test models with "
            "`clare models tiny --out models/tiny`"
        )
    quick_gelu = _config_quick_gelu(cfg.model)
    origin = checkpoint_origin(path)
    if origin is not None and origin.source is not None and origin.source.quick_gelu != quick_gelu:
        # The weights were trained with one activation; the config would build the other and
        # every feature would silently differ from the tag's.
        trained = "QuickGELU" if origin.source.quick_gelu else "plain GELU"
        built = "QuickGELU" if quick_gelu else "plain GELU"
        raise ModelLoadError(
            f"models.clip.model: '{cfg.pretrained}' holds the open_clip "
            f"{origin.source.model}/{origin.source.tag} weights ({origin.repo_id}, known from "
            f"{origin.how}), trained with {trained}, but '{cfg.model}' builds {built}; "
            f"{_activation_fix(cfg.model, origin.source.quick_gelu)}"
        )
    where = f"{origin.repo_id} (from {origin.how})" if origin else "a local file"
    return ClipNetwork(cfg.model, str(path), quick_gelu, where, {})


def _tag_network(cfg: ClipConfig, local_files_only: bool, fetch: bool) -> ClipNetwork:
    import open_clip

    from clare.models.hub import resolve_tag_checkpoint, tag_source

    source = tag_source(cfg.model, cfg.pretrained)
    if source is None:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.model)) or "none"
        raise ModelLoadError(
            f"models.clip.pretrained: '{cfg.pretrained}' is neither a checkpoint file nor an "
            f"open_clip tag of '{cfg.model}' (its tags: {tags}); give a file or one of the tags"
        )
    checkpoint: str | None = cfg.pretrained
    if source.repo_id is not None:
        path = resolve_tag_checkpoint(source, local_files_only=local_files_only, fetch=fetch)
        checkpoint = str(path) if path is not None else None
    elif not fetch:
        checkpoint = None  # a URL-only tag: open_clip keeps its own cache, not looked into
    elif local_files_only:
        raise ModelLoadError(
            f"models.clip.pretrained: tag '{cfg.pretrained}' downloads from a URL but "
            "models.local_files_only is set; give a local checkpoint file"
        )
    # The tag's own activation, whatever the base config says (open_clip only warns).
    return ClipNetwork(cfg.model, checkpoint, source.quick_gelu,
                       f"open_clip tag {cfg.model}/{cfg.pretrained}", source.preprocess)


def resolve_clip(cfg: ClipConfig, *, local_files_only: bool = False, fetch: bool = True) -> ClipNetwork:
    """Decide the network `load_clip` builds, without building it.

    A tag builds what open_clip's table says for it (OpenAI's weights: QuickGELU). A local file
    builds what the model config says; a file known to hold a tag's weights (from SOURCE.json
    or its hub-cache path) under a config with the other activation is refused.
    """
    import open_clip

    register_clip_config(cfg)
    if cfg.model not in open_clip.list_models():
        raise ModelLoadError(
            f"models.clip.model: '{cfg.model}' is not an open_clip model; see "
            "open_clip.list_models() or set models.clip.model_config_file"
        )
    pretrained = cfg.pretrained
    if Path(pretrained).suffix in _WEIGHT_SUFFIXES or "/" in pretrained:
        return _file_network(cfg)
    return _tag_network(cfg, local_files_only, fetch)


def load_clip(cfg: ClipConfig, *, local_files_only: bool = False) -> ClipParts:
    """Load an open_clip model (frozen, eval mode), its own eval preprocessing and tokenizer."""
    import open_clip
    from safetensors import SafetensorError

    from clare.console import Verbosity, get_verbosity

    network = resolve_clip(cfg, local_files_only=local_files_only)
    pretrained = cfg.pretrained
    # open_clip logs on the root logger (random init, config chatter): quiet it for this load
    # only, unless the user asked for --verbose; other libraries' warnings stay visible.
    root = logging.getLogger()
    before = root.level
    if get_verbosity() is not Verbosity.VERBOSE:
        root.setLevel(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.model, pretrained=network.checkpoint, force_quick_gelu=network.quick_gelu,
            quick_gelu=network.quick_gelu, **network.preprocess,
        )
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        # A truncated or foreign checkpoint (safetensors header errors included) ends here.
        raise ModelLoadError(
            f"models.clip.pretrained: could not load '{pretrained}' for '{cfg.model}' "
            f"({one_line(exc)}); `clare models check` on the config names what is wrong"
        ) from None
    finally:
        root.setLevel(before)
    model.requires_grad_(False).eval()
    tokenizer = open_clip.get_tokenizer(cfg.model)
    return ClipParts(model, preprocess, tokenizer, cfg.model, pretrained)


def file_hash(path: Path, *, persistent: bool = True) -> str:
    """sha256 of a weight file (SD files are GBs): read once per process and, for fingerprints,
    remembered across processes (clare.hash_cache); `persistent=False` for integrity checks."""
    return weights_sha256(path, persistent=persistent)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached or not a hub id: nothing to hash
        return None


def sd_weights_fingerprint(models: ModelsConfig) -> dict[str, Any]:
    """The Stable Diffusion weights: id, revision and sha256 of every local weight/config file.

    For hub ids the resolved snapshot folder is hashed (its files are what from_pretrained
    loaded); the config alone would not notice a re-downloaded, changed revision.
    """
    sd_root: Path | None
    if looks_local(models.sd.pretrained):
        sd_root = Path(models.sd.pretrained).expanduser()
    else:
        sd_root = _hub_snapshot(models.sd.pretrained, models.sd.revision)
    sd_files: dict[str, str] = {}
    if sd_root is not None and sd_root.is_dir():
        for sub in ("vae", "unet", "text_encoder", "scheduler", "tokenizer"):
            for path in sorted((sd_root / sub).glob("*")):
                if path.is_file() and (path.suffix in _WEIGHT_SUFFIXES or path.suffix in {".json", ".txt"}):
                    sd_files[f"{sub}/{path.name}"] = file_hash(path)
    return {"pretrained": models.sd.pretrained, "revision": models.sd.revision, "files": sd_files}


def clip_weights_fingerprint(models: ModelsConfig) -> dict[str, Any]:
    """The CLIP weights: model, source, sha256 of the checkpoint and the activation it runs.

    The activation (QuickGELU or GELU) is recorded: the same weights give other features under
    the other one. A tag is hashed through its cached file; nothing downloads for a fingerprint.
    """
    network = resolve_clip(models.clip, local_files_only=True, fetch=False)
    clip_file = Path(network.checkpoint) if network.checkpoint else None
    clip_hash = file_hash(clip_file) if clip_file is not None and clip_file.is_file() else None
    clip_cfg_hash = (
        file_hash(Path(models.clip.model_config_file))
        if models.clip.model_config_file and Path(models.clip.model_config_file).is_file()
        else None
    )
    return {
        "model": models.clip.model,
        "pretrained": models.clip.pretrained,
        "quick_gelu": network.quick_gelu,
        "sha256": clip_hash,
        "model_config_sha256": clip_cfg_hash,
    }


def weights_fingerprint(models: ModelsConfig) -> dict[str, Any]:
    """Identify the exact frozen weights, SD and CLIP (the `weights` part of a store fingerprint)."""
    return {"sd": sd_weights_fingerprint(models), "clip": clip_weights_fingerprint(models)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{name}' requested but no CUDA GPU is visible; use --device cpu")
    return device
