"""Face crops for `clare predict --faces detect`: the largest face, aligned like DF40's crops.

DF40's images are aligned face crops and the detector is trained on them, so a photograph of
a whole scene is cut down to its largest face first, by DF40's own rule (docs/design.md §2.4):

1. Find the faces and five landmarks each (eye centres, nose tip, mouth corners). The finder
   is MTCNN from `facenet-pytorch` (MIT licence; its three small networks, 2 MB, ship inside
   the wheel and load as plain state dicts, so nothing downloads or runs as code). It looks
   for faces down to `MIN_FACE_FRACTION` of the image's shorter side.
2. Keep the largest box (DF40 keeps the biggest face too) and measure its landmarks again in
   the crop they give, where the face is upright and large (`refine_landmarks`).
3. Fit the similarity transform (rotation, one scale, shift; least squares) that carries the
   five landmarks onto the five-point reference of face-recognition alignment, drawn on a
   `CROP_SIDE` square with the face shrunk by `CROP_MARGIN` about the centre, and resample
   the image through it. The face comes out upright (the eye line horizontal) whatever its
   roll, at DF40's size; parts of the square outside the image are black, as in DF40.

Both libraries come with an optional extra (`pip install 'clare[faces]'`): facenet-pytorch
finds the faces, scikit-image estimates the transform.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from clare.data.images import DecodedImage, ImageDecodeError, pixels_sha256
from clare.errors import ConfigError

FACES_EXTRA = "pip install 'clare[faces]'"
FACE_MODES = ("none", "detect")
# Smallest face looked for, as a fraction of the shorter side: a little under the 5% the
# detector is meant to reach, so that a face of 5% still sits above the pyramid's floor.
MIN_FACE_FRACTION = 0.04
MIN_FACE_PX = 12  # MTCNN's input window: it cannot see a face smaller than this
DETECT_SIDE = 960  # the first search sees the image scaled down to this longer side (speed;
# at 640 a face of 5% rolled 30 degrees was missed 1 time in 4, BENCHMARKS.md §9)
# The landmarks of the face kept are measured again in its first aligned crop, where the face
# is upright and about 60% of CROP_SIDE: the smallest face looked for there, as a fraction.
REFINE_MIN_FACE = 0.3
REFINE_MAX_SHIFT = 0.2  # farther from the crop's centre (fraction of its side): another face
# Landmarks are kept to 1/16 px: MTCNN's float sums change in their last bits with the number
# of torch threads (1e-6 px), and the crop's pixels, its identity, must not.
LANDMARK_STEP = 1 / 16
MIN_PROBABILITY = 0.9  # a face whose final-stage probability is lower is not a face
CROP_SIDE = 256  # DF40's aligned crops are 256 x 256
CROP_MARGIN = 1.3  # DF40's crops show the reference face shrunk 1.3x: a margin around it
# The five-point reference (left eye, right eye, nose tip, left and right mouth corner) of
# face-recognition alignment, in a 112 x 112 square (the 96 x 112 reference moved 8 px right
# to centre it), the positions DF40's preprocessing aligns its crops to.
REFERENCE_POINTS_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]])


class FaceBox(NamedTuple):
    """A box in pixels of the image as decoded (EXIF orientation applied); x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class FoundFace:
    """One face the detector found, in the pixels of the image it was given."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    probability: float
    landmarks: np.ndarray  # (5, 2) x, y: left eye, right eye, nose, left / right mouth corner

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class AlignedFace:
    """The aligned crop of one face and where it came from."""

    crop: Image.Image  # CROP_SIDE x CROP_SIDE, RGB
    box: FaceBox  # the crop's square mapped back into the input, bounds clipped to the image
    roll_degrees: float  # the face's roll in the input (eye line against the horizontal)
    to_crop: np.ndarray  # 3 x 3: input pixel (x, y, 1) -> crop pixel


def check_face_mode(mode: str) -> str:
    """The `--faces` value, checked; `detect` also needs the extra to be installed."""
    if mode not in FACE_MODES:
        raise ConfigError(f"--faces {mode!r}: expected one of {', '.join(FACE_MODES)}")
    if mode == "detect":
        try:
            import facenet_pytorch  # noqa: F401
            import skimage.transform  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--faces detect needs the face detector extra: {FACES_EXTRA}"
            ) from None
    return mode


_local = threading.local()


def _detector() -> Any:
    """One MTCNN per thread: predict decodes (and detects) in a thread pool, and each call
    sets the detector's smallest face size for its image."""
    if not hasattr(_local, "mtcnn"):
        from facenet_pytorch import MTCNN

        _local.mtcnn = MTCNN(keep_all=True, device="cpu")
    return _local.mtcnn


def _box(values: Any) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(value) for value in values)
    return x0, y0, x1, y1


def _steady(landmarks: np.ndarray) -> np.ndarray:
    """`landmarks` on the LANDMARK_STEP grid."""
    return np.round(landmarks / LANDMARK_STEP) * LANDMARK_STEP


def _detect(image: Image.Image, smallest_face: float) -> list[FoundFace]:
    """MTCNN's faces in `image` (RGB) no smaller than `smallest_face` px, in its pixels."""
    if min(image.size) < max(MIN_FACE_PX, smallest_face):
        return []  # smaller than the detector's window: MTCNN's pyramid would be empty
    detector = _detector()
    detector.min_face_size = max(MIN_FACE_PX, smallest_face)
    boxes, probabilities, points = detector.detect(image, landmarks=True)
    if boxes is None:
        return []
    return [FoundFace(_box(box), float(probability), np.asarray(landmarks, dtype=np.float64))
            for box, probability, landmarks in zip(boxes, probabilities, points, strict=True)
            if float(probability) >= MIN_PROBABILITY]


