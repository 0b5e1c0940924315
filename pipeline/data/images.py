"""Decoding images from disk, strictly: a file either decodes to RGB or fails with a reason.

Nothing is substituted for a failed file (the research code we replace silently swapped in
another sample); the caller records the failure as a row with status `failed`.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clare.config import ExtractConfig
from clare.errors import one_line

_DEFAULT_MAX_ASPECT_RATIO: float = ExtractConfig.model_fields["max_aspect_ratio"].default
# A failure text is stored in the manifest and printed: keep it one bounded line.
_FAILURE_LIMIT = 1000


class ImageDecodeError(Exception):
    """The file cannot be used; `reason` is a short, groupable label, str(exc) the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(one_line(f"{reason}: {detail}", _FAILURE_LIMIT))
        self.reason = reason


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    sha256: str  # of the file bytes: the identity the seeds derive from
    width: int  # as stored in the file, before EXIF rotation
    height: int


def pixels_sha256(image: Image.Image) -> str:
    """The identity of pixels that have no file of their own (a video frame, a face crop):
    sha256 of the RGB bytes and the size."""
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: PIL's convert would clip at 255; rescale the full range instead.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        # Palette images may carry transparency; go through RGBA so PIL keeps colours exact.
        image = image.convert("RGBA")
    return image.convert("RGB")


def check_dimensions(width: int, height: int, *, max_pixels: int, min_size: int,
                     max_aspect_ratio: float) -> None:
    """Refuse a size before any pixel is decoded: too many pixels (decompression bombs), a
    side below `min_size`, or a shape so elongated that a shorter-side resize explodes it."""
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too large", f"{width}x{height} px exceeds extract.max_image_pixels={max_pixels}"
        )
    if min(width, height) < min_size:
        raise ImageDecodeError(
            "too small", f"{width}x{height} px is below extract.min_image_size={min_size}"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise ImageDecodeError(
            "extreme aspect ratio",
            f"{width}x{height} px is {ratio:.0f}:1, above extract.max_aspect_ratio="
            f"{max_aspect_ratio:g}; crop the image or raise the limit",
        )


def check_resize(width: int, height: int, shorter_side: int, *, max_pixels: int) -> None:
    """Refuse an image whose resize to `shorter_side` (CLIP's preprocessing keeps the aspect
    ratio) would hold more than `max_pixels`: the bound holds after every resize too."""
    scale = shorter_side / min(width, height)
    new_width, new_height = round(width * scale), round(height * scale)
    if new_width * new_height > max_pixels:
        raise ImageDecodeError(
            "too large after resize",
            f"{width}x{height} px resized to a shorter side of {shorter_side} px would be "
            f"{new_width}x{new_height} px, above extract.max_image_pixels={max_pixels}",
        )


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("missing", f"{path} does not exist") from None
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{path}: {exc.strerror or one_line(exc)}") from None
    if not data:
        raise ImageDecodeError("empty file", f"{path} has 0 bytes")
    return data


def _open_and_decode(data: bytes, *, max_pixels: int, min_size: int,
                     max_aspect_ratio: float) -> tuple[Image.Image, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Our header check below is the bomb guard (with extract.max_image_pixels);
        # PIL's global one would refuse what a user raised the limit to admit.
        Image.MAX_IMAGE_PIXELS = None
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        # Check the header's claim before decoding anything (decompression bombs).
        check_dimensions(width, height, max_pixels=max_pixels, min_size=min_size,
                         max_aspect_ratio=max_aspect_ratio)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ImageDecodeError("animated", f"{frames} frames; extract one frame first")
        image.load()
        return to_rgb(ImageOps.exif_transpose(image)), width, height


def decode_failure(path: Path | str, exc: Exception) -> ImageDecodeError:
    """The failed-row reason for an exception a decoder raised."""
    if isinstance(exc, UnidentifiedImageError):
        return ImageDecodeError("not an image", f"{path} is not a readable image file")
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageDecodeError("too large", one_line(exc))
    if isinstance(exc, MemoryError):
        return ImageDecodeError("too large", f"{path}: out of memory while decoding")
    if isinstance(exc, (OSError, ValueError, SyntaxError)):
        reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        return ImageDecodeError(reason, f"{path}: {one_line(exc)}")
    # Any other exception of a decoder plugin is still this file's problem, not the run's.
    return ImageDecodeError("decoder error", f"{path}: {type(exc).__name__}: {one_line(exc)}")


def decode_image(path: Path, *, max_pixels: int, min_size: int,
                 max_aspect_ratio: float = _DEFAULT_MAX_ASPECT_RATIO) -> DecodedImage:
    """Read and fully decode one image; raise ImageDecodeError with a reason on any problem."""
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    try:
        rgb, width, height = _open_and_decode(data, max_pixels=max_pixels, min_size=min_size,
                                              max_aspect_ratio=max_aspect_ratio)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a failed row
        raise decode_failure(path, exc) from None
    return DecodedImage(rgb, digest, width, height)
