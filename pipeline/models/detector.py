"""The stage-two detector: trainable heads and prompts on cached CLIP/LaRE features.

Modules (docs/design.md §3):
- fusion   (CLaRE): f = [x_g, x_s, x_c] against text_proj(prompt features), cosine logits.
- lare     (LaRE² EGRE on frozen CLIP): f with v1 attention -> Linear(3W -> 2); no text.
- clipping (CLIPping the Deception): CLS embedding against prompt features, cosine logits.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clare.config import PromptConfig
from clare.errors import ClareError, ConfigError, ModelLoadError, StoreError
from clare.models.heads import FusionFeatures, LareHead
from clare.models.prompts import PromptLearner, Tokenizer

Module = Literal["fusion", "lare", "clipping"]
MODULES = ("fusion", "lare", "clipping")
STRATEGIES = ("coop", "cocoop")
ATTENTIONS = ("v1", "v2")


def vision_dims(clip_model: nn.Module) -> tuple[int, int, int]:
    """(E, g, W): image embedding width, patch grid side, patch-token width of a ViT tower."""
    visual = getattr(clip_model, "visual", None)
    grid_size = getattr(visual, "grid_size", None)
    transformer = getattr(visual, "transformer", None)
    if grid_size is None or transformer is None or not hasattr(visual, "output_dim"):
        raise ModelLoadError(
            f"CLIP image tower {type(visual).__name__} is not a ViT with a patch grid; "
            "set models.clip.model to a ViT open_clip model such as ViT-L-14"
        )
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if rows != cols:
        raise ModelLoadError(
            f"CLIP patch grid {rows}x{cols} is not square; use a square input size"
        )
    return int(visual.output_dim), int(rows), int(transformer.width)


def _cosine_logits(image: Tensor, text: Tensor, scale: Tensor) -> Tensor:
    """image (B, D); text (n_cls, D) shared or (B, n_cls, D) per image -> (B, n_cls)."""
    image = F.normalize(image, dim=-1)
    text = F.normalize(text.to(image.dtype), dim=-1)
    if text.dim() == 2:
        cosine = image @ text.t()
    else:
        cosine = torch.einsum("bd,bcd->bc", image, text)
    return scale.exp().to(cosine.dtype) * cosine


class Detector(nn.Module):
    """forward(cls, tokens, lare) -> logits (B, 2); p(fake) = softmax(logits)[:, 1]."""

    def __init__(
        self,
        module: Module,
        strategy: str,
        attention: str,
        grid: int,
        *,
        features: FusionFeatures | None = None,
        head: LareHead | None = None,
        prompt: PromptLearner | None = None,
        text_proj: nn.Module | None = None,
        logit_scale: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.module_name = module
        self.strategy = strategy
        self.attention = attention
        self.grid = grid
        self.features = features
        self.head = head
        self.prompt = prompt
        self.text_proj = text_proj
        # CLIP's own temperature, frozen: a buffer so it moves with .to() but never trains.
        scale = torch.zeros(()) if logit_scale is None else logit_scale.detach().float().reshape(())
        self.register_buffer("logit_scale", scale.clone(), persistent=False)

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
            raise ValueError(f"module '{self.module_name}' needs patch tokens and the LaRE map")
        expected = self.grid * self.grid
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise StoreError(
                f"feature store patch tokens have shape {tuple(tokens.shape[1:])} but the CLIP model "
                f"expects {expected} tokens ({self.grid}x{self.grid}); rebuild the store with the "
                "same models.clip"
            )
        if lare.dim() != 4 or lare.shape[1] != 4:
            raise StoreError(
                f"feature store LaRE maps have shape {tuple(lare.shape[1:])}, expected (4, H, W); "
                "rebuild the store"
            )

    def forward(
        self, cls: Tensor, tokens: Tensor | None = None, lare: Tensor | None = None
    ) -> Tensor:
        self._check_inputs(tokens, lare)
        if self.module_name == "lare":
            return self.head(cls, tokens, lare)
        if self.module_name == "fusion":
            image = self.features(cls, tokens, lare)
            text = self.text_proj(self.prompt(image))
        else:
            image = cls.float()
            text = self.prompt(image)
        return _cosine_logits(image, text, self.logit_scale)

    @staticmethod
    def fake_probability(logits: Tensor) -> Tensor:
        return logits.float().softmax(dim=-1)[:, 1]

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
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            spec = ", ".join(f"{k}={v}" for k, v in self.spec.items())
            detail = []
            if missing:
                detail.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
            if unexpected:
                detail.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
            raise ClareError(
                f"{source}: weights do not fit a detector with {spec} ({'; '.join(detail)} keys); "
                "load it with the fit settings it was trained with"
            )
        for name, param in own.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ClareError(
                    f"{source}: '{name}' has shape {tuple(value.shape)} but this detector needs "
                    f"{tuple(param.shape)}; load it with the CLIP model and prompt settings it was "
                    "trained with"
                )
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(state[name].to(device=param.device, dtype=param.dtype))


def build_detector(
    module: str,
    strategy: str,
    attention: str,
    clip_model: nn.Module,
    tokenizer: Tokenizer,
    prompt_cfg: PromptConfig,
    dropout: float = 0.1,
) -> Detector:
    """Wire a detector from a (frozen) open_clip model; only its text parts are kept.

    `lare` always uses v1 attention and has no prompts, so it ignores strategy and attention.
    """
    if module not in MODULES:
        raise ConfigError(f"fit.module={module!r}: expected one of {', '.join(MODULES)}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"fit.strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if attention not in ATTENTIONS:
        raise ConfigError(f"fit.attention={attention!r}: expected one of {', '.join(ATTENTIONS)}")
    embed_dim, grid, width = vision_dims(clip_model)

    if module == "lare":
        head = LareHead(embed_dim, grid, width, dropout=dropout)
        return Detector("lare", "none", "v1", grid, head=head)

    logit_scale = getattr(clip_model, "logit_scale", None)
    if logit_scale is None:
        raise ModelLoadError(
            f"{type(clip_model).__name__} has no logit_scale; use an open_clip CLIP model"
        )
    if module == "fusion":
        features = FusionFeatures(embed_dim, grid, width, attention, dropout=dropout)  # type: ignore[arg-type]
        prompt = PromptLearner.from_clip(
            clip_model,
            tokenizer,
            prompt_cfg,
            strategy,
            features.feature_dim,  # type: ignore[arg-type]
        )
        text_proj = nn.Linear(prompt.text_encoder.output_dim, features.feature_dim)
        return Detector(
            "fusion",
            strategy,
            attention,
            grid,
            features=features,
            prompt=prompt,
            text_proj=text_proj,
            logit_scale=logit_scale,
        )
    prompt = PromptLearner.from_clip(clip_model, tokenizer, prompt_cfg, strategy, embed_dim)  # type: ignore[arg-type]
    return Detector("clipping", strategy, "none", grid, prompt=prompt, logit_scale=logit_scale)
