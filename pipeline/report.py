"""Evaluation report: `report.md`, a self-contained `report.html`, `report.tex` and figures.

The report is first built as a small list of neutral blocks (heading, paragraph, table, figure,
error gallery, collapsible code) and then rendered by two Jinja2 templates
(`templates/report.html.j2`, `templates/report.md.j2`, both autoescaped), so the Markdown and
the HTML always say the same thing. Tables go through pandas: a Styler writes them as HTML and
as LaTeX (`report.tex`, booktabs), `DataFrame.to_markdown` as Markdown. The HTML inlines its
CSS and its images (base64 data URIs) and links to nothing outside the file, so it can be
mailed or opened offline. Figures are PNG with an SVG beside each (`clare.report_figures`).
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import yaml
from markupsafe import Markup, escape

from clare import report_figures as figures
from clare.errors import ClareError, reason_label
from clare.files import atomic_write_csv
from clare.metrics import (
    CALIBRATION_BINS,
    ROBUSTNESS_TABLE,
    SUBSET_TABLE,
    THRESHOLD_ACC,
    describe_undefined,
    expected_calibration_error,
    is_number,
    metric_title,
    summarize,
    table_keys,
)
from clare.provenance import provenance_line

FIGURE_NAMES = ("roc.png", "scores.png", "calibration.png", "robustness.png", "lare.png",
                "validation.png")
ERRORS_DIR = "errors"  # under figures/: thumbnails and LaRE overlays of the worst errors
VIDEOS_FILE = "videos.csv"  # every video of the clean test stores, worst first
LATEX_FILE = "report.tex"
WORST_ERRORS = 8  # false positives and false negatives shown, each
VIDEOS_SHOWN = 20  # rows of the per-video table in the report (all of them in VIDEOS_FILE)

# Reads LaRE maps of a store: (store name, row ids) -> array (len(rows), C, H, W).
LareReader = Callable[[str, np.ndarray], np.ndarray]

# --------------------------------------------------------------------------- document model


@dataclass
class Cell:
    text: str
    numeric: bool = False
    hint: str | None = None  # full reason, shown as a tooltip in HTML


@dataclass
class Heading:
    kind: ClassVar[str] = "heading"
    text: str
    level: int = 2


@dataclass
class Paragraph:
    kind: ClassVar[str] = "paragraph"
    text: str
    css_class: str | None = None


@dataclass
class Table:
    kind: ClassVar[str] = "table"
    header: list[str]
    rows: list[list[Cell]]
    caption: str | None = None
    notes: list[str] = field(default_factory=list)
    emphasise_last_row: bool = False


@dataclass
class Picture:
    kind: ClassVar[str] = "picture"
    path: Path  # PNG inside out_dir/figures, an SVG beside it
    alt: str
    caption: str


@dataclass
class ErrorItem:
    """One misclassified image: where it is, its score, its thumbnail and its LaRE overlay."""

    rank: int
    subset: str
    where: str  # video/frame
    p_fake: str
    thumbnail: Path | None
    thumbnail_note: str  # why there is no thumbnail
    lare: Path | None
    lare_note: str  # why there is no LaRE map


@dataclass
class ErrorGallery:
    kind: ClassVar[str] = "errors"
    title: str
    items: list[ErrorItem]
    empty: str  # said when there is no such error


@dataclass
class CodeDetails:
    kind: ClassVar[str] = "code"
    summary: str
    code: str
    language: str


Block = Heading | Paragraph | Table | Picture | ErrorGallery | CodeDetails


# --------------------------------------------------------------------------- formatting

_fmt = figures.fmt


def _metric_cell(metrics: Mapping[str, Any], key: str) -> Cell:
    value = metrics.get(key)
    if is_number(value):
        return Cell(_fmt(value), numeric=True)
    reason = (metrics.get("notes") or {}).get(key)
    if reason:
        return Cell(f"— ({reason_label(reason)})", numeric=True, hint=str(reason))
    return Cell("—", numeric=True)


def _mean_cell(mean: Mapping[str, Any], key: str, n_subsets: int) -> Cell:
    cell = _metric_cell(mean, key)
    contributed = mean.get(f"{key}_n_subsets")
    if is_number(mean.get(key)) and isinstance(contributed, int) and contributed < n_subsets:
        cell.text += f" ({contributed}/{n_subsets})"
        cell.hint = (mean.get("notes") or {}).get(key)
    return cell


def _mean_row(label: str, values: Sequence[Any]) -> list[Cell]:
    """A last row of plain means: the mean of each column's numbers, "—" where it has none."""
    cells = [Cell(label)]
    for column in values:
        numbers = [float(v) for v in column if is_number(v)]
        cells.append(Cell(_fmt(float(np.mean(numbers))) if numbers else "—", numeric=True))
    return cells


