"""Stage two on the synthetic mini-DF40: learning, every variant, resume, held-out videos."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import clare.stages.fit as fit_stage
from clare.cache.loader import StoreLoader
from clare.cache.store import FeatureStore
from clare.checkpoint import CHECKPOINT_FILE
from clare.config_files import load_config
from clare.errors import CheckpointError, ClareError, ConfigError, RunError, StoreError
from clare.files import file_sha256
from clare.runs import MODEL_FILE, RUN_FILE, StagedFolder, read_run
from clare.stages.extract import run_extract
from clare.stages.fit import run_fit, split_videos, video_keys
from clare.stages.prepare import run_prepare

REPO = Path(__file__).resolve().parents[1]


def demo_config(tmp: Path, demo_data: Path, models: Path, *overrides: str):
    """configs/demo.yaml with every path moved into tmp (data and models already built)."""
    tree = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    tree.pop("demo", None)
    tree["paths"] = {"stores": str(tmp / "stores"), "runs": str(tmp / "runs"),
                     "reports": str(tmp / "reports")}
    tree["data"].update(root=str(demo_data), lists_dir=str(demo_data / "lists"),
                        index_dir=str(tmp / "stores" / "index"))
    tree["models"]["sd"]["pretrained"] = str(models / "sd")
    tree["models"]["clip"].update(
        pretrained=str(models / "clip" / "open_clip_model.safetensors"),
        model_config_file=str(models / "clip" / "clare-tiny-vit.json"),
    )
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(path, list(overrides))


@pytest.fixture(scope="module")
def demo_train(tmp_path_factory, demo_data_dir, tiny_models_dir):
    """The demo's train store, extracted once for this module."""
    tmp = tmp_path_factory.mktemp("fit")
    cfg = demo_config(tmp, demo_data_dir, tiny_models_dir)
    run_prepare(cfg, splits=("train",))
    run_extract(cfg, split="train", quiet=True)
    return tmp, cfg


def test_fusion_learns_the_planted_artifact(demo_train):
    tmp, cfg = demo_train
    result = run_fit(cfg, quiet=True)
    assert result.best_metrics["val_auc"] >= 0.9, result.best_metrics
    run = result.run_dir
    weights = load_file(str(run / MODEL_FILE))
    # Trainable parameters only: no frozen CLIP text-tower weights, megabytes not gigabytes.
    assert not any(key.startswith("prompt.text_encoder") for key in weights)
    assert sum(t.numel() for t in weights.values()) < 5_000_000
    record = yaml.safe_load((run / RUN_FILE).read_text())
    assert record["module"] == "fusion" and record["strategy"] == "coop"
    assert record["best_step"] == result.best_step
    store_meta = FeatureStore(cfg.paths.stores / "train").meta
    assert record["store_fingerprint"] == store_meta["fingerprint"]
    assert record["counts"]["skipped_failed"] == 1  # the demo's planted non-image
    checkpoint = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["step"] == result.steps
    assert (run / "dvclive" / "metrics.json").is_file()
    _assert_saturation_broken_by_loss(record)


def _assert_saturation_broken_by_loss(record: dict) -> None:
    """The demo's validation AUC saturates early while its loss keeps falling (issue 26): the
    kept step is the lowest-loss point among the saturated ones, not the first of them."""
    history, chosen = record["history"], record["selection"]
    top = max(round(h["val_auc"], 3) for h in history)
    saturated = [h for h in history if round(h["val_auc"], 3) == top]
    first, lowest = saturated[0], min(saturated, key=lambda h: (h["val_loss"], -h["step"]))
    assert top == 1.0 and len(saturated) > 1, history
    assert lowest["val_loss"] < first["val_loss"], history
    assert record["best_step"] == chosen["step"] == lowest["step"] != first["step"]
    assert chosen["rule"] == "auc_loss" and chosen["decided_by"] in ("val_loss", "step")
    assert record["metrics"]["val_loss"] == lowest["val_loss"]
    assert record["threshold"]["step"] == lowest["step"]


