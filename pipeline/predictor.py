"""The Python API: a trained detector loaded once, scoring images and videos in memory.

    import clare
    detector = clare.load("runs/demo")                # a run, an exported folder or owner/name
    frame = detector.predict(["photo.png", pil_image, rgb_array, "clip.mp4"])

Stage one runs in memory through the same code as `clare extract` (clare.features: decode,
view 0, LaRE and CLIP, LaRE noise seeded by the image's content hash), then the run's head,
so an image's p_fake here equals the score `clare eval` gives it from a store. The run's
config supplies every setting that shapes a feature; `config_files` / `overrides` may change
only the others (device, batch size, video frames, where the backbones are).

A video is N evenly spaced frames (`predict.video_frames`), one row per frame and one video
row whose p_fake is the frames' mean. Bad inputs are failed rows with their reason.
`clare predict` (clare.stages.predict) is this class plus input folders, files and a console.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from pydantic import ValidationError

from clare import fingerprint as fp
from clare.cache.spill import FeatureSpill
from clare.config import Config
from clare.config_files import (
    _set_dotted,
    format_validation_error,
    load_config_dict,
    parse_override,
)
from clare.data.faces import FaceBox, FaceCrop, check_face_mode
from clare.data.images import (
    DecodedImage,
    ImageDecodeError,
    check_dimensions,
    decode_failure,
    pixels_sha256,
    to_rgb,
)
from clare.data.videos import read_video_frames
from clare.errors import ConfigError, one_line
from clare.features import FeatureExtractor, Prepared, RowPreparer, compute_features

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
# face_*: the crop box in the input's pixels with `faces="detect"` (x1, y1 exclusive), else empty.
FACE_COLUMNS = ("face_x0", "face_y0", "face_x1", "face_y1")
PREDICTION_COLUMNS = ("input", "kind", "frame", "p_fake", "verdict", "threshold", "status",
                      "error", "width", "height", *FACE_COLUMNS)
EXPLANATION_COLUMN = "explanation"  # predict(explain=True): {"pixels", "lare", "attention"} arrays
DEFAULT_THRESHOLD = 0.5
STORE_SUBSET = "predict"  # --store: the subset and label of every row (predict knows no labels)
UNKNOWN_LABEL = -1

# Settings that shape a feature (docs/design.md, "Fingerprint"): predict takes them from the run.
# The weights themselves are checked by content against the run's fingerprint.
FEATURE_KEYS = ("seed", "lare", "models.clip.input", "extract.precision", "extract.min_image_size",
                "extract.max_image_pixels", "extract.max_aspect_ratio")

# What `predict` scores: a file (image or video, by suffix), a PIL image, or an RGB array
# (H, W, 3) of uint8 (a grey (H, W) array is taken as grey).
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


# --------------------------------------------------------------------------- settings


def _dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _overlay(tree: dict[str, Any], extra: dict[str, Any], prefix: str = "") -> None:
    """Put every leaf of `extra` into `tree` (mappings merged key by key)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _overlay(tree[key], value, f"{prefix}{key}.")
        else:
            tree[key] = value


def predict_config(run_cfg: Config, config_files: list[Path], overrides: list[str]) -> Config:
    """The run's config with each `--config` (in order) and `--set` applied; an override of a
    setting that shapes the features is refused, naming the key."""
    tree = run_cfg.model_dump(mode="json")
    for config_file in config_files:
        _overlay(tree, load_config_dict(Path(config_file)))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, "the run's config")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "predict settings")) from None
    before, after = run_cfg.model_dump(mode="json"), cfg.model_dump(mode="json")
    changed = fp.differences(before, after, FEATURE_KEYS)
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{key}: {one_line(str(_dotted(after, key)), 80)} differs from the run's "
            f"{one_line(str(_dotted(before, key)), 80)}; predict computes features with the "
            "settings the run was trained on, drop that override"
        )
    return cfg


# --------------------------------------------------------------------------- inputs in memory


