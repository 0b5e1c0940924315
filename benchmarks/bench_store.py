"""Feature store on disk: size, file count, write and read speed against two baselines.

- store:  clare's FeatureStore (sharded Zarr v3, lz4 + shuffle, one row per inner chunk),
          written with StoreWriter.create + write_shard, read with read / read_rows.
- pt:     one torch.save file per image holding {lare, cls, tokens} as float32 (the CLaRE
          research code's cache format).
- memmap: plain NumPy memmaps holding the same bytes as the store (tokens float16), uncompressed.

The cost of the store's crc32c checksums (every inner chunk and shard index, checked on every
read) is measured in the same run: the same store written and read with and without the
checksum codec, the two timed in alternation so that machine load hits both alike.

Data are random (real CLIP tokens compress a little better than random float16). Reads run
right after the writes, so they come from the page cache: the figures compare the formats'
CPU cost (decoding, file opening), not the disk.

    python -m benchmarks.bench_store            # ViT-L/14 sizes, N=512 (~0.5 GB per format)
    python -m benchmarks.bench_store --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_common_args,
    dir_bytes,
    fill_defaults,
    peak_rss_mib,
    print_table,
    seed_everything,
    time_alternating,
    time_call,
    write_results,
)

NAME = "bench_store"
MB = 1e6
DTYPES = {"lare": np.float32, "cls": np.float32, "tokens": np.float16}

DEFAULTS = {
    "full": {"n": 512, "tokens": 256, "width": 1024, "embed": 768, "lare_side": 32,
             "shard_rows": 128, "read_batch": 32, "random_batches": 8, "warmup": 1, "repeats": 3,
             "checksum_repeats": 7, "loader_n": 2048},
    "smoke": {"n": 16, "tokens": 16, "width": 32, "embed": 24, "lare_side": 8,
              "shard_rows": 4, "read_batch": 4, "random_batches": 2, "warmup": 0, "repeats": 1,
              "checksum_repeats": 1, "loader_n": 32},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, NAME)
    parser.add_argument("--n", type=int, help="rows (images)")
    parser.add_argument("--tokens", type=int, help="patch tokens per image (256 for ViT-L/14)")
    parser.add_argument("--width", type=int, help="token width (1024 for ViT-L/14)")
    parser.add_argument("--embed", type=int, help="cls embedding width (768 for ViT-L/14)")
    parser.add_argument("--lare-side", type=int, help="LaRE map side (32 at 256 px)")
    parser.add_argument("--shard-rows", type=int, help="rows per shard (product default: 128)")
    parser.add_argument("--read-batch", type=int, help="rows per random read")
    parser.add_argument("--random-batches", type=int, help="random reads per timed run")
    parser.add_argument("--checksum-repeats", type=int,
                        help="alternating timed runs of the store with and without crc32c")
    parser.add_argument("--loader-n", type=int,
                        help="rows of the training-epoch comparison (enough shards for several "
                        "shuffle windows, as at DF40 size)")
    parser.add_argument("--work-dir", type=Path, help="where the three copies go (default: temp)")
    parser.add_argument("--identity-only", action="store_true",
                        help="measure only what the shard identity check costs a read")
    args = parser.parse_args(argv)
    fill_defaults(args, DEFAULTS)
    return args


def random_features(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, side = args.n, args.lare_side
    return {
        # LaRE maps are non-negative squared errors; cls/tokens roughly unit scale.
        "lare": rng.exponential(0.5, size=(n, 4, side, side)).astype(np.float32),
        "cls": rng.standard_normal((n, args.embed), dtype=np.float32),
        "tokens": rng.standard_normal((n, args.tokens, args.width), dtype=np.float32).astype(np.float16),
    }


def logical_bytes(features: dict[str, np.ndarray], rows: int) -> int:
    """Bytes of `rows` rows at the store's dtypes (what a reader gets back)."""
    return sum(array[0].nbytes for array in features.values()) * rows


# --------------------------------------------------------------------------- formats


