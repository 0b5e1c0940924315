"""`clare compare`: the DF40-shaped table, video bootstrap intervals (one draw per distinct video
for all subsets), the paired test behind "best", comparability warnings, the outputs, bad input.

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
    LOWER_BOUND,
    NO_INTERVAL,
    PERCENTILE,
    bootstrap_auc,
    distinct_videos,
    percentile_interval,
    resample_runs,
    separates,
    sort_scores,
    video_codes,
    weighted_auc,
)
from clare.compare import load_runs, run_compare
from clare.compare_table import (
    KNOWN_CDF,
    MEAN_COLUMN,
    OTHER,
    UNSEEN,
    CompareError,
    build_table,
    cell_text,
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


def shared_reals(subsets, seed: int, videos: int = 20, per_video: int = 3, shift: float = 1.0,
                 reals: dict | None = None) -> pd.DataFrame:
    """DF40-shaped scores: every subset lists the same `videos` real videos (under ids of its
    own, pointing at the same frame files with the same scores) and `videos` fakes of its own.
    `reals`: the real scores {(video, frame): score} to reuse (a second run on the same data)."""
    rng = np.random.default_rng(seed)
    if reals is None:
        centres = rng.normal(0.0, 1.0, videos)
        reals = {(v, f): float(centres[v] + rng.normal(0, 0.5))
                 for v in range(videos) for f in range(per_video)}
    rows = []
    for s, subset in enumerate(subsets):
        for (v, f), score in reals.items():
            rows.append({"subset": subset, "label": 0, "video": f"{subset}_Real/v{v}",
                         "path": f"celeb/real/v{v}/{f}.png", "p_fake": score, "store": "test"})
        for v in range(videos):
            centre = rng.normal(shift * (1 + s / 4), 1.0)
            for f in range(per_video):
                rows.append({"subset": subset, "label": 1, "video": f"{subset}_Fake/v{v}",
                             "path": f"{subset}/fake/v{v}/{f}.png",
                             "p_fake": float(centre + rng.normal(0, 0.5)), "store": "test"})
    return pd.DataFrame(rows)


def write_report(folder: Path, frames: pd.DataFrame, *, spec: dict | None = None,
                 perturbed: pd.DataFrame | None = None, extra: dict | None = None) -> Path:
    """A report folder as `clare eval` writes it: metrics.json, scores.parquet, run_spec.json;
    `extra`: more top-level keys of metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    subsets = per_subset(frames)
    metrics = {"run": folder.name, "subsets": subsets, "mean": summarize(subsets), "robustness": {},
               **(extra or {})}
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
                                        ("lare", "—", "v1", "strong")]  # lare has no prompts
    assert list(table.values.columns) == [
        (f"{KNOWN_CDF}: EFS", "DiT_cdf"), (f"{KNOWN_CDF}: EFS", "StyleGAN2_cdf"),
        (f"{UNSEEN}: FR", "heygen"), (f"{UNSEEN}: EFS", "whichfaceisreal"), (f"{UNSEEN}: EFS", "MidJourney"),
        (OTHER, "my_own_set"), MEAN_COLUMN,
    ]
    for run in runs:
        row = table.values.loc[run.key]
        for subset, metrics in run.metrics["subsets"].items():
            group = next(g for g, s in table.values.columns if s == subset)
            assert row[(group, subset)] == pytest.approx(metrics["auc"])
        assert row[MEAN_COLUMN] == pytest.approx(run.metrics["mean"]["auc"])


