"""The evaluation report: both files, every subset, self-contained HTML with inline PNGs."""

from __future__ import annotations

import base64
import html
import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clare.metrics import (
    compute_metrics,
    expected_calibration_error,
    summarize,
    video_table,
    worst_errors,
)
from clare.report import _error_blocks, render_report
from clare.report_tables import operating_point
from clare.scoring import THRESHOLD_RULE, accuracy_at

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBSETS = ("pixart_cdf", "StyleGAN3_cdf", "heygen")
SINGLE_CLASS = "whichisreal"
THRESHOLD = 0.45  # the run's validation threshold in the rendered fixture
FIGURES = ("roc.png", "scores.png", "calibration.png", "robustness.png", "lare.png")


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


class Rendered(NamedTuple):
    out: Path
    md_path: Path
    html_path: Path
    metrics: dict
    clean: pd.DataFrame
    lare_calls: list  # (store, rows) of every read_lare call
    broken: str  # path of the top false positive, whose image file is damaged
    missing: str  # path of the top false negative, whose image file is gone


def _with_threshold(metrics: dict, scores: pd.DataFrame) -> dict:
    """What `clare eval` adds for a run with a validation threshold."""
    for name, group in scores.groupby("subset", sort=False):
        metrics["subsets"][name]["acc_at_val_threshold"] = accuracy_at(
            group["label"].to_numpy(), group["p_fake"].to_numpy(), THRESHOLD)
    values = [m["acc_at_val_threshold"] for m in metrics["subsets"].values()]
    metrics["mean"]["acc_at_val_threshold"] = float(np.mean(values))
    metrics["mean"]["acc_at_val_threshold_n_subsets"] = len(values)
    metrics["threshold"] = {"value": THRESHOLD, "rule": THRESHOLD_RULE}
    return metrics


def _image_tree(root: Path, clean: pd.DataFrame) -> tuple[str, str]:
    """A small PNG per clean path; the top false positive damaged, the top false negative gone."""
    for path, label in zip(clean["path"], clean["label"], strict=True):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 60, 40) if label else (40, 90, 200)).save(root / path)
    false_pos, false_neg = worst_errors(clean, THRESHOLD)
    assert len(false_pos) >= 3 and len(false_neg) >= 2, "fixture scores give too few errors"
    broken, missing = str(false_pos["path"].iloc[0]), str(false_neg["path"].iloc[0])
    (root / broken).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / missing).unlink()
    return broken, missing


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    rng = np.random.default_rng(7)
    scores = _scores_table(rng)
    clean = scores[scores["store"] == "test"]
    jpeg = scores[scores["store"] == "test-jpeg50"]
    metrics = _with_threshold(_metrics_for(clean), clean)
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
    images = tmp_path_factory.mktemp("images")
    broken, missing = _image_tree(images, clean)
    second_fp = int(worst_errors(clean, THRESHOLD)[0]["row"].iloc[1])
    calls: list = []

    def read_lare(store: str, rows: np.ndarray) -> np.ndarray:
        calls.append((store, rows.tolist()))
        maps = np.stack([np.full((4, 8, 8), row / 100.0, dtype=np.float32) for row in rows])
        maps[rows == second_fp] = np.nan  # a map that is not finite gets a note, not a picture
        return maps

    md_path, html_path = render_report(
        out,
        title="CLaRE <fusion> eval",
        metrics=metrics,
        scores=scores,
        config=config,
        fingerprints=fingerprints,
        robustness=robustness,
        lare_examples=lare_examples,
        image_root=images,
        read_lare=read_lare,
    )
    return Rendered(out, md_path, html_path, metrics, clean, calls, broken, missing)


def test_both_files_exist_and_name_every_subset(rendered) -> None:
    out, md_path, html_path, *_ = rendered
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
    _, md_path, _, metrics, *_ = rendered
    md = md_path.read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if re.match(r"\|\s*pixart_cdf\s*\|", line))
    cells = [c.strip() for c in row.strip("|").split("|")]
    m = metrics["subsets"]["pixart_cdf"]
    assert cells[1] == f"{m['auc']:.3f}"
    assert cells[2] == f"{m['ap']:.3f}"
    assert cells[7] == f"{m['video_auc']:.3f}"
    assert cells[-2:] == [str(m["n_real"]), str(m["n_fake"])]
    single = next(line for line in md.splitlines() if re.match(rf"\|\s*{SINGLE_CLASS}\s*\|", line))
    assert "— (single class)" in single and "— (no real images)" in single


def test_html_is_self_contained(rendered) -> None:
    _, _, html_path, *_ = rendered
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
    out, md_path, html_path, *_ = rendered
    page = html_path.read_text(encoding="utf-8")
    sources = re.findall(r'<figure><img src="([^"]+)"', page)
    assert len(sources) == 5  # ROC, histograms, calibration, robustness, LaRE
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    # Markdown references the same figures by relative paths that exist.
    md_figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text(encoding="utf-8"))
    assert sorted(md_figures) == sorted(f"figures/{n}" for n in FIGURES)
    for rel in md_figures:
        assert not Path(rel).is_absolute()
        assert (out / rel).read_bytes().startswith(PNG_MAGIC)