def _killed_then_resumed(cfg, monkeypatch, at_step: int):
    """Fit `cfg` until a simulated kill at step `at_step`, then `--resume` it to the end."""
    real_lr = fit_stage.learning_rate

    def crash(base, step, total, warmup, warmup_lr):
        if step == at_step:
            raise KeyboardInterrupt("simulated kill")
        return real_lr(base, step, total, warmup, warmup_lr)

    monkeypatch.setattr(fit_stage, "learning_rate", crash)
    with pytest.raises(KeyboardInterrupt):
        run_fit(cfg, quiet=True)
    monkeypatch.setattr(fit_stage, "learning_rate", real_lr)
    return run_fit(cfg, resume=True, quiet=True)


def test_the_tie_rule_holds_across_a_resume(demo_train, monkeypatch):
    """With every validation AUC tied at 1.0 the loss decides; a fit killed after some of its
    validation points and resumed keeps the same step and weights as one that ran through."""
    import clare.metrics

    real_metrics = clare.metrics.compute_metrics

    def saturated(labels, probs, videos=None):
        return {**real_metrics(labels, probs, videos), "auc": 1.0}

    monkeypatch.setattr(clare.metrics, "compute_metrics", saturated)
    tmp, _ = demo_train
    common = ["fit.max_steps=12", "fit.val_every=2", "fit.batch_size=16"]
    whole = run_fit(load_config(tmp / "config.yaml", [*common, "fit.name=tied-whole"]), quiet=True)
    record = read_run(whole.run_dir).record.model_dump()
    losses = {h["step"]: h["val_loss"] for h in record["history"]}
    assert set(losses) == {2, 4, 6, 8, 10, 12} and all(h["val_auc"] == 1.0 for h in record["history"])
    lowest = min(losses, key=lambda step: (losses[step], -step))
    assert whole.best_step == lowest != 2
    assert record["selection"]["decided_by"] in ("val_loss", "step")

    cfg = load_config(tmp / "config.yaml", [*common, "fit.name=tied-crashed"])
    resumed = _killed_then_resumed(cfg, monkeypatch, at_step=7)
    again = read_run(resumed.run_dir).record.model_dump()
    assert resumed.best_step == whole.best_step
    assert again["selection"] == record["selection"]
    best_a, best_b = load_file(str(whole.run_dir / MODEL_FILE)), load_file(str(resumed.run_dir / MODEL_FILE))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_a_history_without_a_defined_auc_still_keeps_a_step_and_says_why(demo_train, monkeypatch,
                                                                         capsys):
    import clare.metrics

    real_metrics = clare.metrics.compute_metrics
    monkeypatch.setattr(clare.metrics, "compute_metrics",
                        lambda labels, probs, videos=None: {**real_metrics(labels, probs, videos),
                                                            "auc": None})
    tmp, _ = demo_train
    cfg = load_config(tmp / "config.yaml", ["fit.max_steps=6", "fit.val_every=2",
                                            "fit.batch_size=16", "fit.name=no-auc"])
    result = run_fit(cfg)
    record = read_run(result.run_dir).record.model_dump()
    chosen = record["selection"]
    losses = {h["step"]: h["val_loss"] for h in record["history"]}
    assert result.best_step == chosen["step"] == min(losses, key=lambda s: (losses[s], -s))
    assert chosen["val_auc"] is None and "no validation point had a defined AUC" in chosen["note"]
    assert (result.run_dir / MODEL_FILE).is_file()
    captured = capsys.readouterr()
    printed = [line for line in (captured.out + captured.err).splitlines() if line.startswith("kept step")]
    assert len(printed) == 1 and "rule auc_loss" in printed[0] and "decided by" in printed[0]


@pytest.mark.parametrize(
    "module,strategy,attention",
    [("fusion", "coop", "v1"), ("fusion", "coop", "v2"), ("fusion", "cocoop", "v1"),
     ("fusion", "cocoop", "v2"), ("lare", "coop", "v1"), ("clipping", "coop", "v2"),
     ("clipping", "cocoop", "v2")],
)
def test_every_variant_trains_and_its_loss_falls(demo_train, module, strategy, attention):
    tmp, _ = demo_train
    cfg = load_config(tmp / "config.yaml", [
        f"fit.module={module}", f"fit.strategy={strategy}", f"fit.attention={attention}",
        "fit.max_steps=16", "fit.batch_size=16", "fit.lr=0.001", "fit.prompt_lr=0.02",
        f"fit.name=variant-{module}-{strategy}-{attention}",
    ])
    result = run_fit(cfg, quiet=True)
    losses = result.train_losses
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses


