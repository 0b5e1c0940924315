"""`clare predict --explain`: what the detector looked at, per input, and one gallery page.

Per scored image (or video frame) a PNG with three panels: the image as the model saw it
(the LaRE branch's resized pixels), its LaRE map (mean over the 4 latent channels, upsampled)
over the image, and the fusion head's LaRE-guided attention over the CLIP patch grid (mean over
heads). `gallery.html` shows them all sorted by p_fake, the PNGs inlined as data URIs so the
page needs no network and no other file; Jinja2 escapes every value it writes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

EXPLAIN_DIR = "explain"
GALLERY_FILE = "gallery.html"

_GALLERY = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clare predict: {{ title }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1.5em 1em; }
figure { margin: 0; padding: 0.5em; border: 1px solid #ddd; border-radius: 4px; }
img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; overflow-wrap: anywhere; margin-top: 0.3em; }
.fake { color: #b00020; font-weight: bold; } .real { color: #006400; font-weight: bold; }
</style></head><body>
<h1>clare predict: {{ title }}</h1>
<p>{{ items|length }} image(s) scored{% if failed %}, {{ failed|length }} failed (listed at the end){% endif %};
sorted by p_fake (highest first); verdict fake when p_fake &ge; the threshold {{ "%.4f"|format(threshold) }}.</p>
<p>Panels, left to right: the image as the model saw it; its LaRE map (reconstruction error,
mean over the 4 latent channels; brighter = larger error) over it; the fusion head's attention
over the CLIP patch grid (yellow = more weight).</p>
<main>
{% for item in items %}<figure>
<img alt="explanation of {{ item.label }}" src="data:image/png;base64,{{ item.png }}">
<figcaption>{{ item.label }}: p_fake {{ "%.4f"|format(item.p_fake) }},
<span class="{{ item.verdict }}">{{ item.verdict }}</span></figcaption>
</figure>
{% endfor %}</main>
{% if failed %}<h2>Failed inputs</h2><ul>
{% for row in failed %}<li>{{ row.label }}: {{ row.error }}</li>
{% endfor %}</ul>{% endif %}
</body></html>
"""


@dataclass
class Explained:
    label: str  # input path, with #frame N for a video frame
    p_fake: float
    verdict: str
    png: str  # base64 PNG


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
    """The three-panel figure of one image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def _file_name(number: int, source: Path, frame: int | None) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.stem)[:80] or "input"
    return f"{number:05d}_{stem}" + ("" if frame is None else f"_f{frame:05d}") + ".png"


def write_explanations(results: Iterable[Any], threshold: float, out_dir: Path) -> Path:
    """A PNG per scored image under `out_dir/explain/` and `out_dir/gallery.html`."""
    from jinja2 import Environment

    folder = Path(out_dir) / EXPLAIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    items: list[Explained] = []
    failed: list[dict[str, str]] = []
    for number, result in enumerate(results):
        if result.error is not None:
            failed.append({"label": str(result.path), "error": result.error})
        for unit in result.units:
            label = str(result.path) + ("" if unit.frame is None else f" #frame {unit.frame}")
            if unit.p_fake is None or unit.explain is None:
                if result.error is None:
                    failed.append({"label": label, "error": unit.error or "not scored"})
                continue
            target = folder / _file_name(number, Path(result.path), unit.frame)
            verdict = "fake" if unit.p_fake >= threshold else "real"
            explanation_png(target, unit.explain, f"{label}\np_fake {unit.p_fake:.4f} ({verdict})")
            items.append(Explained(label, unit.p_fake, verdict,
                                   base64.b64encode(target.read_bytes()).decode("ascii")))
    items.sort(key=lambda item: -item.p_fake)
    page = Environment(autoescape=True).from_string(_GALLERY).render(
        title=Path(out_dir).name, items=items, failed=failed, threshold=threshold)
    gallery = Path(out_dir) / GALLERY_FILE
    gallery.write_text(page, encoding="utf-8")
    return gallery
