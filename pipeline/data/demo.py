"""A synthetic mini-DF40: a few hundred face-like images in DF40's real layout and list format.

The demo must run end to end on a laptop with no downloads, so the images are drawn with numpy:
a background, hair, a skin-coloured face with eyes, nose and mouth, one identity per video and
small per-frame jitter. Fakes carry a generator artifact that a small model can learn: a
periodic pattern whose period is 8 px once the image is resized to 256 px (so it survives the
LaRE resize, CLIP's 224-px centre crop and mild JPEG), plus a faint per-method colour cast.
The pattern shape and strength differ per method, so per-subset results differ too.

A few DF40 traps are planted on purpose so that `clare prepare` has something to report; see
`PLANTED_TRAPS`. Everything is seeded: the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

KNOWN_METHODS = ("DiT", "StyleGAN2", "sd2.1")
UNKNOWN_METHODS = ("heygen", "whichisreal")
DOMAINS = ("ff", "cdf")
LIST_PATH_PREFIX = "deepfakes_detection_datasets/"

FRAMES_PER_VIDEO = 4
KNOWN_VIDEOS = 8  # per method and domain, fakes; reals of a domain are shared by its lists
# Each known-method list takes KNOWN_VIDEOS reals from a window of the domain's real videos,
# shifted by REAL_STRIDE per method: neighbouring lists share some reals (DF40's trap) while
# training still sees enough real identities not to learn "these few faces are real".
REAL_STRIDE = 4
REAL_VIDEOS = KNOWN_VIDEOS + REAL_STRIDE * (len(KNOWN_METHODS) - 1)
UNKNOWN_VIDEOS = 6  # per unknown method, each of real and fake
# Video positions per known-method list. As in DF40's EFSAll_ff, `val` equals `test`.
SPLIT_POSITIONS = {"train": range(0, 5), "val": range(5, 8), "test": range(5, 8)}

REAL_DIRS = {
    "ff": "FaceForensics++/original_sequences/youtube/c23/frames",
    "cdf": "Celeb-DF-v2/Celeb-real/frames",
}


@dataclass(frozen=True)
class Artifact:
    """A generator's fingerprint: pattern shape, amplitude (grey levels) and colour cast."""

    pattern: str  # "grid": peaks on the axes; "checker": peaks on the diagonals
    amplitude: float
    cast: tuple[float, float, float]


ARTIFACTS: dict[str, Artifact] = {
    "DiT": Artifact("grid", 16.0, (4.0, 0.0, -4.0)),
    "StyleGAN2": Artifact("checker", 20.0, (0.0, -3.0, 4.0)),
    "sd2.1": Artifact("grid", 12.0, (-3.0, 3.0, 0.0)),
    # Unseen at training time: same families, different strength, so they test generalisation.
    "heygen": Artifact("grid", 14.0, (3.0, 3.0, -3.0)),
    "whichisreal": Artifact("checker", 10.0, (0.0, 0.0, 0.0)),
}

FAKE_SIZES = (256, 384, 512)
FAKE_FORMATS = ("png", "jpg", "jpeg")

# (list stem, what is wrong) for each trap; tests and docs read this.
PLANTED_TRAPS = {
    "missing_frame": ("StyleGAN2_ff", "train fake video 0 lists frame 003 that is not on disk"),
    "empty_folder": ("sd2.1_ff", "train fake video 4 has an empty folder but lists 4 frames"),
    "unreadable_header": ("DiT_ff", "train fake video 1 frame 002 is not an image"),
    "duplicate_video": ("whichisreal", "real video 000 is listed a second time as 000_dup"),
}


@dataclass
class DemoSummary:
    n_images: int  # readable image files written
    n_lists: int
    root: Path
    lists_dir: Path


@dataclass
class _Video:
    """One video to write and list."""

    label_name: str
    video_id: str
    rel_dir: str  # relative to the demo root
    ext: str
    size: int
    identity_key: str
    artifact: Artifact | None
    jpeg_quality: int = 95


