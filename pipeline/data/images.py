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


class ImageDecodeError(Exception):
    """The file cannot be used; `reason` is a short, groupable label, str(exc) the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    sha256: str  # of the file bytes: the identity the seeds derive from
    width: int  # as stored in the file, before EXIF rotation
    height: int


def _to_rgb(image: Image.Image) -> Image.Image:
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


def decode_image(path: Path, *, max_pixels: int, min_size: int) -> DecodedImage:
    """Read and fully decode one image; raise ImageDecodeError with a reason on any problem."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("missing", f"{path} does not exist") from None
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{path}: {exc.strerror or exc}") from None
    if not data:
        raise ImageDecodeError("empty file", f"{path} has 0 bytes")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Our header check below is the bomb guard (with extract.max_image_pixels);
            # PIL's global one would refuse what a user raised the limit to admit.
            Image.MAX_IMAGE_PIXELS = None
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            # Check the header's claim before decoding anything (decompression bombs).
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too large", f"{width}x{height} px exceeds extract.max_image_pixels={max_pixels}"
                )
            if min(width, height) < min_size:
                raise ImageDecodeError(
                    "too small", f"{width}x{height} px is below extract.min_image_size={min_size}"
                )
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise ImageDecodeError("animated", f"{frames} frames; extract one frame first")
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image", f"{path} is not a readable image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too large", str(exc).splitlines()[0]) from None
    except (OSError, ValueError, SyntaxError) as exc:
        reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"{path}: {str(exc).splitlines()[0]}") from None
    return DecodedImage(rgb, digest, width, height)
