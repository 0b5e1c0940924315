"""Every DF40 protocol config validates as a layer on configs/df40.yaml and prepares the
subsets it promises from DF40-shaped lists (DeepfakeBench JSON, shared reals per domain)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clare.config_files import load_config
from clare.data.df40_methods import DF40_KNOWN, DF40_UNKNOWN, df40_method
from clare.stages.prepare import run_prepare

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = sorted(p.stem for p in (REPO / "configs" / "df40").glob("*.yaml"))
PREFIX = "deepfakes_detection_datasets/"
SPLITS = ("train", "test")
KNOWN = [m for family in DF40_KNOWN.values() for m in family]
UNKNOWN = [m for family in DF40_UNKNOWN.values() for m in family]


class Frames:
    """Listed frames as hard links to one tiny PNG: every path DF40's lists name exists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "frame.png"
        root.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (110, 90, 70)).save(self.source)

    def video(self, folder: str) -> list[str]:
        names = [f"{folder}/{n:03d}.png" for n in range(2)]
        for name in names:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            if not (self.root / name).exists():
                os.link(self.source, self.root / name)
        return [PREFIX + name for name in names]


def _write_list(lists: Path, stem: str, real: dict[str, dict[str, list[str]]],
                fake: dict[str, dict[str, list[str]]]) -> None:
    """{stem: {stem_Real|stem_Fake: {split: {video: {label, frames}}}}}."""
    body = {f"{stem}_{label}": {split: {video: {"label": f"{stem}_{label}", "frames": frames}
                                        for video, frames in by_split[split].items()}
                                for split in SPLITS}
            for label, by_split in (("Real", real), ("Fake", fake))}
    (lists / f"{stem}.json").write_text(json.dumps({stem: body}), encoding="utf-8")


@pytest.fixture(scope="module")
def df40_tree(tmp_path_factory) -> Path:
    """A DF40 layout: 31 known methods x {ff, cdf} and 9 unknown ones, one real and one fake
    video per split; every `_ff` list names the same FF++ reals, every `_cdf` the same
    Celeb-DF reals, as DF40's lists do."""
    base = tmp_path_factory.mktemp("df40")
    frames, lists = Frames(base / "data"), base / "lists"
    lists.mkdir()
    reals = {domain: {split: {f"{domain}-{split}": frames.video(f"{domain}_real/{split}")}
                      for split in SPLITS} for domain in ("ff", "cdf")}
    for method in KNOWN:
        for domain in ("ff", "cdf"):
            fake = {split: {f"{method}-{split}": frames.video(f"DF40/{method}/{domain}/{split}")}
                    for split in SPLITS}
            _write_list(lists, f"{method}_{domain}", reals[domain], fake)
    for method in UNKNOWN:
        own = {label: {split: {f"{label}-{split}": frames.video(f"DF40/{method}/{label}/{split}")}
                       for split in SPLITS} for label in ("real", "fake")}
        _write_list(lists, method, own["real"], own["fake"])
    return base


def _protocol(name: str, tree: Path, work: Path):
    overrides = [f"data.root={tree / 'data'}", f"data.lists_dir={tree / 'lists'}",
                 f"data.index_dir={work / 'index'}", f"paths.stores={work / 'stores'}"]
    return load_config([REPO / "configs" / "df40.yaml", REPO / "configs" / "df40" / f"{name}.yaml"],
                       overrides)


def test_the_shipped_protocols(df40_tree):
    assert PROTOCOLS == ["efs", "efs-all", "fe", "fr", "fr-all", "fs", "fs-all"]
    base = load_config(REPO / "configs" / "df40.yaml")
    efs = load_config([REPO / "configs" / "df40.yaml", REPO / "configs" / "df40" / "efs.yaml"])
    # configs/df40.yaml alone is CLaRE's entire-face-synthesis protocol, as efs.yaml.
    assert efs.data.train == base.data.train and efs.data.test == base.data.test
    stores = {load_config([REPO / "configs" / "df40.yaml",
                           REPO / "configs" / "df40" / f"{name}.yaml"]).paths.stores
              for name in PROTOCOLS}
    assert len(stores) == len(PROTOCOLS)  # no two protocols share a store


@pytest.mark.parametrize("name", PROTOCOLS)
def test_protocol_prepares_its_subsets(name, df40_tree, tmp_path):
    cfg = _protocol(name, df40_tree, tmp_path)
    family = name.split("-")[0].upper()
    written = run_prepare(cfg)
    index = {split: pd.read_parquet(written[split]) for split in SPLITS}
    for split, specs in (("train", cfg.data.train), ("test", cfg.data.test)):
        subsets = index[split]["subset"]
        assert list(pd.unique(subsets)) == [s.name for s in specs], split
        labels = index[split].groupby("subset")["label"].nunique()
        assert (labels == 2).all(), split  # a real and a fake video in every subset
        assert set(index[split]["split"]) == {split}
    train = [df40_method(s.name) for s in cfg.data.train]
    test = [df40_method(s.name) for s in cfg.data.test]
    assert None not in train and None not in test  # every list is one of DF40's methods
    if family == "FE":
        assert train == test == [("FE", "", False)] * 5
        return
    # Train: every known method of the family in the FF++ domain, nothing else.
    assert sorted(train) == [(family, "ff", True)] * len(DF40_KNOWN[family])
    # Test: the family's known methods in the Celeb-DF domain, and unknown methods.
    assert {(f, d) for f, d, known in test if known and d == "cdf"} >= {(family, "cdf")}
    assert any(not known for _f, _d, known in test)
    if name.endswith("-all"):  # DF40 Protocols 1-3: every known method in both domains
        assert len([t for t in test if t[2]]) == 2 * len(KNOWN) and len(test) == 2 * len(KNOWN) + 9
    elif name != "efs":
        assert [t for t in test if t[2]] == [(family, "cdf", True)] * len(DF40_KNOWN[family])
        assert len(test) == len(DF40_KNOWN[family]) + len(UNKNOWN)
