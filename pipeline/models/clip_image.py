"""Frozen CLIP image features (docs/design.md §2.2) and the widths of a CLIP model.

Per image: `cls`, the image embedding (CLS after ln_post and proj), and `tokens`, the patch
tokens of the last transformer block *before* ln_post. open_clip's own `output_tokens` returns
tokens after ln_post, so the block output is captured with a forward hook instead.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from clare.errors import ModelLoadError
from clare.models.precision import autocast_context


class ClipDims(TypedDict):
    """Widths the store shapes and the heads are built from (docs/design.md §3)."""

    embed: int  # E: image embedding (cls)
    width: int  # W: patch-token width of the vision transformer
    grid: int  # g: side of the square patch grid
    tokens: int  # P = g * g patch tokens
    text_width: int  # T: token-embedding width of the text tower


def clip_dims(model: Any) -> ClipDims:
    """The one reading of a CLIP model's widths; refuses towers the heads cannot use."""
    visual = getattr(model, "visual", None)
    grid_size = getattr(visual, "grid_size", None)
    transformer = getattr(visual, "transformer", None)
    if visual is None or grid_size is None or transformer is None or not hasattr(
        visual, "output_dim"
    ):
        raise ModelLoadError(
            f"models.clip.model: image tower {type(visual).__name__} is not a ViT with a patch "
            "grid; use a ViT open_clip model such as ViT-L-14"
        )
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if rows != cols:
        raise ModelLoadError(
            f"models.clip.model: patch grid {rows}x{cols} is not square; use a square input size"
        )
    # CLIP keeps its text tower flat, CustomTextCLIP under `.text`.
    text = getattr(model, "text", model)
    embedding = getattr(text, "token_embedding", None)
    return ClipDims(
        embed=int(visual.output_dim),
        width=int(transformer.width),
        grid=int(rows),
        tokens=int(rows * cols),
        text_width=int(embedding.embedding_dim) if embedding is not None else 0,
    )


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
        self.n_patches = clip_dims(model)["tokens"]
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
        if block_out is None:  # the hook on the last block did not fire
            raise ModelLoadError(
                "models.clip.model: the image tower skipped its last transformer block; use a "
                "standard open_clip ViT"
            )
        if not getattr(self.visual.transformer, "batch_first", True):  # older (L, B, W) layout
            block_out = block_out.transpose(0, 1)
        # The patch tokens are the last P positions (after CLS and any register tokens).
        tokens = block_out[:, -self.n_patches :, :]
        return pooled.float().cpu(), tokens.to(torch.float16).cpu()
