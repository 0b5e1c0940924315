"""`clare predict --faces detect`: MTCNN with landmark alignment against the LBP cascade it
replaced, on synthetic scenes with one face at known sizes and rolls.

Each scene is a background (a photograph or texture that ships with scikit-image, stretched
to `--scene` pixels) with one face pasted in: a disc cut around the face of a portrait that
ships with a package (scikit-image's astronaut, matplotlib's Grace Hopper), rotated by the
roll, scaled so that the face box's longer side is the given fraction of the scene's shorter
side, at a seeded random place. The truth (face centre, size, landmarks, roll) is the source
portrait's, measured once by the new detector at full resolution (faces of 87 px and more),
carried through the known paste transform: roll errors therefore measure how consistently
the landmarks follow a face across sizes and rolls, not their absolute accuracy.

A method finds the face when the largest box it returns has its centre within 0.3 face
sizes of the true centre and a side within 0.5-2x the true size. Scenes without a face
(the bare backgrounds) count false detections. Time is per scene, the whole call (the new
one includes the landmark refinement and the aligned crop), median over the scenes, after
one untimed call each.

The baseline is the detector `--faces detect` used before: scikit-image's LBP frontal-face
cascade on the image scaled to 640 px, looking for faces from 10% of the shorter side up.

    python -m benchmarks.bench_faces            # 164 scenes, about 7 minutes on 2 cores
    python -m benchmarks.bench_faces --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.common import add_common_args, fill_defaults, int_list, print_table, write_results

NAME = "bench_faces"
DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"sizes": "5,10,20,40", "angles": "0,15,-15,30,-30", "sources": 2, "backgrounds": 4,
             "scene": "1600x1000"},
    "smoke": {"sizes": "10", "angles": "0,30", "sources": 1, "backgrounds": 1, "scene": "800x500"},
}
BACKGROUNDS = ("coffee", "rocket", "brick", "grass")  # skimage.data images without faces
REGION = 2.0  # side of the pasted disc / the face box's longer side
CENTRE_TOLERANCE = 0.3  # a found box's centre may be this many face sizes off the truth
SIZE_RANGE = (0.5, 2.0)  # a found box's side / the true face size

# The cascade baseline: the settings `--faces detect` had before it moved to MTCNN.
CASCADE_SIDE = 640
CASCADE_MIN_FRACTION = 0.1
CASCADE_MIN_WINDOW = 24
CASCADE_SCALE_STEP = 1.2

Box = tuple[float, float, float, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--sizes", help="face sizes, percent of the scene's shorter side")
    parser.add_argument("--angles", help="rolls in degrees (counter-clockwise on screen)")
    parser.add_argument("--sources", type=int, help="portraits used (1: the astronaut only)")
    parser.add_argument("--backgrounds", type=int, help=f"backgrounds used, of {BACKGROUNDS}")
    parser.add_argument("--scene", help="scene size WxH")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    return args


# --------------------------------------------------------------------------- the two methods


@functools.cache
def _cascade() -> Any:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def cascade_largest_box(image: Image.Image) -> Box | None:
    """The baseline: the largest box of scikit-image's LBP frontal-face cascade."""
    scale = min(1.0, CASCADE_SIDE / max(image.size))
    small = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BILINEAR)
    gray = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
    shorter = min(gray.shape)
    smallest = max(CASCADE_MIN_WINDOW, int(CASCADE_MIN_FRACTION * shorter))
    found = _cascade().detect_multi_scale(
        img=gray, scale_factor=CASCADE_SCALE_STEP, step_ratio=1, min_size=(smallest, smallest),
        max_size=(shorter, shorter))
    if not found:
        return None
    best = max(found, key=lambda box: box["width"] * box["height"])
    return (best["c"] / scale, best["r"] / scale, (best["c"] + best["width"]) / scale,
            (best["r"] + best["height"]) / scale)


@dataclass
class NewResult:
    box: Box
    roll_degrees: float