def bench_manifest(n: int) -> Any:
    """The manifest rows of a benchmark store (all ok, half real, 8 frames per video)."""
    import pandas as pd

    from clare.cache.store import MANIFEST_COLUMNS

    rows = np.arange(n)
    return pd.DataFrame({
        "row": rows, "path": [f"img/{r:06d}.png" for r in rows], "subset": "bench",
        "label": (rows % 2).astype(np.int8), "video": [f"v{r // 8}" for r in rows],
        "frame": (rows % 8).astype(np.int32), "view": np.zeros(n, np.int16),
        "perturb": "", "status": "ok", "error": "", "sha256": "0" * 64,
        "width": np.full(n, 256, np.int32), "height": np.full(n, 256, np.int32),
    })[list(MANIFEST_COLUMNS)]


def write_store(path: Path, features: dict[str, np.ndarray], shard_rows: int, *,
                checksum: bool = True, uncompressed: frozenset[str] | None = None) -> None:
    from clare.cache.writer import UNCOMPRESSED, StoreWriter

    shutil.rmtree(path, ignore_errors=True)
    manifest = bench_manifest(len(features["cls"]))
    shapes = {name: tuple(array.shape[1:]) for name, array in features.items()}
    writer = StoreWriter.create(path, n_rows=len(manifest), shapes=shapes, shard_rows=shard_rows,
                                meta={"benchmark": True}, index=manifest, checksum=checksum,
                                uncompressed=UNCOMPRESSED if uncompressed is None else uncompressed)
    for shard in range(writer.store.n_shards):
        start, stop = writer.store.shard_bounds(shard)
        writer.write_shard(shard, {k: v[start:stop] for k, v in features.items()},
                           manifest.iloc[start:stop].reset_index(drop=True))
    writer.finalize()


def write_pt(path: Path, features: dict[str, np.ndarray]) -> None:
    import torch

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for row in range(len(features["cls"])):
        item = {name: torch.from_numpy(array[row].astype(np.float32)) for name, array in features.items()}
        torch.save(item, path / f"{row:06d}.pt")


def write_memmap(path: Path, features: dict[str, np.ndarray]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for name, array in features.items():
        target = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=array.dtype,
                                           shape=array.shape)
        target[:] = array
        target.flush()
        del target


class StoreReader:
    def __init__(self, path: Path) -> None:
        from clare.cache.store import ARRAYS, open_store

        self.store = open_store(path)
        self.names = ARRAYS

    def sequential(self, chunk: int) -> int:
        got = 0
        for start in range(0, self.store.n_rows, chunk):
            stop = min(start + chunk, self.store.n_rows)
            got += sum(self.store.read(name, start, stop).nbytes for name in self.names)
        return got

    def rows(self, rows: np.ndarray) -> int:
        return sum(self.store.read_rows(name, rows).nbytes for name in self.names)

    def rows_as_slices(self, rows: np.ndarray) -> int:
        """The same rows through one read(start, start + 1) each: a diagnostic for read_rows."""
        return sum(self.store.read(name, int(r), int(r) + 1).nbytes
                   for name in self.names for r in rows)


class PtReader:
    def __init__(self, path: Path, n: int) -> None:
        self.files = [path / f"{row:06d}.pt" for row in range(n)]

    def _load(self, row: int) -> int:
        import torch

        item = torch.load(self.files[row], weights_only=True)
        return sum(tensor.numpy().nbytes for tensor in item.values())

    def sequential(self, chunk: int) -> int:
        return sum(self._load(row) for row in range(len(self.files)))

    def rows(self, rows: np.ndarray) -> int:
        return sum(self._load(int(row)) for row in rows)


class MemmapReader:
    def __init__(self, path: Path) -> None:
        self.arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in DTYPES}

    def sequential(self, chunk: int) -> int:
        got = 0
        n = len(self.arrays["cls"])
        for start in range(0, n, chunk):
            # np.array copies: a reader needs the values in memory, not a lazy view.
            got += sum(np.array(a[start : start + chunk]).nbytes for a in self.arrays.values())
        return got

    def rows(self, rows: np.ndarray) -> int:
        return sum(a[rows].nbytes for a in self.arrays.values())


# --------------------------------------------------------------------------- measuring


