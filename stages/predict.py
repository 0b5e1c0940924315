"""`clare predict`: score new images, folders and videos with a trained run.

Stage one runs in memory through the same code as `clare extract` (clare.features: decode,
view 0, LaRE and CLIP, LaRE noise seeded by the image's content hash), then the run's head,
so an image's p_fake here equals the score `clare eval` gives it from a store. The run's
config supplies every setting that shapes a feature; `--config` / `--set` may change only the
others (device, batch size, video frames, ...).

A video is N evenly spaced frames (`predict.video_frames`), one row per frame and one video
row whose p_fake is the frames' mean. Bad inputs are failed rows with their reason.
"""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from rich.markup import escape

from clare import fingerprint as fp
from clare.cache.spill import FeatureSpill
from clare.config import (
    Config,
    _set_dotted,
    format_validation_error,
    load_config_dict,
    parse_override,
)
from clare.console import make_console
from clare.data.df40 import describe_label_conflicts
from clare.data.faces import FaceBox, FaceCrop, check_face_mode
from clare.data.images import DecodedImage, ImageDecodeError, check_dimensions, pixels_sha256
from clare.errors import ConfigError, DataError, StoreError, one_line, reason_label
from clare.features import (
    FeatureExtractor,
    Prepared,
    RowPreparer,
    compute_features,
)
from clare.files import pid_lock

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
# face_*: the crop box in the input's pixels with `--faces detect` (x1, y1 exclusive), else empty.
FACE_COLUMNS = ("face_x0", "face_y0", "face_x1", "face_y1")
PREDICTION_COLUMNS = ("input", "kind", "frame", "p_fake", "verdict", "threshold", "status",
                      "error", "width", "height", *FACE_COLUMNS)
DEFAULT_THRESHOLD = 0.5
TABLE_LIMIT = 20  # inputs up to which the predictions are printed as a table
STORE_SUBSET = "predict"  # --store: the subset and label of every row (predict knows no labels)
UNKNOWN_LABEL = -1
SPILL_DIR = ".predict-spill"  # --store: features wait here until every input is scored

# Settings that shape a feature (docs/design.md, "Fingerprint"): predict takes them from the run.
# The weights themselves are checked by content against the run's fingerprint.
FEATURE_KEYS = ("seed", "lare", "models.clip.input", "extract.precision", "extract.min_image_size",
                "extract.max_image_pixels", "extract.max_aspect_ratio")


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


# --------------------------------------------------------------------------- inputs


def _media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _media(p))


def _expand(text: str) -> list[Path]:
    """One INPUT: a file as given, a folder's image and video files (recursive, sorted), or
    a glob pattern's matches; matching nothing is the user's error."""
    path = Path(text)
    if path.is_dir():
        found = _folder_files(path)
    elif path.exists():
        return [path]
    elif glob.has_magic(text):
        found = []
        for match in sorted(glob.glob(text, recursive=True)):
            hit = Path(match)
            found.extend(_folder_files(hit) if hit.is_dir() else [hit] if hit.is_file() else [])
    else:
        raise DataError(f"{text}: no such file or folder; check the path")
    if not found:
        raise DataError(f"{text}: matches no image or video file "
                        f"({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}); check the path")
    return found