def mtcnn_largest_face(image: Image.Image) -> NewResult | None:
    """What `--faces detect` does now: the largest face, refined landmarks, the aligned crop."""
    from clare.data.faces import align_face, largest_face

    face = largest_face(image)
    if face is None:
        return None
    aligned = align_face(image, face.landmarks)
    return None if aligned is None else NewResult(face.box, aligned.roll_degrees)


# --------------------------------------------------------------------------- scenes


@dataclass
class Source:
    name: str
    photo: Image.Image
    centre: np.ndarray  # face box centre, photo pixels
    size: float  # face box's longer side
    roll_degrees: float


@dataclass
class Scene:
    image: Image.Image
    source: str
    size_percent: int
    angle: int
    background: str
    centre: tuple[float, float] | None = None  # the face's, scene pixels; None: no face
    size: float = 0.0
    roll_degrees: float = 0.0


def load_sources(count: int) -> list[Source]:
    from skimage import data

    from clare.data.faces import align_face, largest_face

    photos = [("astronaut", Image.fromarray(data.astronaut()))]
    if count > 1:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
            photos.append(("grace_hopper", Image.open(file).convert("RGB")))
    sources = []
    for name, photo in photos[:count]:
        face = largest_face(photo)
        aligned = None if face is None else align_face(photo, face.landmarks)
        if face is None or aligned is None:
            raise SystemExit(f"bench_faces: no face found in the source portrait {name}")
        x0, y0, x1, y1 = face.box
        sources.append(Source(name, photo, np.array([(x0 + x1) / 2, (y0 + y1) / 2]),
                              max(x1 - x0, y1 - y0), aligned.roll_degrees))
    return sources


def background(name: str, size: tuple[int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def paste_face(scene: Image.Image, source: Source, size: float, angle: int,
               rng: np.random.Generator) -> tuple[float, float]:
    """Pastes a disc around `source`'s face, rolled by `angle` and scaled to a face of `size`
    px, at a random place of `scene`; returns the face centre in the scene."""
    half = REGION * source.size / 2
    cx, cy = source.centre
    region = source.photo.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    region = region.rotate(angle, resample=Image.Resampling.BICUBIC)  # about the region centre
    side = max(8, round(region.width * size / source.size))
    region = region.resize((side, side), Image.Resampling.LANCZOS)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).ellipse((1, 1, side - 2, side - 2), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, side / 100)))
    x = int(rng.integers(0, scene.width - side + 1))
    y = int(rng.integers(0, scene.height - side + 1))
    scene.paste(region, (x, y), mask)
    # The face centre is the region's centre (up to rounding of the crop), before and after.
    return x + side / 2, y + side / 2


def build_scenes(args: argparse.Namespace, sources: list[Source]) -> list[Scene]:
    width, height = (int(v) for v in args.scene.lower().split("x"))
    rng = np.random.default_rng(args.seed)
    scenes = []
    for background_name in BACKGROUNDS[:args.backgrounds]:
        bare = background(background_name, (width, height))
        scenes.append(Scene(bare, "", 0, 0, background_name))
        for percent in int_list(args.sizes):
            for angle in int_list(args.angles):
                for source in sources:
                    image = bare.copy()
                    size = percent / 100 * min(width, height)
                    centre = paste_face(image, source, size, angle, rng)
                    # PIL's rotate turns counter-clockwise on screen: the eye line's angle
                    # (image y down) falls by `angle`.
                    scenes.append(Scene(image, source.name, percent, angle, background_name,
                                        centre, size, source.roll_degrees - angle))
    return scenes


# --------------------------------------------------------------------------- measuring


def is_hit(box: Box | None, scene: Scene) -> bool:
    if box is None or scene.centre is None:
        return False
    x0, y0, x1, y1 = box
    off = math.hypot((x0 + x1) / 2 - scene.centre[0], (y0 + y1) / 2 - scene.centre[1])
    ratio = max(x1 - x0, y1 - y0) / scene.size
    return off <= CENTRE_TOLERANCE * scene.size and SIZE_RANGE[0] <= ratio <= SIZE_RANGE[1]


