"""`clare compare`: the DF40-shaped table, video bootstrap intervals, the four outputs, bad input.

Report folders are built here from synthetic scores with the metric functions `clare eval`
uses, so no pipeline runs; tests/test_dvc_experiments.py compares real `clare eval` outputs.
"""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from clare.bootstrap import (
    bootstrap_auc,
    percentile_interval,
    sort_scores,
    video_codes,
    weighted_auc,
)
from clare.cli import main
from clare.compare import (
    KNOWN_CDF,
    MEAN_COLUMN,
    OTHER,
    UNSEEN,
    build_table,
    load_runs,
    run_compare,
)
from clare.metrics import compute_metrics, summarize

SUBSETS = ("heygen", "DiT_cdf", "my_own_set", "StyleGAN2_cdf", "whichfaceisreal", "MidJourney")


def frames_of(subsets, strength: float, seed: int, videos: int = 12, per_video: int = 3) -> pd.DataFrame:
    """Scores of `videos` videos per subset (half fake), `per_video` frames each; a larger
    `strength` separates the classes better."""
    rng = np.random.default_rng(seed)
    rows = []
    for subset in subsets:
        for v in range(videos):
            label = v % 2
            centre = rng.normal(strength * label, 1.0)
            for _ in range(per_video):
                rows.append({"subset": subset, "label": label, "video": f"{subset}/v{v}",
                             "p_fake": float(1 / (1 + np.exp(-(centre + rng.normal(0, 0.2))))),
                             "store": "test"})
    return pd.DataFrame(rows)


def per_subset(frames: pd.DataFrame) -> dict:
    return {name: compute_metrics(g["label"].to_numpy(), g["p_fake"].to_numpy(), g["video"].to_numpy())
            for name, g in frames.groupby("subset", sort=False)}