def _read_list(list_file: Path) -> list[Path]:
    """`--list FILE`: one path a line (blank lines and # comments skipped); relative paths
    are taken from the current folder. A listed path that is missing becomes a failed row."""
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--list {list_file}: cannot read it ({one_line(exc, 120)}); "
                        "pass a UTF-8 text file with one path a line") from None
    return [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def collect_inputs(inputs: list[str], list_file: Path | None = None) -> list[Path]:
    """Every input file in order (first occurrence kept)."""
    paths = [p for text in inputs for p in _expand(text)]
    if list_file is not None:
        paths.extend(_read_list(list_file))
    if not paths:
        raise DataError("no inputs: pass image or video files, folders, globs or --list FILE")
    return list(dict.fromkeys(paths))


def check_outputs_outside_inputs(inputs: list[str], outputs: dict[str, Path | None]) -> None:
    """Refuse an output folder (`--out`, `--store`) inside an input folder: the next predict
    of that folder would score the images predict wrote there (explain/*.png)."""
    folders = [Path(text).resolve() for text in inputs if Path(text).is_dir()]
    for option, out in outputs.items():
        if out is None:
            continue
        target = Path(out).resolve()
        inside = next((folder for folder in folders if target.is_relative_to(folder)), None)
        if inside is not None:
            raise ConfigError(f"{option} {out}: inside the input folder {inside}, so predict's own "
                              "outputs would become inputs; choose a folder outside it")


# --------------------------------------------------------------------------- videos


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
    source: Path | None = None  # the input file (the video for a frame)


@dataclass
class InputResult:
    path: Path
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
    faces: bool = False  # --faces detect: crop every image and frame to its largest face

    def __call__(self, path: Path) -> InputResult:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return self._video(path)
        if self.faces:
            crop = FaceCrop(str(path))
            unit = _face_unit(None, self.preparer(str(path), 0, crop), crop)
        else:
            prepared = self.preparer(str(path), 0)
            unit = _image_unit(None, prepared, prepared.width, prepared.height)
        unit.source = path
        return InputResult(path, "image", [unit], unit.error, unit.width, unit.height)

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


def _prepared_inputs(paths: list[Path], prepare: Callable[[Path], InputResult], threads: int,
                     ahead: int) -> Iterator[InputResult]:
    """Inputs in order, decoded up to `ahead` inputs in advance in a thread pool (bounded
    memory for large folders)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[InputResult]] = deque()
        queue = iter(paths)
        for path in queue:
            pending.append(pool.submit(prepare, path))
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


# --------------------------------------------------------------------------- driver


@dataclass
class PredictSummary:
    out_dir: Path
    predictions: pd.DataFrame
    inputs: int
    failed: int  # inputs whose final row failed
    threshold: float
    seconds: float
    images_scored: int  # images and frames through the models
    store: Path | None = None  # --store: the feature store written

    @property
    def images_per_second(self) -> float:
        return self.images_scored / self.seconds if self.seconds > 0 else float("nan")


def _threshold(run: Any, override: float | None, console: Any) -> float:
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise ConfigError(f"--threshold {override}: must be between 0 and 1")
        return float(override)
    if run.threshold is None:
        console.print(f"{escape(str(run.path))} records no operating threshold; using {DEFAULT_THRESHOLD} "
                      "(refit with this clare to record one, or pass --threshold)")
        return DEFAULT_THRESHOLD
    return run.threshold


def _check_features(run: Any, cfg: Config) -> None:
    """The SD and CLIP predict would run now must be the ones the run was trained on."""
    fp.require_match(run.store_fingerprint, fp.feature_settings(cfg), fp.FEATURES,
                     expected_name=f"the models and settings run {run.path} was trained with",
                     actual_name="the models predict would use now",
                     fix="restore the original weights or point models.* at them")


@dataclass
class _Models:
    scorer: Scorer
    preparer: _InputPreparer


def _load_models(run: Any, cfg: Config, device: torch.device, options: PredictOptions,
                 spill: FeatureSpill | None) -> _Models:
    from clare.features import get_extractor
    from clare.runs import RunInfo, load_detector

    extractor = get_extractor(cfg, device)
    detector = load_detector(RunInfo(run.path, cfg, run.record), device)
    scorer = Scorer(extractor, detector, device, cfg.seed, options.explain, spill)
    preparer = RowPreparer(cfg, Path.cwd(), extractor.clip_preprocess, None)
    return _Models(scorer, _InputPreparer(preparer, cfg, options.faces == "detect"))


def _score_all(paths: list[Path], models: _Models, batch_size: int, threads: int,
               on_input: Callable[[InputResult], None]) -> int:
    """Prepare and score every input in batches of `batch_size` images; `on_input` gets each
    finished input in order. Returns the number of images sent to the models."""
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

    for result in _prepared_inputs(paths, models.preparer, threads, ahead=2 * batch_size):
        waiting.append(result)
        units.extend(result.units)
        if len(units) >= batch_size:
            flush()
    flush()
    return scored


@dataclass
class PredictOptions:
    out_dir: Path | None = None
    device: str | None = None
    batch_size: int | None = None
    threshold: float | None = None
    explain: bool = False
    quiet: bool = False
    faces: str = "none"  # none: inputs are face crops already; detect: crop the largest face
    store: Path | None = None  # also write the computed features as a feature store here


def _check_store_target(path: Path | None) -> None:
    """`--store DIR` must be a new or empty folder: predict never mixes into another store."""
    if path is None or not path.exists():
        return
    if not path.is_dir() or any(path.iterdir()):
        raise StoreError(f"--store {path}: already exists and is not an empty folder; "
                         "choose a new folder or delete it")


def _write_store(spill: FeatureSpill, path: Path, cfg: Config, faces: str, console: Any) -> Path | None:
    """The features of every scored image as a store at `path`; None when none scored."""
    store = spill.write_store(path, cfg, split=STORE_SUBSET, extra={"faces": faces},
                              describe_conflicts=describe_label_conflicts)
    spill.close()
    if store is None:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        console.print(f"--store {escape(str(path))}: no store written, no image was scored")
        return None
    console.print(f"[bold]{escape(str(path))}[/]: feature store of the {store.n_rows} scored image(s)")
    return path


def run_predict(run_dir: Path, inputs: list[str], *, list_file: Path | None = None,
                config_files: list[Path] | None = None, overrides: list[str] | None = None,
                options: PredictOptions | None = None) -> PredictSummary:
    from clare.runs import read_run

    options = options or PredictOptions()
    console = make_console(quiet=options.quiet)
    run = read_run(Path(run_dir))
    cfg = predict_config(run.config, config_files or [], overrides or [])
    paths = collect_inputs(inputs, list_file)
    threshold = _threshold(run, options.threshold, console)
    batch_size = cfg.extract.batch_size if options.batch_size is None else options.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    out_dir = Path(options.out_dir) if options.out_dir else Path("predictions") / run.path.name
    check_outputs_outside_inputs(inputs, {"--out": out_dir, "--store": options.store})
    check_face_mode(options.faces)
    _check_features(run, cfg)
    _check_store_target(options.store)  # before it is made: a file there is named as such
    # The output folders are made now, by the locks: one that cannot be written fails before
    # the inputs are scored.
    with output_locks({"--out": out_dir, "--store": options.store}):
        _check_store_target(options.store)  # under the lock: two predicts cannot both find it empty
        return _predict(run, cfg, paths, _Plan(threshold, batch_size, out_dir), options, console)


@contextmanager
def output_locks(outputs: dict[str, Path | None]) -> Iterator[None]:
    """Hold `.<folder>.lock` beside each output folder for the whole predict: a second predict
    into the same --out (whose files would interleave) or --store is refused in one line."""
    with ExitStack() as stack:
        for option, folder in outputs.items():
            if folder is None:
                continue
            Path(folder).mkdir(parents=True, exist_ok=True)  # one that cannot be made fails here
            target = Path(folder).resolve()
            handle = open(target.parent / f".{target.name}.lock", "a+")  # noqa: SIM115 - held below

            def held(holder: str, option: str = option, folder: Path = Path(folder)) -> ConfigError:
                return ConfigError(f"{option} {folder}: another clare predict is writing it (pid "
                                   f"{holder}); wait for it to finish or choose another {option}")

            stack.enter_context(pid_lock(handle, held))
        yield


class _Plan(NamedTuple):
    threshold: float
    batch_size: int
    out_dir: Path


def _predict(run: Any, cfg: Config, paths: list[Path], plan: _Plan, options: PredictOptions,
             console: Any) -> PredictSummary:
    """Score `paths` and write the outputs (under the output locks)."""
    from clare.models.loading import resolve_device

    device = resolve_device(options.device or cfg.extract.device)
    spill = FeatureSpill(Path(options.store) / SPILL_DIR) if options.store is not None else None
    try:
        threads = torch.get_num_threads()
        # Interactive work: every core for torch (extract pins threads for bit-identical stores).
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            models = _load_models(run, cfg, device, options, spill)
            started = time.perf_counter()
            results, scored = _score_with_progress(paths, models, plan.batch_size, cfg, console)
            seconds = time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)
        summary = _finish(results, plan.out_dir, plan.threshold, seconds, scored, options, console)
        if spill is not None and options.store is not None:
            summary.store = _write_store(spill, Path(options.store), cfg, options.faces, console)
    finally:
        if spill is not None:
            spill.close()  # a failed run leaves no spilled features behind
    return summary


def _score_with_progress(paths: list[Path], models: _Models, batch_size: int, cfg: Config,
                         console: Any) -> tuple[list[InputResult], int]:
    from clare.console import step_progress

    results: list[InputResult] = []
    threads = cfg.extract.decode_threads
    if len(paths) <= TABLE_LIMIT:
        scored = _score_all(paths, models, batch_size, threads, results.append)
        return results, scored
    with step_progress(console, "predict", "img") as progress:
        task = progress.add_task("predict", total=len(paths))

        def on_input(result: InputResult) -> None:
            results.append(result)
            progress.advance(task)

        scored = _score_all(paths, models, batch_size, threads, on_input)
    return results, scored


def _finish(results: list[InputResult], out_dir: Path, threshold: float, seconds: float,
            scored: int, options: PredictOptions, console: Any) -> PredictSummary:
    from clare.files import atomic_write_csv, atomic_write_parquet

    rows = [row for result in results for row in result_rows(result, threshold)]
    frame = predictions_frame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_dir / "predictions.csv", frame)
    atomic_write_parquet(out_dir / "predictions.parquet", frame)
    final = frame[frame["kind"] != "frame"]
    failed = int((final["status"] != "ok").sum())
    summary = PredictSummary(out_dir, frame, len(results), failed, threshold, seconds, scored)
    if options.explain:
        from clare.explain import write_explanations

        write_explanations(results, threshold, out_dir)
    if len(results) <= TABLE_LIMIT:
        print_table(console, frame)
    _print_summary(console, summary, final)
    return summary


def print_table(console: Any, frame: pd.DataFrame) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("input", overflow="fold")  # a path is shown whole, over several lines
    for name in ("frame", "p_fake", "verdict"):
        table.add_column(name, no_wrap=True)
    table.add_column("status", overflow="fold")
    for row in frame.to_dict("records"):
        frame_text = "" if pd.isna(row["frame"]) else str(row["frame"])
        p_text = "" if pd.isna(row["p_fake"]) else f"{row['p_fake']:.4f}"
        status = "ok" if row["status"] == "ok" else f"failed: {one_line(str(row['error']), 60)}"
        label = str(row["input"]) + (" (video)" if row["kind"] == "video" else "")
        table.add_row(escape(label), frame_text, p_text, str(row["verdict"]), escape(status))
    console.print(table)


def _print_summary(console: Any, summary: PredictSummary, final: pd.DataFrame) -> None:
    reasons = final.loc[final["status"] != "ok", "error"].map(reason_label).value_counts()
    why = escape(", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none")
    fake = int((final["verdict"] == "fake").sum())
    console.print(
        f"[bold]{escape(str(summary.out_dir / 'predictions.csv'))}[/]: {summary.inputs} input{'' if summary.inputs == 1 else 's'}, {fake} fake at "
        f"threshold {summary.threshold:.4f}, {summary.failed} failed ({why}); "
        f"{summary.images_scored} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} img/s)"
    )
