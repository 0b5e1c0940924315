"""Every figure clare draws: the evaluation report's, `clare compare`'s ROC overlay, the DVC
plots and `predict --explain`'s panels.

Figures use matplotlib's Agg canvas directly (no pyplot), which leaves the process-wide backend
alone. A report figure is written as PNG and SVG (`save_figure`): the PNG goes into the HTML as
a data URI and into the Markdown as a relative link, the SVG is for papers and slides. Every
ROC line is drawn by `draw_roc` and every LaRE map over its image by `draw_lare_overlay`, so the
same thing looks the same on every page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from clare.data.views import PERTURBATION_KINDS, parse_perturbation
from clare.errors import ConfigError
from clare.metrics import CALIBRATION_BINS, calibration_bins, is_number, roc_points

REAL_COLOUR, FAKE_COLOUR = "#3b75af", "#d9622b"
THUMBNAIL_SIDE = 112  # pixels, the longer side of an error thumbnail
PNG_METADATA = {"Software": None}  # figure bytes do not depend on the matplotlib build


def colours(n: int) -> list[Any]:
    """`n` distinguishable line colours (tab10, or tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def draw_roc(ax: Axes, curves: Sequence[tuple[str, pd.DataFrame]], title: str) -> None:
    """One ROC line per (label, rows with label and p_fake) on `ax`, and the chance line."""
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999")
    for (label, rows), colour in zip(curves, colours(len(curves)), strict=True):
        points = roc_points(rows["label"].to_numpy(), rows["p_fake"].to_numpy())
        if points:
            ax.plot([p["fpr"] for p in points], [p["tpr"] for p in points], lw=1.3,
                    color=colour, label=label.replace("$", r"\$"))  # no mathtext from names
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)


def save_png(fig: Figure, path: Path) -> Path:
    """The figure as a PNG whose bytes depend on the figure only."""
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100, metadata=PNG_METADATA)
    return path


def _image(pixels: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip((pixels.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)


def _upsample(values: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), resample), dtype=np.float32)


def lare_channel_mean(lare: np.ndarray, where: object = "LaRE map") -> np.ndarray:
    """A (C, H, W) LaRE map as one (H, W) map, the mean over its latent channels."""
    values = np.asarray(lare, dtype=np.float32)
    if values.ndim == 3:
        return values.mean(axis=0)
    if values.ndim == 2:
        return values
    raise ValueError(f"{where}: expected a (C, H, W) LaRE map, got shape {values.shape}")


def draw_lare_overlay(axis: Any, picture: np.ndarray | None, lare: np.ndarray) -> None:
    """A (H, W) LaRE map upsampled over a square (H, H, 3) picture; the map alone without one.
    The one drawing of a LaRE map over its image (`predict --explain` and the eval report)."""
    if picture is None:
        axis.imshow(lare, cmap="magma")
        return
    axis.imshow(picture)
    axis.imshow(_upsample(lare, picture.shape[0], Image.Resampling.BILINEAR), cmap="magma", alpha=0.6)


