"""DF40 at full size without DF40: `clare prepare` on DF40's list structure, and batch mixing.

Builds DF40's lists in DeepfakeBench JSON (10 known methods in the ff and cdf domains, 7 unseen
methods, the same FF++ / Celeb-DF real videos listed again under every known method, 32
listed frames per video, 32 kept for training and the first 8 for testing, as
configs/df40.yaml does) over placeholder images: every listed frame is a hard link to one tiny
PNG, so the tree costs directory entries, not bytes. Then it runs `clare prepare` in a fresh
process and reports:

- prepare's wall time and peak memory (a fresh `clare --help` process is the baseline: imports);
- entries vs distinct images in the train index: the extractions one row per distinct image
  would save;
- batch mixing of clare's own StoreLoader (128-row shards, batch 128) over the train index:
  before, one row per entry in index order with the old window of 2 shards; after, one row
  per distinct image in the store's seeded order, an epoch over every entry, with fit's
  shuffle window;
- the time to lay out the store (store_layout + its digest) at this size.

    python -m benchmarks.bench_scale            # ~410k train entries, a few minutes on 2 cores
    python -m benchmarks.bench_scale --smoke    # 1/100 of the videos (CI)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from benchmarks.common import REPO_ROOT, add_common_args, print_table, write_results

NAME = "bench_scale"
KNOWN_METHODS = ("DiT", "SiT", "StyleGAN2", "StyleGAN3", "StyleGANXL", "VQGAN", "ddim", "pixart",
                 "rddm", "sd2.1")
UNSEEN_METHODS = ("heygen", "MidJourney", "whichisreal", "stargan", "starganv2", "styleclip",
                  "CollabDiff")
LIST_PREFIX = "deepfakes_detection_datasets/"
FF_REAL = "FaceForensics++/original_sequences/youtube/c23/frames"
CDF_REAL = "Celeb-DF-v2/Celeb-real/frames"
# Video counts at full size. FF++ lists 719 training videos; 560 fake videos per known method
# brings the train lists to the ≈410k entries DF40 has (≈230k of them the same ≈23k FF++
# real frames, listed once per method). Test counts are of the same order as DF40's.
FULL_VIDEOS = {"ff_real": 719, "ff_fake": 560, "cdf_real": 178, "cdf_fake": 178, "unseen": 100}
LISTED_FRAMES, TRAIN_FRAMES, TEST_FRAMES = 32, 32, 8
# ext4 allows 65,000 links to one inode: a new placeholder file after this many.
LINKS_PER_FILE = 60_000
SHARD_ROWS, BATCH = 128, 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--scale", type=float, help="fraction of DF40's videos (default 1, smoke 0.01)")
    parser.add_argument("--work", type=Path, help="folder for the tree, lists and index "
                        "(default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = 0.01 if args.smoke else 1.0
    if not 0 < args.scale <= 1:
        parser.error(f"--scale {args.scale}: expected a fraction in (0, 1]")
    return args


def video_counts(scale: float) -> dict[str, int]:
    """Videos per group at `scale`; at least 2, so every class can give a validation video."""
    return {key: max(2, round(count * scale)) for key, count in FULL_VIDEOS.items()}


# --------------------------------------------------------------------------- the tree


class Placeholders:
    """Hard links to a few tiny PNG files: a valid image header at every listed path."""

    def __init__(self, folder: Path) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 96, 80)).save(buffer, format="PNG")
        self.payload = buffer.getvalue()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.links = 0
        self.source = self._new_source()

    def _new_source(self) -> Path:
        path = self.folder / f"placeholder_{self.links // LINKS_PER_FILE:04d}.png"
        path.write_bytes(self.payload)
        return path

    def put(self, path: Path) -> None:
        if self.links and self.links % LINKS_PER_FILE == 0:
            self.source = self._new_source()
        os.link(self.source, path)
        self.links += 1


def _video_frames(root: Path, folder: str, placeholders: Placeholders) -> list[str]:
    """Write one video's listed frames; their paths as the lists name them."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    names = [f"{folder}/{n:03d}.png" for n in range(LISTED_FRAMES)]
    for name in names:
        placeholders.put(root / name)
    return [LIST_PREFIX + name for name in names]