def test_resume_after_a_crash_equals_an_uninterrupted_run(demo_train, monkeypatch):
    tmp, _ = demo_train
    common = ["fit.max_steps=12", "fit.val_every=4", "fit.batch_size=16", "fit.warmup_steps=2"]
    whole = run_fit(load_config(tmp / "config.yaml", [*common, "fit.name=whole"]), quiet=True)

    cfg = load_config(tmp / "config.yaml", [*common, "fit.name=crashed"])
    resumed = _killed_then_resumed(cfg, monkeypatch, at_step=10)

    assert resumed.steps == whole.steps == 12
    final_a = torch.load(whole.run_dir / CHECKPOINT_FILE, weights_only=True)["trainable"]
    final_b = torch.load(resumed.run_dir / CHECKPOINT_FILE, weights_only=True)["trainable"]
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key
    best_a, best_b = load_file(str(whole.run_dir / MODEL_FILE)), load_file(str(resumed.run_dir / MODEL_FILE))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert resumed.best_step == whole.best_step


def test_held_out_videos_never_reach_training_batches(demo_train, monkeypatch):
    tmp, cfg = demo_train
    seen_train: list[np.ndarray] = []
    original = StoreLoader.epoch

    def recording(self, epoch, skip=0):
        for batch in original(self, epoch, skip):
            if self.shuffle:  # training loaders shuffle; the validation loader does not
                seen_train.append(batch.rows)
            yield batch

    monkeypatch.setattr(StoreLoader, "epoch", recording)
    run_fit(load_config(tmp / "config.yaml", ["fit.epochs=2", "fit.name=heldout"]), quiet=True)
    manifest = FeatureStore(cfg.paths.stores / "train").manifest()
    manifest = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    is_val = split_videos(manifest, cfg.fit.val_fraction, cfg.seed)
    keys = video_keys(manifest)
    val_videos = set(keys[is_val])
    assert val_videos and set(manifest.loc[is_val, "label"]) == {0, 1}
    trained_rows = np.concatenate(seen_train)
    trained_videos = set(keys[manifest.set_index("row").index.get_indexer(trained_rows)])
    assert trained_videos and not (trained_videos & val_videos)
    # DF40 lists each real video under every method: all copies stay on one side.
    for key in val_videos:
        assert is_val[keys == key].all()


def test_store_with_other_lare_settings_is_refused(demo_train):
    tmp, _ = demo_train
    with pytest.raises(StoreError, match="lare.timestep 200 vs 300"):
        run_fit(load_config(tmp / "config.yaml", ["lare.timestep=300"]), quiet=True)


def test_single_class_store_is_refused(demo_train, tmp_path):
    tmp, cfg = demo_train
    single = tmp_path / "stores"
    shutil.copytree(cfg.paths.stores / "train", single / "train")
    manifest_path = single / "train" / "manifest.parquet"
    import pandas as pd

    manifest = pd.read_parquet(manifest_path)
    manifest.loc[manifest["label"] == 1, "status"] = "failed"
    manifest.to_parquet(manifest_path, index=False)
    with pytest.raises(StoreError, match="only real"):
        run_fit(load_config(tmp / "config.yaml", [f"paths.stores={single}"]), quiet=True)


def test_resume_refuses_other_module_and_pickles(demo_train, tmp_path):
    tmp, _ = demo_train
    base = ["fit.max_steps=2", "fit.name=guarded", f"paths.runs={tmp_path}"]
    run_fit(load_config(tmp / "config.yaml", base), quiet=True)
    with pytest.raises(ClareError, match="checkpoint is for"):
        run_fit(load_config(tmp / "config.yaml", [*base, "fit.module=clipping"]), resume=True,
                quiet=True)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "clare-fit-checkpoint/1", "x": Payload()}, tmp_path / "guarded" / CHECKPOINT_FILE)
    with pytest.raises(ClareError, match="refused to load checkpoint"):
        run_fit(load_config(tmp / "config.yaml", base), resume=True, quiet=True)


