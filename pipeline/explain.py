"""`clare predict --explain`: what the detector looked at, per input, and one gallery page.

Per scored image (or video frame) a PNG with three panels: the image as the model saw it
(the LaRE branch's resized pixels), its LaRE map (mean over the 4 latent channels, upsampled)
over the image, and the fusion head's LaRE-guided attention over the CLIP patch grid (mean over
heads). `gallery.html` shows them all sorted by p_fake, the PNGs inlined as data URIs so the
page needs no network and no other file; Jinja2 escapes every value it writes
(`templates/gallery.html.j2`). The panels are drawn by `clare.render.figures.explanation_png`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clare.render.figures import explanation_png
from clare.render.templates import template_environment

EXPLAIN_DIR = "explain"
GALLERY_FILE = "gallery.html"


@dataclass
class Explained:
    label: str  # input path, with #frame N for a video frame
    p_fake: float
    verdict: str
    png: str  # base64 PNG


def _file_name(number: int, source: Path, frame: int | None) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.stem)[:80] or "input"
    return f"{number:05d}_{stem}" + ("" if frame is None else f"_f{frame:05d}") + ".png"


def write_explanations(results: Iterable[Any], threshold: float, out_dir: Path) -> Path:
    """A PNG per scored image under `out_dir/explain/` and `out_dir/gallery.html`."""
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
    page = template_environment().get_template("gallery.html.j2").render(
        title=Path(out_dir).name, items=items, failed=failed, threshold=threshold)
    gallery = Path(out_dir) / GALLERY_FILE
    gallery.write_text(page, encoding="utf-8")
    return gallery
