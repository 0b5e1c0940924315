"""Frozen CLIP image features (docs/design.md §2.2).

Per image: `cls`, the image embedding (CLS after ln_post and proj), and `tokens`, the patch
tokens of the last transformer block *before* ln_post. open_clip's own `output_tokens` returns
tokens after ln_post, so the block output is captured with a forward hook instead.
"""

from __future__ import annotations

from typing import Any

import torch

from clare.models.lare import autocast_context
from clare.models.loading import clip_dims


class ClipImageEncoder:
    def __init__(
        self,
        model: Any,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        self.visual = model.visual.to(device)
        if channels_last:
            self.visual.to(memory_format=torch.channels_last)
        self.device = device
        self.precision = precision
        dims = clip_dims(model)
        self.n_patches = dims["tokens"]
        self._captured: torch.Tensor | None = None
        self.visual.transformer.resblocks[-1].register_forward_hook(self._capture)

    def _capture(self, _module: Any, _inputs: Any, output: torch.Tensor) -> None:
        self._captured = output

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, S, S), already normalised -> cls (B, E) float32, tokens (B, P, W) fp16."""
        with autocast_context(self.device, self.precision):
            pooled = self.visual(pixels.to(self.device))
        block_out = self._captured
        self._captured = None
        if not getattr(self.visual.transformer, "batch_first", True):  # older (L, B, W) layout
            block_out = block_out.transpose(0, 1)
        # The patch tokens are the last P positions (after CLS and any register tokens).
        tokens = block_out[:, -self.n_patches :, :]
        return pooled.float().cpu(), tokens.to(torch.float16).cpu()