def _rng(seed: int, key: str, *extra: int) -> np.random.Generator:
    # crc32 instead of hash(): Python's str hash changes between processes.
    return np.random.default_rng([seed % 2**32, zlib.crc32(key.encode("utf-8")), *extra])


# --------------------------------------------------------------------------- drawing


def _paint_ellipse(canvas: np.ndarray, axis: np.ndarray, centre: tuple[float, float],
                   radii: tuple[float, float], colour: np.ndarray | float,
                   shade_sides: float = 0.0) -> None:
    """Blend a soft-edged ellipse into `canvas` (H×W×3) in place.

    Coordinates are normalised to [-1, 1] so shapes scale with the image size. Only the
    ellipse's bounding box is touched: small parts (eyes, mouth) then cost almost nothing.
    """
    size = canvas.shape[0]
    (cx, cy), (rx, ry) = centre, radii
    edge = 2.0 / size  # about one pixel of anti-aliasing at any size
    cols = np.flatnonzero(np.abs(axis - cx) <= rx + 2 * edge)
    rows = np.flatnonzero(np.abs(axis - cy) <= ry + 2 * edge)
    if cols.size == 0 or rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    du = (axis[box[1]][None, :] - cx) / rx
    dv = (axis[box[0]][:, None] - cy) / ry
    cover = np.clip((1.0 - np.sqrt(du * du + dv * dv)) * min(rx, ry) / edge + 0.5, 0.0, 1.0)
    target: np.ndarray = np.asarray(colour, np.float32)
    if shade_sides:
        # Darker towards the sides so a face looks round rather than flat.
        target = target * (1.0 - shade_sides * np.minimum(du * du, 1.0))[..., None]
    region = canvas[box]
    region += cover[..., None] * (target - region)


def _render_face(seed: int, identity_key: str, frame: int, size: int) -> np.ndarray:
    """Float32 H×W×3 image in grey levels 0..255 of one identity at one frame."""
    who = _rng(seed, identity_key)
    skin = who.uniform([150, 100, 75], [235, 190, 160])
    hair = who.uniform(10, 120, 3) * who.uniform(0.5, 1.0)
    bg_top, bg_bottom = who.uniform(30, 220, 3), who.uniform(30, 220, 3)
    iris = who.uniform(20, 140, 3)
    lips = who.uniform([150, 40, 50], [210, 90, 110])
    rx, ry = float(who.uniform(0.48, 0.6)), float(who.uniform(0.62, 0.75))
    eye_dx, eye_y = float(who.uniform(0.18, 0.26)), float(who.uniform(-0.2, -0.08))
    mouth_w, mouth_y = float(who.uniform(0.14, 0.24)), float(who.uniform(0.3, 0.42))

    jitter = _rng(seed, identity_key, frame + 1)
    cx, cy = (float(x) for x in jitter.normal(0, 0.025, 2))
    blink = float(jitter.uniform(0.6, 1.0))
    mouth_open = float(jitter.uniform(0.03, 0.08))

    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    t = ((axis + 1.0) / 2.0)[:, None, None]
    canvas = np.broadcast_to(bg_top * (1 - t) + bg_bottom * t, (size, size, 3))
    canvas = canvas.astype(np.float32)
    _paint_ellipse(canvas, axis, (cx, cy - 0.12), (rx * 1.12, ry), hair)
    _paint_ellipse(canvas, axis, (cx, cy), (rx, ry), skin, shade_sides=0.28)
    white = np.array([240.0, 240.0, 235.0])
    for side in (-1.0, 1.0):
        ex, ey = cx + side * eye_dx, cy + eye_y
        _paint_ellipse(canvas, axis, (ex, ey), (0.09, 0.045 * blink), white)
        _paint_ellipse(canvas, axis, (ex, ey), (0.035, 0.035 * blink), iris)
        _paint_ellipse(canvas, axis, (ex, ey - 0.09), (0.1, 0.018), hair)
    _paint_ellipse(canvas, axis, (cx, cy + 0.1), (0.045, 0.09), skin * 0.8)
    _paint_ellipse(canvas, axis, (cx, cy + mouth_y), (mouth_w, mouth_open), lips)
    # Mild sensor noise, independent per frame (small integers: much faster than normals).
    canvas += jitter.integers(-2, 3, canvas.shape, dtype=np.int8)
    return canvas


