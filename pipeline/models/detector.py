"""The stage-two detector: trainable heads and prompts on cached CLIP/LaRE features.

Modules (docs/design.md §3):
- fusion   (CLaRE): f = [x_g, x_s, x_c] against text_proj(prompt features), cosine logits.
- lare     (LaRE² EGRE on frozen CLIP): f with v1 attention -> Linear(3W -> 2); no text.
- clipping (CLIPping the Deception): CLS embedding against prompt features, cosine logits.

One home for building, saving and loading: `Detector.from_config(DetectorConfig, clip model,
tokenizer)`, `detector.save(folder)` and `Detector.load(folder)`. The saved `model.safetensors`
holds the trainable weights and, in its metadata, the DetectorConfig and the CLIP it was built
on, so loading needs nothing else.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from clare.config import ClipConfig, DetectorConfig, effective_spec
from clare.errors import CheckpointError, ConfigError, ModelLoadError, ShapeMismatchError
from clare.models.clip_image import ClipDims, clip_dims
from clare.models.heads import LARE_CHANNELS, FusionFeatures, LareHead
from clare.models.prompts import PromptLearner, Tokenizer

MODEL_FILE = "model.safetensors"
MODEL_FORMAT = "clare-detector/1"

_Part = TypeVar("_Part")


def _sorted_metadata(blob: bytes) -> bytes:
    """`blob`, a serialised safetensors file, with its metadata keys in sorted order.

    Why: safetensors writes the metadata map in hash order, which differs from one save to the
    next, so the same weights gave files with different bytes and a different `model_sha256`.
    Only the header's metadata is reordered; the tensors' entries and bytes stay as written.
    """
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the header is padded to 8 bytes, as safetensors pads it
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def _built(part: _Part | None, name: str, module: str) -> _Part:
    """A part `from_config` always builds for this module; None only in a hand-wired detector."""
    if part is None:
        raise ModelLoadError(
            f"detector module '{module}' has no {name}; build it with Detector.from_config"
        )
    return part


def _cosine_logits(image: Tensor, text: Tensor, scale: Tensor) -> Tensor:
    """image (B, D); text (n_cls, D) shared or (B, n_cls, D) per image -> (B, n_cls)."""
    image = F.normalize(image, dim=-1)
    text = F.normalize(text.to(image.dtype), dim=-1)
    if text.dim() == 2:
        cosine = image @ text.t()
    else:
        cosine = torch.einsum("bd,bcd->bc", image, text)
    return scale.exp().to(cosine.dtype) * cosine


def detector_config(values: DetectorConfig | Mapping[str, Any], source: str = "fit") -> DetectorConfig:
    """A DetectorConfig from itself or a mapping; a bad value is a ConfigError naming `source.key`."""
    if isinstance(values, DetectorConfig):
        return values
    try:
        return DetectorConfig.model_validate(dict(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        shown = repr(err.get("input"))[:80]
        raise ConfigError(f"{source}.{key}={shown}: {err['msg']}") from None


def _effective_spec(config: DetectorConfig) -> dict[str, str]:
    """What the module really uses (clare.config.effective_spec)."""
    return effective_spec(config.module, config.strategy, config.attention)


class Detector(nn.Module):
    """forward(cls, tokens, lare) -> logits (B, 2); p(fake) is `clare.scoring.fake_probability`."""

    logit_scale: Tensor  # buffer, registered in __init__

    def __init__(
        self,
        config: DetectorConfig,
        dims: ClipDims,
        *,
        features: FusionFeatures | None = None,
        head: LareHead | None = None,
        prompt: PromptLearner | None = None,
        text_proj: nn.Module | None = None,
        logit_scale: Tensor | None = None,
        clip: ClipConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.clip_config = clip  # the CLIP to rebuild the frozen parts from when loading
        spec = _effective_spec(config)
        self.module_name = spec["module"]
        self.strategy = spec["strategy"]
        self.attention = spec["attention"]
        self.grid = dims["grid"]
        self.features = features
        self.head = head
        self.prompt = prompt
        self.text_proj = text_proj
        # CLIP's own temperature, frozen: a buffer so it moves with .to() but never trains.
        scale = torch.zeros(()) if logit_scale is None else logit_scale.detach().float().reshape(())
        self.register_buffer("logit_scale", scale.clone(), persistent=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(
        cls,
        config: DetectorConfig | Mapping[str, Any],
        clip_model: nn.Module,
        tokenizer: Tokenizer,
        *,
        clip: ClipConfig | None = None,
    ) -> Detector:
        """Wire a detector from a (frozen) open_clip model; only its text parts are kept.

        `clip` names that model so `load` can rebuild it; without it, `load` needs it given.
        """
        config = detector_config(config)
        dims = clip_dims(clip_model)
        if config.module == "lare":
            head = LareHead(dims["embed"], dims["grid"], dims["width"], config.head, config.dropout)
            return cls(config, dims, head=head, clip=clip)
        logit_scale = getattr(clip_model, "logit_scale", None)
        if logit_scale is None:
            raise ModelLoadError(
                f"{type(clip_model).__name__} has no logit_scale; use an open_clip CLIP model"
            )
        if config.module == "fusion":
            features = FusionFeatures(dims["embed"], dims["grid"], dims["width"], config.attention,
                                      config.head, config.dropout)
            prompt = PromptLearner.from_clip(clip_model, tokenizer, config.prompt, config.strategy,
                                             features.feature_dim)
            text_proj = nn.Linear(prompt.text_encoder.output_dim, features.feature_dim)
            return cls(config, dims, features=features, prompt=prompt, text_proj=text_proj,
                       logit_scale=logit_scale, clip=clip)
        prompt = PromptLearner.from_clip(clip_model, tokenizer, config.prompt, config.strategy,
                                         dims["embed"])
        return cls(config, dims, prompt=prompt, logit_scale=logit_scale, clip=clip)

    # ------------------------------------------------------------------ saving and loading
    def save(self, directory: Path) -> Path:
        """Write `<directory>/model.safetensors`: trainable weights + config + CLIP identity."""
        from safetensors.torch import save

        from clare.files import atomic_write_bytes

        path = Path(directory) / MODEL_FILE
        metadata = {
            "format": MODEL_FORMAT,
            "detector": json.dumps(self.config.model_dump(mode="json")),
            "clip": json.dumps(None if self.clip_config is None
                               else self.clip_config.model_dump(mode="json")),
        }
        state = self.trainable_state_dict()
        # Serialised in memory first: a full disk is then an OSError naming the file, not an
        # error from inside the serialiser.
        atomic_write_bytes(path, _sorted_metadata(save(state, metadata=metadata)))
        return path

    @staticmethod
    def read_header(path: Path) -> tuple[DetectorConfig, ClipConfig | None]:
        """The DetectorConfig and CLIP identity recorded in a saved model file."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - truncated or foreign files end here
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_first_line(exc)}); refit the run"
            ) from None
        if metadata.get("format") != MODEL_FORMAT:
            raise CheckpointError(
                f"{path}: not a {MODEL_FORMAT} model file (format {metadata.get('format')!r}); "
                "refit the run with this version of clare"
            )
        try:
            config = DetectorConfig.model_validate(json.loads(metadata["detector"]))
            clip_values = json.loads(metadata.get("clip", "null"))
            clip = None if clip_values is None else ClipConfig.model_validate(clip_values)
        except (KeyError, ValueError, ValidationError) as exc:
            raise CheckpointError(
                f"{path}: malformed detector record in the file's metadata ({_first_line(exc)}); "
                "refit the run"
            ) from None
        return config, clip

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        device: torch.device | str = "cpu",
        clip_model: nn.Module | None = None,
        tokenizer: Tokenizer | None = None,
        local_files_only: bool = False,
    ) -> Detector:
        """Rebuild a saved detector (eval mode, on `device`) from `<directory>/model.safetensors`.

        The frozen CLIP parts come from the CLIP the file names, unless a model and tokenizer
        are given (they must be that CLIP); `local_files_only` keeps that load off the network.
        """
        from safetensors.torch import load_file

        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: no model file; train one with `clare fit --config CONFIG`")
        config, clip = cls.read_header(path)
        if clip_model is None or tokenizer is None:
            if clip is None:
                raise CheckpointError(
                    f"{path}: records no CLIP model; pass the CLIP it was trained with"
                )
            from clare.models.loading import load_clip

            parts = load_clip(clip, local_files_only=local_files_only)
            clip_model, tokenizer = parts.model, parts.tokenizer
        detector = cls.from_config(config, clip_model, tokenizer, clip=clip)
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged tensor section ends here
            raise CheckpointError(f"{path}: unreadable weights ({_first_line(exc)}); refit the run") from None
        _require_finite(state, path)
        detector.load_trainable_state_dict(state, source=str(path))
        return detector.to(device).eval()

    # ------------------------------------------------------------------ description
    @property
    def spec(self) -> dict[str, str]:
        """What a checkpoint must have been trained with to load into this detector."""
        return {"module": self.module_name, "strategy": self.strategy, "attention": self.attention}

    @property
    def needs_tokens(self) -> bool:
        return self.module_name != "clipping"

    @property
    def needs_lare(self) -> bool:
        return self.module_name != "clipping"

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, tokens: Tensor | None, lare: Tensor | None) -> None:
        if not self.needs_tokens:
            return
        if tokens is None or lare is None:
            raise ShapeMismatchError(
                f"module '{self.module_name}' needs patch tokens and the LaRE map; read them "
                "from the store (read_tokens and read_lare)"
            )
        expected = self.grid * self.grid
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise ShapeMismatchError(
                f"feature store patch tokens have shape {tuple(tokens.shape[1:])} but the CLIP model "
                f"expects {expected} tokens ({self.grid}x{self.grid}); rebuild the store with the "
                "same models.clip"
            )
        if lare.dim() != 4 or lare.shape[1] != LARE_CHANNELS:
            raise ShapeMismatchError(
                f"feature store LaRE maps have shape {tuple(lare.shape[1:])}, expected "
                f"({LARE_CHANNELS}, H, W); rebuild the store"
            )

    def forward(
        self, cls: Tensor, tokens: Tensor | None = None, lare: Tensor | None = None
    ) -> Tensor:
        self._check_inputs(tokens, lare)
        if self.module_name == "lare":
            return _built(self.head, "head", self.module_name)(cls, tokens, lare)
        prompt = _built(self.prompt, "prompt", self.module_name)
        if self.module_name == "fusion":
            image = _built(self.features, "features", self.module_name)(cls, tokens, lare)
            text = _built(self.text_proj, "text_proj", self.module_name)(prompt(image))
        else:
            image = cls.float()
            text = prompt(image)
        return _cosine_logits(image, text, self.logit_scale)

    @torch.no_grad()
    def attention_map(self, cls: Tensor, tokens: Tensor, lare: Tensor) -> Tensor | None:
        """The fusion head's LaRE-guided attention over the patch grid, (B, g, g), mean over
        heads (the mean token's own weight left out); None for `clipping`, which has none.
        A separate pass through the same attention module: forward's outputs are untouched."""
        features = self.features if self.module_name == "fusion" else (
            self.head.features if self.head is not None else None)
        if features is None:
            return None
        dtype = next(features.parameters()).dtype
        _pooled, weights = features.attention(tokens.to(dtype), lare, return_attention=True)
        patches = weights.mean(dim=1)[:, 1:]  # (B, P)
        return patches.reshape(-1, self.grid, self.grid)

    def use_exact_shortcuts(self, enabled: bool = True) -> Detector:
        """Turn the exact speed-ups of the parts (prompt truncation at the end token, the
        sequence-first text tower, the v2 lift on the mean) on or off; off is the straightforward
        computation, kept so tests can prove the two agree. On by default."""
        for part in self.modules():
            if hasattr(part, "exact_shortcuts"):
                setattr(part, "exact_shortcuts", enabled)  # noqa: B010 - untyped on Module
        return self

    # ------------------------------------------------------------------ trainable state
    def _frozen_prefixes(self) -> tuple[str, ...]:
        return tuple(
            f"{name}."
            for name, mod in self.named_modules()
            if getattr(mod, "frozen_backbone", False)
        )

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        frozen = self._frozen_prefixes()
        return [
            (name, param)
            for name, param in self.named_parameters()
            if param.requires_grad and not name.startswith(frozen)
        ]

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Optimiser groups: 'prompt' (context + meta-net) and 'head' (everything else trained)."""
        groups: dict[str, list[nn.Parameter]] = {"prompt": [], "head": []}
        for name, param in self.named_trainable_parameters():
            groups["prompt" if name.startswith("prompt.") else "head"].append(param)
        return groups

    def trainable_state_dict(self) -> OrderedDict[str, Tensor]:
        """Only the trained weights (copies), not the frozen CLIP text tower."""
        return OrderedDict(
            (name, param.detach().clone()) for name, param in self.named_trainable_parameters()
        )

    def load_trainable_state_dict(
        self, state: dict[str, Tensor], source: str = "checkpoint"
    ) -> None:
        own = dict(self.named_trainable_parameters())
        self._check_keys(own, state, source)
        for name, param in own.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"{source}: '{name}' has shape {tuple(value.shape)} but this detector needs "
                    f"{tuple(param.shape)}; load it with the CLIP model and prompt settings it was "
                    "trained with"
                )
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(state[name].to(device=param.device, dtype=param.dtype))

    def _check_keys(self, own: Mapping[str, Any], state: Mapping[str, Any], source: str) -> None:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if not missing and not unexpected:
            return
        spec = ", ".join(f"{k}={v}" for k, v in self.spec.items())
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise CheckpointError(
            f"{source}: weights do not fit a detector with {spec} ({'; '.join(detail)} keys); "
            "load it with the fit settings it was trained with"
        )


def _require_finite(state: Mapping[str, Tensor], path: Path) -> None:
    """Weights with NaN or inf score every image NaN: the model is at fault, not the images."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or inf, so every score would be "
                                  "undefined; the trained model is damaged, refit the run")


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
