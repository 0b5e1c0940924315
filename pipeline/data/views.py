"""Augmented views and fixed degradations, applied to pixels before both branches.

Stage two never sees pixels, so augmentation happens at extraction (docs/design.md §2.3). Every
random choice comes from a generator seeded by (global seed, image hash, view), so a view is the
same whatever the batch, worker or order.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass

from PIL import Image, ImageFilter

from clare.config import AugmentConfig
from clare.errors import ConfigError


def derive_seed(seed: int, image_sha256: str, view: int, purpose: str) -> int:
    """A 63-bit seed that depends only on the image content, the view and what it is for."""
    text = f"{seed}:{image_sha256}:{view}:{purpose}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def augment_view(image: Image.Image, rng: random.Random, aug: AugmentConfig) -> Image.Image:
    """One seeded augmentation: resized crop (area scale), flip, JPEG, Gaussian blur."""
    width, height = image.size
    scale = rng.uniform(*aug.crop_scale)
    crop_w = max(1, round(width * scale**0.5))
    crop_h = max(1, round(height * scale**0.5))
    left = rng.randint(0, width - crop_w)
    top = rng.randint(0, height - crop_h)
    # Keep the original size so both branches resize from the same pixel count as view 0.
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    if rng.random() < aug.flip_p:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < aug.jpeg_p:
        image = _jpeg(image, rng.randint(*aug.jpeg_quality))
    if rng.random() < aug.blur_p:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*aug.blur_sigma)))
    return image


@dataclass(frozen=True)
class Perturbation:
    """One fixed degradation applied to every image of a robustness store."""

    kind: str  # "jpeg" or "blur"
    value: float

    @property
    def tag(self) -> str:
        value = int(self.value) if self.kind == "jpeg" else f"{self.value:g}"
        return f"{self.kind}{value}"

    @property
    def spec(self) -> str:
        value = int(self.value) if self.kind == "jpeg" else f"{self.value:g}"
        return f"{self.kind}={value}"

    def apply(self, image: Image.Image) -> Image.Image:
        if self.kind == "jpeg":
            return _jpeg(image, int(self.value))
        return image.filter(ImageFilter.GaussianBlur(self.value))


def parse_perturbation(text: str | None) -> Perturbation | None:
    if text is None or text == "":
        return None
    kind, sep, raw = text.partition("=")
    if not sep:  # the tag form of store names: jpeg50, blur1.5
        for prefix in ("jpeg", "blur"):
            if text.startswith(prefix):
                kind, raw = prefix, text[len(prefix):]
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if kind == "jpeg" and 1 <= value <= 100 and value == int(value):
        return Perturbation("jpeg", value)
    if kind == "blur" and value > 0:
        return Perturbation("blur", value)
    raise ConfigError(
        f"--perturb '{text}': expected jpeg=Q with Q in 1..100 or blur=SIGMA with SIGMA > 0 "
        "(or the tags jpegQ, blurSIGMA)"
    )


def make_view(
    image: Image.Image,
    *,
    seed: int,
    image_sha256: str,
    view: int,
    aug: AugmentConfig,
    perturbation: Perturbation | None,
) -> Image.Image:
    """View 0 is the clean image; views >= 1 are seeded augmentations; then the perturbation."""
    if view > 0:
        rng = random.Random(derive_seed(seed, image_sha256, view, "augment"))
        image = augment_view(image, rng, aug)
    if perturbation is not None:
        image = perturbation.apply(image)
    return image