def _write_list(lists: Path, stem: str, split: str, videos: dict[str, dict[str, list[str]]]) -> int:
    """DeepfakeBench JSON: {stem: {stem_Real|stem_Fake: {split: {video: {label, frames}}}}}."""
    body = {f"{stem}_{label}": {split: {vid: {"label": f"{stem}_{label}", "frames": frames}
                                        for vid, frames in by_video.items()}}
            for label, by_video in videos.items()}
    (lists / f"{stem}.json").write_text(json.dumps({stem: body}), encoding="utf-8")
    return sum(len(frames) for by_video in videos.values() for frames in by_video.values())


def build_df40_tree(work: Path, counts: dict[str, int]) -> dict[str, Any]:
    """Images under work/data, lists under work/lists; what was written."""
    root, lists = work / "data", work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    placeholders = Placeholders(work / "placeholders")
    ff_reals = {f"{i:03d}": _video_frames(root, f"{FF_REAL}/{i:03d}", placeholders)
                for i in range(counts["ff_real"])}
    cdf_reals = {f"id{i}_{i:04d}": _video_frames(root, f"{CDF_REAL}/id{i}_{i:04d}", placeholders)
                 for i in range(counts["cdf_real"])}
    listed = {"train": 0, "test": 0}
    for method in KNOWN_METHODS:
        for domain, reals, split in (("ff", ff_reals, "train"), ("cdf", cdf_reals, "test")):
            fakes = {f"{i:03d}_{i + 1:03d}": _video_frames(root, f"DF40/{method}/{domain}/{i:03d}", placeholders)
                     for i in range(counts[f"{domain}_fake"])}
            listed[split] += _write_list(lists, f"{method}_{domain}", split,
                                         {"Real": reals, "Fake": fakes})
    for method in UNSEEN_METHODS:
        videos = {label: {f"{i:03d}": _video_frames(root, f"DF40/{method}/{label.lower()}/{i:03d}",
                                                    placeholders)
                          for i in range(counts["unseen"])}
                  for label in ("Real", "Fake")}
        listed["test"] += _write_list(lists, method, "test", videos)
    return {"files": placeholders.links, "listed_train": listed["train"],
            "listed_test": listed["test"]}


def write_config(work: Path) -> Path:
    """A config like configs/df40.yaml's data section, pointing at the built tree."""
    config = {
        "seed": 0,
        "paths": {"stores": str(work / "stores"), "runs": str(work / "runs"),
                  "reports": str(work / "reports")},
        "data": {
            "root": str(work / "data"), "lists_dir": str(work / "lists"),
            "index_dir": str(work / "index"),
            "frames_per_video": {"train": TRAIN_FRAMES, "test": TEST_FRAMES},
            "frame_sampling": "first", "on_missing": "skip",
            "train": [f"{m}_ff" for m in KNOWN_METHODS],
            "test": [f"{m}_cdf" for m in KNOWN_METHODS] + list(UNSEEN_METHODS),
        },
    }
    path = work / "df40-shaped.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- measurements


@dataclass
class ProcessCost:
    seconds: float
    peak_rss_mib: float


