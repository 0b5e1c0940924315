"""`--faces detect`'s detector and alignment (clare.data.faces): small faces in large scenes,
upright crops from rolled faces, DF40's crop geometry, and no face where there is none.

The portrait is scikit-image's astronaut (it ships inside the wheel); Eileen Collins' face is
about 87 px wide in the 512 x 512 photograph, centred near (224, 117).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from clare.data.faces import (
    CROP_SIDE,
    FaceCrop,
    align_face,
    eye_roll_degrees,
    find_faces,
    largest_aligned_face,
    largest_face,
    reference_points,
)
from clare.data.images import DecodedImage, ImageDecodeError

FACE_CENTRE = np.array([224.0, 117.0])  # in the 512 px photograph
FACE_SIDE = 87.0
SCENE = (1600, 1000)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def scene_with(photo: Image.Image, side: int, at: tuple[int, int] = (900, 300)) -> Image.Image:
    """A plain 1600 x 1000 scene with `photo` pasted at `side` px, its corner at `at`."""
    scene = Image.new("RGB", SCENE, (96, 104, 112))
    scene.paste(photo.resize((side, side), Image.Resampling.LANCZOS), at)
    return scene


@pytest.mark.parametrize("photo_side", [300, 400])  # the face: 5.1% and 6.8% of the short side
def test_a_face_of_5_to_7_percent_of_the_scene_is_found_where_the_cascade_found_none(
        astronaut: Image.Image, photo_side: int) -> None:
    from benchmarks.bench_faces import cascade_largest_box

    scene = scene_with(astronaut, photo_side)
    zoom = photo_side / 512
    centre = np.array([900, 300]) + FACE_CENTRE * zoom
    face = largest_face(scene)
    assert face is not None
    x0, y0, x1, y1 = face.box
    assert np.hypot((x0 + x1) / 2 - centre[0], (y0 + y1) / 2 - centre[1]) < 0.3 * FACE_SIDE * zoom
    assert 0.6 < max(x1 - x0, y1 - y0) / (FACE_SIDE * zoom) < 1.6
    # The example (the photograph at 400 px in 1600 x 1000): the cascade saw no face.
    assert cascade_largest_box(scene) is None


def test_a_rolled_face_gives_an_upright_crop(astronaut: Image.Image) -> None:
    upright = largest_face(astronaut)
    assert upright is not None
    roll_before = eye_roll_degrees(upright.landmarks)
    # Rolled 25 degrees counter-clockwise on screen about the face, then a 10% face in a scene.
    rolled = astronaut.rotate(25, resample=Image.Resampling.BICUBIC, center=tuple(FACE_CENTRE))
    aligned = largest_aligned_face(scene_with(rolled, 600))
    assert aligned is not None and aligned.crop.size == (CROP_SIDE, CROP_SIDE)
    # Image y points down: a counter-clockwise turn lowers the eye line's angle by 25 degrees.
    assert aligned.roll_degrees == pytest.approx(roll_before - 25, abs=3)
    # In the crop the eye line is level and the eyes sit where DF40's crops have them.
    again = find_faces(aligned.crop)
    assert len(again) == 1
    assert abs(eye_roll_degrees(again[0].landmarks)) < 3
    eyes_off = np.linalg.norm(again[0].landmarks[:2] - reference_points()[:2], axis=1)
    assert (eyes_off < 0.04 * CROP_SIDE).all(), eyes_off


def test_the_crop_puts_the_landmarks_on_df40s_reference_whatever_the_similarity() -> None:
    # Landmarks made from the reference by a known turn, zoom and shift: aligning must undo it.
    angle, zoom, shift = math.radians(-35), 0.6, np.array([310.0, 140.0])
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = reference_points() @ (zoom * turn).T + shift
    # A linear ramp (red along x, green along y): a bilinear sample of it is exact.
    ramp_x, ramp_y = np.meshgrid(np.arange(640) * 0.25, np.arange(480) * 0.5)
    image = Image.fromarray(np.stack([ramp_x, ramp_y, np.zeros_like(ramp_x)], -1).astype(np.uint8))
    aligned = align_face(image, landmarks)
    assert aligned is not None
    mapped = np.column_stack([landmarks, np.ones(5)]) @ aligned.to_crop.T
    np.testing.assert_allclose(mapped[:, :2], reference_points(), atol=1e-6)
    # The roll is the eye line's: the turn plus the reference's own (its eyes are 0.2 px apart
    # in height).
    assert aligned.roll_degrees == pytest.approx(-35 + eye_roll_degrees(reference_points()), abs=1e-6)
    # The reference is DF40's: 256 px, the face shrunk 1.3x about the centre, eyes level and
    # mirror images of each other about the vertical midline to within the reference's 0.2 px.
    eyes = reference_points()[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.5 and abs(eyes.sum(axis=0)[0] - CROP_SIDE) < 0.5
    # The box is the crop's square mapped back, clipped: it holds every landmark.
    x0, y0, x1, y1 = aligned.box
    assert 0 <= x0 and 0 <= y0 and x1 <= 640 and y1 <= 480
    assert (landmarks[:, 0] > x0).all() and (landmarks[:, 0] < x1).all()
    assert (landmarks[:, 1] > y0).all() and (landmarks[:, 1] < y1).all()
    # Each crop pixel is the input read through the inverse map (PIL's pixel centres at +0.5).
    to_input = np.linalg.inv(aligned.to_crop)
    crop = np.asarray(aligned.crop, dtype=float)
    for row, column in [(128, 128), (40, 200), (220, 30)]:
        x, y, _ = to_input @ np.array([column + 0.5, row + 0.5, 1.0])
        assert 1 <= x < 639 and 1 <= y < 479  # inside the image, away from its black border
        assert crop[row, column, 0] == pytest.approx(0.25 * (x - 0.5), abs=1.01)
        assert crop[row, column, 1] == pytest.approx(0.5 * (y - 0.5), abs=1.01)
    assert align_face(image, np.full((5, 2), 50.0)) is None  # one point: no transform


def test_the_same_image_gives_the_same_crop(astronaut: Image.Image) -> None:
    first, second = largest_aligned_face(astronaut), largest_aligned_face(astronaut)
    assert first is not None and second is not None
    assert first.crop.tobytes() == second.crop.tobytes() and first.box == second.box


@pytest.mark.parametrize("what", ["blank", "texture", "tiny"])
def test_no_face_is_a_no_face_failure(what: str) -> None:
    from skimage import data

    image = {"blank": Image.new("RGB", (640, 480), (128, 128, 128)),
             "texture": Image.fromarray(data.brick()).convert("RGB"),
             "tiny": Image.new("RGB", (8, 8), (200, 150, 120))}[what]
    assert largest_aligned_face(image) is None
    crop = FaceCrop(f"{what}.png")
    with pytest.raises(ImageDecodeError) as caught:
        crop(DecodedImage(image, "0" * 64, image.width, image.height))
    assert caught.value.reason == "no face" and f"{what}.png" in str(caught.value)
    assert crop.box is None
