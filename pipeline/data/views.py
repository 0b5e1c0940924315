"""Augmented views and fixed degradations, applied to pixels before both branches.

Stage two never sees pixels, so augmentation happens at extraction (docs/design.md §2.3). Every
random choice comes from a generator seeded by (global seed, image hash, view), so a view is the
same whatever the batch, worker or order.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageFilter

from clare.config import BLUR_SIGMA_MAX, JPEG_QUALITY_RANGE, AugmentConfig
from clare.errors import ConfigError, short_repr


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


# The fixed degradations a robustness store can be built under: kind -> what the value means.
PERTURBATION_KINDS: dict[str, str] = {
    "jpeg": "JPEG quality (lower = harsher)",
    "blur": "Gaussian blur σ",
}
_STORE_NAME = re.compile(r"^.+-(?P<tag>(?:jpeg|blur)[0-9.eE+-]+)$")


@dataclass(frozen=True)
class Perturbation:
    """One fixed degradation applied to every image of a robustness store."""

    kind: str  # "jpeg" or "blur"
    value: float

    @property
    def _value_text(self) -> str:
        return str(int(self.value)) if self.kind == "jpeg" else f"{self.value:g}"

    @property
    def tag(self) -> str:
        """The form used in store names: jpeg50, blur1.5."""
        return f"{self.kind}{self._value_text}"

    @property
    def spec(self) -> str:
        """The form used on the command line and in the config: jpeg=50, blur=1.5."""
        return f"{self.kind}={self._value_text}"

    def apply(self, image: Image.Image) -> Image.Image:
        if self.kind == "jpeg":
            return _jpeg(image, int(self.value))
        return image.filter(ImageFilter.GaussianBlur(self.value))


def _split_spec(text: str) -> tuple[str, str]:
    """`jpeg=50` or the tag form `jpeg50` -> ("jpeg", "50")."""
    kind, sep, raw = text.partition("=")
    if sep:
        return kind.strip(), raw.strip()
    for prefix in PERTURBATION_KINDS:
        if text.startswith(prefix):
            return prefix, text[len(prefix):]
    return text, ""


def _valid_value(kind: str, raw: str) -> float | None:
    """The parameter when it is finite and in range for its kind, else None."""
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if kind == "jpeg":
        low, high = JPEG_QUALITY_RANGE
        return value if low <= value <= high and value == int(value) else None
    if kind == "blur":
        return value if 0 < value <= BLUR_SIGMA_MAX else None
    return None


def parse_perturbation(text: str | None, where: str = "--perturb") -> Perturbation | None:
    """The one parser of perturbation specs (`jpeg=50`, `blur=1.5`) and tags (`jpeg50`).

    Unknown kinds, non-numbers, non-finite values and values out of range raise ConfigError
    naming `where` (the option or config key the text came from)."""
    if text is None or text == "":
        return None
    kind, raw = _split_spec(text)
    value = _valid_value(kind, raw)
    if value is None:
        low, high = JPEG_QUALITY_RANGE
        raise ConfigError(
            f"{where} {short_repr(text)}: expected jpeg=Q with an integer Q in {low}..{high} or "
            f"blur=SIGMA with 0 < SIGMA <= {BLUR_SIGMA_MAX:g} (or the tags jpegQ, blurSIGMA)"
        )
    return Perturbation(kind, value)


def perturbation_of_store(name: str) -> Perturbation | None:
    """The perturbation a store name carries (`test-jpeg50` -> jpeg=50), or None."""
    match = _STORE_NAME.match(name)
    if match is None:
        return None
    try:
        return parse_perturbation(match["tag"])
    except ConfigError:
        return None


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