# --------------------------------------------------------------------------- operating point


@dataclass
class OperatingPoint:
    """The threshold that decides "fake": the run's validation threshold, else 0.5."""

    value: float
    source: str  # where it comes from, a clause for a caption
    name: str  # a few words for a heading or a parenthesis
    from_validation: bool


def operating_point(metrics: Mapping[str, Any]) -> OperatingPoint:
    recorded = metrics.get("threshold") or {}
    value = recorded.get("value") if isinstance(recorded, Mapping) else None
    if is_number(value):
        rule = recorded.get("rule") or "chosen on the run's validation videos"
        return OperatingPoint(float(value), f"chosen by clare fit, {rule}, recorded in run.yaml "
                              "under threshold", "the run's validation threshold", True)
    return OperatingPoint(0.5, "the fixed 0.5, as the run records no validation threshold",
                          "0.5, no validation threshold recorded", False)


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


# Metrics named in the summary paragraph (the TPR key follows what the results hold).
_SUMMARY_METRICS = ("auc", "ap", "eer", "acc", THRESHOLD_ACC, "video_auc", "tpr_at_1fpr")


def _means_sentence(mean: Mapping[str, Any], n: int) -> str:
    parts = []
    for key in table_keys(_SUMMARY_METRICS, mean):
        if key == THRESHOLD_ACC and not is_number(mean.get(key)):
            continue  # a run without a validation threshold: its section says so
        count = mean.get(f"{key}_n_subsets")
        scope = f" ({count} of {n} subsets)" if isinstance(count, int) and count < n else ""
        parts.append(f"{metric_title(key)} {_fmt(mean.get(key))}{scope}")
    return (
        f"{n} test subset(s) with {_fmt(mean.get('n_real', 0))} real and "
        f"{_fmt(mean.get('n_fake', 0))} fake images. Mean over subsets: " + ", ".join(parts) + "."
    )


def _extremes_sentence(subsets: Mapping[str, Mapping[str, Any]]) -> str:
    ranked = sorted(
        (float(m["auc"]), name) for name, m in subsets.items() if is_number(m.get("auc"))
    )
    if len(ranked) < 2:
        return ""
    return (
        f" Lowest AUC: {ranked[0][1]} ({ranked[0][0]:.3f}); "
        f"highest: {ranked[-1][1]} ({ranked[-1][0]:.3f})."
    )


def _auc_change(auc: Any, clean_auc: Any) -> str | None:
    """`+0.012`: a perturbed AUC minus the clean one; None when either is missing."""
    if is_number(auc) and is_number(clean_auc):
        return f"{float(auc) - float(clean_auc):+.3f}"
    return None


def _robustness_sentences(mean: Mapping[str, Any],
                          robustness: Mapping[str, Mapping[str, Any]] | None) -> str:
    text = ""
    for store, entry in (robustness or {}).items():
        auc = (entry.get("mean") or {}).get("auc")
        if is_number(auc):
            change = _auc_change(auc, mean.get("auc"))
            delta = f" ({change} vs clean)" if change else ""
            text += f" Under {entry.get('perturb', store)}: mean AUC {_fmt(auc)}{delta}."
    return text


def _summary_text(
    subsets: Mapping[str, Mapping[str, Any]],
    mean: Mapping[str, Any],
    robustness: Mapping[str, Mapping[str, Any]] | None,
) -> str:
    return (_means_sentence(mean, len(subsets)) + _extremes_sentence(subsets)
            + _robustness_sentences(mean, robustness))


