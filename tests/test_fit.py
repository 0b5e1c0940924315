"""Stage two on the synthetic mini-DF40: learning, every variant, resume, held-out videos."""

from __future__ import annotations

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
from clare.config import load_config
from clare.errors import ClareError, StoreError
from clare.runs import CHECKPOINT_FILE, MODEL_FILE, RUN_FILE
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
    real_lr = fit_stage.learning_rate

    def crash_at_step_10(base, step, total, warmup, warmup_lr):
        if step == 10:
            raise KeyboardInterrupt("simulated kill")
        return real_lr(base, step, total, warmup, warmup_lr)

    monkeypatch.setattr(fit_stage, "learning_rate", crash_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        run_fit(cfg, quiet=True)
    monkeypatch.setattr(fit_stage, "learning_rate", real_lr)
    resumed = run_fit(cfg, resume=True, quiet=True)

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
    with pytest.raises(StoreError, match="LaRE settings"):
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