def find_faces(image: Image.Image) -> list[FoundFace]:
    """Every face at least `MIN_FACE_FRACTION` of the shorter side with its five landmarks,
    in `image`'s pixels (searched in the image scaled down to `DETECT_SIDE`); [] for none."""
    rgb = image.convert("RGB")
    scale = min(1.0, DETECT_SIDE / max(rgb.size))
    small = rgb if scale == 1.0 else rgb.resize(
        (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BILINEAR)
    return [FoundFace(_box(np.asarray(face.box) / scale), face.probability,
                      _steady(face.landmarks / scale))
            for face in _detect(small, MIN_FACE_FRACTION * min(small.size))]


def refine_landmarks(image: Image.Image, landmarks: np.ndarray) -> np.ndarray:
    """Landmarks measured again on the crop the first ones give, mapped back to `image`: there
    the face is upright and about 150 px wide, where MTCNN places them best (the first ones
    may come from a 30 px face, tilted, in the scaled-down image). The first ones when the
    second look finds no face."""
    first = align_face(image, landmarks)
    if first is None:
        return landmarks
    found = _detect(first.crop, REFINE_MIN_FACE * CROP_SIDE)
    if not found:
        return landmarks
    def off_centre(face: FoundFace) -> float:
        return math.hypot((face.box[0] + face.box[2] - CROP_SIDE) / 2,
                          (face.box[1] + face.box[3] - CROP_SIDE) / 2)

    nearest = min(found, key=off_centre)
    if off_centre(nearest) > REFINE_MAX_SHIFT * CROP_SIDE:
        return landmarks  # another face beside this one: not a second look at the same face
    to_input = np.linalg.inv(first.to_crop)
    points = np.column_stack([nearest.landmarks, np.ones(len(nearest.landmarks))])
    return _steady((points @ to_input.T)[:, :2])


def reference_points(side: int = CROP_SIDE, margin: float = CROP_MARGIN) -> np.ndarray:
    """Where the five landmarks land in a `side` x `side` crop: the reference scaled to the
    square, then shrunk by `margin` about the square's centre."""
    unit = REFERENCE_POINTS_112 / 112.0
    return (unit + (margin - 1.0) / 2.0) / margin * side


def align_face(image: Image.Image, landmarks: np.ndarray, side: int = CROP_SIDE) -> AlignedFace | None:
    """The `side` x `side` crop whose five landmarks sit on the reference (None when the
    landmarks are degenerate, e.g. all in one point)."""
    from skimage.transform import SimilarityTransform

    transform = SimilarityTransform.from_estimate(np.asarray(landmarks, dtype=np.float64),
                                                  reference_points(side))
    if not transform:
        return None
    to_crop = np.asarray(transform.params, dtype=np.float64)
    to_input = np.linalg.inv(to_crop)
    # PIL's affine warp reads, for each output pixel, the input at to_input; bilinear and
    # black outside the image, as DF40's warp.
    crop = image.convert("RGB").transform(
        (side, side), Image.Transform.AFFINE, data=tuple(to_input[:2].ravel()),
        resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], dtype=np.float64)
    mapped = corners @ to_input.T
    box = FaceBox(max(0, math.floor(mapped[:, 0].min())), max(0, math.floor(mapped[:, 1].min())),
                  min(image.width, math.ceil(mapped[:, 0].max())),
                  min(image.height, math.ceil(mapped[:, 1].max())))
    return AlignedFace(crop, box, eye_roll_degrees(landmarks), to_crop)


def eye_roll_degrees(landmarks: np.ndarray) -> float:
    """The angle of the line from the left to the right eye against the image's horizontal,
    in degrees (positive: the right eye lower, clockwise on screen)."""
    (left_x, left_y), (right_x, right_y) = np.asarray(landmarks, dtype=np.float64)[:2]
    return math.degrees(math.atan2(right_y - left_y, right_x - left_x))


def largest_face(image: Image.Image) -> FoundFace | None:
    """The largest face the detector finds, its landmarks refined (None when it finds none)."""
    faces = find_faces(image)
    if not faces:
        return None
    largest = max(faces, key=lambda face: face.area)
    return FoundFace(largest.box, largest.probability, refine_landmarks(image, largest.landmarks))


def largest_aligned_face(image: Image.Image) -> AlignedFace | None:
    """The aligned crop of the largest face the detector finds (None when it finds none)."""
    face = largest_face(image)
    return None if face is None else align_face(image, face.landmarks)


@dataclass
class FaceCrop:
    """Crops a decoded image to its largest face, aligned, and remembers where the crop lies.

    One instance per input: `box` is the crop's bounds in the decoded image, for the
    predictions' face columns. No face is an ImageDecodeError with reason "no face" (a failed
    row)."""

    name: str
    box: FaceBox | None = None
    source_size: tuple[int, int] | None = None  # the input's width and height, as stored

    def __call__(self, decoded: DecodedImage) -> DecodedImage:
        self.source_size = (decoded.width, decoded.height)
        face = largest_aligned_face(decoded.image)
        if face is None:
            raise ImageDecodeError("no face", f"the face detector found none in {self.name}")
        self.box = face.box
        # The crop is new content: its identity (the LaRE noise seed) is its own pixels'.
        return DecodedImage(face.crop, pixels_sha256(face.crop), face.crop.width, face.crop.height)