def _artifact_pattern(artifact: Artifact, size: int) -> np.ndarray:
    """H×W×3 additive fingerprint; period 8 px at 256 px whatever the native size."""
    period = 8.0 * size / 256.0
    phase = 2.0 * np.pi * (np.arange(size, dtype=np.float32) + 0.5) / period
    wave_x, wave_y = np.cos(phase)[None, :], np.cos(phase)[:, None]
    if artifact.pattern == "grid":
        pattern = (wave_x + wave_y) / 2.0
    else:
        pattern = wave_x * wave_y
    return (artifact.amplitude * pattern)[..., None] + np.asarray(artifact.cast, np.float32)


def _save(pixels: np.ndarray, path: Path, ext: str, jpeg_quality: int) -> None:
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    if ext == "png":
        image.save(path, format="PNG", compress_level=1)
    else:
        image.save(path, format="JPEG", quality=jpeg_quality, subsampling=0)


# --------------------------------------------------------------------------- layout


def _known_videos(seed: int) -> tuple[dict[str, list[_Video]], dict[str, list[_Video]]]:
    """Fake videos per list stem, and the real videos of each domain (shared by its lists)."""
    reals: dict[str, list[_Video]] = {}
    for domain in DOMAINS:
        ids = [f"{i:03d}" if domain == "ff" else f"id{i}_{i:04d}" for i in range(REAL_VIDEOS)]
        reals[domain] = [
            _Video("Real", vid, f"{REAL_DIRS[domain]}/{vid}", "png", 256,
                   f"real/{domain}/{vid}", None)
            for vid in ids
        ]
    fakes: dict[str, list[_Video]] = {}
    for method in KNOWN_METHODS:
        for domain in DOMAINS:
            stem = f"{method}_{domain}"
            style = _rng(seed, f"style/{stem}")
            videos = []
            for i in range(KNOWN_VIDEOS):
                vid = f"{i:03d}_{i + 100:03d}" if domain == "ff" else f"id{i}_id{i + 20}_{i:04d}"
                videos.append(_Video(
                    "Fake", vid, f"DF40/{method}/{domain}/{vid}",
                    FAKE_FORMATS[int(style.integers(len(FAKE_FORMATS)))],
                    FAKE_SIZES[int(style.integers(len(FAKE_SIZES)))],
                    f"fake/{stem}/{vid}", ARTIFACTS[method], int(style.integers(88, 97)),
                ))
            fakes[stem] = videos
    return fakes, reals


def _unknown_videos(seed: int, method: str) -> list[_Video]:
    style = _rng(seed, f"style/{method}")
    videos = []
    for label in ("real", "fake"):
        for i in range(UNKNOWN_VIDEOS):
            vid = f"{i:03d}"
            if label == "real":
                videos.append(_Video("Real", vid, f"DF40/{method}/real/{vid}", "png", 256,
                                     f"real/{method}/{vid}", None))
            else:
                videos.append(_Video(
                    "Fake", vid, f"DF40/{method}/fake/{vid}",
                    FAKE_FORMATS[int(style.integers(len(FAKE_FORMATS)))],
                    FAKE_SIZES[int(style.integers(len(FAKE_SIZES)))],
                    f"fake/{method}/{vid}", ARTIFACTS[method], int(style.integers(88, 97)),
                ))
    return videos


def _frame_names(video: _Video) -> list[str]:
    return [f"{n:03d}.{video.ext}" for n in range(FRAMES_PER_VIDEO)]