@dataclass(frozen=True)
class Item:
    """One input to score: its label (the `input` column) and the file or pixels."""

    label: str
    value: Path | Image.Image | np.ndarray


def as_items(inputs: Iterable[ImageInput] | ImageInput) -> list[Item]:
    """Paths stay paths (an image or a video, by suffix); a PIL image or array is labelled
    `<image N>` / `<array N>` by its position in `inputs`. One path, image or array given bare
    is one input; a 4-D array (N, H, W, C) is N images."""
    if isinstance(inputs, str | os.PathLike | Image.Image) or (
            isinstance(inputs, np.ndarray) and inputs.ndim < 4):
        # One input given bare: iterating it would score a path's characters or an array's rows.
        inputs = [inputs]
    items = []
    for number, value in enumerate(inputs):
        if isinstance(value, Image.Image):
            items.append(Item(f"<image {number}>", value))
        elif isinstance(value, np.ndarray):
            items.append(Item(f"<array {number}>", value))
        elif isinstance(value, str | os.PathLike):
            items.append(Item(str(Path(value)), Path(value)))
        else:
            raise ConfigError(f"input {number}: a {type(value).__name__}; pass a file path, a PIL "
                              "image or an RGB uint8 array of shape (H, W, 3)")
    return items


def decode_in_memory(value: Image.Image | np.ndarray, cfg: Config, label: str = "image") -> DecodedImage:
    """A PIL image or uint8 array as the decoder's output, under the same size limits. Its
    identity for seeding is the sha256 of its RGB pixels (it has no file), as a video frame's."""
    if isinstance(value, np.ndarray):
        shape_ok = value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (3, 4))
        if value.dtype != np.uint8 or not shape_ok:
            raise ImageDecodeError("not an image", f"array of shape {value.shape} and dtype "
                                   f"{value.dtype}; pass RGB uint8 of shape (H, W, 3)")
        value = Image.fromarray(value)
    ext = cfg.extract
    check_dimensions(value.width, value.height, max_pixels=ext.max_image_pixels,
                     min_size=ext.min_image_size, max_aspect_ratio=ext.max_aspect_ratio)
    try:
        # As a file is decoded (16-bit rescaled, EXIF orientation applied), so that a PIL image
        # scores as its file does; a lazily opened, truncated image fails here, as a row.
        value.load()
        image = to_rgb(ImageOps.exif_transpose(value))
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a failed row
        raise decode_failure(label, exc) from None
    return DecodedImage(image, pixels_sha256(image), value.width, value.height)


# --------------------------------------------------------------------------- units of work


@dataclass
class Unit:
    """One image the models score: an image file, or one frame of a video."""

    frame: int | None
    prepared: Prepared | None
    p_fake: float | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    face: FaceBox | None = None
    explain: dict[str, np.ndarray] | None = None
    source: Path | str | None = None  # the input file (the video for a frame) or label


@dataclass
class InputResult:
    path: Path | str  # the file, or the label of an image given in memory
    kind: str  # image | video
    units: list[Unit] = field(default_factory=list)
    error: str | None = None
    width: int | None = None
    height: int | None = None


def _face_unit(frame: int | None, prepared: Prepared, crop: FaceCrop) -> Unit:
    """A unit prepared from a face crop: its size is the input's, its box the crop's."""
    width, height = crop.source_size or (None, None)
    return Unit(frame, prepared, error=prepared.error, width=width, height=height, face=crop.box)


def _image_unit(frame: int | None, prepared: Prepared, width: int | None, height: int | None) -> Unit:
    return Unit(frame, prepared, error=prepared.error, width=width, height=height)