def measure_format(name: str, path: Path, features: dict[str, np.ndarray], args: argparse.Namespace,
                   random_rows: list[np.ndarray]) -> dict[str, Any]:
    n = args.n
    writers = {
        "store": lambda: write_store(path, features, args.shard_rows),
        "pt": lambda: write_pt(path, features),
        "memmap": lambda: write_memmap(path, features),
    }
    write = time_call(writers[name], warmup=args.warmup, repeats=args.repeats)
    size, files = dir_bytes(path)
    reader = {"store": lambda: StoreReader(path), "pt": lambda: PtReader(path, n),
              "memmap": lambda: MemmapReader(path)}[name]()
    delivered = logical_bytes(features, n)
    if reader.sequential(args.shard_rows) < delivered:  # pt returns float32: more bytes
        raise RuntimeError(f"{name}: a full read returned fewer bytes than were written")
    sequential = time_call(lambda: reader.sequential(args.shard_rows), warmup=args.warmup,
                           repeats=args.repeats)
    random_bytes = logical_bytes(features, sum(len(r) for r in random_rows))
    random = time_call(lambda: [reader.rows(r) for r in random_rows], warmup=args.warmup,
                       repeats=args.repeats)
    random_count = sum(len(r) for r in random_rows)
    extra: dict[str, Any] = {}
    if name == "store":
        slices = time_call(lambda: [reader.rows_as_slices(r) for r in random_rows],
                           warmup=args.warmup, repeats=args.repeats)
        extra["read_random_row_slices_mb_s"] = random_bytes / MB / slices.median_s
    return {
        **extra,
        "bytes_on_disk": size,
        "bytes_per_image": size / n,
        "files": files,
        "write_s": write.median_s,
        # MB/s of feature bytes at the store's dtypes, so every format is measured on the
        # same payload (pt writes twice the token bytes, as float32).
        "write_mb_s": delivered / MB / write.median_s,
        "write_images_s": n / write.median_s,
        "read_seq_s": sequential.median_s,
        "read_seq_mb_s": delivered / MB / sequential.median_s,
        "read_random_s": random.median_s,
        "read_random_mb_s": random_bytes / MB / random.median_s,
        "read_random_rows_s": random_count / random.median_s,
    }