# --------------------------------------------------------------------------- runs published whole


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_finished_run_is_replaced_only_whole_and_only_with_overwrite(demo_train, tmp_path, monkeypatch):
    tmp, _ = demo_train
    base = ["fit.max_steps=6", "fit.val_every=2", "fit.batch_size=16", "fit.name=base",
            f"paths.runs={tmp_path}"]
    first = run_fit(load_config(tmp / "config.yaml", base), quiet=True)
    published = _files(first.run_dir)
    assert {"run.yaml", "model.safetensors", "last.ckpt", "fit.log", "dvclive/metrics.json"} <= set(published)

    changed = load_config(tmp / "config.yaml", [*base, "fit.lr=0.05"])
    with pytest.raises(RunError, match="holds a finished run; pass --overwrite"):
        run_fit(changed, quiet=True)
    # A replacing fit that dies after its first validation changes nothing that was published.
    real_lr = fit_stage.learning_rate

    def die_at_step_3(base_lr, step, total, warmup, warmup_lr):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_lr(base_lr, step, total, warmup, warmup_lr)

    monkeypatch.setattr(fit_stage, "learning_rate", die_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_fit(changed, overwrite=True, quiet=True)
    monkeypatch.setattr(fit_stage, "learning_rate", real_lr)
    assert _files(first.run_dir) == published
    assert read_run(first.run_dir).config.fit.lr == first_lr(tmp)
    staged = StagedFolder(first.run_dir, "clare fit").staging
    assert torch.load(staged / CHECKPOINT_FILE, weights_only=True)["step"] == 2

    # Resuming the staged fit under other numbers is refused, naming the setting.
    with pytest.raises(CheckpointError, match=r"fit\.lr=0\.05 but the config asks for fit\.lr=0\.01"):
        run_fit(load_config(tmp / "config.yaml", [*base, "fit.lr=0.01"]), resume=True, quiet=True)
    resumed = run_fit(changed, resume=True, quiet=True)
    assert resumed.steps == 6
    info = read_run(resumed.run_dir)  # checks the model file against the recorded sha256
    assert info.config.fit.lr == 0.05
    assert info.record.model_sha256 == file_sha256(resumed.run_dir / MODEL_FILE)
    assert not staged.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".base.lock", "base"]


def first_lr(tmp: Path) -> float:
    return load_config(tmp / "config.yaml").fit.lr


@pytest.fixture(scope="module")
def finished(demo_train, tmp_path_factory):
    """A short finished run to resume from and to tamper with (copies only)."""
    tmp, _ = demo_train
    runs = tmp_path_factory.mktemp("finished")
    overrides = ["fit.max_steps=2", "fit.name=done", f"paths.runs={runs}"]
    result = run_fit(load_config(tmp / "config.yaml", overrides), quiet=True)
    return tmp, overrides, result.run_dir


@pytest.mark.parametrize("override,setting", [
    ("seed=1", "seed"), ("fit.batch_size=8", "fit.batch_size"),
    ("fit.prompt.n_ctx=8", "fit.prompt.n_ctx"), ("fit.head.heads=4", "fit.head.heads"),
    ("fit.head.lift_widths=[16,32]", "fit.head.lift_widths"), ("fit.amp=false", "fit.amp"),
    ("fit.val_every=1", "fit.val_every"), ("fit.shuffle_window=3", "fit.shuffle_window"),
    ("fit.grad_clip=null", "fit.grad_clip"), ("fit.prompt_weight_decay=0.1", "fit.prompt_weight_decay"),
])
def test_resume_refuses_a_setting_that_changes_the_numbers(finished, override, setting):
    tmp, overrides, run_dir = finished
    before = _files(run_dir)
    with pytest.raises(CheckpointError, match=rf"checkpoint is for {re.escape(setting)}=") as caught:
        run_fit(load_config(tmp / "config.yaml", [*overrides, override]), resume=True, quiet=True)
    assert "\n" not in str(caught.value)
    assert _files(run_dir) == before