def test_best_is_bold_only_where_the_paired_test_separates_it(tmp_path):
    """A run far ahead on 20 videos per class is best in every column; a run and a copy of it
    with a negligible change are never separated; without a test (no bootstrap, another
    metric) nothing is bold, and the caption says why."""
    columns = ("DiT_cdf", "heygen")
    weak = write_report(tmp_path / "weak", frames_of(columns, 0.3, seed=21, videos=40))
    strong = write_report(tmp_path / "strong", frames_of(columns, 4.0, seed=22, videos=40))
    table = build_table(load_runs([weak, strong]), n_resamples=300)
    best = table.best()
    assert best.loc[("fusion", "coop", "v2", "strong")].all()
    assert not best.loc[("fusion", "coop", "v2", "weak")].any()

    same = frames_of(columns, 1.0, seed=23, videos=40)
    copy = same.assign(p_fake=same["p_fake"] + np.random.default_rng(0).normal(0, 1e-3, len(same)))
    twins = load_runs([write_report(tmp_path / "a", same), write_report(tmp_path / "b", copy)])
    table = build_table(twins, n_resamples=300)
    assert (table.values.iloc[0] != table.values.iloc[1]).any()  # one of them is higher...
    assert not table.best().to_numpy().any()  # ...but not separated
    for metric, bootstrap in (("auc", 0), ("eer", 300), ("ap", 300)):
        assert not build_table(load_runs([weak, strong]), metric,
                               n_resamples=bootstrap).best().to_numpy().any(), metric


def test_a_subset_missing_from_one_run_is_a_gap_and_a_note(tmp_path):
    full = write_report(tmp_path / "full", frames_of(("DiT_cdf", "heygen"), 2.0, seed=3))
    part = write_report(tmp_path / "part", frames_of(("DiT_cdf",), 2.0, seed=4))
    table = build_table(load_runs([full, part]), n_resamples=50)
    key = ("fusion", "coop", "v2", "part")
    assert np.isnan(table.values.loc[key, (f"{UNSEEN}: FR", "heygen")])
    assert np.isnan(table.low.loc[key, (f"{UNSEEN}: FR", "heygen")])
    assert table.values.loc[key, MEAN_COLUMN] == table.values.loc[key, (f"{KNOWN_CDF}: EFS", "DiT_cdf")]
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


