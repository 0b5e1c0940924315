"""Evaluation report: `report.md` plus a self-contained `report.html` and PNG figures.

The report is first built as a small list of neutral blocks (heading, paragraph, table, figure,
collapsible code) and then rendered twice, so the Markdown and the HTML always say the same
thing. The HTML inlines its CSS and its images (base64 data URIs) and links to nothing outside
the file, so it can be mailed or opened offline. Figures use matplotlib's Agg canvas directly
(no pyplot), which leaves the process-wide backend alone.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clare.data.views import PERTURBATION_KINDS, parse_perturbation
from clare.errors import ConfigError, reason_label
from clare.metrics import (
    ROBUSTNESS_TABLE,
    SUBSET_TABLE,
    describe_undefined,
    is_number,
    metric_title,
    roc_points,
    summarize,
    table_keys,
)

FIGURE_NAMES = ("roc.png", "scores.png", "robustness.png", "lare.png")
_PNG_METADATA = {"Software": None}  # keeps figure bytes identical across matplotlib builds
_REAL_COLOUR, _FAKE_COLOUR = "#3b75af", "#d9622b"

# --------------------------------------------------------------------------- document model


@dataclass
class Cell:
    text: str
    numeric: bool = False
    hint: str | None = None  # full reason, shown as a tooltip in HTML


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    css_class: str | None = None


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    caption: str | None = None
    notes: list[str] = field(default_factory=list)
    emphasise_last_row: bool = False


@dataclass
class Picture:
    path: Path  # file inside out_dir/figures
    alt: str
    caption: str


@dataclass
class CodeDetails:
    summary: str
    code: str
    language: str


Block = Heading | Paragraph | Table | Picture | CodeDetails


# --------------------------------------------------------------------------- formatting


def _video_and_frame(path: object) -> str:
    parts = PurePath(str(path)).parts
    return "/".join(parts[-2:])


def _fmt(value: Any) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if is_number(value):
        return f"{float(value):.3f}"
    return "—"


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


# --------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110, metadata=_PNG_METADATA)
    return path


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _roc_figure(
    clean: pd.DataFrame, subsets: list[str], auc_of: Mapping[str, Any], path: Path
) -> Path:
    fig = Figure(figsize=(7.2, 5.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999", label="chance")
    drawn = 0
    for name, colour in zip(subsets, _colours(len(subsets)), strict=True):
        rows = clean[clean["subset"] == name]
        points = roc_points(rows["label"].to_numpy(), rows["p_fake"].to_numpy())
        if not points:
            continue
        auc = auc_of.get(name)
        label = f"{name} (AUC {_fmt(auc)})" if is_number(auc) else name
        ax.plot(
            [p["fpr"] for p in points],
            [p["tpr"] for p in points],
            lw=1.4,
            color=colour,
            label=label,
        )
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no subset holds both classes", ha="center", va="center")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake called fake)",
        title="ROC per subset",
    )
    ax.grid(alpha=0.3)
    outside = len(subsets) > 8
    ax.legend(
        fontsize=7 if outside else 8,
        loc="upper left" if outside else "lower right",
        bbox_to_anchor=(1.02, 1.0) if outside else None,
        frameon=False,
    )
    return _save(fig, path)


def _score_histograms(clean: pd.DataFrame, subsets: list[str], path: Path) -> Path:
    n_cols = min(4, len(subsets))
    n_rows = math.ceil(len(subsets) / n_cols)
    fig = Figure(figsize=(3.1 * n_cols, 2.4 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    low = min(0.0, float(clean["p_fake"].min())) if len(clean) else 0.0
    high = max(1.0, float(clean["p_fake"].max())) if len(clean) else 1.0
    bins = np.linspace(low, high, 31)
    for index, (ax, name) in enumerate(zip(axes.flat, subsets, strict=False)):
        rows = clean[clean["subset"] == name]
        real = rows.loc[rows["label"] == 0, "p_fake"].to_numpy()
        fake = rows.loc[rows["label"] == 1, "p_fake"].to_numpy()
        # Each class sums to 1, so shapes compare even when one class is 100x larger.
        for values, colour, label in ((real, _REAL_COLOUR, "real"), (fake, _FAKE_COLOUR, "fake")):
            weights = np.full(len(values), 1.0 / max(len(values), 1))
            ax.hist(values, bins=bins, weights=weights, color=colour, alpha=0.6, label=label)
        if index + n_cols >= len(subsets):  # last panel of its column
            ax.set_xlabel("p(fake)", fontsize=8)
        if index % n_cols == 0:
            ax.set_ylabel("share of class", fontsize=8)
        ax.axvline(0.5, color="#444444", lw=0.8, ls=":")
        ax.set_title(f"{name}  ({len(real)} real, {len(fake)} fake)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(low, high)
    for ax in list(axes.flat)[len(subsets) :]:
        ax.set_axis_off()
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="outside upper center",
        ncols=2,
        frameon=False,
        fontsize=8,
    )
    return _save(fig, path)


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
    ax.plot(xs, ys, marker="o", color=_FAKE_COLOUR, label="perturbed")
    if is_number(clean_auc):
        ax.axhline(float(clean_auc), color=_REAL_COLOUR, ls="--", lw=1, label="clean")
    if kind == "jpeg" and numeric:
        ax.invert_xaxis()  # harsher compression to the right, like blur
    ax.set(xlabel=PERTURBATION_KINDS.get(kind, kind), ylabel="mean AUC over subsets", title=kind)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)


def _robustness_figure(
    clean_auc: Any, robustness: Mapping[str, Mapping[str, Any]], path: Path
) -> Path:
    by_kind = _robustness_points(robustness)
    fig = Figure(figsize=(max(4.4, 3.6 * len(by_kind)), 3.4), layout="constrained")
    axes = fig.subplots(1, len(by_kind), squeeze=False)[0]
    for ax, (kind, points) in zip(axes, by_kind.items(), strict=True):
        _robustness_panel(ax, kind, points, clean_auc)
    return _save(fig, path)


def _lare_map(example: Mapping[str, Any]) -> np.ndarray:
    lare = np.asarray(example["lare"], dtype=np.float32)
    if lare.ndim == 3:
        return lare.mean(axis=0)
    if lare.ndim == 2:
        return lare
    raise ValueError(
        f"LaRE example {example.get('path')!r}: expected a (C, H, W) map, got shape {lare.shape}"
    )


def _lare_panel(ax: Any, example: Mapping[str, Any] | None, lare: np.ndarray | None,
                vmax: float) -> Any:
    """One map with its subset and video/frame as the title; an empty slot when None."""
    ax.set_xticks([])
    ax.set_yticks([])
    if example is None or lare is None:
        ax.set_axis_off()
        return None
    image = ax.imshow(lare, cmap="magma", vmin=0.0, vmax=vmax)
    ax.set_title(
        # The video folder tells frames apart: every video has a 000.png.
        f"{example.get('subset', '')}\n{_video_and_frame(example.get('path', ''))}",
        fontsize=7,
    )
    return image


def _lare_rows(examples: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """("real", examples), ("fake", examples), leaving out a class without examples."""
    rows = []
    for label, name in ((0, "real"), (1, "fake")):
        items = [e for e in examples if int(e["label"]) == label]
        if items:
            rows.append((name, items))
    return rows


def _lare_figure(examples: Sequence[Mapping[str, Any]], path: Path) -> Path:
    rows = _lare_rows(examples)
    n_cols = max(len(items) for _, items in rows)
    maps = {id(e): _lare_map(e) for e in examples}
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
    return _save(fig, path)


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
_SUMMARY_METRICS = ("auc", "ap", "eer", "acc", "video_auc", "tpr_at_1fpr")


def _means_sentence(mean: Mapping[str, Any], n: int) -> str:
    parts = []
    for key in table_keys(_SUMMARY_METRICS, mean):
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


def _score_blocks(clean: pd.DataFrame, plotted: list[str],
                  subsets: Mapping[str, Mapping[str, Any]], fig_dir: Path) -> list[Block]:
    if not plotted:
        return []
    auc_of = {name: m.get("auc") for name, m in subsets.items()}
    return [
        Heading("ROC curves"),
        Picture(
            _roc_figure(clean, plotted, auc_of, fig_dir / "roc.png"),
            "ROC curves",
            "Frame-level ROC curve of every subset that holds both classes.",
        ),
        Heading("Score distributions"),
        Picture(
            _score_histograms(clean, plotted, fig_dir / "scores.png"),
            "Histograms of p(fake)",
            "p(fake) of real (blue) and fake (orange) images per subset, each class "
            "normalised to sum 1; dotted: the 0.5 threshold.",
        ),
    ]


def _robustness_blocks(mean: Mapping[str, Any], subsets: Mapping[str, Mapping[str, Any]],
                       robustness: Mapping[str, Mapping[str, Any]], fig_dir: Path) -> list[Block]:
    return [
        Heading("Robustness"),
        *_robustness_tables(mean, subsets, robustness),
        Picture(
            _robustness_figure(mean.get("auc"), robustness, fig_dir / "robustness.png"),
            "Mean AUC per perturbation",
            "Mean AUC over subsets per perturbation strength; dashed: clean test stores.",
        ),
    ]


def _lare_blocks(lare_examples: Sequence[Mapping[str, Any]], fig_dir: Path) -> list[Block]:
    return [
        Heading("LaRE maps"),
        Picture(
            _lare_figure(lare_examples, fig_dir / "lare.png"),
            "LaRE maps",
            "Latent reconstruction error of real (top) and fake (bottom) examples, mean "
            "over the 4 latent channels, on one shared colour scale.",
        ),
    ]


def _build(
    out_dir: Path,
    title: str,
    metrics: Mapping[str, Any],
    scores: pd.DataFrame,
    config: Mapping[str, Any],
    fingerprints: Mapping[str, Any],
    robustness: Mapping[str, Mapping[str, Any]] | None,
    lare_examples: Sequence[Mapping[str, Any]] | None,
) -> list[Block]:
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in FIGURE_NAMES:  # figures of an earlier run must not linger
        (fig_dir / stale).unlink(missing_ok=True)

    subsets: Mapping[str, Mapping[str, Any]] = metrics.get("subsets") or {}
    mean = metrics.get("mean") or summarize(subsets)
    clean = _clean_rows(scores, robustness)
    plotted = list(subsets) + [s for s in pd.unique(clean["subset"]) if s not in subsets]
    plotted = [s for s in plotted if (clean["subset"] == s).any()]

    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(_summary_text(subsets, mean, robustness), css_class="summary"),
        Heading("Per-subset metrics"),
        _subset_table(subsets, mean),
        Heading("Oracle: best-threshold accuracy (threshold chosen on test labels)"),
        _oracle_table(subsets, mean),
    ]
    blocks += _score_blocks(clean, plotted, subsets, fig_dir)
    if robustness:
        blocks += _robustness_blocks(mean, subsets, robustness, fig_dir)
    if lare_examples:
        blocks += _lare_blocks(lare_examples, fig_dir)
    blocks += [
        Heading("Run configuration"),
        CodeDetails("Configuration (YAML)", _config_yaml(config), "yaml"),
        CodeDetails(
            "Store fingerprints (JSON)",
            json.dumps(fingerprints, indent=2, sort_keys=True, default=str),
            "json",
        ),
    ]
    return blocks


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _fence(code: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _md_row(cells: Sequence[str], bold: bool = False) -> str:
    return "| " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |"


def _numeric_columns(table: Table) -> list[bool]:
    return [any(r[i].numeric for r in table.rows) for i in range(len(table.header))]


def _md_table(block: Table) -> list[str]:
    last = len(block.rows) - 1
    lines = [_md_row([_md_cell(h) for h in block.header]),
             _md_row(["---:" if n else "---" for n in _numeric_columns(block)])]
    for i, row in enumerate(block.rows):
        lines.append(_md_row([_md_cell(c.text) for c in row], block.emphasise_last_row and i == last))
    lines.append("")
    if block.caption:
        lines += [f"*{block.caption}*", ""]
    lines += [f"- {note}" for note in block.notes]
    if block.notes:
        lines.append("")
    return lines


def _md_code(block: CodeDetails) -> list[str]:
    fence = _fence(block.code)
    return [
        f"<details><summary>{html.escape(block.summary)}</summary>",
        "",
        f"{fence}{block.language}",
        block.code.rstrip("\n"),
        fence,
        "",
        "</details>",
        "",
    ]


def _md_block(block: Block, out_dir: Path) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + block.text, ""]
    if isinstance(block, Paragraph):
        return [block.text, ""]
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Picture):
        rel = block.path.relative_to(out_dir).as_posix()
        return [f"![{block.alt}]({rel})", "", f"*{block.caption}*", ""]
    return _md_code(block)


def _to_markdown(blocks: Sequence[Block], out_dir: Path) -> str:
    lines = [line for block in blocks for line in _md_block(block, out_dir)]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d0d7de; --band: #f6f8fa; --accent: #d9622b; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 1.7em; margin: 0 0 .4em; border-bottom: 3px solid var(--accent); padding-bottom: .2em; }
h2 { font-size: 1.25em; margin: 1.8em 0 .6em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
p.summary { font-size: 1.02em; background: var(--band); border-left: 4px solid var(--accent);
  padding: 10px 14px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .9em; margin: .4em 0; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--band); text-align: left; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tr.total td { font-weight: 600; border-top: 2px solid var(--ink); }
td[title] { cursor: help; text-decoration: underline dotted #8c959f; }
td.missing { color: var(--muted); }
p.caption, figcaption { color: var(--muted); font-size: .88em; max-width: 900px; }
ul.notes { color: var(--muted); font-size: .86em; margin-top: .2em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
details { margin: .6em 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; }
pre { background: var(--band); padding: 10px; overflow-x: auto; font-size: .85em;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _html_cell(cell: Cell) -> str:
    classes = " ".join(
        name for name, on in (("num", cell.numeric), ("missing", cell.text.startswith("—"))) if on
    )
    attrs = f' class="{classes}"' if classes else ""
    if cell.hint:
        attrs += f' title="{_esc(cell.hint)}"'
    return f"<td{attrs}>{_esc(cell.text)}</td>"


def _html_table(table: Table) -> str:
    numeric = _numeric_columns(table)
    head = "".join(
        f'<th class="num">{_esc(h)}</th>' if n else f"<th>{_esc(h)}</th>"
        for h, n in zip(table.header, numeric, strict=True)
    )
    body = []
    for i, row in enumerate(table.rows):
        total = table.emphasise_last_row and i == len(table.rows) - 1
        row_attrs = ' class="total"' if total else ""
        body.append(f"<tr{row_attrs}>{''.join(_html_cell(cell) for cell in row)}</tr>")
    parts = [
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    ]
    if table.caption:
        parts.append(f'<p class="caption">{_esc(table.caption)}</p>')
    if table.notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in table.notes) + "</ul>"
        )
    return "\n".join(parts)


def _to_html(blocks: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            css = f' class="{_esc(block.css_class)}"' if block.css_class else ""
            body.append(f"<p{css}>{_esc(block.text)}</p>")
        elif isinstance(block, Table):
            body.append(_html_table(block))
        elif isinstance(block, Picture):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(block.alt)}">'
                f"<figcaption>{_esc(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, CodeDetails):
            body.append(
                f"<details><summary>{_esc(block.summary)}</summary>"
                f'<pre><code class="language-{_esc(block.language)}">{_esc(block.code)}'
                "</code></pre></details>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


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
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``.

    ``metrics`` is ``{"subsets": {name: compute_metrics(...)}, "mean": summarize(...)}``;
    ``scores`` holds one row per image (columns subset, label, p_fake, optionally store);
    rows whose store is a key of ``robustness`` are left out of the clean figures.
    ``robustness`` maps a perturbed store to ``{"perturb": "jpeg=50", "mean": ..., "subsets":
    ...}``; ``lare_examples`` are dicts with path, subset, label and a (4, 32, 32) ``lare`` map.
    Returns the paths of the Markdown and the HTML file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = _build(
        out_dir, title, metrics, scores, config, fingerprints, robustness, lare_examples
    )
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(_to_markdown(blocks, out_dir), encoding="utf-8")
    html_path.write_text(_to_html(blocks, title), encoding="utf-8")
    return md_path, html_path