def test_resume_refuses_another_store_and_allows_neutral_settings(finished, tmp_path):
    tmp, overrides, run_dir = finished
    stores = tmp_path / "stores"
    shutil.copytree(tmp / "stores" / "train", stores / "train")
    meta_file = stores / "train" / "store.json"
    meta = json.loads(meta_file.read_text())
    meta["fingerprint_sha256"] = "0" * 64  # another extraction of the same settings
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"store\.fingerprint_sha256="):
        run_fit(load_config(tmp / "config.yaml", [*overrides, f"paths.stores={stores}"]),
                resume=True, quiet=True)
    # Device and read-ahead do not change the numbers: resuming the finished run is allowed
    # (nothing is left to train) and publishes the same weights.
    weights = (run_dir / MODEL_FILE).read_bytes()
    again = run_fit(load_config(tmp / "config.yaml", [*overrides, "fit.prefetch=0", "fit.device=cpu",
                                                      "fit.cache=none"]),
                    resume=True, quiet=True)
    assert again.steps == 2 and (run_dir / MODEL_FILE).read_bytes() == weights


def test_rows_held_in_ram_train_the_same_weights_as_store_reads(finished, monkeypatch, capsys):
    tmp, overrides, run_dir = finished
    assert "fit.cache auto: reading" in (run_dir / "fit.log").read_text()  # the demo fits in RAM
    from_store = run_fit(load_config(tmp / "config.yaml", [*overrides, "fit.name=from-store",
                                                           "fit.cache=none"]), quiet=True)
    held, read = load_file(str(run_dir / MODEL_FILE)), load_file(str(from_store.run_dir / MODEL_FILE))
    assert held.keys() == read.keys() and all(torch.equal(held[k], read[k]) for k in held)

    monkeypatch.setattr(fit_stage, "available_memory", lambda: 1024)
    with pytest.raises(ConfigError, match=r"^fit.cache ram: the selected rows take .* GiB, more than "
                                          r"80% of the 0.0 GiB of memory available; set fit.cache: none"):
        run_fit(load_config(tmp / "config.yaml", [*overrides, "fit.name=too-big", "fit.cache=ram"]),
                quiet=True)


def test_a_second_fit_of_the_same_run_is_refused_while_one_runs(finished):
    tmp, overrides, run_dir = finished
    before = _files(run_dir)
    with StagedFolder(run_dir, "clare fit").lock():
        with pytest.raises(RunError, match=r"another clare fit is writing it"):
            run_fit(load_config(tmp / "config.yaml", overrides), overwrite=True, quiet=True)
    assert _files(run_dir) == before


def test_fit_refuses_resume_and_overwrite_together(finished):
    tmp, overrides, _ = finished
    with pytest.raises(ConfigError, match="exclude each other"):
        run_fit(load_config(tmp / "config.yaml", overrides), resume=True, overwrite=True, quiet=True)


def _tampered(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def test_readers_refuse_a_model_file_that_is_not_the_recorded_one(finished, tmp_path):
    _, _, run_dir = finished
    swapped = _tampered(run_dir, tmp_path / "swapped")
    weights = load_file(str(swapped / MODEL_FILE))
    weights = {k: v + 1 for k, v in weights.items()}  # other weights, same layout and metadata
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run_dir / MODEL_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(weights, str(swapped / MODEL_FILE), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* differs from") as caught:
        read_run(swapped)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.pop("model_sha256"), "records no model_sha256"),
    (lambda r: r.pop("store_fingerprint"), "required key 'store_fingerprint' is missing"),
    # The record's own module disagrees first; with both edited the config is invalid.
    (lambda r: r["config"]["fit"].update(module="vit"), "module is 'fusion' but config.fit.module is 'vit'"),
    (lambda r: (r.pop("module"), r["config"]["fit"].update(module="vit")),
     r"its config is invalid \(fit\.module"),
    (lambda r: r.pop("config"), "required key 'config' is missing"),
])
def test_readers_refuse_a_damaged_run_record(finished, tmp_path, edit, message):
    _, _, run_dir = finished
    damaged = _tampered(run_dir, tmp_path / "damaged")
    record = yaml.safe_load((damaged / RUN_FILE).read_text())
    edit(record)
    (damaged / RUN_FILE).write_text(yaml.safe_dump(record))
    with pytest.raises(RunError, match=message):
        read_run(damaged)
    (damaged / RUN_FILE).write_text("config: [unclosed")
    with pytest.raises(RunError, match="not valid YAML"):
        read_run(damaged)


def test_fit_log_keeps_what_the_console_printed(finished):
    _, _, run_dir = finished
    log = (run_dir / "fit.log").read_text()
    assert log.startswith("=== ")
    assert "val loss" in log and "kept step" in log and "by rule auc_loss" in log
    assert str(run_dir) in log
    assert "\x1b[" not in log  # plain text, no terminal codes


