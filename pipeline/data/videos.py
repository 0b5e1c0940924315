"""Video frames for `clare predict` and the Python API: N evenly spaced frames, decoded with PyAV.

A frame has no file of its own: its identity for seeding is the sha256 of its RGB pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clare.data.images import DecodedImage, ImageDecodeError, check_dimensions, pixels_sha256
from clare.errors import one_line

if TYPE_CHECKING:
    from clare.config import Config


def _frame_indices(total: int, wanted: int) -> list[int]:
    """`wanted` evenly spaced frame numbers of `total` (all of them when there are fewer)."""
    if total <= wanted:
        return list(range(total))
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, wanted)})


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def read_video_frames(path: Path, wanted: int, cfg: Config) -> tuple[list[tuple[int, DecodedImage]], int, int]:
    """(frame number, decoded frame) for `wanted` evenly spaced frames, and the video's size.

    Each frame's identity for seeding is the sha256 of its RGB pixels (a frame has no file of
    its own). Raises ImageDecodeError for a video that cannot be used."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageDecodeError("no video stream", f"{path} holds no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            ext = cfg.extract
            check_dimensions(width, height, max_pixels=ext.max_image_pixels,
                             min_size=ext.min_image_size, max_aspect_ratio=ext.max_aspect_ratio)
            total = stream.frames or _count_frames(path)
            keep = set(_frame_indices(total, wanted))
            frames = []
            for number, frame in enumerate(container.decode(stream)):
                if number in keep:
                    image = frame.to_image().convert("RGB")
                    frames.append((number, DecodedImage(image, pixels_sha256(image), image.width,
                                                        image.height)))
                if len(frames) == len(keep):
                    break
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any demuxer/decoder failure is this video's problem
        raise ImageDecodeError("corrupt video", f"{path}: {type(exc).__name__}: {one_line(exc)}") from None
    if not frames:
        raise ImageDecodeError("no frames", f"{path}: no frame could be decoded")
    return frames, width, height
