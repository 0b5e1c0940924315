"""`clare eval --report`: scores, metrics per subset, robustness, ROC for dvc, store checks.

One module-scoped world: tiny models, a train store, a test store with a broken image and a
single-class subset, its JPEG-50 copy, a 10-step fit and one evaluation with the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers_extract import make_config, make_image_tree, write_index
from sklearn.metrics import roc_auc_score

from clare.cache.store import FeatureStore
from clare.config import Config
from clare.errors import ClareError, StoreError
from clare.runs import load_detector, read_run
from clare.stages.evaluate import SCORE_COLUMNS, run_eval, score_store
from clare.stages.extract import run_extract
from clare.stages.fit import run_fit

BROKEN = "alpha/real/alpha_real_broken/000.png"


@dataclass
class World:
    root: Path
    cfg: Config
    run_dir: Path
    out_dir: Path
    test_manifest: pd.DataFrame


def _no_nan_json(path: Path) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path.name} holds {constant}, which is not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> World:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    index = make_image_tree(data, 24, seed=3)
    cfg = make_config(
        root / "work", tiny_models_dir, data, index=index,
        fit__max_steps=10, fit__batch_size=8, fit__val_fraction=0.3, fit__device="cpu",
        eval__device="cpu", eval__perturbations=["jpeg=50"], eval__lare_examples=2,
    )
    # Test index: beta keeps only its fakes (a single-class subset), alpha gains an image that
    # cannot be decoded (a failed row).
    (data / BROKEN).parent.mkdir(parents=True)
    (data / BROKEN).write_bytes(b"this is not a PNG file")
    broken = pd.DataFrame([{"path": BROKEN, "subset": "alpha", "label": 0,
                            "video": "alpha_real_broken", "frame": 0, "split": "test"}])
    test_index = pd.concat(
        [index[~((index["subset"] == "beta") & (index["label"] == 0))], broken], ignore_index=True
    )
    write_index(test_index, cfg.data.index_dir, "test")

    run_extract(cfg, split="train", quiet=True)
    run_extract(cfg, split="test", quiet=True)
    run_extract(cfg, split="test", perturb="jpeg=50", quiet=True)
    fit = run_fit(cfg, quiet=True)
    out_dir = run_eval(cfg, report=True, quiet=True)
    # Entries with their row's status: the per-image table eval's scores are checked against.
    entries = FeatureStore(cfg.paths.stores / "test").entry_rows(view=0)
    return World(root, cfg, fit.run_dir, out_dir, entries)


def _scores(world: World) -> pd.DataFrame:
    return pd.read_parquet(world.out_dir / "scores.parquet")


# --------------------------------------------------------------------------- outputs


def test_writes_every_output_in_the_run_report_folder(world: World) -> None:
    assert world.out_dir == world.cfg.paths.reports / world.run_dir.name
    for name in ("metrics.json", "scores.parquet", "roc.json", "report.md", "report.html"):
        assert (world.out_dir / name).is_file(), name
    assert (world.out_dir / "figures" / "lare.png").is_file()


def test_scores_hold_one_row_per_ok_test_row(world: World) -> None:
    scores = _scores(world)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    clean = scores[scores["store"] == "test"]
    ok = world.test_manifest[world.test_manifest["status"] == "ok"]
    assert BROKEN not in set(ok["path"])  # the fixture did produce a failed row
    assert sorted(clean["row"]) == sorted(ok["row"])
    merged = clean.merge(ok, on="row", suffixes=("", "_manifest"))
    for column in ("path", "subset", "label", "video"):
        assert (merged[column].astype(str) == merged[f"{column}_manifest"].astype(str)).all(), column
    assert np.isfinite(scores["p_fake"]).all()
    assert ((scores["p_fake"] >= 0) & (scores["p_fake"] <= 1)).all()


def test_metrics_match_sklearn_on_the_written_scores(world: World) -> None:
    metrics = _no_nan_json(world.out_dir / "metrics.json")
    assert metrics["run"] == world.run_dir.name
    assert list(metrics["subsets"]) == ["alpha", "beta"]
    clean = _scores(world).query("store == 'test'")
    alpha = clean[clean["subset"] == "alpha"]
    assert metrics["subsets"]["alpha"]["auc"] == pytest.approx(
        roc_auc_score(alpha["label"], alpha["p_fake"]), abs=1e-12
    )
    per_video = alpha.groupby("video").agg(label=("label", "first"), p=("p_fake", "mean"))
    assert metrics["subsets"]["alpha"]["video_auc"] == pytest.approx(
        roc_auc_score(per_video["label"], per_video["p"]), abs=1e-12
    )
    assert metrics["subsets"]["alpha"]["n_real"] == int((alpha["label"] == 0).sum())
    assert metrics["subsets"]["alpha"]["n_failed"] == 1
    assert metrics["subsets"]["beta"]["n_failed"] == 0
    assert metrics["stores"]["test"]["failed"] == 1
    assert metrics["stores"]["test"]["rows"] == len(world.test_manifest)
    assert metrics["mean"]["n_failed"] == 1


def test_single_class_subset_has_no_auc_and_says_why(world: World) -> None:
    metrics = _no_nan_json(world.out_dir / "metrics.json")
    beta = metrics["subsets"]["beta"]
    assert beta["n_real"] == 0 and beta["n_fake"] > 0
    assert beta["auc"] is None and beta["video_auc"] is None
    assert "single class" in beta["notes"]["auc"]
    assert beta["acc"] is not None  # accuracy at 0.5 is still defined
    assert metrics["mean"]["auc_n_subsets"] == 1
    assert metrics["mean"]["auc"] == pytest.approx(metrics["subsets"]["alpha"]["auc"])


def test_perturbed_store_is_reported_under_robustness(world: World) -> None:
    metrics = _no_nan_json(world.out_dir / "metrics.json")
    assert list(metrics["robustness"]) == ["test-jpeg50"]
    entry = metrics["robustness"]["test-jpeg50"]
    assert entry["perturb"] == "jpeg=50"
    assert set(entry["subsets"]) == {"alpha", "beta"}
    assert entry["mean"]["auc_n_subsets"] == 1
    assert set(metrics["stores"]) == {"test", "test-jpeg50"}
    scores = _scores(world)
    jpeg = scores[scores["store"] == "test-jpeg50"].set_index("row")["p_fake"]
    clean = scores[scores["store"] == "test"].set_index("row")["p_fake"]
    assert sorted(jpeg.index) == sorted(clean.index)
    # Scored from its own (compressed) features, not a copy of the clean scores.
    assert not np.allclose(jpeg.sort_index().to_numpy(), clean.sort_index().to_numpy())
    alpha = scores[(scores["store"] == "test-jpeg50") & (scores["subset"] == "alpha")]
    assert entry["subsets"]["alpha"]["auc"] == pytest.approx(
        roc_auc_score(alpha["label"], alpha["p_fake"]), abs=1e-12
    )


def test_roc_json_is_a_flat_list_for_dvc_plots(world: World) -> None:
    points = _no_nan_json(world.out_dir / "roc.json")
    assert isinstance(points, list) and points
    assert all(set(p) == {"subset", "fpr", "tpr", "threshold"} for p in points)
    assert {p["subset"] for p in points} == {"alpha"}  # beta holds one class: no curve
    fpr = [p["fpr"] for p in points]
    tpr = [p["tpr"] for p in points]
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)


def test_report_names_every_subset_and_the_perturbation(world: World) -> None:
    markdown = (world.out_dir / "report.md").read_text()
    page = (world.out_dir / "report.html").read_text()
    for text in (markdown, page):
        assert "alpha" in text and "beta" in text
        assert "jpeg=50" in text
        assert world.run_dir.name in text
    assert "single class" in markdown


def test_html_links_nothing_outside_the_file(world: World) -> None:
    page = (world.out_dir / "report.html").read_text()
    links = re.findall(r"""\b(?:src|href|srcset|action)\s*=\s*["']([^"']*)["']""", page)
    assert any(link.startswith("data:image/png;base64,") for link in links)
    assert all(link.startswith(("data:", "#")) for link in links), [
        link[:60] for link in links if not link.startswith(("data:", "#"))
    ]
    assert "url(http" not in page and "@import" not in page


# --------------------------------------------------------------------------- determinism


def test_scores_do_not_depend_on_repetition_or_batch_size(world: World) -> None:
    store = FeatureStore(world.cfg.paths.stores / "test")
    device = torch.device("cpu")
    detector = load_detector(read_run(world.run_dir), device)
    first, failed = score_store(detector, store, batch_size=3, device=device, name="test")
    again, _ = score_store(detector, store, batch_size=3, device=device, name="test")
    large, _ = score_store(detector, store, batch_size=64, device=device, name="test")
    assert list(failed["path"]) == [BROKEN]
    assert first["p_fake"].tolist() == again["p_fake"].tolist()
    assert first["row"].tolist() == large["row"].tolist()
    np.testing.assert_allclose(first["p_fake"], large["p_fake"], rtol=0, atol=1e-6)
    written = _scores(world).query("store == 'test'")  # entry order, as score_store returns
    np.testing.assert_allclose(written["p_fake"], first["p_fake"], rtol=0, atol=1e-6)


def test_without_report_only_metrics_are_written_and_a_stale_report_goes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = world.cfg.model_copy(deep=True)
    cfg.paths.reports = world.root / "reports-plain"
    stale = cfg.paths.reports / world.run_dir.name / "report.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("an old report")
    out_dir = run_eval(cfg, run_dir=world.run_dir, stores=["test"], report=False)
    printed = capsys.readouterr().err
    # The console table names each subset and says why beta has no AUC.
    assert "alpha" in printed and "beta" in printed
    assert "beta: AUC, AP, EER, video AUC undefined (single class" in printed
    assert str(out_dir) in printed.replace("\n", "")
    assert (out_dir / "metrics.json").is_file() and (out_dir / "roc.json").is_file()
    assert not stale.exists() and not (out_dir / "report.html").exists()
    metrics = _no_nan_json(out_dir / "metrics.json")
    assert metrics["robustness"] == {} and list(metrics["stores"]) == ["test"]


# --------------------------------------------------------------------------- errors


def test_missing_test_store_names_the_extract_command(world: World) -> None:
    cfg = world.cfg.model_copy(deep=True)
    cfg.paths.stores = world.root / "no-stores-here"
    with pytest.raises(StoreError) as caught:
        run_eval(cfg, run_dir=world.run_dir, quiet=True)
    assert "clare extract --config CONFIG --split test`" in str(caught.value)
    assert str(cfg.paths.stores / "test") in str(caught.value)


def test_missing_perturbed_store_names_its_perturbation(world: World) -> None:
    cfg = world.cfg.model_copy(deep=True)
    cfg.eval.perturbations = ["blur=2"]
    with pytest.raises(StoreError, match=r"clare extract --config CONFIG --split test --perturb blur=2"):
        run_eval(cfg, run_dir=world.run_dir, quiet=True)
    with pytest.raises(StoreError, match=r"--split test --perturb jpeg=90"):
        run_eval(world.cfg, run_dir=world.run_dir, stores=["test-jpeg90"], quiet=True)


def test_missing_run_names_the_fit_command(world: World) -> None:
    with pytest.raises(ClareError, match=r"clare fit --config CONFIG"):
        run_eval(world.cfg, run_dir=world.root / "no-run", quiet=True)


def test_store_with_other_lare_settings_is_refused(world: World, tiny_models_dir: Path) -> None:
    other = make_config(world.root / "other", tiny_models_dir, world.cfg.data.root,
                        lare__timestep=100)
    run_extract(other, split="test", subsets=["alpha"], quiet=True)
    other_store = other.paths.stores / "test"
    with pytest.raises(StoreError) as caught:
        run_eval(world.cfg, run_dir=world.run_dir, stores=[str(other_store)], quiet=True)
    message = str(caught.value)
    assert str(other_store) in message
    assert str(world.cfg.paths.stores / "train") in message
    assert "lare" in message and "100" in message and "200" in message


def test_a_subset_in_two_clean_stores_is_refused(world: World) -> None:
    import shutil

    copy = world.root / "copy-of-test"
    shutil.copytree(world.cfg.paths.stores / "test", copy)
    with pytest.raises(StoreError, match=r"subset 'alpha' is also in store 'test'") as caught:
        run_eval(world.cfg, run_dir=world.run_dir, stores=["test", str(copy)], quiet=True)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- published whole


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


KILL_IN_REPORT = (
    "import os, signal\n"
    "import clare.report\n"
    "clare.report.render_report = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from clare.cli import main\n"
    "main()\n"
)


def test_a_killed_report_never_mixes_with_the_published_one(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from clare.stages.evaluate import show_report

    reports = tmp_path / "reports"
    published = reports / world.run_dir.name
    shutil.copytree(world.out_dir, published)
    before = _folder_files(published)
    config = world.root / "work" / "config.yaml"
    # Another evaluation (clean store only: other metrics) killed while it renders its report.
    done = subprocess.run(
        [sys.executable, "-c", KILL_IN_REPORT, "eval", "--config", str(config), "--run",
         str(world.run_dir), "--stores", "test", "--report", "--set", f"paths.reports={reports}"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert _folder_files(published) == before  # old metrics beside the old report, untouched

    show_report(published)
    shown = capsys.readouterr().out
    assert f"report: {published / 'report.html'}" in shown.replace("\n", "")

    # A finished evaluation without --report replaces the whole folder: no report of an
    # earlier evaluation stays beside its metrics, and `clare show` points at the metrics.
    cfg = world.cfg.model_copy(deep=True)
    cfg.paths.reports = reports
    run_eval(cfg, run_dir=world.run_dir, stores=["test"], quiet=True)
    assert not (published / "report.html").exists() and not (published / "figures").exists()
    assert sorted(p.name for p in reports.iterdir()) == [f".{published.name}.lock", published.name]
    show_report(published)
    assert f"report: {published / 'metrics.json'}" in capsys.readouterr().out.replace("\n", "")
    log = (published / "eval.log").read_text()
    assert log.startswith("=== ") and "per-subset metrics" in log and "alpha" in log


def test_a_second_evaluation_of_the_same_report_is_refused(world: World, tmp_path: Path) -> None:
    from clare.errors import ReportError
    from clare.runs import StagedFolder

    cfg = world.cfg.model_copy(deep=True)
    cfg.paths.reports = tmp_path
    with StagedFolder(tmp_path / world.run_dir.name, "clare eval").lock(ReportError):
        with pytest.raises(ReportError, match="another clare eval is writing it"):
            run_eval(cfg, run_dir=world.run_dir, stores=["test"], quiet=True)
    assert not (tmp_path / world.run_dir.name).exists()


def test_eval_refuses_a_run_whose_weights_are_not_its_record(world: World, tmp_path: Path) -> None:
    import shutil

    from clare.errors import CheckpointError

    run = tmp_path / world.run_dir.name
    shutil.copytree(world.run_dir, run)
    with open(run / "model.safetensors", "r+b") as handle:  # one byte in the tensor data
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* differs"):
        run_eval(world.cfg, run_dir=run, stores=["test"], quiet=True)


# --------------------------------------------------------------------------- operating threshold


def test_accuracy_at_the_runs_validation_threshold(world: World) -> None:
    record = read_run(world.run_dir).record
    assert record.threshold is not None
    threshold = record.threshold.value
    assert 0.0 <= threshold <= 1.0 and "validation" in str(record.threshold.rule)
    metrics = _no_nan_json(world.out_dir / "metrics.json")
    assert metrics["threshold"]["value"] == threshold
    clean = _scores(world).query("store == 'test'")
    for subset in ("alpha", "beta"):
        rows = clean[clean["subset"] == subset]
        expected = float(np.mean((rows["p_fake"] >= threshold) == (rows["label"] == 1)))
        assert metrics["subsets"][subset]["acc_at_val_threshold"] == pytest.approx(expected, abs=1e-12)
        at_half = float(np.mean((rows["p_fake"] >= 0.5) == (rows["label"] == 1)))
        assert metrics["subsets"][subset]["acc"] == pytest.approx(at_half, abs=1e-12)
    both = [metrics["subsets"][s]["acc_at_val_threshold"] for s in ("alpha", "beta")]
    assert metrics["mean"]["acc_at_val_threshold"] == pytest.approx(np.mean(both))
    jpeg = metrics["robustness"]["test-jpeg50"]["subsets"]["alpha"]
    assert jpeg["acc_at_val_threshold"] is not None
    table = (world.out_dir / "eval.log").read_text()
    assert "Acc@val thr" in table and "Acc@0.5" in table


def test_report_shows_worst_errors_with_image_and_lare_map_from_the_store(world: World) -> None:
    from clare.metrics import worst_errors

    threshold = _no_nan_json(world.out_dir / "metrics.json")["threshold"]["value"]
    false_pos, false_neg = worst_errors(_scores(world).query("store == 'test'"), threshold)
    assert len(false_pos) + len(false_neg) > 0, "the fixture run makes no error to show"
    markdown = (world.out_dir / "report.md").read_text()
    section = markdown[markdown.index("## Worst errors"):]
    assert f"At threshold {threshold:.4f}" in section
    for p_fake in (*false_pos["p_fake"], *false_neg["p_fake"]):
        assert f"{p_fake:.4f}" in section
    # Each error: its thumbnail from the image file and its LaRE map read from the test store.
    pictures = re.findall(r'<img src="([^"]+)"', section)
    assert len(pictures) == 2 * (len(false_pos) + len(false_neg))
    for rel in pictures:
        assert (world.out_dir / rel).read_bytes().startswith(b"\x89PNG")
    assert sum("_lare.png" in rel for rel in pictures) == len(false_pos) + len(false_neg)
    assert (world.out_dir / "videos.csv").is_file() and (world.out_dir / "report.tex").is_file()
    assert (world.out_dir / "figures" / "calibration.svg").is_file()


# --------------------------------------------------------------------------- one fingerprint rule


def _clip_copy_config(world: World, tmp_path: Path) -> tuple[Config, Path]:
    """The world's config with its CLIP checkpoint copied to another path (same bytes)."""
    import shutil

    copy = tmp_path / "clip" / "copied_clip.safetensors"
    copy.parent.mkdir(parents=True)
    shutil.copy2(world.cfg.models.clip.pretrained, copy)
    models = world.cfg.models.model_copy(
        update={"clip": world.cfg.models.clip.model_copy(update={"pretrained": str(copy)})})
    paths = world.cfg.paths.model_copy(update={"runs": tmp_path / "runs",
                                               "reports": tmp_path / "reports"})
    fit = world.cfg.fit.model_copy(update={"max_steps": 2})
    return world.cfg.model_copy(update={"models": models, "paths": paths, "fit": fit}), copy