def crc32c_mb_s(path: Path, shard_rows: int) -> float:
    """google_crc32c (what Zarr's codec calls) over the shard files cut into row-sized pieces.

    The codec checks one inner chunk (one row) at a time, so the pieces have a row's size.
    """
    import google_crc32c

    pieces = []
    for file in path.glob("features.zarr/*/c/**/*"):
        if file.is_file():
            data = file.read_bytes()
            step = max(1, len(data) // shard_rows)
            pieces += [data[i : i + step] for i in range(0, len(data), step)]
    total = sum(len(piece) for piece in pieces)
    timing = time_call(lambda: [google_crc32c.value(piece) for piece in pieces], warmup=1, repeats=5)
    return total / MB / timing.min_s


def measure_checksum_cost(work: Path, features: dict[str, np.ndarray], args: argparse.Namespace,
                          random_rows: list[np.ndarray]) -> dict[str, Any]:
    """The store with crc32c (the product) against the same store without it."""
    paths = {"crc32c": work / "store-crc32c", "none": work / "store-none"}
    writes = time_alternating(
        {name: (lambda p=path, c=(name == "crc32c"): write_store(p, features, args.shard_rows, checksum=c))
         for name, path in paths.items()},
        warmup=args.warmup, repeats=args.checksum_repeats)
    readers = {name: StoreReader(path) for name, path in paths.items()}
    sequential = time_alternating({name: (lambda r=r: r.sequential(args.shard_rows)) for name, r in readers.items()},
                                  warmup=args.warmup, repeats=args.checksum_repeats)
    random = time_alternating({name: (lambda r=r: [r.rows(rows) for rows in random_rows])
                               for name, r in readers.items()},
                              warmup=args.warmup, repeats=args.checksum_repeats)
    delivered = logical_bytes(features, args.n)
    random_bytes = logical_bytes(features, sum(len(r) for r in random_rows))
    out: dict[str, Any] = {"crc32c_mb_s": crc32c_mb_s(paths["crc32c"], args.shard_rows)}
    for name, path in paths.items():
        out[name] = {"bytes_on_disk": dir_bytes(path)[0]}
        for stat in ("median", "min"):
            suffix = "" if stat == "median" else "_best"
            out[name][f"write_mb_s{suffix}"] = delivered / MB / writes[name][stat]
            out[name][f"read_seq_mb_s{suffix}"] = delivered / MB / sequential[name][stat]
            out[name][f"read_random_mb_s{suffix}"] = random_bytes / MB / random[name][stat]
        shutil.rmtree(path, ignore_errors=True)
    with_crc, without = out["crc32c"], out["none"]
    for key in with_crc:
        # Below 1 for speeds means the checksum costs time; above 1 for bytes, space.
        out[f"{key.replace('_mb_s', '')}_ratio"] = with_crc[key] / without[key]
    # The checksum's own share of a sequential read, from two rates measured under the same
    # load: steadier than the end-to-end ratio when other work shares the machine.
    out["read_seq_crc_share"] = without["read_seq_mb_s"] / out["crc32c_mb_s"]
    return out


# --------------------------------------------------------------------------- the training loader


def legacy_epoch(store: Any, batch_size: int, seed: int, window: int) -> int:
    """An epoch as clare's loader read it before store format clare-store/3 (the "before"
    column, in the same run): per shard a slice read then a row pick, a NaN scan of every
    value, a window concatenated then permuted, batches cut from a joined buffer and cast to
    float32. Returns the feature bytes delivered at the store's dtypes."""
    rows = np.arange(store.n_rows)
    rng = np.random.default_rng([seed, 0])
    shards = list(rng.permutation(store.n_shards))
    got, buffer = 0, None
    for start in range(0, len(shards), window):
        parts = {name: [] for name in DTYPES}
        for shard in shards[start : start + window]:
            a, b = store.shard_bounds(int(shard))
            for name in DTYPES:
                values = store.read(name, a, b)[rows[a:b] - a]
                assert np.isfinite(values.reshape(len(values), -1)).all(axis=1).all()
                parts[name].append(values)
        joined = {name: np.concatenate(v) for name, v in parts.items()}
        perm = rng.permutation(len(joined["cls"]))
        joined = {name: v[perm] for name, v in joined.items()}
        buffer = joined if buffer is None else {n: np.concatenate([buffer[n], joined[n]]) for n in joined}
        while len(buffer["cls"]) >= batch_size:
            for v in buffer.values():
                np.ascontiguousarray(v[:batch_size], dtype=np.float32)  # the batch tensors
                got += v[:batch_size].nbytes  # counted at the store's dtypes, like every format
            buffer = {n: v[batch_size:] for n, v in buffer.items()}
    return got + sum(v.nbytes for v in buffer.values())


def loader_epoch(store: Any, batch_size: int, seed: int, *, shuffle: bool, window: int,
                 cache: Any = None) -> int:
    """One epoch of clare's StoreLoader as fit builds it (every row, cls + tokens + lare);
    `cache`: a RowCache filled beforehand (fit.cache ram after its first read)."""
    from clare.cache.loader import StoreLoader

    rows = np.arange(store.n_rows)
    row_cache = cache
    loader = StoreLoader(store, rows, rows % 2, batch_size=batch_size, seed=seed, shuffle=shuffle,
                         shuffle_window=window, prefetch=0, cache=row_cache)
    return sum(b.cls.numpy().nbytes + b.tokens.numpy().nbytes + b.lare.numpy().nbytes
               for b in loader.epoch(0))


def open_with_pipeline(path: Path, zarrs: bool, *, mapped: bool = True) -> Any:
    """A fresh FeatureStore whose arrays open with zarrs or with zarr-python's pipeline;
    `mapped=False`: one that never uses token rows in place (every read decodes, as before)."""
    import os

    from clare.cache.store import FeatureStore

    class DecodedStore(FeatureStore):
        def mapped_rows(self, name: str, rows: np.ndarray) -> None:
            return None

    os.environ["CLARE_ZARRS"] = "1" if zarrs else "0"
    try:
        store = (FeatureStore if mapped else DecodedStore)(path)
        for name in DTYPES:
            store.array(name)
    finally:
        os.environ.pop("CLARE_ZARRS", None)
    return store


def measure_loader(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Training-epoch reads against a memmap copy of the same bytes, before and after, alternated."""
    from clare.cache.loader import RowCache
    from clare.config import FitConfig

    args = argparse.Namespace(**{**vars(args), "n": args.loader_n})
    features = random_features(args, np.random.default_rng(args.seed + 2))
    fit = FitConfig()
    batch, window = fit.batch_size, fit.shuffle_window
    write_store(work / "new", features, args.shard_rows)
    write_store(work / "old", features, args.shard_rows, uncompressed=frozenset())
    write_memmap(work / "memmap", features)
    new = open_with_pipeline(work / "new", True)
    decoded = open_with_pipeline(work / "new", True, mapped=False)
    old = open_with_pipeline(work / "old", False)
    memmap = MemmapReader(work / "memmap")
    delivered = logical_bytes(features, args.n)
    cached = RowCache(new, np.arange(args.n), list(DTYPES))
    fns = {
        "memmap copy": lambda: memmap.sequential(args.shard_rows),
        "before: store/2 + old loader": lambda: legacy_epoch(old, batch, args.seed, 2),
        "tokens decoded by zarrs (session 3)": lambda: loader_epoch(
            decoded, batch, args.seed, shuffle=True, window=window),
        "after: fit epoch": lambda: loader_epoch(new, batch, args.seed, shuffle=True, window=window),
        "after: in order (eval)": lambda: loader_epoch(new, batch, args.seed, shuffle=False, window=1),
        "after: fit.cache ram (epochs 2+)": lambda: loader_epoch(
            new, batch, args.seed, shuffle=True, window=window, cache=cached),
    }
    for name, fn in fns.items():  # every variant delivers every byte once
        if fn() < delivered:
            raise RuntimeError(f"{name}: an epoch delivered fewer bytes than the store holds")
    timed = time_alternating(fns, warmup=args.warmup, repeats=args.checksum_repeats)
    base = delivered / MB / timed["memmap copy"]["median"]
    out: dict[str, Any] = {"batch_size": batch, "shuffle_window": window}
    for name, t in timed.items():
        rate = delivered / MB / t["median"]
        out[name] = {"mb_s": rate, "samples_s": args.n / t["median"], "vs_memmap": rate / base,
                     "best_vs_memmap": timed["memmap copy"]["min"] / t["min"]}
    # Random rows, old layout against new (read_rows, as the report and explain read them).
    rng = np.random.default_rng(args.seed + 1)
    picks = [np.sort(rng.choice(args.n, size=min(args.read_batch, args.n), replace=False))
             for _ in range(args.random_batches)]
    count = sum(len(p) for p in picks)
    random = time_alternating(
        {f"random rows: {label}": (lambda s=store: [s.read_rows(n, p) for p in picks for n in DTYPES])
         for label, store in (("before (store/2)", old), ("after", new))},
        warmup=args.warmup, repeats=args.checksum_repeats)
    for name, t in random.items():
        out[name] = {"rows_s": count / t["median"]}
    for name in ("new", "old", "memmap"):
        shutil.rmtree(work / name, ignore_errors=True)
    return out


def measure_identity_cost(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What checking each shard file's identity costs a read (`FeatureStore.check_identity`):
    the same store read with the check and with a FeatureStore that skips it, alternated.

    "fresh store" opens the store anew for every epoch, so every shard file is checked again
    (its index and 4 bytes per row); "open store" reuses one, as fit's epochs do, where a file
    whose stat did not change is not checked again; random rows are eval/explain's read_rows."""
    from clare.cache.store import FeatureStore

    class UncheckedStore(FeatureStore):
        def recorded_crcs(self, name: str, shard: int) -> None:
            return None

    args = argparse.Namespace(**{**vars(args), "n": args.loader_n})
    features = random_features(args, np.random.default_rng(args.seed + 3))
    write_store(work / "identity", features, args.shard_rows)
    batch, window = 32, 4
    stores = {"checked": FeatureStore(work / "identity"), "unchecked": UncheckedStore(work / "identity")}
    kinds = {"checked": FeatureStore, "unchecked": UncheckedStore}
    rng = np.random.default_rng(args.seed + 4)
    picks = [np.sort(rng.choice(args.n, size=min(args.read_batch, args.n), replace=False))
             for _ in range(args.random_batches)]
    fns = {}
    for name in stores:
        fns[f"fit epoch, fresh store: {name}"] = (lambda k=kinds[name]: loader_epoch(
            k(work / "identity"), batch, args.seed, shuffle=True, window=window))
        fns[f"fit epoch, open store: {name}"] = (lambda s=stores[name]: loader_epoch(
            s, batch, args.seed, shuffle=True, window=window))
        fns[f"random rows: {name}"] = (lambda s=stores[name]: [s.read_rows(n, p) for p in picks
                                                                for n in DTYPES])
    timed = time_alternating(fns, warmup=max(args.warmup, 1), repeats=args.checksum_repeats)
    out: dict[str, Any] = {"rows": args.n, "shards": stores["checked"].n_shards,
                           "seconds": {k: v for k, v in timed.items()}}
    # The check alone, over every shard file of the three arrays (what a fresh store pays once
    # per file), against an unchecked fresh epoch: steadier than the end-to-end ratio when other
    # work shares the machine, like read_seq_crc_share.
    from clare.cache.mapped import chunk_checksums

    files = [stores["checked"].shard_file(name, shard) for name in DTYPES
             for shard in range(stores["checked"].n_shards)]
    check = time_call(lambda: [chunk_checksums(f, args.shard_rows) for f in files], warmup=1,
                      repeats=max(args.checksum_repeats, 3))
    out["check_every_shard_file_s"] = check.min_s
    out["check_share_of_an_epoch"] = check.min_s / timed["fit epoch, fresh store: unchecked"]["min"]
    for what in ("fit epoch, fresh store", "fit epoch, open store", "random rows"):
        checked, unchecked = timed[f"{what}: checked"], timed[f"{what}: unchecked"]
        # Above 1: the check costs time (checked seconds / unchecked seconds).
        out[f"{what}: time ratio"] = {"median": checked["median"] / unchecked["median"],
                                      "best": checked["min"] / unchecked["min"]}
    shutil.rmtree(work / "identity", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    temp = None
    if args.work_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="clare-bench-store-")
        args.work_dir = Path(temp.name)
    work = Path(args.work_dir)
    if args.identity_only:
        _report_identity(args, {"identity": measure_identity_cost(work, args)})
        if temp is not None:
            temp.cleanup()
        return 0
    started = time.perf_counter()
    features = random_features(args, rng)
    random_rows = [np.sort(rng.choice(args.n, size=min(args.read_batch, args.n), replace=False))
                   for _ in range(args.random_batches)]
    results: dict[str, Any] = {"payload_bytes_per_image": logical_bytes(features, 1)}
    for name in ("store", "pt", "memmap"):
        results[name] = measure_format(name, work / name, features, args, random_rows)
        shutil.rmtree(work / name, ignore_errors=True)  # keep at most one copy on disk
    results["checksum"] = measure_checksum_cost(work, features, args, random_rows)
    results["loader"] = measure_loader(work, args)
    results["identity"] = measure_identity_cost(work, args)
    store, pt, memmap = results["store"], results["pt"], results["memmap"]
    results["store_vs_pt_bytes"] = store["bytes_per_image"] / pt["bytes_per_image"]
    results["store_vs_memmap_read_seq"] = store["read_seq_mb_s"] / memmap["read_seq_mb_s"]
    results["store_vs_memmap_read_random"] = store["read_random_mb_s"] / memmap["read_random_mb_s"]
    results["peak_rss_mib"] = peak_rss_mib()
    results["seconds_total"] = time.perf_counter() - started
    params = {k: getattr(args, k) for k in ("n", "tokens", "width", "embed", "lare_side",
                                            "shard_rows", "read_batch", "random_batches",
                                            "warmup", "repeats", "checksum_repeats",
                                            "loader_n", "seed",
                                            "smoke")}
    notes = ["random data; reads follow the writes (page cache warm)",
             "MB/s = 10^6 bytes of features at the store's dtypes per second",
             "random reads: batches of read_batch sorted random rows (read_rows for the store)",
             "read_random_row_slices_mb_s: the store's random rows read one read() per row",
             "checksum: the store with and without crc32c, timed alternately; *_ratio = with / without;"
             " *_best = fastest run (least disturbed by other load); crc32c_mb_s = the checksum"
             " function alone over row-sized pieces of the shard files; read_seq_crc_share ="
             " read_seq_mb_s (none) / crc32c_mb_s, the checksum's share of a sequential read"]
    write_results(args.out, NAME, params, results, notes)
    print_table(
        f"feature storage, N={args.n}, tokens {args.tokens}x{args.width} fp16, cls {args.embed}, "
        f"LaRE 4x{args.lare_side}x{args.lare_side}",
        ["format", "KiB/image", "files", "write MB/s", "seq read MB/s", "random read MB/s",
         "random rows/s"],
        [[name, results[name]["bytes_per_image"] / 1024, results[name]["files"],
          results[name]["write_mb_s"], results[name]["read_seq_mb_s"],
          results[name]["read_random_mb_s"], results[name]["read_random_rows_s"]]
         for name in ("store", "pt", "memmap")],
    )
    print(f"store random rows read as one-row slices instead of read_rows: "
          f"{store['read_random_row_slices_mb_s']:.1f} MB/s")
    print(f"store/pt bytes: {results['store_vs_pt_bytes']:.3f}; store/memmap read: sequential "
          f"{results['store_vs_memmap_read_seq']:.3f}, random {results['store_vs_memmap_read_random']:.4f}")
    cost = results["checksum"]
    print_table(
        "crc32c checksums in the store (timed alternately, same run): median (best) MB/s",
        ["store", "write", "seq read", "random read", "bytes on disk"],
        [[name, *(f"{cost[name][k]:.1f} ({cost[name][k + '_best']:.1f})"
                  for k in ("write_mb_s", "read_seq_mb_s", "read_random_mb_s")),
          cost[name]["bytes_on_disk"]] for name in ("none", "crc32c")],
    )
    print("with / without crc32c, median (best): " + ", ".join(
        f"{what} {cost[key + '_ratio']:.3f} ({cost[key + '_best_ratio']:.3f})"
        for what, key in (("write", "write"), ("sequential read", "read_seq"),
                          ("random read", "read_random")))
          + f"; bytes {cost['bytes_on_disk_ratio']:.5f}; crc32c alone {cost['crc32c_mb_s']:.0f} MB/s, "
          f"{cost['read_seq_crc_share']:.1%} of a sequential read")
    loader = results["loader"]
    print_table(
        f"a training epoch of {args.loader_n} rows (batch {loader['batch_size']}, cls + tokens + "
        "lare) against a memmap copy of the same bytes (timed alternately, same run)",
        ["read", "MB/s", "samples/s", "/ memmap (median)", "/ memmap (best)"],
        [[name, v["mb_s"], v["samples_s"], f"{v['vs_memmap']:.3f}", f"{v['best_vs_memmap']:.3f}"]
         for name, v in loader.items() if isinstance(v, dict) and "mb_s" in v],
    )
    print(", ".join(f"{name} {v['rows_s']:.0f} rows/s" for name, v in loader.items()
                    if isinstance(v, dict) and "rows_s" in v))
    print(f"results: {args.out}")
    if temp is not None:
        temp.cleanup()
    return 0


def _report_identity(args: argparse.Namespace, results: dict[str, Any]) -> None:
    identity = results["identity"]
    write_results(args.out, NAME, {"loader_n": args.loader_n, "shard_rows": args.shard_rows,
                                   "tokens": args.tokens, "width": args.width, "seed": args.seed,
                                   "checksum_repeats": args.checksum_repeats, "smoke": args.smoke},
                  {"identity": identity}, ["identity only: checked / unchecked seconds, alternated"])
    print_table(f"shard identity check, {identity['rows']} rows in {identity['shards']} shards "
                "(timed alternately, same run): checked / unchecked seconds",
                ["read", "median", "best"],
                [[what.removesuffix(": time ratio"), f"{r['median']:.3f}", f"{r['best']:.3f}"]
                 for what, r in identity.items() if what.endswith("time ratio")])
    print(f"the check alone over every shard file: {identity['check_every_shard_file_s'] * 1e3:.2f} ms, "
          f"{identity['check_share_of_an_epoch']:.2%} of an unchecked epoch (fastest runs)")
    print(f"results: {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
