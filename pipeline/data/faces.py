"""Face crops for `clare predict --faces detect`: the largest face, with a margin.

DF40's images are aligned face crops and the detector is trained on them, so a photograph of
a whole scene is cropped to its largest face first. The detector is scikit-image's LBP
frontal-face cascade (`skimage.feature.Cascade` with the cascade file that ships inside the
scikit-image wheel): BSD-licensed, maintained, and nothing is downloaded at run time. It is
an optional extra (`pip install 'clare[faces]'`).

The crop is the detection box enlarged 1.3x about its centre to a square, then clipped to the
image (DF40's crops keep a margin around the face; docs/design.md fixes no number, so 1.3x is
our choice); the stage-one code path then sees the crop as it would see any image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from clare.data.images import DecodedImage, ImageDecodeError, pixels_sha256
from clare.errors import ConfigError

FACES_EXTRA = "pip install 'clare[faces]'"
FACE_MODES = ("none", "detect")
MARGIN = 1.3  # side of the crop / side of the detected face box
DETECT_SIDE = 640  # the detector sees the image scaled down to this longer side (speed)
MIN_FACE_FRACTION = 0.1  # smallest face searched for, as a fraction of the shorter side
MIN_WINDOW = 24  # the cascade's own window: no face smaller than this can be found
SCALE_STEP = 1.2  # window growth per scale of the multi-scale search


class FaceBox(NamedTuple):
    """A box in pixels of the image as decoded (EXIF orientation applied); x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


def check_face_mode(mode: str) -> str:
    """The `--faces` value, checked; `detect` also needs the extra to be installed."""
    if mode not in FACE_MODES:
        raise ConfigError(f"--faces {mode!r}: expected one of {', '.join(FACE_MODES)}")
    if mode == "detect":
        try:
            import skimage.feature  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--faces detect needs the face detector extra: {FACES_EXTRA}"
            ) from None
    return mode


def margin_box(face: FaceBox, width: int, height: int, margin: float = MARGIN) -> FaceBox:
    """The square of side `margin` x the face box's longer side about its centre, clipped to
    the image (so a face at the border gives a crop that is not square)."""
    centre_x, centre_y = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2
    half = margin * max(face.x1 - face.x0, face.y1 - face.y0) / 2
    return FaceBox(max(0, int(round(centre_x - half))), max(0, int(round(centre_y - half))),
                   min(width, int(round(centre_x + half))), min(height, int(round(centre_y + half))))


_local = threading.local()


def _cascade() -> Any:
    """One cascade per thread: predict decodes (and detects) in a thread pool."""
    if not hasattr(_local, "cascade"):
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        _local.cascade = Cascade(lbp_frontal_face_cascade_filename())
    return _local.cascade


def largest_face(image: Image.Image) -> FaceBox | None:
    """The largest face the cascade finds (None when it finds none), in `image`'s pixels."""
    scale = min(1.0, DETECT_SIDE / max(image.size))
    small = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR)
    gray = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
    shorter = min(gray.shape)
    smallest = max(MIN_WINDOW, int(MIN_FACE_FRACTION * shorter))
    if smallest > shorter:
        return None
    found = _cascade().detect_multi_scale(img=gray, scale_factor=SCALE_STEP, step_ratio=1,
                                          min_size=(smallest, smallest), max_size=(shorter, shorter))
    if not found:
        return None
    best = max(found, key=lambda box: box["width"] * box["height"])
    return FaceBox(int(best["c"] / scale), int(best["r"] / scale),
                   min(image.width, int(round((best["c"] + best["width"]) / scale))),
                   min(image.height, int(round((best["r"] + best["height"]) / scale))))


@dataclass
class FaceCrop:
    """Crops a decoded image to its largest face (with the margin) and remembers the box.

    One instance per input: `box` is the crop box in the decoded image, for the predictions'
    face columns. No face is an ImageDecodeError with reason "no face" (a failed row)."""

    name: str
    box: FaceBox | None = None
    source_size: tuple[int, int] | None = None  # the input's width and height, as stored

    def __call__(self, decoded: DecodedImage) -> DecodedImage:
        self.source_size = (decoded.width, decoded.height)
        face = largest_face(decoded.image)
        if face is None:
            raise ImageDecodeError("no face", f"the face detector found none in {self.name}")
        self.box = margin_box(face, *decoded.image.size)
        crop = decoded.image.crop(self.box)
        # The crop is new content: its identity (the LaRE noise seed) is its own pixels'.
        return DecodedImage(crop, pixels_sha256(crop), crop.width, crop.height)