def test_config_and_fingerprints_in_details(rendered) -> None:
    _, md_path, html_path, *_ = rendered
    page = html_path.read_text(encoding="utf-8")
    details = re.findall(r"<details>(.*?)</details>", page, flags=re.S)
    assert len(details) == 2
    assert "module: fusion" in details[0]
    assert "abc123" in details[1] and '"rows": 120' in html.unescape(details[1])
    assert '"rows"' not in details[1]  # escaped
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
    assert len(re.findall(r"<img ", page)) == 3  # ROC, histograms, calibration
    assert "Robustness" not in page and "LaRE maps" not in page
    assert not (tmp_path / "figures" / "robustness.png").exists()
    assert not (tmp_path / "figures" / "robustness.svg").exists()
    md = md_path.read_text(encoding="utf-8")
    assert "heygen" in md
    # No validation threshold in metrics: said instead of a table; errors listed at 0.5.
    assert "The run records no operating threshold" in md and "Acc@val thr" not in md
    assert "At threshold 0.5000" in md and "no image folder given" in md
    assert "LaRE map not given" in md


# --------------------------------------------------------------------------- for researchers


def _md_row(md: str, first_cell: str) -> list[str]:
    """The cells of the first Markdown table row whose first cell is `first_cell`."""
    row = next(line for line in md.splitlines()
               if re.match(rf"\|\s*{re.escape(first_cell)}\s*\|", line))
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _section(md: str, heading: str) -> str:
    """The Markdown from `## heading` to the next `## `."""
    start = md.index(f"## {heading}\n")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


def test_accuracy_at_the_validation_threshold_beside_half(rendered: Rendered) -> None:
    md = rendered.md_path.read_text(encoding="utf-8")
    section = _section(md, "Accuracy at the validation threshold")
    assert f"Acc@val thr (t = {THRESHOLD:.4f})" in section
    assert THRESHOLD_RULE in html.unescape(section)  # where the threshold came from
    for name in (*SUBSETS, SINGLE_CLASS):
        m = rendered.metrics["subsets"][name]
        assert _md_row(section, name)[1:] == [f"{m['acc']:.3f}", f"{m['acc_at_val_threshold']:.3f}"]
    mean = rendered.metrics["mean"]
    assert _md_row(section, "**mean over 4 subsets**")[1:] == [
        f"**{mean['acc']:.3f}**", f"**{mean['acc_at_val_threshold']:.3f}**"]
    assert f"Acc@val thr {mean['acc_at_val_threshold']:.3f}" in md  # in the summary too


def test_calibration_error_per_subset_and_reliability_diagram(rendered: Rendered) -> None:
    md = rendered.md_path.read_text(encoding="utf-8")
    section = _section(md, "Calibration")
    assert "ECE (15 bins)" in section and "15 equal-width bins" in section
    values = []
    for name in (*SUBSETS, SINGLE_CLASS):
        rows = rendered.clean[rendered.clean["subset"] == name]
        ece = expected_calibration_error(rows["label"], rows["p_fake"])
        assert _md_row(section, name)[1:] == [f"{ece:.3f}", str(len(rows))]
        values.append(ece)
    assert _md_row(section, "**mean over 4 subsets**")[1] == f"**{np.mean(values):.3f}**"
    assert "![Reliability diagrams](figures/calibration.png)" in section


def test_per_video_table_and_csv(rendered: Rendered) -> None:
    videos = pd.read_csv(rendered.out / "videos.csv")
    clean = rendered.clean
    assert len(videos) == clean.groupby(["subset", "video"]).ngroups == 24
    means = clean.groupby("video")["p_fake"].mean()
    np.testing.assert_allclose(videos["p_fake_mean"], means[videos["video"]].to_numpy())
    assert (videos["frames"] == 5).all()
    assert videos["error"].is_monotonic_decreasing  # worst first
    pd.testing.assert_frame_equal(videos, video_table(clean), check_dtype=False)
    section = _section(rendered.md_path.read_text(encoding="utf-8"), "Per-video results")
    lines = section.splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"\|\s*Subset\s*\|\s*Video\s*\|", line))
    first = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert first[:2] == [videos.iloc[0]["subset"], videos.iloc[0]["video"]]  # the worst first
    assert "of 24; every video is in videos.csv" in section
    fake_videos = int(videos.loc[videos["subset"] == "heygen", "label"].sum())
    assert _md_row(section, "heygen")[1:3] == [str(6 - fake_videos), str(fake_videos)]


def _gallery_rows(page: str, title: str) -> list[str]:
    start = page.index(f"<h3>{html.escape(title)}</h3>")
    table = page[start:page.index("</table>", start)]
    return re.findall(r"<tr><td class=\"num\">.*?</tr>", table, flags=re.S)