def timed(call: Callable[[Image.Image], Any], image: Image.Image) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call(image)
    return result, time.perf_counter() - start


def measure(scenes: list[Scene]) -> list[dict[str, Any]]:
    mtcnn_largest_face(scenes[0].image)  # untimed: loads the networks
    cascade_largest_box(scenes[0].image)
    rows = []
    for scene in scenes:
        new, new_s = timed(mtcnn_largest_face, scene.image)
        old, old_s = timed(cascade_largest_box, scene.image)
        roll_error = None
        if new is not None and is_hit(new.box, scene):
            # Wrapped to (-180, 180]: a roll of 179 and one of -179 are 2 degrees apart.
            roll_error = abs((new.roll_degrees - scene.roll_degrees + 180) % 360 - 180)
        rows.append({"source": scene.source, "background": scene.background,
                     "size_percent": scene.size_percent, "angle": scene.angle,
                     "face": scene.centre is not None,
                     "new_found": new is not None, "new_hit": new is not None and is_hit(new.box, scene),
                     "old_found": old is not None, "old_hit": is_hit(old, scene),
                     "new_roll_error": roll_error, "new_s": new_s, "old_s": old_s})
    return rows


def summarise(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Recall of both methods and the new one's roll error per value of `key`."""
    faces = [row for row in rows if row["face"]]
    out = []
    for value in sorted({row[key] for row in faces}):
        group = [row for row in faces if row[key] == value]
        errors = [row["new_roll_error"] for row in group if row["new_roll_error"] is not None]
        out.append({key: value, "scenes": len(group),
                    "old_recall": sum(row["old_hit"] for row in group) / len(group),
                    "new_recall": sum(row["new_hit"] for row in group) / len(group),
                    "new_roll_error_mean": statistics.fmean(errors) if errors else None,
                    "new_roll_error_max": max(errors) if errors else None})
    return out


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    sources = load_sources(args.sources)
    scenes = build_scenes(args, sources)
    rows = measure(scenes)
    empty = [row for row in rows if not row["face"]]
    old_s = statistics.median(row["old_s"] for row in rows)
    new_s = statistics.median(row["new_s"] for row in rows)
    results = {
        "by_size": summarise(rows, "size_percent"),
        "by_angle": summarise(rows, "angle"),
        "no_face_scenes": len(empty),
        "old_false_detections": sum(row["old_found"] for row in empty),
        "new_false_detections": sum(row["new_found"] for row in empty),
        "old_s_per_image": old_s, "new_s_per_image": new_s, "new_vs_old_time": new_s / old_s,
        "scenes": rows,
    }
    for key in ("by_size", "by_angle"):
        label = "face % of shorter side" if key == "by_size" else "roll (deg)"
        column = "size_percent" if key == "by_size" else "angle"
        print_table(f"faces found, {key.replace('_', ' ')}",
                    [label, "scenes", "cascade recall", "MTCNN recall", "roll error mean", "max"],
                    [[r[column], r["scenes"], r["old_recall"], r["new_recall"],
                      r["new_roll_error_mean"], r["new_roll_error_max"]] for r in results[key]])
    print_table("time per scene and false detections",
                ["method", "median s/image", "false detections"],
                [["cascade (before)", old_s, f"{results['old_false_detections']}/{len(empty)}"],
                 ["MTCNN + alignment", new_s, f"{results['new_false_detections']}/{len(empty)}"]])
    params = {key: getattr(args, key) for key in ("seed", "sizes", "angles", "sources",
                                                  "backgrounds", "scene", "smoke")}
    notes = [__doc__.split("\n\n")[1].replace("\n", " "),
             "times interleave the two methods scene by scene, so both see the same load"]
    path = write_results(args.out, NAME, params, results, notes)
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
