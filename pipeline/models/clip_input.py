"""The CLIP branch's input tensor, by recipe (`models.clip.input`, docs/design.md §2.2 and §7).

- `open_clip`: the model's own eval transform (shorter side to the input size with bicubic,
  centre crop, OpenAI mean/std).
- `clare-paper`: the CLaRE code's steps, for numbers next to its published ones. The reference
  reads with cv2 (BGR); a file whose name ends in `.png` is saved by PIL as JPEG quality 95
  from that BGR array *as if it were RGB* and decoded again; BGR becomes RGB; cv2.resize to a
  square of the input size with INTER_CUBIC (Keys a = -0.75, no antialiasing, no crop, the
  8-bit result rounded); ToTensor; mean = std = 0.5.

cv2 is not a dependency: the cubic resize is torch's bicubic (the same kernel, a = -0.75, with
half-pixel centres and clamped borders), evaluated in float64 and rounded half up to 8 bits as
cv2 does. cv2's fixed-point weights differ from it by one level in about 7 of a million pixels
(docs/design.md §7).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

OPEN_CLIP = "open_clip"
CLARE_PAPER = "clare-paper"
# What the store fingerprint records for each recipe: a store made with one is never read as
# the other. The open_clip text is the one stores recorded before recipes existed.
FINGERPRINT_TEXT = {
    OPEN_CLIP: "open_clip model default (eval)",
    CLARE_PAPER: "clare-paper: cv2-style BGR read; .png re-encoded as JPEG q95 from the BGR array "
                 "as if RGB; square INTER_CUBIC resize (a=-0.75, no antialias, 8-bit); mean=std=0.5",
}
PAPER_JPEG_QUALITY = 95
PAPER_MEAN = 0.5
PAPER_STD = 0.5


def clip_resize_side(preprocess: Any) -> int | None:
    """The shorter side CLIP's preprocessing resizes to (torchvision `Resize(int)`), or None
    when it resizes to a fixed size (whose output is bounded anyway)."""
    from torchvision.transforms import Resize

    for step in getattr(preprocess, "transforms", ()):
        if isinstance(step, Resize):
            size = step.size
            if isinstance(size, int):
                return size
            if isinstance(size, (list, tuple)) and len(size) == 1:
                return int(size[0])
    return None


def bgr_as_rgb_jpeg(rgb: np.ndarray, quality: int = PAPER_JPEG_QUALITY) -> np.ndarray:
    """The reference's PNG step on an RGB array: its BGR array saved as JPEG by PIL, which
    takes it for RGB (so the colour transform and chroma subsampling see swapped channels),
    decoded again; returned in RGB order."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    buffer = io.BytesIO()
    Image.fromarray(bgr, mode="RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as reread:
        back = np.asarray(reread.convert("RGB"))
    return np.ascontiguousarray(back[..., ::-1])


def cubic_resize_levels(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float64 holding 8-bit levels: cv2.resize with
    INTER_CUBIC to a square, rounded half up and saturated like cv2's 8-bit output."""
    pixels = torch.from_numpy(np.array(rgb, dtype=np.float64)).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False,
                            antialias=False)
    return torch.floor(resized + 0.5).clamp_(0, 255)[0]


def paper_pixels(image: Image.Image, name: str, size: int) -> torch.Tensor:
    """The clare-paper CLIP input of one image (the decoded view) whose file is `name`."""
    rgb = np.asarray(image.convert("RGB"))
    if name.lower().endswith(".png"):
        rgb = bgr_as_rgb_jpeg(rgb)
    levels = cubic_resize_levels(rgb, size).to(torch.float32)
    # ToTensor then Normalize, in float32 as torchvision computes them.
    return (levels / 255.0 - PAPER_MEAN) / PAPER_STD


def model_input_size(model: Any) -> int:
    """The square side the CLIP image tower takes (224 for ViT-L/14)."""
    size = getattr(model.visual, "image_size", None)
    sides = {size} if isinstance(size, int) else set(size or ())
    if len(sides) != 1:
        from clare.errors import ModelLoadError

        raise ModelLoadError(f"models.clip.model: image tower input size {size!r} is not one "
                             "square side; the clare-paper input needs a square input")
    return int(sides.pop())


class ClipInput:
    """Callable: (decoded view, file name) -> the CLIP branch's input tensor (3, S, S)."""

    def __init__(self, recipe: str, transform: Any, size: int) -> None:
        self.recipe = recipe
        self.transform = transform
        self.size = size

    def __call__(self, image: Image.Image, name: str = "") -> torch.Tensor:
        if self.recipe == CLARE_PAPER:
            return paper_pixels(image, name, self.size)
        return self.transform(image)

    @property
    def resize_side(self) -> int | None:
        """The shorter side of an aspect-keeping resize (bounded by max_image_pixels), or
        None for a fixed-size resize."""
        return clip_resize_side(self.transform) if self.recipe == OPEN_CLIP else None


def clip_input(recipe: str, model: Any, transform: Any) -> ClipInput:
    """The recipe's input for a loaded CLIP model and its open_clip eval transform."""
    return ClipInput(recipe, transform, model_input_size(model))