def _subset_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any]) -> Table:
    keys = table_keys(SUBSET_TABLE, mean)
    rows = [[Cell(name)] + [_metric_cell(m, key) for key in keys] for name, m in subsets.items()]
    n = len(subsets)
    rows.append(
        [Cell(f"mean over {n} subsets")]
        + [
            Cell(_fmt(mean.get(key)), numeric=True)
            if key in ("n_real", "n_fake")
            else _mean_cell(mean, key, n)
            for key in keys
        ]
    )
    return Table(
        header=["Subset"] + [metric_title(key) for key in keys],
        rows=rows,
        caption=(
            "Frame-level metrics, fake = positive class. Accuracies at the fixed threshold "
            "0.5 (fake when p(fake) ≥ 0.5); EER and TPR at the FPR target are interpolated "
            "on the ROC curve; video AUC uses the mean p(fake) per video. Last row: "
            "unweighted mean over subsets (k/n: only k subsets define the metric), counts "
            "are totals."
        ),
        notes=describe_undefined(subsets, keys),
        emphasise_last_row=True,
    )


def _oracle_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any]) -> Table:
    rows = [
        [
            Cell(name),
            _metric_cell(m, "oracle_best_threshold_acc"),
            _metric_cell(m, "oracle_best_threshold"),
            _metric_cell(m, "acc"),
        ]
        for name, m in subsets.items()
    ]
    rows.append(
        [
            Cell(f"mean over {len(subsets)} subsets"),
            _mean_cell(mean, "oracle_best_threshold_acc", len(subsets)),
            Cell("—", numeric=True),
            _mean_cell(mean, "acc", len(subsets)),
        ]
    )
    return Table(
        header=[
            "Subset",
            "Oracle acc (threshold chosen on test labels)",
            "Oracle threshold",
            "Acc@0.5 (for comparison)",
        ],
        rows=rows,
        caption=(
            "Oracle: for each subset the threshold that maximises accuracy on that subset's "
            "own test labels. It is an upper bound that a deployed detector cannot reach "
            "and must not be compared with accuracy at a fixed threshold."
        ),
        emphasise_last_row=True,
    )


def _robustness_summary(clean_mean: Mapping[str, Any],
                        robustness: Mapping[str, Mapping[str, Any]]) -> Table:
    keys = table_keys(ROBUSTNESS_TABLE, clean_mean)
    clean_auc = clean_mean.get("auc")

    def summary_row(store: str, perturb: str, mean: Mapping[str, Any]) -> list[Cell]:
        delta = Cell(_auc_change(mean.get("auc"), clean_auc) or "—", numeric=True)
        cells = [_metric_cell(mean, key) for key in keys]
        return [Cell(store), Cell(perturb)] + cells[:1] + [delta] + cells[1:]

    titles = [metric_title(key) for key in keys]
    return Table(
        header=["Store", "Perturbation"]
        + [f"mean {titles[0]}", "ΔAUC vs clean"]
        + [f"mean {title}" for title in titles[1:]],
        rows=[summary_row("clean", "none", clean_mean)]
        + [
            summary_row(store, str(entry.get("perturb", "?")), entry.get("mean") or {})
            for store, entry in robustness.items()
        ],
        caption="Means over subsets for the clean test stores and each degraded copy.",
    )


def _robustness_per_subset(clean_subsets: Mapping[str, Mapping[str, Any]],
                           robustness: Mapping[str, Mapping[str, Any]]) -> Table:
    stores = list(robustness)
    names = list(clean_subsets) + [
        n
        for entry in robustness.values()
        for n in (entry.get("subsets") or {})
        if n not in clean_subsets
    ]
    rows = []
    for name in dict.fromkeys(names):
        row = [Cell(name), _metric_cell(clean_subsets.get(name, {}), "auc")]
        for store in stores:
            row.append(_metric_cell((robustness[store].get("subsets") or {}).get(name, {}), "auc"))
        rows.append(row)
    return Table(
        header=["Subset", "clean"] + [str(robustness[s].get("perturb", s)) for s in stores],
        rows=rows,
        caption="Frame-level AUC per subset under each perturbation.",
    )