def test_fit_records_the_eer_threshold_of_its_validation_videos(finished):
    from clare.models.detector import Detector
    from clare.scoring import accuracy_at, eer_threshold, score_loader
    from clare.stages.fit import select_rows

    tmp, overrides, run_dir = finished
    cfg = load_config(tmp / "config.yaml", overrides)
    record = read_run(run_dir).record
    assert record.threshold is not None
    chosen = record.threshold.model_dump()
    assert chosen["step"] == record.best_step and "validation" in chosen["rule"]
    # Rescoring the held-out videos with the published weights gives the recorded point.
    rows = select_rows(cfg)
    detector = Detector.load(run_dir)
    loader = StoreLoader(rows.store, rows.val["row"].to_numpy(), rows.val["label"].to_numpy(),
                         batch_size=cfg.fit.batch_size, seed=cfg.seed, shuffle=False)
    probs, labels, _rows, _loss = score_loader(detector, loader, torch.device("cpu"), amp=False)
    assert eer_threshold(labels, probs) == {k: chosen[k] for k in ("value", "fpr", "fnr")}
    assert chosen["rule"] == fit_stage.validation_threshold(labels, probs)["rule"]
    predicted = probs >= chosen["value"]
    assert np.mean(predicted[labels == 0]) == pytest.approx(chosen["fpr"])
    assert np.mean(~predicted[labels == 1]) == pytest.approx(chosen["fnr"])
    assert accuracy_at(labels, probs, chosen["value"]) == pytest.approx(
        1 - (chosen["fpr"] * (labels == 0).sum() + chosen["fnr"] * (labels == 1).sum()) / len(labels))


def test_eer_threshold_is_the_point_where_both_error_rates_meet():
    from clare.scoring import accuracy_at, eer_threshold

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.9, 0.95])
    point = eer_threshold(labels, probs)
    # At 0.7: one real of four called fake, one fake of four (0.4) missed.
    assert point == {"value": 0.7, "fpr": 0.25, "fnr": 0.25}
    assert accuracy_at(labels, probs, 0.7) == 0.75
    assert accuracy_at(labels, probs, 0.5) == 0.75
    assert accuracy_at(np.array([]), np.array([]), 0.5) is None
    separable = eer_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert separable == {"value": 0.3, "fpr": 0.0, "fnr": 0.0}


def test_resume_refuses_checkpoints_of_other_formats_or_incomplete(finished, tmp_path):
    tmp, overrides, run_dir = finished
    runs = tmp_path / "runs"
    copy = _tampered(run_dir, runs / run_dir.name)
    cfg = load_config(tmp / "config.yaml", [*overrides, f"paths.runs={runs}"])
    payload = torch.load(copy / CHECKPOINT_FILE, weights_only=True)
    for broken, message in (({**payload, "format": "clare-fit-checkpoint/1"}, "not a clare-fit-checkpoint/3"),
                            ({k: v for k, v in payload.items() if k != "rng"}, "checkpoint lacks rng"),
                            ({**payload, "optimizer": {"state": {}, "param_groups": []}}, "damaged optimiser")):
        torch.save(broken, copy / CHECKPOINT_FILE)
        with pytest.raises(CheckpointError, match=message):
            run_fit(cfg, resume=True, quiet=True)


def test_a_full_disk_while_saving_names_the_file_and_leaves_no_run(demo_train, monkeypatch):
    """A full disk reports no file name from write(); the error names the file clare was
    writing (the main() guard turns it into one line, exit 2), and no run is published."""
    import errno
    import os

    import clare.files

    tmp, cfg = demo_train
    cfg = load_config(tmp / "config.yaml", ["fit.max_steps=2", "fit.name=full-disk"])

    class FullDisk:
        """`os` as clare.files sees it, on a disk that fills at the first flush."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        @staticmethod
        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clare.files, "os", FullDisk())
    with pytest.raises(OSError) as caught:
        run_fit(cfg, quiet=True)
    assert caught.value.errno == errno.ENOSPC
    assert Path(caught.value.filename).name in {MODEL_FILE, "last.ckpt"}
    assert not (cfg.paths.runs / "full-disk" / RUN_FILE).exists()
