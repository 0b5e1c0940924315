"""Each image is extracted once: entries (what the lists name) against rows (what a store holds).

One module-scoped world: a tree of 16 images in two subsets, alpha and beta, and a third subset,
gamma, that lists alpha's real frames again under other video names, as DF40 lists the FF++
reals under every method. Train and test stores are extracted once, a short fit and one eval
run on them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers_extract import make_config, make_image_tree, write_index

from clare.cache.checks import verify_store
from clare.cache.store import FeatureStore
from clare.config import Config
from clare.errors import StoreError
from clare.stages.evaluate import run_eval
from clare.stages.extract import run_extract
from clare.stages.fit import FitResult, _training_rows, run_fit, select_rows


@dataclass
class World:
    cfg: Config
    index: pd.DataFrame  # the entries both splits list
    run_dir: Path
    report_dir: Path
    fit: FitResult


def _with_shared_reals(index: pd.DataFrame) -> pd.DataFrame:
    """alpha's real frames listed again by a subset gamma (renamed videos), plus beta's fakes."""
    again = index[(index["subset"] == "alpha") & (index["label"] == 0)].assign(
        subset="gamma", video=lambda t: "g_" + t["video"])
    fakes = index[(index["subset"] == "beta") & (index["label"] == 1)].assign(subset="gamma")
    return pd.concat([index, again, fakes], ignore_index=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> World:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("entries")
    index = _with_shared_reals(make_image_tree(root / "data", 16, seed=5, side=64))
    cfg = make_config(root / "work", tiny_models_dir, root / "data", index=index,
                      fit__max_steps=4, fit__batch_size=8, fit__val_fraction=0.3,
                      fit__device="cpu", eval__device="cpu", eval__lare_examples=1)
    for split in ("train", "test"):
        write_index(index, cfg.data.index_dir, split)
        run_extract(cfg, split=split, quiet=True)
    run = run_fit(cfg, quiet=True)
    report = run_eval(cfg, report=False, quiet=True)
    return World(cfg, index, run.run_dir, report, run)


def test_store_holds_each_distinct_image_once_and_every_entry_points_at_it(world: World) -> None:
    store = FeatureStore(world.cfg.paths.stores / "train")
    distinct = world.index["path"].nunique()
    assert distinct == 16 < len(world.index)
    assert store.n_rows == distinct
    assert (store.meta["n_images"], store.meta["n_entries"]) == (distinct, len(world.index))
    assert store.manifest()["path"].is_unique

    entries = pd.read_parquet(store.entries_path)  # plain Parquet: pandas reads it as is
    assert len(entries) == len(world.index)
    for column in ("path", "subset", "label", "video", "frame"):
        assert list(entries[column].astype(str)) == list(world.index[column].astype(str)), column
    rows = store.manifest().set_index("row")
    assert (rows.loc[entries["image"], "path"].to_numpy() == entries["path"].to_numpy()).all()
    assert verify_store(store.path, repair=False).ok


def test_eval_scores_each_row_once_and_shares_it_with_every_entry(world: World) -> None:
    scores = pd.read_parquet(world.report_dir / "scores.parquet")
    assert len(scores) == len(world.index)  # one line per listed entry
    shared = scores[scores["path"].duplicated(keep=False)]
    assert set(shared["subset"]) == {"alpha", "beta", "gamma"}  # gamma lists frames of both
    assert (shared.groupby("path")["p_fake"].nunique() == 1).all()
    metrics = json.loads((world.report_dir / "metrics.json").read_text())
    listed = world.index.groupby("subset")["label"]
    for subset in ("alpha", "beta", "gamma"):
        counts = metrics["subsets"][subset]
        assert counts["n_real"] == int((listed.get_group(subset) == 0).sum()), subset
        assert counts["n_fake"] == int((listed.get_group(subset) == 1).sum()), subset


def test_an_epoch_visits_every_training_entry_once(world: World) -> None:
    rows = select_rows(world.cfg)
    epoch = _training_rows(rows.train, rows.views, 0, world.cfg.seed)
    assert len(epoch) == len(rows.train)  # one view: every entry once
    assert epoch["entry"].is_unique and epoch["row"].duplicated().any()  # shared reals repeat
    from clare.cache.loader import StoreLoader

    loader = StoreLoader(rows.store, epoch["row"].to_numpy(), epoch["label"].to_numpy(),
                         batch_size=8, seed=0, prefetch=0)
    assert sorted(loader.epoch_rows(0)) == sorted(epoch["row"])
    # Validation holds out whole videos: a shared frame's entries all sit on the same side.
    train_paths, val_paths = set(rows.train["path"]), set(rows.val["path"])
    assert not (train_paths & val_paths)
    record = yaml.safe_load((world.run_dir / "run.yaml").read_text())
    assert record["counts"]["train_entries"] == len(epoch)
    assert record["counts"]["train_rows"] == epoch["row"].nunique() < len(epoch)
    # What run_fit returns counts the same rows (distinct images), not entries.
    assert (world.fit.train_rows, world.fit.val_rows) == (
        record["counts"]["train_rows"], record["counts"]["val_rows"])


def test_damaged_entries_are_named_by_verify_and_fit_and_rewritten_by_extract(
        world: World, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(world.cfg.paths.stores, work / "stores")
    cfg = world.cfg.model_copy(deep=True)
    cfg.paths.stores = work / "stores"
    path = cfg.paths.stores / "train" / "entries.parquet"
    entries = pd.read_parquet(path)
    entries["label"] = (1 - entries["label"]).astype(entries["label"].dtype)
    entries.to_parquet(path, index=False)

    report = verify_store(cfg.paths.stores / "train", repair=False)
    failed = {check.name: check.detail for check in report.checks if not check.ok}
    assert set(failed) == {"entries", "index"}, failed
    assert "entries.parquet: its sha256 differs" in failed["entries"]
    # The fix is the same extract, which rewrites the file; --overwrite would redo every shard.
    assert "rerun `clare extract --config CONFIG --split train`" in failed["entries"]
    assert "--overwrite" not in failed["entries"]
    with pytest.raises(StoreError, match=r"entries.parquet: its sha256 differs"):
        select_rows(cfg)
    summary = run_extract(cfg, split="train", quiet=True)
    assert summary.shards_run == 0
    assert np.array_equal(pd.read_parquet(path)["label"], world.index["label"])
    assert verify_store(cfg.paths.stores / "train", repair=False).ok


def test_an_entry_whose_drawn_view_failed_trains_on_another_view_every_epoch() -> None:
    """`_training_rows` on entries x views where some views failed extraction (their lines are
    gone, as `select_rows` drops rows that are not ok): every entry with a usable view is
    still visited once in every epoch, so each epoch has the same number of steps."""
    views, n_entries = 3, 40
    table = pd.DataFrame({"entry": np.repeat(np.arange(n_entries), views),
                          "view": np.tile(np.arange(views), n_entries)})
    table["row"] = table["entry"] // 2 * views + table["view"]  # two entries per image
    failed = table["view"].to_numpy() == (table["entry"].to_numpy() // 2) % views
    usable = table[~failed | (table["entry"] < 4)].reset_index(drop=True)  # some keep all views
    for epoch in range(4):
        drawn = _training_rows(table, views, epoch, seed=3).set_index("entry")["row"]
        picked = _training_rows(usable, views, epoch, seed=3).set_index("entry")["row"]
        assert sorted(picked.index) == list(range(n_entries)), epoch
        assert set(picked) <= set(usable["row"])
        # An entry whose drawn view is usable keeps it: only the failed draws move.
        kept = drawn.isin(usable["row"])
        assert kept.sum() < n_entries and picked[kept].equals(drawn[kept])


def test_report_lare_examples_are_distinct_images(world: World) -> None:
    """gamma lists alpha's real frames again: the examples taken from the subsets in turn must
    not show one image twice."""
    from clare.stages.evaluate import pick_lare_examples

    store = FeatureStore(world.cfg.paths.stores / "test")
    scores = pd.read_parquet(world.report_dir / "scores.parquet").query("store == 'test'")
    examples = pick_lare_examples(store, scores, per_class=3)
    for label in (0, 1):
        paths = [e["path"] for e in examples if e["label"] == label]
        assert len(paths) == 3 and len(set(paths)) == 3, (label, paths)