def explanation_png(path: Path, explain: dict[str, np.ndarray], title: str) -> None:
    """The three-panel figure of one image (`predict --explain`)."""
    picture = _image(explain["pixels"])
    side = picture.shape[0]
    attention = explain.get("attention")
    panels = 3 if attention is not None else 2
    figure = Figure(figsize=(3.0 * panels, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels)
    axes[0].imshow(picture)
    axes[0].set_title("as the model saw it", fontsize=9)
    draw_lare_overlay(axes[1], picture, explain["lare"])
    axes[1].set_title("LaRE map (mean of 4 channels)", fontsize=9)
    if attention is not None:
        axes[2].imshow(picture)
        axes[2].imshow(_upsample(attention, side, Image.Resampling.NEAREST), cmap="viridis", alpha=0.6)
        axes[2].set_title("head attention over patches", fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, format="png", bbox_inches="tight", pad_inches=0.05)


def save_figure(fig: Figure, path: Path) -> Path:
    """`path` (a .png) and the same figure as .svg beside it; returns the PNG's path."""
    save_png(fig, path)
    with matplotlib.rc_context({"svg.hashsalt": "clare-report"}):  # ids repeat run to run
        fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    return path


def fmt(value: Any) -> str:
    """A metric for a table: integers as they are, other numbers with three decimals, else —."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if is_number(value):
        return f"{float(value):.3f}"
    return "—"


def video_and_frame(path: object) -> str:
    """`video/000.png` of a listed path: every video has a 000.png, its folder tells them apart."""
    return "/".join(PurePath(str(path)).parts[-2:])


# --------------------------------------------------------------------------- ROC and scores


def roc_figure(clean: pd.DataFrame, subsets: list[str], auc_of: Mapping[str, Any],
               path: Path) -> Path:
    fig = Figure(figsize=(7.2, 5.4), layout="constrained")
    ax = fig.add_subplot()
    curves = []
    for name in subsets:
        auc = auc_of.get(name)
        curves.append((f"{name} (AUC {fmt(auc)})" if is_number(auc) else name,
                       clean[clean["subset"] == name]))
    draw_roc(ax, curves, "ROC per subset")
    if len(ax.get_lines()) == 1:  # only the chance line
        ax.text(0.5, 0.5, "no subset holds both classes", ha="center", va="center")
    ax.set(xlabel="false positive rate (real called fake)",
           ylabel="true positive rate (fake called fake)")
    outside = len(subsets) > 8
    ax.legend(fontsize=7 if outside else 8, loc="upper left" if outside else "lower right",
              bbox_to_anchor=(1.02, 1.0) if outside else None, frameon=False)
    return save_figure(fig, path)


def _panel_grid(n_panels: int, width: float, height: float) -> tuple[Figure, np.ndarray, int]:
    """A figure with one small panel per subset, four to a row; unused panels switched off."""
    n_cols = max(1, min(4, n_panels))
    n_rows = max(1, math.ceil(n_panels / n_cols))
    fig = Figure(figsize=(width * n_cols, height * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in list(axes.flat)[n_panels:]:
        ax.set_axis_off()
    return fig, axes, n_cols


def _shared_legend(fig: Figure, axes: np.ndarray) -> None:
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside upper center",
               ncols=max(1, len(legend)), frameon=False, fontsize=8)


def score_range(values: np.ndarray, marks: Sequence[float]) -> tuple[float, float]:
    """The x range of the histograms: the scores and the drawn thresholds, padded by 5% of
    their span (at least 0.01), inside [0, 1]; p(fake) of a barely trained detector spans a
    few hundredths, which a fixed 0-1 axis would show as one sliver."""
    points = np.concatenate([np.asarray(values, dtype=np.float64), np.asarray(marks, dtype=np.float64)])
    points = points[np.isfinite(points)]
    if points.size == 0:
        return 0.0, 1.0
    low, high = float(points.min()), float(points.max())
    pad = max(0.05 * (high - low), 0.01)
    return max(0.0, low - pad), min(1.0, high + pad)


def score_histograms(clean: pd.DataFrame, subsets: list[str], path: Path,
                     threshold: float | None = None) -> Path:
    """p(fake) per subset and class on an axis fitted to the scores; dotted: 0.5, dashed: the
    run's operating threshold (`threshold`, when it has one)."""
    fig, axes, n_cols = _panel_grid(len(subsets), 3.1, 2.4)
    marks = [0.5] + ([threshold] if threshold is not None else [])
    low, high = score_range(clean["p_fake"].to_numpy(), marks)
    bins = np.linspace(low, high, 31)
    for index, (ax, name) in enumerate(zip(axes.flat, subsets, strict=False)):
        rows = clean[clean["subset"] == name]
        real = rows.loc[rows["label"] == 0, "p_fake"].to_numpy()
        fake = rows.loc[rows["label"] == 1, "p_fake"].to_numpy()
        # Each class sums to 1, so shapes compare even when one class is 100x larger.
        for values, colour, label in ((real, REAL_COLOUR, "real"), (fake, FAKE_COLOUR, "fake")):
            weights = np.full(len(values), 1.0 / max(len(values), 1))
            ax.hist(values, bins=bins, weights=weights, color=colour, alpha=0.6, label=label)
        if index + n_cols >= len(subsets):  # last panel of its column
            ax.set_xlabel("p(fake)", fontsize=8)
        if index % n_cols == 0:
            ax.set_ylabel("share of class", fontsize=8)
        ax.axvline(0.5, color="#444444", lw=0.8, ls=":")
        if threshold is not None:
            ax.axvline(threshold, color="#2a8a3e", lw=1.0, ls="--", label="operating threshold")
        ax.set_title(f"{name}  ({len(real)} real, {len(fake)} fake)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(low, high)
    _shared_legend(fig, axes)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- training


def validation_figure(history: Sequence[Mapping[str, Any]], kept_step: int | None,
                      title: str) -> Figure:
    """Validation AUC and loss against the training step (run.yaml's history), the kept
    step marked in both panels (a vertical line and a ring on its points)."""
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    auc_ax, loss_ax = fig.subplots(1, 2)
    for ax, key, label in ((auc_ax, "val_auc", "validation AUC"), (loss_ax, "val_loss", "validation loss")):
        shown = [(h["step"], h[key]) for h in history
                 if h.get("step") is not None and is_number(h.get(key)) and math.isfinite(h[key])]
        ax.plot([s for s, _ in shown], [v for _, v in shown], marker="o", ms=3, lw=1.2)
        kept = [(s, v) for s, v in shown if s == kept_step]
        if kept_step is not None:
            ax.axvline(kept_step, color="#2a8a3e", lw=1.0, ls="--", label=f"kept: step {kept_step}")
            ax.plot([s for s, _ in kept], [v for _, v in kept], "o", ms=8, mfc="none",
                    mec="#2a8a3e", mew=1.5)
            ax.legend(fontsize=7, frameon=False)
        ax.set(xlabel="step", title=label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- calibration


def _reliability_panel(ax: Any, rows: pd.DataFrame, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="calibrated")
    bins = calibration_bins(rows["label"].to_numpy(), rows["p_fake"].to_numpy().clip(0.0, 1.0))
    if len(bins):
        # Marker area follows the bin's share of images: near-empty bins stay small.
        sizes = 8 + 120 * bins["count"] / bins["count"].sum()
        ax.plot(bins["confidence"], bins["fraction_fake"], color=FAKE_COLOUR, lw=1.0)
        ax.scatter(bins["confidence"], bins["fraction_fake"], s=sizes, color=FAKE_COLOUR,
                   zorder=3, label="bins (area: share of images)")
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def reliability_figure(clean: pd.DataFrame, subsets: list[str], ece_of: Mapping[str, Any],
                       path: Path) -> Path:
    """Reliability diagram per subset: share of fakes against mean p(fake) in each bin."""
    fig, axes, n_cols = _panel_grid(len(subsets), 2.7, 2.5)
    for index, (ax, name) in enumerate(zip(axes.flat, subsets, strict=False)):
        _reliability_panel(ax, clean[clean["subset"] == name],
                           f"{name}  (ECE {fmt(ece_of.get(name))})")
        if index + n_cols >= len(subsets):
            ax.set_xlabel(f"mean p(fake) in bin ({CALIBRATION_BINS} bins)", fontsize=8)
        if index % n_cols == 0:
            ax.set_ylabel("share of fakes in bin", fontsize=8)
    _shared_legend(fig, axes)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- robustness


def _kind_and_level(spec: str) -> tuple[str, float | None]:
    """("jpeg", 50.0) for a known perturbation spec; (the text, None) for anything else."""
    try:
        perturbation = parse_perturbation(spec)
    except ConfigError:
        return spec.strip(), None
    if perturbation is None:
        return spec.strip(), None
    return perturbation.kind, perturbation.value


_Point = tuple[float | None, str, Any]  # (level, store, mean AUC)


def _robustness_points(robustness: Mapping[str, Mapping[str, Any]]) -> dict[str, list[_Point]]:
    by_kind: dict[str, list[_Point]] = {}
    for store, entry in robustness.items():
        kind, level = _kind_and_level(str(entry.get("perturb", store)))
        by_kind.setdefault(kind, []).append((level, store, (entry.get("mean") or {}).get("auc")))
    return by_kind


def _robustness_panel(ax: Any, kind: str, points: list[_Point], clean_auc: Any) -> None:
    numeric = all(level is not None for level, _, _ in points)
    if numeric:
        points.sort(key=lambda p: p[0] if p[0] is not None else math.inf)
        xs = [p[0] for p in points]
        ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8)
    else:
        xs = list(range(len(points)))
        ax.set_xticks(xs, [p[1] for p in points], rotation=20, fontsize=7)
    ys = [float(p[2]) if is_number(p[2]) else np.nan for p in points]
    ax.plot(xs, ys, marker="o", color=FAKE_COLOUR, label="perturbed")
    if is_number(clean_auc):
        ax.axhline(float(clean_auc), color=REAL_COLOUR, ls="--", lw=1, label="clean")
    if kind == "jpeg" and numeric:
        ax.invert_xaxis()  # harsher compression to the right, like blur
    ax.set(xlabel=PERTURBATION_KINDS.get(kind, kind), ylabel="mean AUC over subsets", title=kind)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)


def robustness_figure(clean_auc: Any, robustness: Mapping[str, Mapping[str, Any]],
                      path: Path) -> Path:
    by_kind = _robustness_points(robustness)
    fig = Figure(figsize=(max(4.4, 3.6 * len(by_kind)), 3.4), layout="constrained")
    axes = fig.subplots(1, len(by_kind), squeeze=False)[0]
    for ax, (kind, points) in zip(axes, by_kind.items(), strict=True):
        _robustness_panel(ax, kind, points, clean_auc)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- LaRE maps


def _lare_panel(ax: Any, example: Mapping[str, Any] | None, lare: np.ndarray | None,
                vmax: float) -> Any:
    """One map with its subset and video/frame as the title; an empty slot when None."""
    ax.set_xticks([])
    ax.set_yticks([])
    if example is None or lare is None:
        ax.set_axis_off()
        return None
    image = ax.imshow(lare, cmap="magma", vmin=0.0, vmax=vmax)
    ax.set_title(f"{example.get('subset', '')}\n{video_and_frame(example.get('path', ''))}",
                 fontsize=7)
    return image


def _lare_rows(examples: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """("real", examples), ("fake", examples), leaving out a class without examples."""
    rows = []
    for label, name in ((0, "real"), (1, "fake")):
        items = [e for e in examples if int(e["label"]) == label]
        if items:
            rows.append((name, items))
    return rows


def lare_figure(examples: Sequence[Mapping[str, Any]], path: Path) -> Path:
    rows = _lare_rows(examples)
    n_cols = max(len(items) for _, items in rows)
    maps = {id(e): lare_channel_mean(e["lare"], f"LaRE example {e.get('path')!r}")
            for e in examples}
    # One colour scale for every panel, so real and fake maps compare by brightness.
    vmax = max(float(m.max()) for m in maps.values()) or 1.0
    fig = Figure(figsize=(2.1 * n_cols + 1.0, 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    drawn = []
    for row_axes, (name, items) in zip(axes, rows, strict=True):
        for col, ax in enumerate(row_axes):
            example = items[col] if col < len(items) else None
            lare = maps[id(example)] if example is not None else None
            drawn.append(_lare_panel(ax, example, lare, vmax))
        row_axes[0].set_ylabel(name, fontsize=10)
    images = [image for image in drawn if image is not None]
    if images:
        fig.colorbar(images[-1], ax=axes, shrink=0.85, label="LaRE, mean over channels")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- error thumbnails


def read_thumbnail(path: Path) -> Image.Image:
    """The image at `path` as RGB, its longer side THUMBNAIL_SIDE. Raises OSError, ValueError or
    PIL's DecompressionBombError for a file that is missing, damaged or not an image."""
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced size
        picture = image.convert("RGB")
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return picture


def lare_overlay_png(picture: Image.Image | None, lare: np.ndarray, path: Path) -> Path:
    """A small PNG of one error's LaRE map over its (squared) image, or alone without one."""
    square = None
    if picture is not None:
        square = np.asarray(picture.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE)), dtype=np.uint8)
    fig = Figure(figsize=(1.4, 1.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    draw_lare_overlay(ax, square, lare_channel_mean(lare, path.name))
    ax.set_axis_off()
    return save_png(fig, path)