def test_no_zero_width_interval_at_auc_one_or_one_video_per_class(tmp_path):
    """AUC 1.0 gets an exact one-sided bound with its video count, one video per class no
    interval; the percentile method would have given [1.000, 1.000] and [v, v]."""
    labels = np.repeat([0, 1], 40)
    scores = np.r_[np.linspace(0.0, 0.4, 40), np.linspace(0.6, 1.0, 40)]
    flat = percentile_interval(bootstrap_auc(labels, scores, np.arange(80) // 4, n_resamples=200))
    assert (flat.low, flat.high) == (1.0, 1.0)  # why the bound is needed

    perfect = frames_of(("DiT_cdf",), 40.0, seed=30, videos=40)  # 20 videos per class
    one_each = pd.DataFrame({"subset": "heygen", "label": [0, 0, 0, 1, 1, 1],  # AUC 6/9
                             "video": ["heygen/v0"] * 3 + ["heygen/v1"] * 3,
                             "p_fake": [0.2, 0.5, 0.8, 0.3, 0.6, 0.9], "store": "test"})
    report = write_report(tmp_path / "edge", pd.concat([perfect, one_each], ignore_index=True))
    table = build_table(load_runs([report]), n_resamples=200)
    key = table.values.index[0]
    dit, heygen = (f"{KNOWN_CDF}: EFS", "DiT_cdf"), (f"{UNSEEN}: FR", "heygen")
    assert table.values.loc[key, dit] == 1.0
    assert table.kind.loc[key, dit] == LOWER_BOUND
    assert table.low.loc[key, dit] == pytest.approx(0.05 ** (1 / 20))  # 0.861
    assert cell_text(table, key, dit) == "1.000 (≥ 0.861, 20 videos/class)"
    assert table.kind.loc[key, heygen] == NO_INTERVAL
    assert cell_text(table, key, heygen).endswith("(no interval, 1 video/class)")
    assert "$\\geq$ 0.861" in cell_text(table, key, dit, "latex")
    percentile = table.kind.to_numpy() == PERCENTILE
    assert (table.high.to_numpy()[percentile] > table.low.to_numpy()[percentile]).all()

    both_perfect = write_report(tmp_path / "perfect", frames_of(("DiT_cdf", "heygen"), 40.0, seed=32,
                                                                 videos=8))
    table = build_table(load_runs([both_perfect]), n_resamples=100)
    mean = table.values.index[0], MEAN_COLUMN
    assert table.kind.loc[mean] == LOWER_BOUND and table.low.loc[mean] == pytest.approx(0.05 ** 0.25)


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


def test_a_video_is_one_draw_whatever_its_ids_in_each_list():
    ids = np.array(["a_Real/v1", "a_Real/v1", "b_Real/v1", "b_Real/v2", None, None])
    files = np.array(["r/v1/0.png", "r/v1/1.png", "r/v1/1.png", "r/v2/0.png", "x/0.png", "x/1.png"])
    linked = distinct_videos(ids, files)
    assert linked[0] == linked[1] == linked[2] != linked[3]  # one shared file links the ids
    assert len(set(linked[4:])) == 2  # loose files without ids stay apart, though in one folder
    by_id = distinct_videos(np.array(["v1", "v1", "v2"]))
    assert by_id[0] == by_id[1] != by_id[2]  # without paths: equal ids are one video


def _joint_reference_width(frames: pd.DataFrame, n_resamples: int, seed: int) -> float:
    """An independent joint bootstrap: per resample, draw the shared real folders once for all
    subsets and each subset's fakes, weight the frames, average roc_auc_score over subsets."""
    rng = np.random.default_rng(seed)
    folders, folder = np.unique(frames["path"].str.rsplit("/", n=1).str[0], return_inverse=True)
    labels, subsets = frames["label"].to_numpy(), frames["subset"].to_numpy()
    pools = [np.unique(folder[labels == 0])] + [np.unique(folder[(labels == 1) & (subsets == s)])
                                                for s in np.unique(subsets)]
    rows = [np.flatnonzero(subsets == s) for s in np.unique(subsets)]
    means = []
    for _ in range(n_resamples):
        drawn = np.concatenate([rng.choice(pool, len(pool)) for pool in pools])
        weight = np.bincount(drawn, minlength=len(folders))[folder]
        means.append(np.mean([roc_auc_score(labels[r], frames["p_fake"].to_numpy()[r],
                                            sample_weight=weight[r]) for r in rows]))
    low, high = np.percentile(means, [2.5, 97.5])
    return float(high - low)


def test_mean_interval_resamples_shared_reals_once_for_all_subsets(tmp_path):
    """Six lists naming the same 20 real videos (under ids of their own): the mean's interval
    is within 20 % of an independent joint bootstrap's width; resampling each subset on its
    own (the old way) is far narrower, so this test tells the two apart."""
    subsets = [f"m{i}_cdf" for i in range(6)]
    frames = shared_reals(subsets, seed=40)
    table = build_table(load_runs([write_report(tmp_path / "shared", frames)]), n_resamples=500)
    key = table.values.index[0]
    width = table.high.loc[key, MEAN_COLUMN] - table.low.loc[key, MEAN_COLUMN]
    reference = _joint_reference_width(frames, 300, seed=1)
    assert abs(width / reference - 1) <= 0.2, (width, reference)

    independent = np.mean([bootstrap_auc(rows["label"].to_numpy(), rows["p_fake"].to_numpy(),
                                         rows["video"].to_numpy(), n_resamples=500, seed=[1, i])
                           for i, (_s, rows) in enumerate(frames.groupby("subset"))], axis=0)
    old = percentile_interval(independent)
    assert old.high - old.low < 0.8 * reference
    # the per-subset intervals come from the same draws and stay what one subset alone gives
    alone = percentile_interval(resample_runs([frames[frames["subset"] == "m0_cdf"]], ["m0_cdf"],
                                              n_resamples=500, seed=0)[0].resampled["m0_cdf"])
    column = (KNOWN_CDF, "m0_cdf")
    assert table.high.loc[key, column] - table.low.loc[key, column] == pytest.approx(
        alone.high - alone.low, rel=0.2)


def test_paired_test_false_positive_rate_under_a_null_and_its_power():
    """Two runs of equal true AUC on the same 20 + 20 videos (each adds its own noise to the
    same scores): the column's best is separated from the runner-up in <= 6 % of 300 simulated
    pairs. A run clearly better is separated in most pairs, so the test is not just silent."""
    def marked(noise: tuple[float, float], replicates: int, seed: int, shift: float) -> float:
        hits = []
        for replicate in range(replicates):
            rng = np.random.default_rng([seed, replicate])
            base = shared_reals(["m_cdf"], seed=seed * 1000 + replicate, per_video=2, shift=shift)
            runs = [base.assign(p_fake=base["p_fake"] + rng.normal(0, sd, len(base))) for sd in noise]
            first, second = resample_runs(runs, ["m_cdf"], n_resamples=200, seed=replicate,
                                          shared_only=True)
            observed = first.observed["m_cdf"] - second.observed["m_cdf"]
            sign = 1.0 if observed >= 0 else -1.0  # best of the column minus the runner-up
            hits.append(separates(sign * observed, sign * (first.resampled["m_cdf"]
                                                           - second.resampled["m_cdf"]),
                                  first.videos["m_cdf"]))
        return float(np.mean(hits))

    assert marked((0.7, 0.7), 300, seed=5, shift=1.0) <= 0.06
    assert marked((0.0, 3.0), 40, seed=6, shift=3.0) >= 0.8  # AUC about 0.98 against 0.75


def test_paired_runs_share_their_draws_and_only_their_shared_videos():
    """Two runs are resampled on the same draws (identical scores give identical resamples),
    over the videos both scored (a fake video one run lacks leaves the other's AUC too)."""
    subsets = ["a_cdf", "b_cdf"]
    frames = shared_reals(subsets, seed=60)
    first, second = resample_runs([frames, frames.copy()], subsets, n_resamples=50, seed=0,
                                  shared_only=True)
    for subset in subsets:
        np.testing.assert_array_equal(first.resampled[subset], second.resampled[subset])
        assert first.resampled[subset].std() > 0

    fewer = frames[frames["video"] != "a_cdf_Fake/v0"]
    first, _second = resample_runs([frames, fewer], subsets, n_resamples=10, seed=0,
                                   shared_only=True)
    rows = fewer[fewer["subset"] == "a_cdf"]
    assert first.observed["a_cdf"] == pytest.approx(roc_auc_score(rows["label"], rows["p_fake"]))


def test_comparability_warnings_one_line_per_problem(tmp_path):
    subsets = ("DiT_cdf", "heygen")
    frames = frames_of(subsets, 1.0, seed=50)
    stores = {"test": {"fingerprint_sha256": "a" * 64, "failed": 0}}
    same = [write_report(tmp_path / name, frames, extra={"stores": stores, "clare_version": "0.3.0"})
            for name in ("one", "two")]
    assert not any(n.startswith("warning") for n in build_table(load_runs(same), n_resamples=0).notes)

    other = frames[frames["video"] != "heygen/v3"]  # one video fewer in heygen
    moved = write_report(tmp_path / "moved", other,
                         extra={"stores": {"test": {"fingerprint_sha256": "b" * 64}}})
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["subsets"]["heygen"]["n_failed"] = 3
    (moved / "metrics.json").write_text(json.dumps(metrics))
    warnings = [n for n in build_table(load_runs([same[0], moved]), n_resamples=0).notes
                if n.startswith("warning")]
    assert len(warnings) == 4 and all("\n" not in w for w in warnings), warnings
    stores_line, membership, failed, version = warnings
    assert "different test stores" in stores_line and "aaaaaaaaaaaa" in stores_line and "bbbbbbbbbbbb" in stores_line
    assert "1 subset(s)" in membership and "heygen (one 12, moved 11)" in membership
    assert "failed rows differ (one 0, moved 3)" in failed
    assert "one 0.3.0, moved unrecorded" in version


def test_out_refuses_a_report_folder_of_clare_eval(tmp_path, clare):
    report = write_report(tmp_path / "r", frames_of(("DiT_cdf",), 1.0, seed=51))
    before = sorted(p.name for p in report.iterdir())
    code, _out, err = clare("compare", report, "--out", report)
    assert code == 2 and err.count("\n") == 1
    assert f"--out {report}: a report folder of `clare eval`" in err
    assert sorted(p.name for p in report.iterdir()) == before
    with pytest.raises(CompareError):
        run_compare([report], out_dir=report, n_resamples=0, quiet=True)


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
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{table}", r"\end{table}",
                 r"\caption{AUC per test subset; [95 \% bootstrap interval"):
        assert latex.count(rule) == 1, rule
    assert r"\multicolumn{2}{c}{known methods, Celeb-DF domain: EFS}" in latex
    # rules under the groups: known EFS (columns 5-6), unseen FR (7), unseen EFS (8-9), other
    # (10); none under the mean
    assert ("\\cmidrule(lr){5-6} \\cmidrule(lr){7-7} \\cmidrule(lr){8-9} "
            "\\cmidrule(lr){10-10}\n") in latex
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
    assert "paired video bootstrap z-test" in markdown  # the table says which test marks best
    bold = markdown.count("**") // 2
    assert 1 <= bold <= 7  # at most one best cell per column, and only where separated

    csv = pd.read_csv(out.csv)
    assert len(csv) == 3 * (len(SUBSETS) + 1)
    assert {"module", "run", "group", "subset", "value", "ci_low", "ci_high", "best"} <= set(csv.columns)
    assert csv.groupby("subset")["best"].sum().le(1).all() and csv["best"].sum() == bold


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
    assert run.key == ("clipping", "cocoop", "—", "r1")  # clipping uses no LaRE attention
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


def test_bad_inputs_exit_2_with_one_line_naming_the_path(tmp_path, clare):
    for name, (args, expected) in _bad_inputs(tmp_path).items():
        code, _out, err = clare("compare", *args, "--out", tmp_path / "o")
        assert code == 2, (name, err)
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
    coverage = {k: v for k, v in results.items() if "coverage" in k}
    assert {"coverage_per_subset", "coverage_mean_shared_reals", "coverage_per_subset_before",
            "coverage_paired_false_positive_rate"} <= set(coverage)
    assert all(0.0 <= coverage[k] <= 1.0 for k in coverage if "width" not in k)
    assert payload["params"]["replicates"] > 0 and payload["params"]["paired_replicates"] > 0
    assert str(out) in done.stdout


def test_columns_are_grouped_by_domain_then_df40_family(tmp_path):
    subsets = ("DiT_cdf", "simswap_cdf", "fomm_ff", "simswap_ff", "e4e", "deepfacelab", "mine")
    report = write_report(tmp_path / "families", frames_of(subsets, 2.0, seed=5))
    table = build_table(load_runs([report]), n_resamples=0)
    assert list(table.values.columns) == [
        ("known methods, Celeb-DF domain: FS", "simswap_cdf"),
        ("known methods, Celeb-DF domain: EFS", "DiT_cdf"),
        ("known methods, FF++ domain: FS", "simswap_ff"),
        ("known methods, FF++ domain: FR", "fomm_ff"),
        ("unseen methods: FS", "deepfacelab"),
        ("unseen methods: FE", "e4e"),
        (OTHER, "mine"), MEAN_COLUMN,
    ]