def write_report(folder: Path, frames: pd.DataFrame, *, spec: dict | None = None,
                 perturbed: pd.DataFrame | None = None) -> Path:
    """A report folder as `clare eval` writes it: metrics.json, scores.parquet, run_spec.json."""
    folder.mkdir(parents=True, exist_ok=True)
    subsets = per_subset(frames)
    metrics = {"run": folder.name, "subsets": subsets, "mean": summarize(subsets), "robustness": {}}
    scores = frames
    if perturbed is not None:
        robust = per_subset(perturbed)
        metrics["robustness"]["test-jpeg50"] = {"perturb": "jpeg=50", "subsets": robust,
                                                "mean": summarize(robust)}
        scores = pd.concat([frames, perturbed.assign(store="test-jpeg50")], ignore_index=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    scores.to_parquet(folder / "scores.parquet", index=False)
    spec = spec or {"module": "fusion", "strategy": "coop", "attention": "v2"}
    (folder / "run_spec.json").write_text(json.dumps({"run": folder.name, **spec}))
    return folder


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    weak = frames_of(SUBSETS, 0.8, seed=1)
    strong = frames_of(SUBSETS, 3.0, seed=2)
    return (
        write_report(root / "weak", weak, perturbed=weak.assign(p_fake=weak["p_fake"] * 0.5)),
        write_report(root / "strong", strong, spec={"module": "lare", "strategy": "cocoop",
                                                    "attention": "v1"},
                     perturbed=strong.assign(p_fake=np.sqrt(strong["p_fake"]))),
    )


# --------------------------------------------------------------------------- the table


def test_table_rows_are_runs_and_columns_are_df40_groups_then_the_mean(two_reports):
    runs = load_runs(list(two_reports))
    table = build_table(runs, n_resamples=0)
    assert table.values.index.names == ["module", "strategy", "attention", "run"]
    assert list(table.values.index) == [("fusion", "coop", "v2", "weak"),
                                        ("lare", "cocoop", "v1", "strong")]
    assert list(table.values.columns) == [
        (KNOWN_CDF, "DiT_cdf"), (KNOWN_CDF, "StyleGAN2_cdf"),
        (UNSEEN, "heygen"), (UNSEEN, "whichfaceisreal"), (UNSEEN, "MidJourney"),
        (OTHER, "my_own_set"), MEAN_COLUMN,
    ]
    for run in runs:
        row = table.values.loc[run.key]
        for subset, metrics in run.metrics["subsets"].items():
            group = next(g for g, s in table.values.columns if s == subset)
            assert row[(group, subset)] == pytest.approx(metrics["auc"])
        assert row[MEAN_COLUMN] == pytest.approx(run.metrics["mean"]["auc"])


def test_best_per_column_follows_the_metric_direction(two_reports):
    runs = load_runs(list(two_reports))
    for metric, better in (("auc", max), ("eer", min)):
        table = build_table(runs, metric, n_resamples=0)
        best = table.best()
        for column in table.values.columns:
            winner = better(table.values[column])
            assert list(best[column]) == [v == winner for v in table.values[column]], (metric, column)
    assert build_table(runs, "n_real", n_resamples=0).best().to_numpy().sum() == 0  # counts


def test_a_subset_missing_from_one_run_is_a_gap_and_a_note(tmp_path):
    full = write_report(tmp_path / "full", frames_of(("DiT_cdf", "heygen"), 2.0, seed=3))
    part = write_report(tmp_path / "part", frames_of(("DiT_cdf",), 2.0, seed=4))
    table = build_table(load_runs([full, part]), n_resamples=50)
    key = ("fusion", "coop", "v2", "part")
    assert np.isnan(table.values.loc[key, (UNSEEN, "heygen")])
    assert np.isnan(table.low.loc[key, (UNSEEN, "heygen")])
    assert table.values.loc[key, MEAN_COLUMN] == table.values.loc[key, (KNOWN_CDF, "DiT_cdf")]
    assert any("part: mean over 1 of 2 subsets" in note for note in table.notes)


# --------------------------------------------------------------------------- bootstrap


def test_weighted_auc_equals_sklearn_with_the_same_sample_weights():
    rng = np.random.default_rng(5)
    n = 600
    videos = rng.integers(0, 80, n)
    labels = videos % 2
    scores = np.round(rng.random(n) + 0.4 * labels, 2)  # rounding makes ties across classes
    data = sort_scores(labels, scores, videos)
    counts = rng.integers(0, 4, size=(5, data.n_videos))
    codes = video_codes(videos, n)
    expected = [roc_auc_score(labels, scores, sample_weight=c[codes]) for c in counts]
    np.testing.assert_allclose(weighted_auc(data, counts), expected, rtol=1e-12)
    assert weighted_auc(data, np.ones((1, data.n_videos), dtype=np.int64))[0] == pytest.approx(
        roc_auc_score(labels, scores))


def test_interval_of_a_perfect_separator_is_one_one():
    labels = np.repeat([0, 1], 40)
    scores = np.r_[np.linspace(0.0, 0.4, 40), np.linspace(0.6, 1.0, 40)]
    interval = percentile_interval(bootstrap_auc(labels, scores, np.arange(80) // 4, n_resamples=500))
    assert (interval.low, interval.high) == (1.0, 1.0)


def test_interval_of_random_scores_contains_one_half():
    rng = np.random.default_rng(6)
    videos = np.arange(400) // 4
    labels = videos % 2
    interval = percentile_interval(bootstrap_auc(labels, rng.random(400), videos, n_resamples=1000))
    assert interval.low < 0.5 < interval.high
    assert interval.high - interval.low < 0.35  # an interval, not the whole range


def test_bootstrap_resamples_videos_not_frames():
    """20 videos of 30 identical frames: the frames hold no more information than the videos.
    Resampling videos gives exactly the interval of one row per video; resampling frames (each
    frame its own video) would pretend 600 independent draws and give a much narrower one."""
    rng = np.random.default_rng(7)
    video_labels = np.repeat([0, 1], 10)
    video_scores = rng.normal(video_labels * 1.0, 1.0)
    per_frame = np.repeat(np.arange(20), 30)
    labels, scores = video_labels[per_frame], video_scores[per_frame]

    by_video = percentile_interval(bootstrap_auc(labels, scores, per_frame, n_resamples=400, seed=1))
    one_row = percentile_interval(bootstrap_auc(video_labels, video_scores, np.arange(20),
                                                n_resamples=400, seed=1))
    by_frame = percentile_interval(bootstrap_auc(labels, scores, None, n_resamples=400, seed=1))
    assert (by_video.low, by_video.high) == pytest.approx((one_row.low, one_row.high))
    assert (by_video.high - by_video.low) > 3 * (by_frame.high - by_frame.low)


def test_table_intervals_surround_the_values_and_are_reproducible(two_reports):
    runs = load_runs(list(two_reports))
    first = build_table(runs, n_resamples=200, seed=3)
    again = build_table(runs, n_resamples=200, seed=3)
    pd.testing.assert_frame_equal(first.low, again.low)
    assert (first.low.to_numpy() <= first.values.to_numpy() + 1e-12).all()
    assert (first.values.to_numpy() <= first.high.to_numpy() + 1e-12).all()
    assert build_table(runs, "ap", n_resamples=200).low is None  # intervals are for AUC only


# --------------------------------------------------------------------------- outputs


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def test_outputs_markdown_csv_booktabs_latex_and_self_contained_html(two_reports, tmp_path):
    weak, strong = two_reports
    hostile = write_report(tmp_path / "x<script>alert(1)</script>_run",
                           frames_of(SUBSETS, 1.5, seed=8))
    out = run_compare([weak, strong, hostile], out_dir=tmp_path / "out", n_resamples=100,
                      quiet=True)

    latex = out.latex.read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert latex.count(rule) == 1, rule
    assert r"\multicolumn{2}{c}{known methods, Celeb-DF domain}" in latex
    assert r"DiT\_cdf" in latex and r"\bfseries" in latex and r"\scriptsize" in latex
    assert out.robustness_latex is not None and r"\toprule" in out.robustness_latex.read_text()

    html = out.html.read_text()
    parser = _Links()
    parser.feed(html)
    assert parser.links and all(link.startswith("data:") for link in parser.links), parser.links
    assert "script" not in parser.tags  # the run name is text, not markup
    assert "x&lt;script&gt;alert(1)&lt;/script&gt;_run" in html
    assert "test-jpeg50 (jpeg=50)" in html  # the robustness table

    markdown = out.markdown.read_text()
    assert "| module | strategy | attention | run | DiT_cdf |" in markdown
    assert "![" in markdown and (out.markdown.parent / "roc.png").is_file()
    assert markdown.count("**") >= 2 * 7  # one best cell per column

    csv = pd.read_csv(out.csv)
    assert len(csv) == 3 * (len(SUBSETS) + 1)
    assert {"module", "run", "group", "subset", "value", "ci_low", "ci_high", "best"} <= set(csv.columns)
    assert csv.groupby("subset")["best"].sum().eq(1).all()


def test_run_folder_finds_its_report_through_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = write_report(tmp_path / "elsewhere" / "reports" / "r1", frames_of(SUBSETS, 1.0, seed=9))
    (report / "run_spec.json").unlink()
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    record = {"module": "clipping", "strategy": "cocoop", "attention": "v2",
              "config": {"paths": {"reports": "elsewhere/reports"}}, "store_fingerprint": {}}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    (run, ) = load_runs([Path("runs/r1")])
    assert run.key == ("clipping", "cocoop", "v2", "r1")
    assert run.report_dir == Path("elsewhere/reports/r1")



def test_names_reach_the_csv_escaped_and_the_console_as_text(two_reports, tmp_path, capsys):
    """A run named like a formula is a text cell (OWASP: a leading '), and rich markup in a
    run or --out name is printed as it is, not parsed (it was an internal error)."""
    weak, _ = two_reports
    hostile = write_report(tmp_path / "=HYPERLINK(1)[bold]x", frames_of(SUBSETS, 1.5, seed=8),
                           spec={"module": "@SUM(A1)", "strategy": "coop", "attention": "v2"})
    out_dir = tmp_path / "out_[/y]"
    out = run_compare([weak, hostile], out_dir=out_dir, n_resamples=20, quiet=False)
    csv = pd.read_csv(out.csv)
    assert set(csv["run"]) == {weak.name, "'=HYPERLINK(1)[bold]x"}
    assert "'@SUM(A1)" in set(csv["module"])
    assert not csv.map(lambda v: isinstance(v, str) and v[:1] in "=+-@\t\r").any().any()
    assert "out_[/y]" in capsys.readouterr().out.replace("\n", "")


# --------------------------------------------------------------------------- bad input


def _bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, text the one-line error must contain)."""
    good = write_report(root / "good", frames_of(("DiT_cdf",), 1.0, seed=10))
    not_json = write_report(root / "not_json", frames_of(("DiT_cdf",), 1.0, seed=10))
    (not_json / "metrics.json").write_text("{ not json")
    no_subsets = write_report(root / "no_subsets", frames_of(("DiT_cdf",), 1.0, seed=10))
    (no_subsets / "metrics.json").write_text(json.dumps({"run": "x"}))
    no_scores = write_report(root / "no_scores", frames_of(("DiT_cdf",), 1.0, seed=10))
    (no_scores / "scores.parquet").unlink()
    bad_parquet = write_report(root / "bad_parquet", frames_of(("DiT_cdf",), 1.0, seed=10))
    (bad_parquet / "scores.parquet").write_bytes(b"PAR1 broken")
    no_video = write_report(root / "no_video", frames_of(("DiT_cdf",), 1.0, seed=10))
    pd.read_parquet(no_video / "scores.parquet").drop(columns="video").to_parquet(
        no_video / "scores.parquet")
    orphan_run = root / "runs" / "orphan"
    orphan_run.mkdir(parents=True)
    (orphan_run / "run.yaml").write_text(yaml.safe_dump(
        {"config": {"paths": {"reports": str(root / "nowhere")}}, "store_fingerprint": {}}))
    broken_run = root / "runs" / "broken"
    broken_run.mkdir(parents=True)
    (broken_run / "run.yaml").write_text("config: [unclosed")
    return {
        "missing": ([str(root / "absent")], "absent: no such folder"),
        "neither": ([str(root / "runs")], "neither a report folder"),
        "not_json": ([str(not_json)], "metrics.json: unreadable"),
        "no_subsets": ([str(no_subsets)], "metrics.json: no 'subsets' table"),
        "no_scores": ([str(no_scores)], "scores.parquet: missing"),
        "bad_parquet": ([str(bad_parquet)], "scores.parquet: unreadable parquet"),
        "no_video": ([str(no_video)], "lacks column(s) video"),
        "orphan_run": ([str(orphan_run)], "its report"),
        "broken_run": ([str(broken_run)], "run.yaml: not valid YAML"),
        "metric": ([str(good), "--metric", "f1"], "--metric f1: not in these metrics.json"),
        "twice": ([str(good), str(good) + "/"], "pass each run once"),
        "bootstrap": ([str(good), "--bootstrap", "-5"], "--bootstrap -5"),
        "seed": ([str(good), "--seed", "-1"], "--seed -1: must be 0 or more"),
    }


def test_bad_inputs_exit_2_with_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    for name, (args, expected) in _bad_inputs(tmp_path).items():
        monkeypatch.setattr(sys, "argv", ["clare", "compare", *args, "--out", str(tmp_path / "o")])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert expected in err, (name, err)
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_bench_compare_smoke(tmp_path):
    """`python -m benchmarks.bench_compare` at --smoke size: its ratio is the quotient it reports, and
    both ways of computing the resampled AUCs agree."""
    import subprocess

    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_compare", "--smoke", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert payload["benchmark"] == "bench_compare" and payload["params"]["seed"] == 0
    assert results["max_abs_diff_vs_sklearn"] < 1e-12
    assert results["speedup_vs_sklearn"] == pytest.approx(
        results["sklearn_per_resample_s"] / results["clare_per_resample_s"])
    assert results["clare_per_resample_s"] == pytest.approx(
        results["clare_bootstrap_s"] / payload["params"]["resamples"])
    assert str(out) in done.stdout
