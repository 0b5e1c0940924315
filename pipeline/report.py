"""Evaluation report: `report.md`, a self-contained `report.html`, `report.tex` and figures.

This module decides what the report says: its sections, built as blocks of the document model
(`clare.render.document`), which renders them as Markdown, HTML and LaTeX (`report.tex`). The
numbers come from `clare.metrics`, the figures from `clare.render.figures` (PNG with an SVG
beside each). The HTML inlines its CSS and its images (base64 data URIs) and links to nothing
outside the file, so it can be mailed or opened offline.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clare.errors import ClareError
from clare.files import atomic_write_csv
from clare.metrics import (
    CALIBRATION_BINS,
    classification_errors,
    distinct_images,
    subset_ece,
    summarize,
    video_accuracy,
    video_table,
    worst_errors,
)
from clare.provenance import provenance_line
from clare.render import figures
from clare.render.document import (
    Block,
    Cell,
    CodeDetails,
    ErrorGallery,
    ErrorItem,
    Heading,
    Paragraph,
    Picture,
    Table,
    latex_document,
    render_document,
)
from clare.render.figures import fmt as _fmt
from clare.report_tables import (
    OperatingPoint,
    config_yaml,
    mean_row,
    operating_point,
    oracle_table,
    robustness_tables,
    subset_table,
    summary_text,
    threshold_blocks,
)

FIGURE_NAMES = ("roc.png", "scores.png", "calibration.png", "robustness.png", "lare.png",
                "validation.png")
ERRORS_DIR = "errors"  # under figures/: thumbnails and LaRE overlays of the worst errors
VIDEOS_FILE = "videos.csv"  # every video of the clean test stores, worst first
LATEX_FILE = "report.tex"
VIDEOS_SHOWN = 20  # rows of the per-video table in the report (all of them in VIDEOS_FILE)

# Reads LaRE maps of a store: (store name, row ids) -> array (len(rows), C, H, W).
LareReader = Callable[[str, np.ndarray], np.ndarray]

# --------------------------------------------------------------------------- sections


def _clean_rows(scores: pd.DataFrame, robustness: Mapping[str, Any] | None) -> pd.DataFrame:
    """Rows of the unperturbed stores (everything not named as a robustness store)."""
    missing = {"subset", "label", "p_fake"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores table lacks column(s) {sorted(missing)}")
    rows = scores
    if "store" in scores.columns and robustness:
        rows = scores[~scores["store"].isin(list(robustness))]
    return rows.dropna(subset=["p_fake"])


# --------------------------------------------------------------------------- calibration


def _calibration_blocks(clean: pd.DataFrame, plotted: list[str], fig_dir: Path) -> list[Block]:
    ece = subset_ece(clean, plotted)
    counts = clean.groupby("subset", sort=False)["p_fake"].size()
    rows = [[Cell(name), Cell(_fmt(ece[name]), numeric=True), Cell(_fmt(int(counts[name])), numeric=True)]
            for name in plotted]
    mean = mean_row(f"mean over {len(plotted)} subsets", [list(ece.values())])
    mean.append(Cell(_fmt(int(counts[plotted].sum())), numeric=True))
    table = Table(
        header=["Subset", f"ECE ({CALIBRATION_BINS} bins)", "images"],
        rows=[*rows, mean],
        caption=(f"Expected calibration error of p(fake): {CALIBRATION_BINS} equal-width bins on "
                 "[0, 1]; per bin the gap between its share of fakes and its mean p(fake), "
                 "weighted by its share of the subset's images. 0: calibrated, at most 1. A "
                 "single-class subset has one too: how far its scores are from its one label."),
        emphasise_last_row=True,
    )
    picture = Picture(
        figures.reliability_figure(clean, plotted, ece, fig_dir / "calibration.png"),
        "Reliability diagrams",
        "Reliability diagram per subset: share of fakes against mean p(fake) in each bin; "
        "dashed: perfect calibration. Also figures/calibration.svg.",
    )
    return [Heading("Calibration"), table, picture]


# --------------------------------------------------------------------------- videos


def _video_summary(videos: pd.DataFrame, plotted: list[str], point: OperatingPoint) -> Table:
    by_subset = videos.groupby("subset", sort=False)["label"]
    real, fake = by_subset.apply(lambda s: int((s == 0).sum())), by_subset.sum()
    at_half = video_accuracy(videos, 0.5)
    at_point = video_accuracy(videos, point.value)
    names = [name for name in plotted if name in real.index]
    rows = [[Cell(name), Cell(_fmt(int(real[name])), numeric=True),
             Cell(_fmt(int(fake[name])), numeric=True), Cell(_fmt(at_half[name]), numeric=True),
             Cell(_fmt(at_point[name]), numeric=True)] for name in names]
    mean = mean_row(f"mean over {len(names)} subsets",
                     [[], [], [at_half[n] for n in names], [at_point[n] for n in names]])
    mean[1:3] = [Cell(_fmt(int(real[names].sum())), numeric=True),
                 Cell(_fmt(int(fake[names].sum())), numeric=True)]
    threshold = f"t = {point.value:.4f}" if point.from_validation else "t = 0.5"
    return Table(
        header=["Subset", "real videos", "fake videos", "video acc@0.5", f"video acc ({threshold})"],
        rows=[*rows, mean],
        caption="A video is called fake when its mean p(fake) is at least the threshold.",
        emphasise_last_row=True,
    )


def _worst_videos(videos: pd.DataFrame) -> Table:
    shown = videos.head(VIDEOS_SHOWN)
    rows = [[Cell(str(v.subset)), Cell(str(v.video)), Cell("fake" if v.label == 1 else "real"),
             Cell(_fmt(int(v.frames)), numeric=True), Cell(_fmt(v.p_fake_mean), numeric=True),
             Cell(_fmt(v.p_fake_min), numeric=True), Cell(_fmt(v.p_fake_max), numeric=True)]
            for v in shown.itertuples(index=False)]
    return Table(
        header=["Subset", "Video", "Label", "Frames", "mean p(fake)", "min p(fake)", "max p(fake)"],
        rows=rows,
        caption=(f"The {len(shown)} videos whose mean p(fake) is furthest from their label, of "
                 f"{len(videos)}; every video is in {VIDEOS_FILE} beside this report."),
    )


def _video_blocks(clean: pd.DataFrame, plotted: list[str], point: OperatingPoint,
                  out_dir: Path) -> list[Block]:
    videos = video_table(clean)
    atomic_write_csv(out_dir / VIDEOS_FILE, videos)
    return [Heading("Per-video results"), _video_summary(videos, plotted, point),
            _worst_videos(videos)]


# --------------------------------------------------------------------------- worst errors


def _error_maps(picks: pd.DataFrame, read_lare: LareReader | None) -> list[tuple[Any, str]]:
    """(LaRE map or None, why none) per picked row, reading each store once."""
    if read_lare is None:
        return [(None, "LaRE map not given")] * len(picks)
    if "row" not in picks.columns:
        return [(None, "no store row")] * len(picks)
    stores = picks["store"].astype(str) if "store" in picks.columns else pd.Series("", picks.index)
    found: dict[Any, tuple[Any, str]] = {}
    for store, group in picks.groupby(stores, sort=False):
        try:
            maps = read_lare(str(store), group["row"].to_numpy(dtype=np.int64))
        except (ClareError, OSError, ValueError, KeyError) as exc:
            found.update({i: (None, f"LaRE map unreadable ({exc.__class__.__name__})")
                          for i in group.index})
            continue
        for index, lare in zip(group.index, maps, strict=True):
            finite = np.isfinite(lare).all()
            found[index] = (lare, "") if finite else (None, "LaRE map not finite")
    return [found[index] for index in picks.index]


def _thumbnail(image_root: Path | None, path: object) -> tuple[Any, str]:
    """(PIL image or None, why none) for a listed image path under `image_root`."""
    if image_root is None:
        return None, "no image folder given"
    try:
        return figures.read_thumbnail(Path(image_root) / str(path)), ""
    except FileNotFoundError:
        return None, "image file missing"
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError
        return None, f"image unreadable ({exc.__class__.__name__})"


def _error_items(picks: pd.DataFrame, prefix: str, folder: Path, image_root: Path | None,
                 read_lare: LareReader | None) -> list[ErrorItem]:
    items = []
    maps = _error_maps(picks, read_lare)
    for rank, (row, (lare, lare_note)) in enumerate(
            zip(picks.to_dict("records"), maps, strict=True), start=1):
        picture, thumbnail_note = _thumbnail(image_root, row.get("path", ""))
        thumbnail = overlay = None
        if picture is not None:
            thumbnail = folder / f"{prefix}{rank:02d}.png"
            picture.save(thumbnail, format="PNG")
        if lare is not None:
            overlay = figures.lare_overlay_png(picture, lare, folder / f"{prefix}{rank:02d}_lare.png")
        items.append(ErrorItem(rank, str(row["subset"]), figures.video_and_frame(row.get("path", "")),
                               f"{float(row['p_fake']):.4f}", thumbnail, thumbnail_note, overlay,
                               lare_note))
    return items


def _error_blocks(clean: pd.DataFrame, point: OperatingPoint, fig_dir: Path,
                  image_root: Path | None, read_lare: LareReader | None) -> list[Block]:
    images = distinct_images(clean)  # counted as images, as the gallery shows them
    n_fp, n_fn = (len(errors) for errors in classification_errors(images, point.value))
    false_pos, false_neg = worst_errors(clean, point.value)
    folder = fig_dir / ERRORS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    intro = (f"At threshold {point.value:.4f} ({point.name}): {n_fp} false positive(s) and "
             f"{n_fn} false negative(s) among {len(images)} clean test images. Shown: the most "
             "confident of each, with the image as listed (thumbnail) and its LaRE map (mean "
             "over the latent channels) over the image.")
    return [
        Heading("Worst errors"),
        Paragraph(intro),
        ErrorGallery("Most confident false positives (real images, highest p(fake))",
                     _error_items(false_pos, "fp", folder, image_root, read_lare),
                     "No real image is called fake."),
        ErrorGallery("Most confident false negatives (fake images, lowest p(fake))",
                     _error_items(false_neg, "fn", folder, image_root, read_lare),
                     "No fake image is called real."),
    ]


def _score_blocks(clean: pd.DataFrame, plotted: list[str],
                  subsets: Mapping[str, Mapping[str, Any]], fig_dir: Path,
                  point: OperatingPoint) -> list[Block]:
    auc_of = {name: m.get("auc") for name, m in subsets.items()}
    return [
        Heading("ROC curves"),
        Picture(
            figures.roc_figure(clean, plotted, auc_of, fig_dir / "roc.png"),
            "ROC curves",
            "Frame-level ROC curve of every subset that holds both classes. Also figures/roc.svg.",
        ),
        Heading("Score distributions"),
        Picture(
            figures.score_histograms(clean, plotted, fig_dir / "scores.png",
                                     point.value if point.from_validation else None),
            "Histograms of p(fake)",
            "p(fake) of real (blue) and fake (orange) images per subset, each class "
            "normalised to sum 1, on an axis fitted to the scores; dotted: 0.5"
            + (f"; dashed: the run's operating threshold {point.value:.4f}"
               if point.from_validation else "") + ". Also figures/scores.svg.",
        ),
    ]


def _robustness_blocks(mean: Mapping[str, Any], subsets: Mapping[str, Mapping[str, Any]],
                       robustness: Mapping[str, Mapping[str, Any]], fig_dir: Path) -> list[Block]:
    return [
        Heading("Robustness"),
        *robustness_tables(mean, subsets, robustness),
        Picture(
            figures.robustness_figure(mean.get("auc"), robustness, fig_dir / "robustness.png"),
            "Mean AUC per perturbation",
            "Mean AUC over subsets per perturbation strength; dashed: clean test stores. "
            "Also figures/robustness.svg.",
        ),
    ]


def _lare_blocks(lare_examples: Sequence[Mapping[str, Any]], fig_dir: Path) -> list[Block]:
    return [
        Heading("LaRE maps"),
        Picture(
            figures.lare_figure(lare_examples, fig_dir / "lare.png"),
            "LaRE maps",
            "Latent reconstruction error of real (top) and fake (bottom) examples, mean "
            "over the 4 latent channels, on one shared colour scale. Also figures/lare.svg.",
        ),
    ]


def _selection_text(training: Mapping[str, Any]) -> str:
    """Which validation point the detector comes from, by which rule and what decided it."""
    chosen = training.get("selection")
    steps = training.get("steps")
    if not isinstance(chosen, Mapping):  # a run made before run.yaml recorded its rule
        return (f"The detector is the weights of step {training.get('best_step')} of {steps}; "
                "its run.yaml does not record the selection rule (made by an earlier clare).")
    text = (f"The detector is the weights of step {chosen.get('step')} of {steps}, kept by rule "
            f"`{chosen.get('rule')}` ({chosen.get('description')}) among "
            f"{chosen.get('points')} validation points: validation AUC "
            f"{_fmt(chosen.get('val_auc'))}, loss {_fmt(chosen.get('val_loss'))}.")
    if chosen.get("runner_up_step") is not None:
        text += (f" It was preferred to step {chosen['runner_up_step']} by "
                 f"{chosen.get('decided_by')}.")
    if chosen.get("note"):
        text += f" Note: {chosen['note']}."
    return text


def _training_blocks(training: Mapping[str, Any] | None, fig_dir: Path) -> list[Block]:
    if not training or not training.get("history"):
        return []
    figure = figures.validation_figure(training["history"], training.get("best_step"),
                                       "validation during training")
    return [
        Heading("Training and model selection"),
        Paragraph(_selection_text(training)),
        Picture(figures.save_figure(figure, fig_dir / "validation.png"),
                "Validation AUC and loss per step",
                "Validation AUC and loss on the run's held-out training videos at each "
                "validation point; dashed: the kept step. Also figures/validation.svg."),
    ]


def _config_blocks(config: Mapping[str, Any], fingerprints: Mapping[str, Any]) -> list[Block]:
    return [
        Heading("Run configuration"),
        CodeDetails("Configuration (YAML)", config_yaml(config), "yaml"),
        CodeDetails("Store fingerprints (JSON)",
                    json.dumps(fingerprints, indent=2, sort_keys=True, default=str), "json"),
    ]


def _fresh_figures(out_dir: Path) -> Path:
    """out_dir/figures without the figures of an earlier report, which must not linger."""
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in FIGURE_NAMES:
        (fig_dir / stale).unlink(missing_ok=True)
        (fig_dir / stale).with_suffix(".svg").unlink(missing_ok=True)
    shutil.rmtree(fig_dir / ERRORS_DIR, ignore_errors=True)
    (out_dir / VIDEOS_FILE).unlink(missing_ok=True)
    return fig_dir


@dataclass
class ReportInputs:
    """Everything `render_report` was given, under one name for the section builders."""

    out_dir: Path
    title: str
    metrics: Mapping[str, Any]
    scores: pd.DataFrame
    config: Mapping[str, Any]
    fingerprints: Mapping[str, Any]
    robustness: Mapping[str, Mapping[str, Any]] | None
    lare_examples: Sequence[Mapping[str, Any]] | None
    image_root: Path | None
    read_lare: LareReader | None
    training: Mapping[str, Any] | None = None  # run.yaml: history, selection, best_step, steps


def _build(inputs: ReportInputs) -> list[Block]:
    fig_dir = _fresh_figures(inputs.out_dir)
    metrics, robustness = inputs.metrics, inputs.robustness
    subsets: Mapping[str, Mapping[str, Any]] = metrics.get("subsets") or {}
    mean = metrics.get("mean") or summarize(subsets)
    point = operating_point(metrics)
    clean = _clean_rows(inputs.scores, robustness)
    plotted = list(subsets) + [s for s in pd.unique(clean["subset"]) if s not in subsets]
    plotted = [s for s in plotted if (clean["subset"] == s).any()]

    blocks: list[Block] = [
        Heading(inputs.title, 1),
        Paragraph(f"Made by {provenance_line(metrics.get('provenance'))}.", css_class="provenance"),
        Paragraph(summary_text(subsets, mean, robustness), css_class="summary"),
        Heading("Per-subset metrics"),
        subset_table(subsets, mean),
        *threshold_blocks(subsets, mean, point),
        Heading("Oracle: best-threshold accuracy (threshold chosen on test labels)"),
        oracle_table(subsets, mean),
    ]
    if plotted:
        blocks += _score_blocks(clean, plotted, subsets, fig_dir, point)
        blocks += _calibration_blocks(clean, plotted, fig_dir)
    if robustness:
        blocks += _robustness_blocks(mean, subsets, robustness, fig_dir)
    if inputs.lare_examples:
        blocks += _lare_blocks(inputs.lare_examples, fig_dir)
    if plotted:
        blocks += _video_blocks(clean, plotted, point, inputs.out_dir)
        blocks += _error_blocks(clean, point, fig_dir, inputs.image_root, inputs.read_lare)
    blocks += _training_blocks(inputs.training, fig_dir)
    return blocks + _config_blocks(inputs.config, inputs.fingerprints)


# --------------------------------------------------------------------------- entry point


def render_report(
    out_dir: Path,
    *,
    title: str,
    metrics: Mapping[str, Any],
    scores: pd.DataFrame,
    config: Mapping[str, Any],
    fingerprints: Mapping[str, Mapping[str, Any]],
    robustness: Mapping[str, Mapping[str, Any]] | None = None,
    lare_examples: Sequence[Mapping[str, Any]] | None = None,
    image_root: Path | None = None,
    read_lare: LareReader | None = None,
    training: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html``, ``report.tex``, ``videos.csv`` and ``figures/``
    (each figure as PNG and SVG; thumbnails of the worst errors in ``figures/errors``).

    ``metrics`` is ``{"subsets": {name: compute_metrics(...)}, "mean": summarize(...)}`` and,
    from `clare eval`, ``"threshold": {"value", "rule"}`` (the run's validation threshold);
    ``scores`` holds one row per image (columns subset, label, p_fake, optionally path, video,
    row and store); rows whose store is a key of ``robustness`` are left out of the clean figures.
    ``robustness`` maps a perturbed store to ``{"perturb": "jpeg=50", "mean": ..., "subsets":
    ...}``; ``lare_examples`` are dicts with path, subset, label and a (4, 32, 32) ``lare`` map.
    ``image_root``: the folder the scores' paths are relative to (thumbnails of the worst errors);
    ``read_lare(store, rows)``: their LaRE maps. Without them the errors are listed without
    pictures. ``training``: the run record (its ``history``, ``selection``, ``best_step`` and
    ``steps``), for the section on model selection. Returns the paths of the Markdown and the
    HTML file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = _build(ReportInputs(out_dir, title, metrics, scores, config, fingerprints,
                                 robustness, lare_examples, image_root, read_lare, training))
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(render_document(blocks, title, out_dir, "report.md.j2"), encoding="utf-8")
    html_path.write_text(render_document(blocks, title, out_dir, "report.html.j2"), encoding="utf-8")
    (out_dir / LATEX_FILE).write_text(latex_document(blocks, title), encoding="utf-8")
    return md_path, html_path