def _write_video(out: Path, seed: int, video: _Video, skip: set[str], garbage: set[str]) -> int:
    """Write a video's frames; names in `skip` are left absent, in `garbage` are not images."""
    folder = out / video.rel_dir
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    pattern = _artifact_pattern(video.artifact, video.size) if video.artifact else None
    for n, name in enumerate(_frame_names(video)):
        path = folder / name
        if name in skip:
            path.unlink(missing_ok=True)  # a rerun over an older tree must keep the trap
            continue
        if name in garbage:
            path.write_bytes(b"this frame was truncated during download\n")
            continue
        pixels = _render_face(seed, video.identity_key, n, video.size)
        if pattern is not None:
            pixels += pattern
        _save(pixels, path, video.ext, video.jpeg_quality)
        written += 1
    return written


def _list_entry(stem: str, video: _Video, frames: list[str] | None = None) -> dict:
    names = frames if frames is not None else _frame_names(video)
    return {
        "label": f"{stem}_{video.label_name}",
        "frames": [f"{LIST_PATH_PREFIX}{video.rel_dir}/{name}" for name in names],
    }


def _write_list(lists_dir: Path, stem: str, splits: dict[str, list[tuple[str, _Video]]]) -> None:
    """`splits` maps split -> [(video id in the list, video)]; labels come from the videos."""
    body: dict[str, dict] = {f"{stem}_Real": {}, f"{stem}_Fake": {}}
    for split, entries in splits.items():
        for label_key in body:
            body[label_key][split] = {}
        for list_id, video in entries:
            body[f"{stem}_{video.label_name}"][split][list_id] = _list_entry(stem, video)
    text = json.dumps({stem: body}, indent=1, sort_keys=False) + "\n"
    (lists_dir / f"{stem}.json").write_text(text, encoding="utf-8")


def write_demo_dataset(out: Path, seed: int = 0) -> DemoSummary:
    """Write the synthetic mini-DF40 under `out` (images plus `out/lists/*.json`).

    Idempotent: rerunning with the same seed rewrites identical bytes.
    """
    out = Path(out)
    lists_dir = out / "lists"
    lists_dir.mkdir(parents=True, exist_ok=True)
    fakes, reals = _known_videos(seed)
    n_images = 0

    for domain_reals in reals.values():
        for video in domain_reals:
            n_images += _write_video(out, seed, video, set(), set())

    for stem, videos in fakes.items():
        skip: dict[int, set[str]] = {}
        garbage: dict[int, set[str]] = {}
        if stem == PLANTED_TRAPS["missing_frame"][0]:
            skip[0] = {_frame_names(videos[0])[3]}
        if stem == PLANTED_TRAPS["empty_folder"][0]:
            skip[4] = set(_frame_names(videos[4]))
        if stem == PLANTED_TRAPS["unreadable_header"][0]:
            garbage[1] = {_frame_names(videos[1])[2]}
        for i, video in enumerate(videos):
            n_images += _write_video(out, seed, video, skip.get(i, set()), garbage.get(i, set()))
        method_rank = KNOWN_METHODS.index(stem.rsplit("_", 1)[0])
        window = method_rank * REAL_STRIDE
        domain_reals = reals[stem.rsplit("_", 1)[1]][window : window + KNOWN_VIDEOS]
        splits = {
            split: [(v.video_id, v) for i in positions for v in (videos[i], domain_reals[i])]
            for split, positions in SPLIT_POSITIONS.items()
        }
        _write_list(lists_dir, stem, splits)

    for method in UNKNOWN_METHODS:
        videos = _unknown_videos(seed, method)
        for video in videos:
            n_images += _write_video(out, seed, video, set(), set())
        entries = [(v.video_id, v) for v in videos]
        if method == PLANTED_TRAPS["duplicate_video"][0]:
            first_real = next(v for v in videos if v.label_name == "Real")
            entries.append((f"{first_real.video_id}_dup", first_real))
        _write_list(lists_dir, method, {"test": entries})

    n_lists = len(fakes) + len(UNKNOWN_METHODS)
    return DemoSummary(n_images=n_images, n_lists=n_lists, root=out, lists_dir=lists_dir)