@dataclass
class _InputPreparer:
    preparer: RowPreparer
    cfg: Config
    faces: bool = False  # faces="detect": crop every image and frame to its largest face

    def __call__(self, item: Item) -> InputResult:
        if isinstance(item.value, Path) and item.value.suffix.lower() in VIDEO_SUFFIXES:
            return self._video(item.value)
        source: Path | str = item.value if isinstance(item.value, Path) else item.label
        crop = FaceCrop(item.label) if self.faces else None
        if isinstance(item.value, Path):
            prepared = self.preparer(str(item.value), 0, crop)
        else:
            prepared = self._in_memory(item, crop)
        if crop is not None:
            unit = _face_unit(None, prepared, crop)
        else:
            unit = _image_unit(None, prepared, prepared.width, prepared.height)
        unit.source = source
        return InputResult(source, "image", [unit], unit.error, unit.width, unit.height)

    def _in_memory(self, item: Item, crop: FaceCrop | None) -> Prepared:
        assert not isinstance(item.value, Path)
        try:
            decoded = decode_in_memory(item.value, self.cfg, item.label)
        except ImageDecodeError as exc:
            return Prepared.failed(str(exc))
        return self.preparer.prepare_decoded(decoded, 0, item.label, crop)

    def _frame(self, path: Path, number: int, decoded: DecodedImage) -> Unit:
        name = f"{path}#frame{number}"
        if self.faces:
            crop = FaceCrop(name)
            unit = _face_unit(number, self.preparer.prepare_decoded(decoded, 0, name, crop), crop)
        else:
            unit = _image_unit(number, self.preparer.prepare_decoded(decoded, 0, name),
                               decoded.width, decoded.height)
        unit.source = path
        return unit

    def _video(self, path: Path) -> InputResult:
        try:
            frames, width, height = read_video_frames(path, self.cfg.predict.video_frames, self.cfg)
        except ImageDecodeError as exc:
            return InputResult(path, "video", [], str(exc))
        units = [self._frame(path, number, decoded) for number, decoded in frames]
        return InputResult(path, "video", units, None, width, height)


def _prepared_inputs(items: Sequence[Item], prepare: Callable[[Item], InputResult], threads: int,
                     ahead: int) -> Iterator[InputResult]:
    """Inputs in order, decoded up to `ahead` inputs in advance in a thread pool (bounded
    memory for large folders)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[InputResult]] = deque()
        queue = iter(items)
        for item in queue:
            pending.append(pool.submit(prepare, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(prepare, nxt))
            yield result


# --------------------------------------------------------------------------- scoring


class _FeatureBatch(NamedTuple):
    """What clare.scoring.batch_logits reads, built as the store loader builds it."""

    cls: torch.Tensor
    tokens: torch.Tensor
    lare: torch.Tensor


@dataclass
class Scorer:
    """Stage one in memory and the run's head, on a batch of units."""

    extractor: FeatureExtractor
    detector: Any
    device: torch.device
    seed: int
    explain: bool = False
    spill: FeatureSpill | None = None  # --store: the features of every scored image go here

    @torch.no_grad()
    def __call__(self, units: list[Unit]) -> None:
        """Fill p_fake (or the error) of every unit whose preparation succeeded."""
        from clare.scoring import batch_logits

        todo = [u for u in units if u.prepared is not None and u.error is None]
        prepared = [u.prepared for u in todo if u.prepared is not None]
        features = compute_features(self.extractor, self.seed, [0] * len(todo), prepared)
        if features is not None:
            # The loader's tensors: float32, the tokens through the store's float16.
            batch = _FeatureBatch(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                                    for a in (features.cls, features.tokens, features.lare)))
            logits = batch_logits(self.detector, batch, self.device, False).float()
            probs = logits.softmax(-1)[:, 1].cpu().numpy()
            attention = self._attention(batch) if self.explain else None
            for j, k in enumerate(features.index):
                self._record(todo[k], features, j, float(probs[j]), attention)
            if self.spill is not None:
                scored = [(j, store_identity(todo[k])) for j, k in enumerate(features.index)
                          if todo[k].p_fake is not None]
                self.spill.add(features, scored)
        for unit in units:
            unit.prepared = None  # the pixels are no longer needed: bounded memory

    def _attention(self, batch: _FeatureBatch) -> np.ndarray | None:
        weights = self.detector.attention_map(batch.cls.to(self.device), batch.tokens.to(self.device),
                                              batch.lare.to(self.device))
        return None if weights is None else weights.float().cpu().numpy()

    def _record(self, unit: Unit, features: Any, j: int, p_fake: float,
                attention: np.ndarray | None) -> None:
        finite = all(np.isfinite(a[j]).all() for a in (features.lare, features.cls, features.tokens))
        if not finite:
            unit.error = "non-finite features: the model produced NaN or inf"
            return
        if not np.isfinite(p_fake):  # finite features: the detector head is at fault
            unit.error = "non-finite score: the detector produced NaN or inf from finite features"
            return
        unit.p_fake = p_fake
        if self.explain and unit.prepared is not None and unit.prepared.lare_pixels is not None:
            unit.explain = {"pixels": unit.prepared.lare_pixels.numpy(),
                            "lare": features.lare[j].mean(axis=0)}
            if attention is not None:
                unit.explain["attention"] = attention[j]


