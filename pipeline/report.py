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

from clare.metrics import roc_points, summarize

FIGURE_NAMES = ("roc.png", "scores.png", "robustness.png", "lare.png")
_PNG_METADATA = {"Software": None}  # keeps figure bytes identical across matplotlib builds
_REAL_COLOUR, _FAKE_COLOUR = "#3b75af", "#d9622b"

# (metric key, column title) of the per-subset table, in display order.
_SUBSET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC"),
    ("ap", "AP"),
    ("eer", "EER"),
    ("acc", "Acc@0.5"),
    ("real_acc", "Real acc"),
    ("fake_acc", "Fake acc"),
    ("video_auc", "Video AUC"),
    ("tpr_at_1fpr", "TPR@1%FPR"),
    ("n_real", "n real"),
    ("n_fake", "n fake"),
)
_ROBUST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC"),
    ("ap", "AP"),
    ("eer", "EER"),
    ("acc", "Acc@0.5"),
    ("video_auc", "Video AUC"),
    ("tpr_at_1fpr", "TPR@1%FPR"),
)
_METRIC_NAMES = dict(_SUBSET_COLUMNS) | {"oracle_best_threshold_acc": "oracle acc"}


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


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _fmt(value: Any) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if _is_number(value):
        return f"{float(value):.3f}"
    return "—"


def _short_reason(reason: str) -> str:
    # "single class: only fake images (12)" -> "single class"
    return reason.split(":", 1)[0].strip()


def _metric_cell(metrics: Mapping[str, Any], key: str) -> Cell:
    value = metrics.get(key)
    if _is_number(value):
        return Cell(_fmt(value), numeric=True)
    reason = (metrics.get("notes") or {}).get(key)
    if reason:
        return Cell(f"— ({_short_reason(reason)})", numeric=True, hint=reason)
    return Cell("—", numeric=True)


def _mean_cell(mean: Mapping[str, Any], key: str, n_subsets: int) -> Cell:
    cell = _metric_cell(mean, key)
    contributed = mean.get(f"{key}_n_subsets")
    if _is_number(mean.get(key)) and contributed is not None and contributed < n_subsets:
        cell.text += f" ({contributed}/{n_subsets})"
        cell.hint = (mean.get("notes") or {}).get(key)
    return cell


def _tpr_key(metrics: Mapping[str, Any]) -> str:
    """The TPR@FPR key actually present (compute_metrics names it from its FPR target)."""
    for key in metrics:
        if key.startswith("tpr_at_") and not key.endswith("_n_subsets"):
            return key
    return "tpr_at_1fpr"


def _tpr_title(key: str) -> str:
    match = re.fullmatch(r"tpr_at_(.+)fpr", key)
    return f"TPR@{match.group(1)}%FPR" if match else key


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
        label = f"{name} (AUC {_fmt(auc)})" if _is_number(auc) else name
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


def _parse_perturbation(text: str) -> tuple[str, float | None]:
    kind, _, level = text.partition("=")
    try:
        return kind.strip(), float(level)
    except ValueError:
        return text.strip(), None


_PERTURBATION_AXES = {"jpeg": "JPEG quality (lower = harsher)", "blur": "Gaussian blur σ"}