def _robustness_tables(
    clean_mean: Mapping[str, Any],
    clean_subsets: Mapping[str, Mapping[str, Any]],
    robustness: Mapping[str, Mapping[str, Any]],
) -> list[Table]:
    return [_robustness_summary(clean_mean, robustness),
            _robustness_per_subset(clean_subsets, robustness)]


def _config_yaml(config: Mapping[str, Any]) -> str:
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- threshold


def _threshold_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any],
                     point: OperatingPoint) -> Table:
    n = len(subsets)
    rows = [[Cell(name), _metric_cell(m, "acc"), _metric_cell(m, THRESHOLD_ACC)]
            for name, m in subsets.items()]
    rows.append([Cell(f"mean over {n} subsets"), _mean_cell(mean, "acc", n),
                 _mean_cell(mean, THRESHOLD_ACC, n)])
    return Table(
        header=["Subset", "Acc@0.5", f"Acc@val thr (t = {point.value:.4f})"],
        rows=rows,
        caption=(f"Accuracy with fake when p(fake) ≥ 0.5, and with fake when p(fake) ≥ t, the "
                 f"operating threshold {point.source}. Both thresholds are fixed before the "
                 "test labels are seen, unlike the oracle below."),
        emphasise_last_row=True,
    )


def _threshold_blocks(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any],
                      point: OperatingPoint) -> list[Block]:
    heading = Heading("Accuracy at the validation threshold")
    if not point.from_validation:
        return [heading, Paragraph(
            "The run records no operating threshold chosen on validation (its run.yaml has "
            "no threshold: runs fitted before clare fit chose one). Refit the run to get the "
            "accuracy at it; accuracies below are at 0.5.")]
    return [heading, _threshold_table(subsets, mean, point)]


# --------------------------------------------------------------------------- calibration


def subset_ece(clean: pd.DataFrame, subsets: Sequence[str]) -> dict[str, float | None]:
    """Expected calibration error of every subset's clean scores (p_fake clipped to [0, 1])."""
    out: dict[str, float | None] = {}
    for name in subsets:
        rows = clean[clean["subset"] == name]
        out[name] = expected_calibration_error(rows["label"].to_numpy(),
                                               rows["p_fake"].to_numpy().clip(0.0, 1.0))
    return out


def _calibration_blocks(clean: pd.DataFrame, plotted: list[str], fig_dir: Path) -> list[Block]:
    ece = subset_ece(clean, plotted)
    counts = clean.groupby("subset", sort=False)["p_fake"].size()
    rows = [[Cell(name), Cell(_fmt(ece[name]), numeric=True), Cell(_fmt(int(counts[name])), numeric=True)]
            for name in plotted]
    mean = _mean_row(f"mean over {len(plotted)} subsets", [list(ece.values())])
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