def store_identity(unit: Unit) -> dict[str, Any]:
    """A scored image's manifest row in a `--store` store. Predict knows no labels: -1; every
    row is of subset "predict"; a frame's video is its video file, an image is its own video."""
    prepared = unit.prepared
    assert prepared is not None and unit.source is not None
    # A store row is one image: a video's frames are told apart by "#frame" after the path.
    path = str(unit.source) if unit.frame is None else f"{unit.source}#{unit.frame}"
    return {"path": path, "subset": STORE_SUBSET, "label": UNKNOWN_LABEL,
            "video": str(unit.source), "frame": unit.frame or 0, "sha256": prepared.sha256,
            "width": prepared.width, "height": prepared.height}


# --------------------------------------------------------------------------- rows


def _verdict(p_fake: float | None, threshold: float) -> str:
    # "fake when p >= threshold", as clare.scoring.accuracy_at counts it.
    return "" if p_fake is None else ("fake" if p_fake >= threshold else "real")


def _row(result: InputResult, kind: str, frame: int | None, p_fake: float | None, error: str | None,
         width: int | None, height: int | None, threshold: float) -> dict[str, Any]:
    return {"input": str(result.path), "kind": kind, "frame": frame, "p_fake": p_fake,
            "verdict": _verdict(p_fake, threshold), "threshold": threshold,
            "status": "ok" if error is None else "failed", "error": error or "",
            "width": width, "height": height, **dict.fromkeys(FACE_COLUMNS)}


def _unit_row(result: InputResult, kind: str, unit: Unit, threshold: float) -> dict[str, Any]:
    row = _row(result, kind, unit.frame, unit.p_fake, unit.error, unit.width, unit.height, threshold)
    if unit.face is not None:
        row.update(zip(FACE_COLUMNS, unit.face, strict=True))
    return row


def _video_summary(result: InputResult) -> tuple[float | None, str | None]:
    """The video row's p_fake (mean over its scored frames, as video AUC is computed) and
    its error: none when every frame scored, a count when some failed."""
    if result.error is not None:
        return None, result.error
    scored = [u.p_fake for u in result.units if u.p_fake is not None]
    if not scored:
        return None, f"no frame could be scored ({len(result.units)} tried)"
    failed = len(result.units) - len(scored)
    note = f"{failed} of {len(result.units)} frames failed; mean of the others" if failed else None
    return float(np.mean(scored)), note


def result_rows(result: InputResult, threshold: float) -> list[dict[str, Any]]:
    """The prediction rows of one input: one for an image; per frame plus one for a video."""
    if result.kind == "image":
        return [_unit_row(result, "image", result.units[0], threshold)]
    rows = [_unit_row(result, "frame", unit, threshold) for unit in result.units]
    p_fake, error = _video_summary(result)
    video = _row(result, "video", None, p_fake, error if p_fake is None else None,
                 result.width, result.height, threshold)
    if p_fake is not None and error:
        video["error"] = error  # a partial video is still scored: say what it rests on
    return [*rows, video]