def _robustness_figure(
    clean_auc: Any, robustness: Mapping[str, Mapping[str, Any]], path: Path
) -> Path:
    by_kind: dict[str, list[tuple[float | None, str, Any]]] = {}
    for store, entry in robustness.items():
        kind, level = _parse_perturbation(str(entry.get("perturb", store)))
        by_kind.setdefault(kind, []).append((level, store, (entry.get("mean") or {}).get("auc")))
    kinds = list(by_kind)
    fig = Figure(figsize=(max(4.4, 3.6 * len(kinds)), 3.4), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        points = by_kind[kind]
        numeric = all(level is not None for level, _, _ in points)
        if numeric:
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8)
        else:
            xs = list(range(len(points)))
            ax.set_xticks(xs, [p[1] for p in points], rotation=20, fontsize=7)
        ys = [float(p[2]) if _is_number(p[2]) else np.nan for p in points]
        ax.plot(xs, ys, marker="o", color=_FAKE_COLOUR, label="perturbed")
        if _is_number(clean_auc):
            ax.axhline(float(clean_auc), color=_REAL_COLOUR, ls="--", lw=1, label="clean")
        if kind == "jpeg" and numeric:
            ax.invert_xaxis()  # harsher compression to the right, like blur
        ax.set(
            xlabel=_PERTURBATION_AXES.get(kind, kind), ylabel="mean AUC over subsets", title=kind
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
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


def _lare_figure(examples: Sequence[Mapping[str, Any]], path: Path) -> Path:
    rows = [
        ("real", [e for e in examples if int(e["label"]) == 0]),
        ("fake", [e for e in examples if int(e["label"]) == 1]),
    ]
    rows = [(name, items) for name, items in rows if items]
    n_cols = max(len(items) for _, items in rows)
    maps = {id(e): _lare_map(e) for _, items in rows for e in items}
    # One colour scale for every panel, so real and fake maps compare by brightness.
    vmax = max(float(m.max()) for m in maps.values()) or 1.0
    fig = Figure(figsize=(2.1 * n_cols + 1.0, 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    image = None
    for row_axes, (name, items) in zip(axes, rows, strict=True):
        for col, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(items):
                ax.set_axis_off()
                continue
            example = items[col]
            image = ax.imshow(maps[id(example)], cmap="magma", vmin=0.0, vmax=vmax)
            ax.set_title(
                # The video folder tells frames apart: every video has a 000.png.
                f"{example.get('subset', '')}\n{_video_and_frame(example.get('path', ''))}",
                fontsize=7,
            )
        row_axes[0].set_ylabel(name, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.85, label="LaRE, mean over channels")
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


def _summary_text(
    subsets: Mapping[str, Mapping[str, Any]],
    mean: Mapping[str, Any],
    robustness: Mapping[str, Mapping[str, Any]] | None,
) -> str:
    n = len(subsets)
    tpr_key = _tpr_key(mean)
    parts = []
    for key, name in (
        ("auc", "AUC"),
        ("ap", "AP"),
        ("eer", "EER"),
        ("acc", "accuracy at 0.5"),
        ("video_auc", "video AUC"),
        (tpr_key, _tpr_title(tpr_key)),
    ):
        count = mean.get(f"{key}_n_subsets")
        scope = f" ({count} of {n} subsets)" if count is not None and count < n else ""
        parts.append(f"{name} {_fmt(mean.get(key))}{scope}")
    text = (
        f"{n} test subset(s) with {_fmt(mean.get('n_real', 0))} real and "
        f"{_fmt(mean.get('n_fake', 0))} fake images. Mean over subsets: " + ", ".join(parts) + "."
    )
    ranked = sorted(
        (float(m["auc"]), name) for name, m in subsets.items() if _is_number(m.get("auc"))
    )
    if len(ranked) >= 2:
        text += (
            f" Lowest AUC: {ranked[0][1]} ({ranked[0][0]:.3f}); "
            f"highest: {ranked[-1][1]} ({ranked[-1][0]:.3f})."
        )
    for store, entry in (robustness or {}).items():
        auc = (entry.get("mean") or {}).get("auc")
        if _is_number(auc):
            delta = (
                f" ({float(auc) - float(mean['auc']):+.3f} vs clean)"
                if _is_number(mean.get("auc"))
                else ""
            )
            text += f" Under {entry.get('perturb', store)}: mean AUC {float(auc):.3f}{delta}."
    return text


def _subset_notes(subsets: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """One line per subset grouping its missing metrics by reason."""
    lines = []
    for name, metrics in subsets.items():
        by_reason: dict[str, list[str]] = {}
        for key, reason in (metrics.get("notes") or {}).items():
            if key in keys:
                by_reason.setdefault(reason, []).append(_METRIC_NAMES.get(key, _tpr_title(key)))
        if by_reason:
            lines.append(
                f"{name}: "
                + "; ".join(
                    f"{', '.join(names)} undefined ({reason})"
                    for reason, names in by_reason.items()
                )
            )
    return lines


def _subset_table(subsets: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any]) -> Table:
    tpr_key = _tpr_key(mean)
    columns = [
        (
            tpr_key if key == "tpr_at_1fpr" else key,
            title if key != "tpr_at_1fpr" else _tpr_title(tpr_key),
        )
        for key, title in _SUBSET_COLUMNS
    ]
    rows = [
        [Cell(name)] + [_metric_cell(m, key) for key, _ in columns] for name, m in subsets.items()
    ]
    n = len(subsets)
    rows.append(
        [Cell(f"mean over {n} subsets")]
        + [
            Cell(_fmt(mean.get(key)), numeric=True)
            if key in ("n_real", "n_fake")
            else _mean_cell(mean, key, n)
            for key, _ in columns
        ]
    )
    return Table(
        header=["Subset"] + [title for _, title in columns],
        rows=rows,
        caption=(
            "Frame-level metrics, fake = positive class. Accuracies at the fixed threshold "
            "0.5 (fake when p(fake) ≥ 0.5); EER and TPR at the FPR target are interpolated "
            "on the ROC curve; video AUC uses the mean p(fake) per video. Last row: "
            "unweighted mean over subsets (k/n: only k subsets define the metric), counts "
            "are totals."
        ),
        notes=_subset_notes(subsets, [key for key, _ in columns]),
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


def _robustness_tables(
    clean_mean: Mapping[str, Any],
    clean_subsets: Mapping[str, Mapping[str, Any]],
    robustness: Mapping[str, Mapping[str, Any]],
) -> list[Table]:
    tpr_key = _tpr_key(clean_mean)
    columns = [
        (
            tpr_key if key == "tpr_at_1fpr" else key,
            title if key != "tpr_at_1fpr" else _tpr_title(tpr_key),
        )
        for key, title in _ROBUST_COLUMNS
    ]
    clean_auc = clean_mean.get("auc")

    def summary_row(store: str, perturb: str, mean: Mapping[str, Any]) -> list[Cell]:
        auc = mean.get("auc")
        delta = (
            Cell(f"{float(auc) - float(clean_auc):+.3f}", numeric=True)
            if _is_number(auc) and _is_number(clean_auc)
            else Cell("—", numeric=True)
        )
        cells = [_metric_cell(mean, key) for key, _ in columns]
        return [Cell(store), Cell(perturb)] + cells[:1] + [delta] + cells[1:]

    summary = Table(
        header=["Store", "Perturbation"]
        + [f"mean {columns[0][1]}", "ΔAUC vs clean"]
        + [f"mean {title}" for _, title in columns[1:]],
        rows=[summary_row("clean", "none", clean_mean)]
        + [
            summary_row(store, str(entry.get("perturb", "?")), entry.get("mean") or {})
            for store, entry in robustness.items()
        ],
        caption="Means over subsets for the clean test stores and each degraded copy.",
    )
    stores = list(robustness)
    per_subset_rows = []
    names = list(clean_subsets) + [
        n
        for entry in robustness.values()
        for n in (entry.get("subsets") or {})
        if n not in clean_subsets
    ]
    for name in dict.fromkeys(names):
        row = [Cell(name), _metric_cell(clean_subsets.get(name, {}), "auc")]
        for store in stores:
            row.append(_metric_cell((robustness[store].get("subsets") or {}).get(name, {}), "auc"))
        per_subset_rows.append(row)
    per_subset = Table(
        header=["Subset", "clean"] + [str(robustness[s].get("perturb", s)) for s in stores],
        rows=per_subset_rows,
        caption="Frame-level AUC per subset under each perturbation.",
    )
    return [summary, per_subset]


def _config_yaml(config: Mapping[str, Any]) -> str:
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


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
    if plotted:
        auc_of = {name: m.get("auc") for name, m in subsets.items()}
        blocks += [
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
    if robustness:
        blocks.append(Heading("Robustness"))
        blocks += _robustness_tables(mean, subsets, robustness)
        blocks.append(
            Picture(
                _robustness_figure(mean.get("auc"), robustness, fig_dir / "robustness.png"),
                "Mean AUC per perturbation",
                "Mean AUC over subsets per perturbation strength; dashed: clean test stores.",
            )
        )
    if lare_examples:
        blocks += [
            Heading("LaRE maps"),
            Picture(
                _lare_figure(lare_examples, fig_dir / "lare.png"),
                "LaRE maps",
                "Latent reconstruction error of real (top) and fake (bottom) examples, mean "
                "over the 4 latent channels, on one shared colour scale.",
            ),
        ]
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


def _to_markdown(blocks: Sequence[Block], out_dir: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            numeric = [any(r[i].numeric for r in block.rows) for i in range(len(block.header))]
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
            for i, row in enumerate(block.rows):
                cells = [_md_cell(c.text) for c in row]
                if block.emphasise_last_row and i == len(block.rows) - 1:
                    cells = [f"**{c}**" for c in cells]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            if block.caption:
                lines += [f"*{block.caption}*", ""]
            lines += [f"- {note}" for note in block.notes]
            if block.notes:
                lines.append("")
        elif isinstance(block, Picture):
            rel = block.path.relative_to(out_dir).as_posix()
            lines += [f"![{block.alt}]({rel})", "", f"*{block.caption}*", ""]
        elif isinstance(block, CodeDetails):
            fence = _fence(block.code)
            lines += [
                f"<details><summary>{html.escape(block.summary)}</summary>",
                "",
                f"{fence}{block.language}",
                block.code.rstrip("\n"),
                fence,
                "",
                "</details>",
                "",
            ]
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


def _html_table(table: Table) -> str:
    numeric = [any(r[i].numeric for r in table.rows) for i in range(len(table.header))]
    head = "".join(
        f'<th class="num">{_esc(h)}</th>' if n else f"<th>{_esc(h)}</th>"
        for h, n in zip(table.header, numeric, strict=True)
    )
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for cell in row:
            classes = " ".join(
                name
                for name, on in (("num", cell.numeric), ("missing", cell.text.startswith("—")))
                if on
            )
            attrs = f' class="{classes}"' if classes else ""
            if cell.hint:
                attrs += f' title="{_esc(cell.hint)}"'
            cells.append(f"<td{attrs}>{_esc(cell.text)}</td>")
        total = table.emphasise_last_row and i == len(table.rows) - 1
        row_attrs = ' class="total"' if total else ""
        body.append(f"<tr{row_attrs}>{''.join(cells)}</tr>")
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