def run_clare(*args: str) -> ProcessCost:
    """Run `clare ARGS` in a fresh process: its wall time and its own peak RSS (wait4)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen([sys.executable, "-m", "clare.cli", *args], cwd=REPO_ROOT,
                                 stdout=log, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            log.seek(0)
            raise SystemExit(f"clare {' '.join(args)} failed ({child.returncode}):\n"
                             f"{log.read().decode(errors='replace')[-4000:]}")
    return ProcessCost(seconds, usage.ru_maxrss / 1024.0)


def mixing(index: pd.DataFrame, work: Path, seed: int) -> dict[str, Any]:
    """Batch mixing before (a row per entry, index order, window 2) and after (a row per
    distinct image in the seeded order, an epoch over the entries, fit's window), and the time
    to lay out the store; through clare's StoreLoader over a store with tiny arrays."""
    from clare.cache.entries import store_layout
    from clare.cache.loader import StoreLoader, batch_mixing, by_row
    from clare.cache.writer import StoreWriter
    from clare.config import FitConfig
    from clare.data.df40 import describe_label_conflicts
    from clare.stages.fit import video_keys

    started = time.perf_counter()
    layout = store_layout(index, 1, None, seed, describe_conflicts=describe_label_conflicts)
    digest = layout.digest()
    layout_s = time.perf_counter() - started
    before_rows = index.assign(row=np.arange(len(index), dtype=np.int64))
    after_rows = layout.entries.assign(row=layout.entries["image"])
    store = StoreWriter.create(work / "mixing-store", n_rows=len(index),
                               shapes={"lare": (1, 1, 1), "cls": (1,), "tokens": (1, 1)},
                               shard_rows=SHARD_ROWS, meta={}).store
    out: dict[str, Any] = {"layout_s": layout_s, "index_sha256": digest[:12],
                           "rows_after": layout.n_images}
    for name, rows, window in (("before", before_rows, 2),
                               ("after", after_rows, FitConfig().shuffle_window)):
        loader = StoreLoader(store, rows["row"].to_numpy(), rows["label"].to_numpy(),
                             batch_size=BATCH, seed=seed, shuffle_window=window, prefetch=0)
        videos = pd.factorize(video_keys(rows))[0]
        out[name] = asdict(batch_mixing(loader, 0, by_row(rows["row"], rows["label"].to_numpy(),
                                                          store.n_rows),
                                        by_row(rows["row"], videos, store.n_rows)))
    return out


def index_counts(index_dir: Path) -> dict[str, Any]:
    train = pd.read_parquet(index_dir / "train.parquet")
    test = pd.read_parquet(index_dir / "test.parquet")
    entries, distinct = len(train), int(train["path"].nunique())
    return {"train_entries": entries, "train_distinct_images": distinct,
            "extractions_saved": entries - distinct,
            "extractions_saved_fraction": (entries - distinct) / entries if entries else 0.0,
            "test_entries": len(test), "test_distinct_images": int(test["path"].nunique())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = video_counts(args.scale)
    work = args.work or Path(tempfile.mkdtemp(prefix="clare-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        tree = build_df40_tree(work, counts)
        tree["seconds"] = time.perf_counter() - started
        config = write_config(work)
        startup = run_clare("--help")
        prepare = run_clare("prepare", "--config", str(config))
        counted = index_counts(work / "index")
        mixed = mixing(pd.read_parquet(work / "index" / "train.parquet"), work, args.seed)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results = {
        "tree": tree,
        "startup": asdict(startup),
        "prepare": asdict(prepare),
        "prepare_vs_startup_s": prepare.seconds / startup.seconds,
        "index": counted,
        "mixing": mixed,
    }
    params = {"seed": args.seed, "smoke": args.smoke, "scale": args.scale, "videos": counts,
              "known_methods": len(KNOWN_METHODS), "unseen_methods": len(UNSEEN_METHODS),
              "listed_frames": LISTED_FRAMES, "train_frames": TRAIN_FRAMES,
              "test_frames": TEST_FRAMES, "frame_sampling": "first", "shard_rows": SHARD_ROWS,
              "batch_size": BATCH, "shuffle_window": 2}
    notes = ["placeholder images are hard links to one 8x8 PNG: prepare's header probes read "
             "real files, but the page cache holds them all",
             "prepare and startup are fresh `python -m clare.cli` processes; startup is "
             "`clare --help` (imports only)",
             "mixing counts a video as a frame folder, as fit's validation split keys it"]
    write_results(args.out, NAME, params, results, notes)
    _print(results)
    print(f"results: {args.out}")
    return 0


def _print(results: dict[str, Any]) -> None:
    index, prepare, mixed = results["index"], results["prepare"], results["mixing"]
    print_table("clare prepare on DF40's list structure", ["measure", "value"], [
        ["files (placeholders)", results["tree"]["files"]],
        ["listed train / test frames", f"{results['tree']['listed_train']:,} / "
                                       f"{results['tree']['listed_test']:,}"],
        ["prepare wall s (startup s)", f"{prepare['seconds']:.1f} ({results['startup']['seconds']:.1f})"],
        ["prepare peak RSS MiB (startup)", f"{prepare['peak_rss_mib']:.0f} "
                                           f"({results['startup']['peak_rss_mib']:.0f})"],
        ["train entries", index["train_entries"]],
        ["train distinct images", index["train_distinct_images"]],
        ["extractions saved", f"{index['extractions_saved']:,} "
                              f"({index['extractions_saved_fraction']:.1%})"],
        ["store layout + digest s", mixed["layout_s"]],
    ])
    print_table("batch mixing (StoreLoader, 128-row shards, batch 128; before window 2, after "
                "fit's window over every entry)",
                ["order", "batches", "single-class batches", "median videos / batch", "min"],
                [[name, mixed[name]["batches"], f"{mixed[name]['single_class_fraction']:.2%}",
                  mixed[name]["median_videos"], mixed[name]["min_videos"]]
                 for name in ("before", "after")])


if __name__ == "__main__":
    raise SystemExit(main())