def test_worst_errors_with_thumbnail_lare_map_and_score(rendered: Rendered) -> None:
    page = rendered.html_path.read_text(encoding="utf-8")
    false_pos, false_neg = worst_errors(rendered.clean, THRESHOLD)
    # The LaRE maps of exactly the picked rows were read, from their store.
    assert rendered.lare_calls == [("test", false_pos["row"].tolist()),
                                   ("test", false_neg["row"].tolist())]
    for title, picks in (("Most confident false positives (real images, highest p(fake))", false_pos),
                         ("Most confident false negatives (fake images, lowest p(fake))", false_neg)):
        rows = _gallery_rows(page, title)
        assert len(rows) == len(picks) == min(8, len(picks))
        for row, p_fake in zip(rows, picks["p_fake"], strict=True):
            assert f"{p_fake:.4f}" in row
    fp_rows = _gallery_rows(page, "Most confident false positives (real images, highest p(fake))")
    fn_rows = _gallery_rows(page, "Most confident false negatives (fake images, lowest p(fake))")
    assert "image unreadable" in fp_rows[0] and "image file missing" in fn_rows[0]
    assert "LaRE map not finite" in fp_rows[1]
    assert fp_rows[0].count("<img") == 1  # the LaRE map alone, without its image
    for row in fp_rows[2:] + fn_rows[1:]:
        sources = re.findall(r'<img src="([^"]+)"', row)
        assert len(sources) == 2  # thumbnail and LaRE overlay
        for src in sources:
            assert src.startswith("data:image/png;base64,")
            assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert prefixed(page, false_pos.iloc[0]) and prefixed(page, false_neg.iloc[1])
    # Markdown shows the same pictures from files beside it.
    md = rendered.md_path.read_text(encoding="utf-8")
    linked = re.findall(r'<img src="([^"]+)"', _section(md, "Worst errors"))
    assert linked and all((rendered.out / rel).read_bytes().startswith(PNG_MAGIC) for rel in linked)


def prefixed(page: str, pick: pd.Series) -> bool:
    """The video/frame of a picked row appears in the page."""
    return "/".join(str(pick["path"]).split("/")[-2:]) in page


def test_every_figure_has_an_svg_beside_it(rendered: Rendered) -> None:
    for name in FIGURES:
        svg = (rendered.out / "figures" / name).with_suffix(".svg")
        root = ElementTree.parse(svg).getroot()
        assert root.tag.endswith("svg"), svg


def test_every_link_is_inline_or_a_file_of_the_report(rendered: Rendered) -> None:
    collector = _LinkCollector()
    collector.feed(rendered.html_path.read_text(encoding="utf-8"))
    md = rendered.md_path.read_text(encoding="utf-8")
    md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md) + re.findall(r'<img src="([^"]+)"', md)
    links = [value for _tag, _name, value in collector.links] + md_links
    assert len(links) > 20
    for link in links:
        if link.startswith(("data:", "#")):
            continue
        assert "://" not in link and not link.startswith(("/", "\\")) and ".." not in link, link
        assert (rendered.out / link).is_file(), link


def test_same_blocks_as_before_and_latex_tables(rendered: Rendered) -> None:
    page = rendered.html_path.read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    before = ["Per-subset metrics", "Oracle: best-threshold accuracy (threshold chosen on test "
              "labels)", "ROC curves", "Score distributions", "Robustness", "LaRE maps",
              "Run configuration"]
    assert [h for h in headings if h in before] == before
    assert {"Accuracy at the validation threshold", "Calibration", "Per-video results",
            "Worst errors"} <= set(headings)
    tex = (rendered.out / "report.tex").read_text(encoding="utf-8")
    assert tex.count("\\begin{tabular}") == page.count('class="metrics"') and "\\toprule" in tex
    m = rendered.metrics["subsets"]["pixart_cdf"]
    assert re.search(rf"pixart\\_cdf & {m['auc']:.3f} & {m['ap']:.3f} &", tex)
    assert "\\bfseries mean over 4 subsets" in tex


def test_worst_errors_show_an_image_listed_by_several_subsets_once(tmp_path: Path) -> None:
    """DF40 lists a real frame under every method: its entries share one score, and the
    gallery of worst errors shows the image once, not once per list."""
    clean = pd.DataFrame({
        "row": [0, 0, 0, 1, 2, 3, 3],
        "path": ["r/0.png"] * 3 + ["r/1.png", "r/2.png"] + ["f/3.png"] * 2,
        "subset": ["a", "b", "c", "a", "b", "a", "b"],
        "label": [0, 0, 0, 0, 0, 1, 1],
        "p_fake": [0.9, 0.9, 0.9, 0.8, 0.7, 0.1, 0.1],
        "store": "test",
    })
    false_pos, false_neg = worst_errors(clean, 0.5, count=3)
    assert false_pos["path"].tolist() == ["r/0.png", "r/1.png", "r/2.png"]
    assert false_neg["path"].tolist() == ["f/3.png"]
    # The sentence above the gallery counts images too.
    intro = _error_blocks(clean, operating_point({}), tmp_path, None, None)[1]
    assert "3 false positive(s) and 1 false negative(s) among 4 clean test images" in intro.text
