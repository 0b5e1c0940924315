"""Stage one's per-image work, shared by `clare extract` (into a store) and `clare predict`
(in memory): the frozen networks, decode -> view -> the two branches' input tensors, and the
batched LaRE + CLIP forward pass seeded by content hash.

One home for this code means a score `clare predict` gives an image equals the score
`clare eval` gives the same image read from a store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from clare.config import Config
from clare.data.images import DecodedImage, ImageDecodeError, check_resize, decode_image
from clare.data.views import Perturbation, derive_seed, make_view
from clare.errors import one_line
from clare.models.clip_input import ClipInput

# --------------------------------------------------------------------------- models per process

_MODEL_CACHE: dict[str, Any] = {}


class FeatureExtractor:
    """The frozen networks of stage one, loaded once per worker process."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        from clare.models.clip_image import ClipImageEncoder
        from clare.models.clip_input import clip_input
        from clare.models.lare import LareExtractor
        from clare.models.loading import load_clip, load_stable_diffusion

        sd = load_stable_diffusion(cfg.models.sd, local_files_only=cfg.models.local_files_only)
        clip = load_clip(cfg.models.clip, local_files_only=cfg.models.local_files_only)
        ext = cfg.extract
        self.lare = LareExtractor(sd, cfg.lare, device, ext.precision, ext.channels_last, ext.compile)
        self.clip = ClipImageEncoder(clip.model, device, ext.precision, ext.channels_last)
        self.clip_preprocess = clip_input(cfg.models.clip.input, clip.model, clip.preprocess)
        self.cfg = cfg


def get_extractor(cfg: Config, device: torch.device) -> FeatureExtractor:
    if device.type == "cuda":
        # Autotuned or nondeterministic kernels would make a map depend on the worker.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    key = json.dumps([cfg.models.model_dump(mode="json"), cfg.lare.model_dump(), str(device),
                      cfg.extract.precision, cfg.extract.channels_last, cfg.extract.compile])
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one model set per worker: free the previous one first
        _MODEL_CACHE[key] = FeatureExtractor(cfg, device)
    return _MODEL_CACHE[key]


# --------------------------------------------------------------------------- one image


@dataclass
class Prepared:
    lare_pixels: torch.Tensor | None
    clip_pixels: torch.Tensor | None
    sha256: str | None
    width: int | None
    height: int | None
    error: str | None

    @classmethod
    def failed(cls, error: str) -> Prepared:
        return cls(None, None, None, None, None, error)


Crop = Callable[[DecodedImage], DecodedImage]


def _whole(decoded: DecodedImage) -> DecodedImage:
    return decoded


@dataclass
class RowPreparer:
    """Decode -> view -> the two branches' input tensors, for one row; never raises.

    Whatever goes wrong with one image (a decoder's exception of any type, a size the memory
    bounds refuse, an error in a view or a resize) is that row's failure, with its reason."""

    cfg: Config
    root: Path
    clip_preprocess: ClipInput
    perturbation: Perturbation | None

    def __call__(self, rel_path: str, view: int, crop: Crop | None = None) -> Prepared:
        """`crop` (predict's face crop) replaces the decoded image before the view is made;
        its ImageDecodeError is the row's failure like a decoder's."""
        path = self.root / rel_path
        crop = crop or _whole
        return self._guarded(path, lambda: self.decoded(crop(self.decode(path)), view, rel_path))

    def prepare_decoded(self, decoded: DecodedImage, view: int, name: str,
                        crop: Crop | None = None) -> Prepared:
        """The same preparation for an image decoded elsewhere (a video frame); never raises."""
        crop = crop or _whole
        return self._guarded(Path(name), lambda: self.decoded(crop(decoded), view, name))

    @staticmethod
    def _guarded(path: Path, work: Any) -> Prepared:
        try:
            return work()
        except ImageDecodeError as exc:
            return Prepared.failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - one image's problem is one failed row
            return Prepared.failed(
                f"preparation failed: {path}: {type(exc).__name__}: {one_line(exc)}"
            )

    def decode(self, path: Path) -> DecodedImage:
        ext = self.cfg.extract
        return decode_image(path, max_pixels=ext.max_image_pixels, min_size=ext.min_image_size,
                            max_aspect_ratio=ext.max_aspect_ratio)

    def decoded(self, decoded: DecodedImage, view: int, name: str) -> Prepared:
        """`name`: the file the image came from (the clare-paper input re-encodes a `.png`)."""
        from clare.models.lare import lare_pixels

        ext = self.cfg.extract
        image = make_view(decoded.image, seed=self.cfg.seed, image_sha256=decoded.sha256,
                          view=view, aug=ext.augment, perturbation=self.perturbation)
        clip_side = self.clip_preprocess.resize_side
        if clip_side is not None:
            check_resize(*image.size, clip_side, max_pixels=ext.max_image_pixels)
        # The same (augmented) pixels feed both branches.
        return Prepared(
            lare_pixels(image, self.cfg.lare.image_size),
            self.clip_preprocess(image, name),
            decoded.sha256,
            decoded.width,
            decoded.height,
            None,
        )


# --------------------------------------------------------------------------- one batch


@dataclass
class BatchFeatures:
    """The features of a batch's good rows: `index[j]` is the position in the batch of row j.
    dtypes as a store holds them (lare, cls float32; tokens float16)."""

    index: list[int]
    lare: np.ndarray
    cls: np.ndarray
    tokens: np.ndarray


def compute_features(extractor: FeatureExtractor, seed: int, views: list[int],
                     prepared: list[Prepared]) -> BatchFeatures | None:
    """Both frozen branches on the batch's good rows (None when it has none); every row's LaRE
    noise is seeded by (seed, image sha256, view). Failures of the models stop the run."""
    good = [k for k, item in enumerate(prepared) if item.error is None]
    if not good:
        return None
    lare_in = torch.stack([cast(torch.Tensor, prepared[k].lare_pixels) for k in good])
    clip_in = torch.stack([cast(torch.Tensor, prepared[k].clip_pixels) for k in good])
    generators = [
        torch.Generator().manual_seed(derive_seed(seed, cast(str, prepared[k].sha256), views[k], "lare"))
        for k in good
    ]
    lare = extractor.lare(lare_in, generators).numpy()
    cls, tokens = extractor.clip(clip_in)
    return BatchFeatures(good, lare.astype(np.float32, copy=False),
                         cls.numpy().astype(np.float32, copy=False),
                         tokens.numpy().astype(np.float16))