def video_table(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per video of the clean scores: subset, video, label, frames and the mean, lowest
    and highest p(fake), worst first (`error`: distance of the mean from the label). A frame
    without a video id is its own video, named by its path."""
    frames = clean.assign(video=_video_ids(clean))
    table = (frames.groupby(["subset", "video"], sort=False)
             .agg(label=("label", "max"), frames=("p_fake", "size"), p_fake_mean=("p_fake", "mean"),
                  p_fake_min=("p_fake", "min"), p_fake_max=("p_fake", "max"))
             .reset_index())
    table["error"] = np.where(table["label"] == 1, 1.0 - table["p_fake_mean"], table["p_fake_mean"])
    return table.sort_values("error", ascending=False, kind="stable").reset_index(drop=True)


def _video_ids(clean: pd.DataFrame) -> pd.Series:
    path = clean["path"].astype(str) if "path" in clean.columns else pd.Series(
        [f"frame {i}" for i in range(len(clean))], index=clean.index)
    if "video" not in clean.columns:
        return path
    video = clean["video"]
    missing = video.isna() | (video.astype(str) == "")
    return video.astype(str).where(~missing, path)


def _video_accuracy(videos: pd.DataFrame, threshold: float) -> pd.Series:
    called_fake = videos["p_fake_mean"] >= threshold
    return (called_fake == (videos["label"] == 1)).groupby(videos["subset"], sort=False).mean()


def _video_summary(videos: pd.DataFrame, plotted: list[str], point: OperatingPoint) -> Table:
    by_subset = videos.groupby("subset", sort=False)["label"]
    real, fake = by_subset.apply(lambda s: int((s == 0).sum())), by_subset.sum()
    at_half = _video_accuracy(videos, 0.5)
    at_point = _video_accuracy(videos, point.value)
    names = [name for name in plotted if name in real.index]
    rows = [[Cell(name), Cell(_fmt(int(real[name])), numeric=True),
             Cell(_fmt(int(fake[name])), numeric=True), Cell(_fmt(at_half[name]), numeric=True),
             Cell(_fmt(at_point[name]), numeric=True)] for name in names]
    mean = _mean_row(f"mean over {len(names)} subsets",
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


def distinct_images(clean: pd.DataFrame) -> pd.DataFrame:
    """One line per image of the clean scores: an image listed by several subsets (its entries
    share one score) once, under its first listing. The listed path names the image (the same
    file in every store); without paths, its store row."""
    key = ["path"] if "path" in clean.columns else [c for c in ("store", "row") if c in clean.columns]
    return clean.drop_duplicates(key) if "path" in key or "row" in key else clean


def _errors(images: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every error at `threshold`, most confident first: real images at or above it (false
    positives, highest p(fake) first) and fakes below it (false negatives, lowest first)."""
    real = images[(images["label"] == 0) & (images["p_fake"] >= threshold)]
    fake = images[(images["label"] == 1) & (images["p_fake"] < threshold)]
    return (real.sort_values("p_fake", ascending=False, kind="stable"),
            fake.sort_values("p_fake", kind="stable"))


def worst_errors(clean: pd.DataFrame, threshold: float,
                 count: int = WORST_ERRORS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `count` most confident false positives and false negatives at `threshold`, each
    image once (`distinct_images`)."""
    false_pos, false_neg = _errors(distinct_images(clean), threshold)
    return false_pos.head(count), false_neg.head(count)


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
    false_pos, false_neg = _errors(images, point.value)
    n_fp, n_fn = len(false_pos), len(false_neg)
    false_pos, false_neg = false_pos.head(WORST_ERRORS), false_neg.head(WORST_ERRORS)
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
        *_robustness_tables(mean, subsets, robustness),
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
        CodeDetails("Configuration (YAML)", _config_yaml(config), "yaml"),
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
        Paragraph(_summary_text(subsets, mean, robustness), css_class="summary"),
        Heading("Per-subset metrics"),
        _subset_table(subsets, mean),
        *_threshold_blocks(subsets, mean, point),
        Heading("Oracle: best-threshold accuracy (threshold chosen on test labels)"),
        _oracle_table(subsets, mean),
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


# --------------------------------------------------------------------------- tables via pandas


def _unique(header: Sequence[str]) -> list[str]:
    """Column titles made unique (pandas styles cells by column label)."""
    seen: dict[str, int] = {}
    out = []
    for title in header:
        seen[title] = seen.get(title, 0) + 1
        out.append(title if seen[title] == 1 else f"{title} ({seen[title]})")
    return out


def _numeric_columns(table: Table) -> list[bool]:
    return [any(r[i].numeric for r in table.rows) for i in range(len(table.header))]


def _frame(table: Table, cell: Callable[[Cell], str] = lambda c: c.text) -> pd.DataFrame:
    return pd.DataFrame([[cell(c) for c in row] for row in table.rows],
                        columns=_unique(table.header), dtype=object)


def _cell_classes(table: Table) -> pd.DataFrame:
    numeric = _numeric_columns(table)
    last = len(table.rows) - 1

    def classes(i: int, j: int, cell: Cell) -> str:
        names = [("num", numeric[j]), ("missing", cell.text.startswith("—")),
                 ("total", table.emphasise_last_row and i == last)]
        return " ".join(name for name, on in names if on)

    return pd.DataFrame([[classes(i, j, c) for j, c in enumerate(row)]
                         for i, row in enumerate(table.rows)], columns=_unique(table.header))


def _with_hints(styler: Any, hints: pd.DataFrame) -> Any:
    try:
        return styler.set_tooltips(hints, as_title_attribute=True)
    except TypeError:  # pandas < 3: hover tooltips drawn by CSS instead of title attributes
        return styler.set_tooltips(hints)


def table_html(table: Table, uid: str) -> Markup:
    """The table as HTML by a pandas Styler: cells escaped, numbers right-aligned, reasons as
    tooltips, the total row marked."""
    from pandas.io.formats.style import Styler

    frame = _frame(table)
    right = {title for title, n in zip(frame.columns, _numeric_columns(table), strict=True) if n}
    styler = (Styler(frame, uuid=uid).hide(axis="index")
              .format(escape="html").format_index(escape="html", axis=1)
              .set_td_classes(_cell_classes(table))
              .map_index(lambda title: "text-align: right;" if title in right else "", axis=1)
              .set_table_attributes('class="metrics"'))
    if any(c.hint for row in table.rows for c in row):
        styler = _with_hints(styler, _frame(table, lambda c: html.escape(c.hint or "")))
    return Markup(styler.to_html())  # every cell and title escaped above


def _markdown_text(text: str) -> str:
    """Cell text for a Markdown table: HTML-escaped like the rest of the page, pipes escaped."""
    return str(escape(text)).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> Markup:
    """The table as Markdown by `DataFrame.to_markdown`; the total row in bold."""
    last = len(table.rows) - 1
    rows = [[_markdown_text(c.text) for c in row] for row in table.rows]
    if table.emphasise_last_row and rows:
        rows[last] = [f"**{c}**" for c in rows[last]]
    frame = pd.DataFrame(rows, columns=[_markdown_text(h) for h in _unique(table.header)])
    align = ["right" if n else "left" for n in _numeric_columns(table)]
    # disable_numparse: the cells are already formatted ("0.500" must not become "0.5").
    return Markup(frame.to_markdown(index=False, colalign=align, disable_numparse=True))


def table_latex(table: Table) -> str:
    """The table as a booktabs LaTeX tabular by a pandas Styler; the total row in bold."""
    from pandas.io.formats.style import Styler

    frame = _frame(table)
    bold = pd.DataFrame("", index=frame.index, columns=frame.columns)
    if table.emphasise_last_row and len(frame):
        bold.iloc[-1] = "font-weight: bold;"
    align = "".join("r" if n else "l" for n in _numeric_columns(table))
    styler = (Styler(frame, uuid="t").hide(axis="index").format(escape="latex")
              .format_index(escape="latex", axis=1).apply(lambda _f: bold, axis=None))
    return styler.to_latex(hrules=True, convert_css=True, column_format=align)


def _latex_document(blocks: Sequence[Block], title: str) -> str:
    parts = [f"% {title}: every table of report.md, for a paper.",
             "% Needs \\usepackage{booktabs}; the cells hold Unicode (—, ≥), so compile with",
             "% lualatex or xelatex, or map those characters for pdflatex.", ""]
    heading = ""
    for block in blocks:
        if isinstance(block, Heading):
            heading = block.text
        elif isinstance(block, Table):
            parts += [f"% {heading}" + (f": {block.caption}" if block.caption else ""),
                      table_latex(block)]
    return "\n".join(parts)


# --------------------------------------------------------------------------- rendering


def _fence(code: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _render(blocks: Sequence[Block], title: str, out_dir: Path, template: str) -> str:
    from clare.compare import template_environment

    env = template_environment()
    table_ids = {id(b): f"t{i}" for i, b in enumerate(b for b in blocks if isinstance(b, Table))}
    env.filters.update(
        table_html=lambda t: table_html(t, table_ids[id(t)]),
        table_markdown=table_markdown,
        data_uri=lambda p: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii"),
        relative=lambda p: p.relative_to(out_dir).as_posix(),
        fence=_fence,
        md_cell=lambda text: Markup(_markdown_text(text)),  # escaped by _markdown_text
    )
    return env.get_template(template).render(title=title, blocks=blocks).strip("\n") + "\n"


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
    md_path.write_text(_render(blocks, title, out_dir, "report.md.j2"), encoding="utf-8")
    html_path.write_text(_render(blocks, title, out_dir, "report.html.j2"), encoding="utf-8")
    (out_dir / LATEX_FILE).write_text(_latex_document(blocks, title), encoding="utf-8")
    return md_path, html_path
