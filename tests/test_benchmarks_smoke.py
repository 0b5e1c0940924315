"""Every benchmark script runs at --smoke size and writes the results its docs promise.

Each script runs as CI would run it: `python -m benchmarks.<name>`, a subprocess of this
interpreter, from the repository root. The tiny models are built once into a shared temp
folder and reused by the two scripts that need them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP_KEYS = {"benchmark", "created", "machine", "params", "results", "notes"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-models")


def run_script(script: str, out: Path, *extra: str) -> dict[str, Any]:
    module = f"benchmarks.{Path(script).stem}"
    command = [sys.executable, "-m", module, "--smoke", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert out.is_file(), f"{script} wrote no results file"
    payload = json.loads(out.read_text())
    assert TOP_KEYS <= set(payload), f"{script}: missing top-level keys {TOP_KEYS - set(payload)}"
    assert payload["benchmark"] == Path(script).stem
    assert payload["params"]["seed"] == 0
    # The printed table is part of the promise: the script's stdout names the results file.
    assert str(out) in done.stdout
    return payload


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_extract_smoke(tmp_path: Path, models_dir: Path) -> None:
    payload = run_script("bench_extract.py", tmp_path / "extract.json", "--models-dir", str(models_dir))
    results = payload["results"]
    for key in ("extract", "bare", "extract_vs_bare", "extract_in_shards_vs_bare", "per_image",
                "batched_speedup_lare", "batched_speedup_total", "peak_rss"):
        assert key in results, key
    n = payload["params"]["n"]
    assert results["extract"]["n"] == n and results["bare"]["n"] == n
    for value in (results["extract"]["images_per_s"], results["extract"]["images_per_s_in_shards"],
                  results["bare"]["images_per_s"], results["per_image"]["images_per_s"]):
        assert positive(value)
    # Ratios are what they claim to be: quotients of the reported rates.
    assert results["extract_vs_bare"] == pytest.approx(
        results["extract"]["images_per_s"] / results["bare"]["images_per_s"])
    assert results["batched_speedup_lare"] == pytest.approx(
        results["per_image"]["lare_s"] / results["bare"]["lare_s"])
    # The per-image reference computes the same LaRE maps as the batched extractor.
    assert results["per_image"]["max_abs_diff_vs_batched"] <= 1e-4 * max(
        1.0, results["per_image"]["max_abs_lare"])
    # One peak-RSS measurement per requested N, each from a fresh process.
    sizes = [int(v) for v in payload["params"]["rss_n"].split(",")]
    assert [row["n"] for row in results["peak_rss"]] == sizes
    assert all(row["ok"] == row["n"] and positive(row["peak_rss_mib"]) for row in results["peak_rss"])


def test_bench_store_smoke(tmp_path: Path) -> None:
    payload = run_script("bench_store.py", tmp_path / "store.json")
    results, params = payload["results"], payload["params"]
    for name in ("store", "pt", "memmap"):
        row = results[name]
        for key in ("bytes_per_image", "files", "write_mb_s", "read_seq_mb_s", "read_random_mb_s"):
            assert positive(row[key]), (name, key)
    n = params["n"]
    assert results["pt"]["files"] == n  # one file per image
    assert results["memmap"]["files"] == 3  # one per array
    # The memmap holds exactly the payload; .pt stores tokens as float32, so more bytes.
    payload_bytes = results["payload_bytes_per_image"]
    assert results["memmap"]["bytes_per_image"] >= payload_bytes
    assert results["memmap"]["bytes_per_image"] < payload_bytes * 1.1 + 1024
    assert results["store_vs_pt_bytes"] == pytest.approx(
        results["store"]["bytes_per_image"] / results["pt"]["bytes_per_image"])
    # The loader comparison: every variant timed against the memmap copy in the same run.
    loader = results["loader"]
    variants = ("memmap copy", "before: store/2 + old loader", "tokens decoded by zarrs (session 3)",
                "after: fit epoch", "after: in order (eval)", "after: fit.cache ram (epochs 2+)")
    for name in variants:
        assert positive(loader[name]["mb_s"]) and positive(loader[name]["vs_memmap"]), name
    assert loader["memmap copy"]["vs_memmap"] == pytest.approx(1.0)
    assert positive(loader["random rows: after"]["rows_s"])


def test_bench_eval_smoke(tmp_path: Path) -> None:
    payload = run_script("bench_eval.py", tmp_path / "eval.json")
    results = payload["results"]
    for key in ("compute_metrics_s", "best_threshold_s", "naive_extrapolated_s", "speedup_vs_naive"):
        assert positive(results[key]), key
    sizes = [int(v) for v in payload["params"]["naive_sizes"].split(",")]
    assert [row["n"] for row in results["naive"]] == sizes
    # The naive sweep and the O(N log N) oracle find the same best accuracy.
    assert all(row["agrees"] for row in results["naive"])
    fit = results["naive_fit"]
    n = payload["params"]["n"]
    assert results["naive_extrapolated_s"] == pytest.approx(fit["a"] * n**2 + fit["b"] * n)
    assert 0.5 < results["metrics"]["auc"] <= 1.0


def test_gpu_bench_smoke_on_cpu(tmp_path: Path, models_dir: Path) -> None:
    payload = run_script("gpu_bench.py", tmp_path / "gpu.json", "--device", "cpu",
                         "--models-dir", str(models_dir))
    results = payload["results"]
    assert results["errors"] == {} and results["skipped"] == []
    batch_sizes = payload["params"]["batch_sizes"].split(",")
    assert sorted(results["extract"]) == sorted(batch_sizes)
    assert sorted(results["bare"]) == sorted(batch_sizes)
    for bs in batch_sizes:
        assert positive(results["extract"][bs]["images_per_s"])
        assert positive(results["bare"][bs]["images_per_s"])
        assert results["extract"][bs]["vs_bare"] == pytest.approx(
            results["extract"][bs]["images_per_s"] / results["bare"][bs]["images_per_s"])
    assert positive(results["per_image"]["images_per_s"])
    fit = results["fit"]
    assert fit["samples_per_s"] == "n/a" or positive(fit["end_to_end_samples_per_s"])
    assert payload["machine"]["gpu"] is None or isinstance(payload["machine"]["gpu"], dict)
    # bf16 vs fp32 ran on the same draws; on a CPU clare never autocasts, so both are fp32.
    precision = results["precision"]
    assert precision["autocast_applied"] is False
    for name in ("lare", "tokens", "cls"):
        assert precision[name]["n"] == payload["params"]["precision_n"]
        assert precision[name]["identical"] and precision[name]["rel_l2"] == 0.0, name


def test_gpu_bench_precision_figures_are_what_they_claim():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scaled = module.compare_outputs(reference, reference * 1.01)
    assert scaled["rel_l2"] == pytest.approx(0.01, rel=1e-4) and scaled["corr"] == pytest.approx(1.0)
    assert scaled["per_image_rel_l2_max"] == pytest.approx(0.01, rel=1e-4) and not scaled["identical"]
    flipped = module.compare_outputs(reference, -reference)
    assert flipped["rel_l2"] == pytest.approx(2.0) and flipped["per_image_corr_min"] == pytest.approx(-1.0)
    # One image far off shows in the worst-image figures, not only in the overall ones.
    damaged = reference.clone()
    damaged[1] = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    worst = module.compare_outputs(reference, damaged)
    assert worst["per_image_rel_l2_max"] > 1.0 and worst["per_image_rel_l2_median"] == 0.0
    assert abs(worst["per_image_corr_min"]) < 0.5 < worst["corr"]


def test_bench_fit_smoke(tmp_path: Path) -> None:
    payload = run_script("bench_fit.py", tmp_path / "fit.json")
    results, params = payload["results"], payload["params"]
    n, batch = params["n"], params["batch_size"]
    assert params["torch_threads"] >= 1 and results["torch_threads"] == params["torch_threads"]
    assert results["steps_per_epoch"] == math.ceil(n / batch)
    # The loader delivers every stored row once per epoch; a store epoch runs every step.
    assert results["loader"]["samples_per_epoch"] == n
    assert results["store_epoch"]["steps"] == results["steps_per_epoch"]
    for key in ("train_step", "loader", "store_epoch", "end_to_end"):
        assert positive(results[key]["samples_per_s"]), key
    assert results["store_epoch"]["samples_per_s"] == pytest.approx(
        n / results["store_epoch"]["median_s"])
    e2e = results["end_to_end"]
    assert e2e["steps_timed"] == params["e2e_steps"] == len(e2e["step_s"])
    # The CLIP forward is one part of each end-to-end step, and the epoch is extrapolated per sample.
    assert all(0 < c < s for c, s in zip(e2e["clip_s"], e2e["step_s"], strict=True))
    assert e2e["epoch_s_extrapolated"] == pytest.approx(n * e2e["per_sample_s"])
    # The reported ratios are quotients of the reported figures.
    assert results["e2e_vs_store"] == pytest.approx(
        e2e["epoch_s_extrapolated"] / results["store_epoch"]["median_s"])
    assert results["loader_vs_step"] == pytest.approx(
        results["loader"]["samples_per_s"] / results["train_step"]["samples_per_s"])
    assert math.isfinite(results["final_loss"]) and results["trainable_parameters"] > 0
    # Both prompt strategies, each as built and as computed before issue 25, with their ratio
    # and the step's split; a store epoch over batches read first tells the loader's share.
    detectors = results["detectors"]
    assert set(detectors) == {"coop", "cocoop", "coop_before", "cocoop_before"}
    for name, entry in detectors.items():
        # A CoCoOp store epoch covers --cocoop-rows rows (its text tower runs per image).
        rows = params["cocoop_rows"] if name.startswith("cocoop") else n
        assert entry["store_epoch"]["rows"] == rows, name
        assert entry["store_epoch"]["steps"] == math.ceil(rows / batch), name
        assert all(positive(entry["split"][part]) for part in
                   ("text_tower_s", "head_s", "optimiser_s")), name
        assert 0 <= entry["store_epoch"]["loader_wait_s"] < entry["store_epoch"]["median_s"]
        assert entry["e2e_vs_store"] == pytest.approx(
            e2e["detectors"][name]["per_sample_s"] * rows / entry["store_epoch"]["median_s"])
    assert positive(results["store_epoch_preread"]["samples_per_s"])


def test_bench_scale_smoke(tmp_path: Path) -> None:
    payload = run_script("bench_scale.py", tmp_path / "scale.json")
    results, params = payload["results"], payload["params"]
    videos, known, unseen = params["videos"], params["known_methods"], params["unseen_methods"]
    assert params["scale"] == 0.01 and min(videos.values()) >= 2
    # DF40's structure: the same real videos listed under every known method.
    train_entries = known * (videos["ff_real"] + videos["ff_fake"]) * params["train_frames"]
    train_distinct = (videos["ff_real"] + known * videos["ff_fake"]) * params["train_frames"]
    index = results["index"]
    assert index["train_entries"] == results["tree"]["listed_train"] == train_entries
    assert index["train_distinct_images"] == train_distinct
    assert index["extractions_saved"] == train_entries - train_distinct
    assert index["extractions_saved_fraction"] == pytest.approx(
        (train_entries - train_distinct) / train_entries)
    # Test lists keep the first 8 of 32 listed frames per video.
    test_videos = known * (videos["cdf_real"] + videos["cdf_fake"]) + unseen * 2 * videos["unseen"]
    assert index["test_entries"] == test_videos * params["test_frames"]
    for part in ("prepare", "startup"):
        assert positive(results[part]["seconds"]) and positive(results[part]["peak_rss_mib"]), part
    assert results["prepare_vs_startup_s"] == pytest.approx(
        results["prepare"]["seconds"] / results["startup"]["seconds"])
    # The store's seeded order mixes batches better than index order, over the same batches.
    before, after = results["mixing"]["before"], results["mixing"]["after"]
    assert before["batches"] == after["batches"] == math.ceil(train_entries / params["batch_size"])
    assert after["single_class_fraction"] <= before["single_class_fraction"]
    assert after["median_videos"] > before["median_videos"]


def test_bench_predict_smoke(tmp_path: Path) -> None:
    payload = run_script("bench_predict.py", tmp_path / "predict.json")
    results = payload["results"]
    assert results["images"] == 8
    ratio = results["predict_img_s"] / results["extract_img_s"]
    assert math.isclose(results["ratio_predict_over_extract"], ratio, rel_tol=1e-12)
    hashing = results["hash_cache"]
    assert hashing["megabytes"] == 8
    assert math.isclose(hashing["speedup"], hashing["first_s"] / hashing["second_s"], rel_tol=1e-9)


def test_bench_faces_smoke(tmp_path: Path) -> None:
    payload = run_script("bench_faces.py", tmp_path / "faces.json")
    results, params = payload["results"], payload["params"]
    rows = results["scenes"]
    sizes = [int(v) for v in params["sizes"].split(",")]
    angles = [int(v) for v in params["angles"].split(",")]
    faces = [row for row in rows if row["face"]]
    # One scene per size, roll, portrait and background, and one bare background each.
    assert len(faces) == len(sizes) * len(angles) * params["sources"] * params["backgrounds"]
    assert results["no_face_scenes"] == params["backgrounds"] == len(rows) - len(faces)
    for key, column in (("by_size", "size_percent"), ("by_angle", "angle")):
        assert [row[column] for row in results[key]] == sorted({row[column] for row in faces})
        for summary in results[key]:
            group = [row for row in faces if row[column] == summary[column]]
            assert summary["new_recall"] == sum(row["new_hit"] for row in group) / len(group)
            assert summary["old_recall"] == sum(row["old_hit"] for row in group) / len(group)
    # The smoke scenes' faces (10% of the shorter side) are all found, upright to a few degrees.
    assert all(row["new_hit"] for row in faces)
    assert all(row["new_roll_error"] < 5 for row in faces)
    assert results["new_vs_old_time"] == pytest.approx(
        results["new_s_per_image"] / results["old_s_per_image"])
    assert positive(results["new_s_per_image"]) and positive(results["old_s_per_image"])