def predictions_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=list(PREDICTION_COLUMNS))
    return frame.astype({"frame": "Int64", "p_fake": "float64", "threshold": "float64",
                         "width": "Int64", "height": "Int64", **dict.fromkeys(FACE_COLUMNS, "Int64")})




# --------------------------------------------------------------------------- the detector


def output_name(source: str | os.PathLike[str]) -> str:
    """The name `clare predict` gives a source's output folder: the folder's own name, so that
    `--run ..` or `--run .` cannot make `predictions/..` (the folder the command runs in) the
    output; a hub id's repo name."""
    return Path(os.path.abspath(os.fspath(source))).name


def _check_features(run: Any, cfg: Config) -> None:
    """The SD and CLIP predict would run now must be the ones the run was trained on."""
    fp.require_match(run.store_fingerprint, fp.feature_settings(cfg), fp.FEATURES,
                     expected_name=f"the models and settings run {run.path} was trained with",
                     actual_name="the models predict would use now",
                     fix="restore the original weights or point models.* at them")


def _threshold(run: Any, override: float | None) -> tuple[float, str | None]:
    """The operating threshold and, when the run records none, the note that says so."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise ConfigError(f"--threshold {override}: must be between 0 and 1")
        return float(override), None
    if run.threshold is None:
        return DEFAULT_THRESHOLD, (f"{run.path} records no operating threshold; using "
                                   f"{DEFAULT_THRESHOLD} (refit with this clare to record one, "
                                   "or pass --threshold)")
    return float(run.threshold), None


@dataclass
class _Models:
    scorer: Scorer
    preparer: _InputPreparer


class Predictor:
    """A trained detector, loaded once, that scores images and videos.

    Build it with `clare.load` (or `Predictor.load`); `predict` returns `clare predict`'s
    columns as a pandas DataFrame. Every check (the run record, its weights' sha256, an
    export's manifest, that the backbones found now are the ones it was trained on) runs when
    it is loaded, so a detector that loads scores with the numbers the run was evaluated with.
    """

    def __init__(self, run: Any, cfg: Config, *, threshold: float, faces: str, batch_size: int,
                 device: str | None, notes: list[str], name: str | None = None) -> None:
        self.name = name or Path(run.path).name  # the default output folder's name
        self.run = run  # clare.runs.RunInfo of the run folder (the export or hub snapshot)
        self.config = cfg  # the run's config with the allowed overrides applied
        self.threshold = threshold  # fake when p_fake >= threshold
        self.faces = faces
        self.batch_size = batch_size
        self.device_name = device or cfg.extract.device
        self.notes = notes  # what a console should tell the user (e.g. the default threshold)
        self._models: _Models | None = None

    @classmethod
    def open(cls, source: str | os.PathLike[str], *, config_files: Sequence[Path] = (),
             overrides: Sequence[str] = (), device: str | None = None,
             threshold: float | None = None, faces: str = "none",
             batch_size: int | None = None) -> Predictor:
        """Every check of `load` without loading the networks (they load on first use)."""
        from clare.export import open_run_source

        run = open_run_source(source)
        cfg = predict_config(run.config, [Path(f) for f in config_files], list(overrides))
        chosen, note = _threshold(run, threshold)
        size = cfg.extract.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ConfigError(f"--batch-size {size}: must be at least 1")
        check_face_mode(faces)
        from clare.export import require_backbones

        require_backbones(run, cfg)
        _check_features(run, cfg)
        return cls(run, cfg, threshold=chosen, faces=faces, batch_size=size, device=device,
                   notes=[note] if note else [],
                   name=output_name(source))

    @classmethod
    def load(cls, source: str | os.PathLike[str], **options: Any) -> Predictor:
        """`open`, then load the frozen networks and the trained head (see `clare.load`)."""
        predictor = cls.open(source, **options)
        predictor.models()
        return predictor

    def models(self) -> _Models:
        """The networks, loaded on first call and kept."""
        if self._models is None:
            from clare.features import get_extractor
            from clare.models.loading import resolve_device
            from clare.runs import RunInfo, load_detector

            device = resolve_device(self.device_name)
            extractor = get_extractor(self.config, device)
            detector = load_detector(RunInfo(self.run.path, self.config, self.run.record), device)
            scorer = Scorer(extractor, detector, device, self.config.seed)
            preparer = RowPreparer(self.config, Path.cwd(), extractor.clip_preprocess, None)
            self._models = _Models(scorer, _InputPreparer(preparer, self.config,
                                                          self.faces == "detect"))
        return self._models

    def score(self, items: Sequence[Item], on_input: Callable[[InputResult], None], *,
              explain: bool = False, spill: FeatureSpill | None = None) -> int:
        """Prepare and score `items` in batches of `batch_size` images; `on_input` gets each
        finished input in order. Returns the number of images sent to the models."""
        models = self.models()
        models.scorer.explain, models.scorer.spill = explain, spill
        waiting: list[InputResult] = []
        units: list[Unit] = []
        scored = 0

        def flush() -> None:
            nonlocal scored
            models.scorer(units)
            scored += sum(1 for u in units if u.error is None)
            for result in waiting:
                on_input(result)
            waiting.clear()
            units.clear()

        threads = self.config.extract.decode_threads
        for result in _prepared_inputs(items, models.preparer, threads, ahead=2 * self.batch_size):
            waiting.append(result)
            units.extend(result.units)
            if len(units) >= self.batch_size:
                flush()
        flush()
        return scored

    def predict(self, inputs: Iterable[ImageInput] | ImageInput, *,
                explain: bool = False) -> pd.DataFrame:
        """Score `inputs` (file paths of images or videos, PIL images, RGB uint8 arrays).

        One row per image; per video one row per scored frame and one `video` row (the mean
        of its frames). Columns: `PREDICTION_COLUMNS`; a file that cannot be used is a row with
        status `failed` and its reason in `error`, never an exception. With `explain=True` an
        `explanation` column holds, per scored image or frame, a dict of arrays: `pixels` (the
        image as the model saw it, 3xHxW in [-1, 1]), `lare` (the LaRE map, mean over the
        latent channels) and, for the fusion head, `attention` (over the CLIP patch grid).
        """
        results: list[InputResult] = []
        self.score(as_items(inputs), results.append, explain=explain)
        frame = predictions_frame([row for r in results for row in result_rows(r, self.threshold)])
        if explain:
            frame[EXPLANATION_COLUMN] = pd.Series(_explanations(results), index=frame.index,
                                                  dtype=object)
        return frame


def _explanations(results: list[InputResult]) -> list[dict[str, np.ndarray] | None]:
    """Per prediction row (the order of result_rows): the unit's arrays; None for video rows."""
    found: list[dict[str, np.ndarray] | None] = []
    for result in results:
        found.extend(unit.explain for unit in result.units)
        if result.kind == "video":
            found.append(None)
    return found


def load(source: str | os.PathLike[str], *, device: str | None = None,
         threshold: float | None = None, faces: str = "none", batch_size: int | None = None,
         config_files: Sequence[Path] = (), overrides: Sequence[str] = ()) -> Predictor:
    """Load a trained detector once: a run folder (`runs/demo`), a folder `clare export` wrote,
    or a Hugging Face Hub id (`owner/name`, from the hub cache; offline with HF_HUB_OFFLINE=1).

    `device` (cpu, cuda, cuda:N; default the config's), `threshold` (default the run's
    operating threshold), `faces` ("none" or "detect", as `clare predict --faces`),
    `batch_size`, and `config_files` / `overrides` (`dotted.key=value`) change only settings
    that do not shape a feature, e.g. where the backbones are (`models.sd.pretrained=DIR`).
    Bad input raises a clare.errors.ClareError whose message is one line naming the fix.
    """
    return Predictor.load(source, device=device, threshold=threshold, faces=faces,
                          batch_size=batch_size, config_files=config_files, overrides=overrides)
