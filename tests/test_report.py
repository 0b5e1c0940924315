"""The evaluation report: both files, every subset, self-contained HTML with inline PNGs."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clare.metrics import compute_metrics, summarize
from clare.report import render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBSETS = ("pixart_cdf", "StyleGAN3_cdf", "heygen")
SINGLE_CLASS = "whichisreal"


class _LinkCollector(HTMLParser):
    """Every src= and href= value, and the text inside <details> blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data"):
                self.links.append((tag, name, value or ""))


def _scores_table(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for store, shift in (("test", 0.0), ("test-jpeg50", -0.15)):
        for name in (*SUBSETS, SINGLE_CLASS):
            for video in range(6):
                label = 1 if name == SINGLE_CLASS else video % 2
                for frame in range(5):
                    p = float(np.clip(rng.normal(0.3 + 0.4 * label + shift * label, 0.15), 0, 1))
                    rows.append(
                        {
                            "path": f"{name}/{video}/{frame:03d}.png",
                            "subset": name,
                            "label": label,
                            "video": f"{name}-{video}",
                            "p_fake": p,
                            "store": store,
                        }
                    )
    frame = pd.DataFrame(rows)
    frame.insert(0, "row", np.arange(len(frame)))
    return frame


def _metrics_for(scores: pd.DataFrame) -> dict:
    subsets = {
        name: compute_metrics(g["label"].to_numpy(), g["p_fake"].to_numpy(), g["video"].to_numpy())
        for name, g in scores.groupby("subset", sort=False)
    }
    return {"subsets": subsets, "mean": summarize(subsets)}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(7)
    scores = _scores_table(rng)
    clean = scores[scores["store"] == "test"]
    jpeg = scores[scores["store"] == "test-jpeg50"]
    metrics = _metrics_for(clean)
    jpeg_metrics = _metrics_for(jpeg)
    robustness = {
        "test-jpeg50": {
            "perturb": "jpeg=50",
            "mean": jpeg_metrics["mean"],
            "subsets": jpeg_metrics["subsets"],
        }
    }
    lare_examples = [
        {
            "path": "pixart_cdf/0/000.png",
            "subset": "pixart_cdf",
            "label": 0,
            "lare": rng.random((4, 32, 32), dtype=np.float32) * 0.5,
        },
        {
            "path": "pixart_cdf/1/000.png",
            "subset": "pixart_cdf",
            "label": 1,
            "lare": rng.random((4, 32, 32), dtype=np.float32) * 1.5,
        },
    ]
    config = {
        "seed": 0,
        "fit": {"module": "fusion", "strategy": "coop"},
        "eval": {"perturbations": ["jpeg=50"]},
        "note": "<script>alert(1)</script>",
    }
    fingerprints = {"test": {"rows": 120, "hash": "abc123"}, "test-jpeg50": {"rows": 120}}
    out = tmp_path_factory.mktemp("report")
    md_path, html_path = render_report(
        out,
        title="CLaRE <fusion> eval",
        metrics=metrics,
        scores=scores,
        config=config,
        fingerprints=fingerprints,
        robustness=robustness,
        lare_examples=lare_examples,
    )
    return out, md_path, html_path, metrics


def test_both_files_exist_and_name_every_subset(rendered) -> None:
    out, md_path, html_path, _ = rendered
    assert md_path == out / "report.md" and html_path == out / "report.html"
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    for name in (*SUBSETS, SINGLE_CLASS):
        assert name in md, name
        assert name in page, name
    for text in (md, page):
        assert "oracle" in text.lower() and "threshold chosen on test labels" in text
        assert "jpeg=50" in text
        assert "— (single class)" in text


def test_numbers_match_metrics_with_three_decimals(rendered) -> None:
    _, md_path, _, metrics = rendered
    md = md_path.read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if line.startswith("| pixart_cdf |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    m = metrics["subsets"]["pixart_cdf"]
    assert cells[1] == f"{m['auc']:.3f}"
    assert cells[2] == f"{m['ap']:.3f}"
    assert cells[7] == f"{m['video_auc']:.3f}"
    assert cells[-2:] == [str(m["n_real"]), str(m["n_fake"])]
    single = next(line for line in md.splitlines() if line.startswith(f"| {SINGLE_CLASS} |"))
    assert "— (single class)" in single and "— (no real images)" in single


def test_html_is_self_contained(rendered) -> None:
    _, _, html_path, _ = rendered
    page = html_path.read_text(encoding="utf-8")
    collector = _LinkCollector()
    collector.feed(page)
    assert collector.links, "expected inline images"
    for tag, name, value in collector.links:
        assert value.startswith(("data:", "#")), (tag, name, value[:60])
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    assert "<link" not in page and "<script" not in page  # text is escaped, no scripts
    assert "&lt;script&gt;" in page and "CLaRE &lt;fusion&gt; eval" in page


def test_images_are_inline_png(rendered) -> None:
    out, md_path, html_path, _ = rendered
    page = html_path.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4  # ROC, histograms, robustness, LaRE
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    # Markdown references the same figures by relative paths that exist.
    md_figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text(encoding="utf-8"))
    assert sorted(md_figures) == sorted(
        f"figures/{n}" for n in ("roc.png", "scores.png", "robustness.png", "lare.png")
    )
    for rel in md_figures:
        assert not Path(rel).is_absolute()
        assert (out / rel).read_bytes().startswith(PNG_MAGIC)


def test_config_and_fingerprints_in_details(rendered) -> None:
    _, md_path, html_path, _ = rendered
    page = html_path.read_text(encoding="utf-8")
    details = re.findall(r"<details>(.*?)</details>", page, flags=re.S)
    assert len(details) == 2
    assert "module: fusion" in details[0]
    assert "abc123" in details[1] and "&quot;rows&quot;: 120" in details[1]
    md = md_path.read_text(encoding="utf-8")
    assert md.count("<details>") == 2 and "```yaml" in md and "```json" in md


def test_report_without_optional_parts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    scores = _scores_table(rng)
    scores = scores[scores["store"] == "test"].drop(columns="store")
    metrics = _metrics_for(scores)
    # A stale figure from an earlier run with robustness must not survive.
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "robustness.png").write_bytes(PNG_MAGIC)
    md_path, html_path = render_report(
        tmp_path, title="plain", metrics=metrics, scores=scores, config={}, fingerprints={}
    )
    page = html_path.read_text(encoding="utf-8")
    assert len(re.findall(r"<img ", page)) == 2
    assert "Robustness" not in page and "LaRE maps" not in page
    assert not (tmp_path / "figures" / "robustness.png").exists()
    assert "heygen" in md_path.read_text(encoding="utf-8")