def test_same_clip_bytes_elsewhere_agree_and_a_replaced_file_is_refused_by_eval(
    world: World, tmp_path: Path
) -> None:
    """Weights are compared by content: a copy of the checkpoint at another path trains and
    scores against the store; replacing that file after fit makes eval refuse, naming it."""
    import open_clip
    from safetensors.torch import save_file

    from clare.errors import FingerprintError

    cfg, copy = _clip_copy_config(world, tmp_path)
    fit = run_fit(cfg, quiet=True)  # the store was built from the original path: same bytes
    run_eval(cfg, run_dir=fit.run_dir, stores=["test"], quiet=True)

    torch.manual_seed(123)  # other weights, same architecture and file name
    other = open_clip.create_model(cfg.models.clip.model, pretrained=None)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(copy))
    with pytest.raises(FingerprintError) as caught:
        run_eval(cfg, run_dir=fit.run_dir, stores=["test"], quiet=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "weights.clip.sha256" in message and str(fit.run_dir) in message
    assert "restore the original checkpoint file or retrain" in message
    with pytest.raises(FingerprintError, match=r"weights\.clip\.sha256"):
        run_fit(cfg.model_copy(update={"fit": cfg.fit.model_copy(update={"name": "again"})}),
                quiet=True)  # fit refuses the same change, by the same rule


def test_clare_info_shows_the_fingerprint_summary(world: World) -> None:
    from clare import fingerprint as fp
    from clare.cache.checks import store_info

    info = store_info(world.cfg.paths.stores / "test")
    recorded = FeatureStore(world.cfg.paths.stores / "test").meta["fingerprint"]
    assert info["fingerprint"] == fp.summary(recorded)
    assert info["fingerprint"]["clip_sha256"] == recorded["weights"]["clip"]["sha256"][:12]


def test_report_says_which_step_was_kept_and_draws_it(world: World) -> None:
    """Issue 26: the report names the kept step, its rule and what decided it, and draws the
    validation curves with that step marked (also the DVC plot)."""
    record = yaml.safe_load((world.run_dir / "run.yaml").read_text())
    chosen = record["selection"]
    markdown = (world.out_dir / "report.md").read_text()
    section = markdown[markdown.index("## Training and model selection"):]
    section = section[:section.index("\n## ")]
    assert (f"weights of step {chosen['step']} of {record['steps']}, kept by rule "
            f"`{chosen['rule']}`") in section
    if chosen["runner_up_step"] is not None:
        assert f"preferred to step {chosen['runner_up_step']} by {chosen['decided_by']}" in section
    assert "figures/validation.png" in section
    for picture in (world.out_dir / "figures" / "validation.png",
                    world.out_dir / "figures" / "validation.svg",
                    world.out_dir / "plots" / "validation.png"):
        assert picture.read_bytes()[:4] in (b"\x89PNG", b"<?xm"), picture


def test_score_histogram_axis_fits_the_scores_and_the_thresholds() -> None:
    from clare.render.figures import score_range

    low, high = score_range(np.array([0.39, 0.45, 0.54]), [0.5, 0.46])
    assert 0.37 <= low < 0.39 and 0.54 < high <= 0.56  # not the 0-1 axis: a sliver there
    assert score_range(np.array([0.001, 0.999]), [0.5]) == (0.0, 1.0)  # clipped to [0, 1]
    assert score_range(np.array([0.2, 0.2]), [0.2]) == pytest.approx((0.19, 0.21))
    assert score_range(np.array([np.nan]), []) == (0.0, 1.0)


def test_validation_figure_marks_the_kept_step_in_both_panels() -> None:
    from clare.render.figures import validation_figure

    history = [{"step": 3, "val_auc": 0.9, "val_loss": 0.6}, {"step": 6, "val_auc": 1.0, "val_loss": 0.4},
               {"step": 9, "val_auc": None, "val_loss": float("nan")}]
    figure = validation_figure(history, 6, "t")
    for ax in figure.axes:
        vertical = [line for line in ax.get_lines() if list(line.get_xdata()) == [6, 6]]
        assert len(vertical) == 1 and vertical[0].get_label() == "kept: step 6"
        curve = ax.get_lines()[0]
        assert list(curve.get_xdata()) == [3, 6]  # undefined values are left out, not drawn as 0


def test_run_record_metrics_and_report_name_the_code_that_made_them(world: World) -> None:
    from importlib.metadata import version

    from clare.provenance import provenance, provenance_line

    expected = provenance()
    assert expected["clare"] == version("clare")
    record = yaml.safe_load((world.run_dir / "run.yaml").read_text())
    metrics = _no_nan_json(world.out_dir / "metrics.json")
    assert record["provenance"] == expected
    assert metrics["provenance"] == expected
    assert set(expected["libraries"]) == {"torch", "open_clip_torch", "diffusers"}
    assert expected["libraries"]["torch"] == version("torch")
    header = (world.out_dir / "report.md").read_text().split("\n## ", 1)[0]
    assert f"Made by {provenance_line(expected)}." in header
