"""Stage one: run the frozen VAE, UNet and CLIP ViT once per image and view, into a FeatureStore.

Work is split by shard: a worker owns whole shards (different files, so writers never collide),
computes every row of its shard and writes each array with a single assignment. A shard is done
when its marker exists, so a killed run resumes by redoing only unmarked shards. Within a shard,
decoding and preprocessing run in a thread pool ahead of the model batches.

With one worker (the default) shards run in this process; `--workers N` starts a dask
LocalCluster and `--scheduler ADDRESS` uses an existing Dask cluster (e.g. dask-jobqueue).
Every random draw of a row is seeded from (seed, image sha256, view), shards have fixed rows
and batches, and every CPU worker runs `extract.cpu_threads` intra-op threads (CPU kernels may
sum in another order with another thread count), so the arrays are bit-identical for any
number of workers. On GPU, cuDNN runs its deterministic algorithms for the same reason.
"""

from __future__ import annotations

import errno
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.markup import escape

from clare import fingerprint as fp
from clare.cache.entries import store_layout
from clare.cache.store import FeatureStore
from clare.cache.writer import StoreWriter, open_or_create, store_meta
from clare.config import Config
from clare.console import library_log_level, library_logging, make_console, step_progress
from clare.data.df40 import describe_label_conflicts
from clare.data.views import Perturbation, parse_perturbation
from clare.errors import ConfigError, StoreError, one_line, reason_label, short_repr
from clare.features import (
    FeatureExtractor,
    Prepared,
    RowPreparer,
    compute_features,
    get_extractor,
)

# --------------------------------------------------------------------------- job description


@dataclass
class ExtractJob:
    """Everything a worker needs to compute any shard of one store (picklable)."""

    config: dict[str, Any]
    store_path: str
    data_root: str
    rows: pd.DataFrame  # the store's manifest skeleton: row, path, subset, ..., view, perturb
    device: str
    perturb: str | None


@dataclass
class ShardResult:
    index: int
    ok: int
    failed: int
    seconds: float = 0.0


@dataclass
class ExtractSummary:
    store: Path
    rows: int
    images: int  # distinct images, each extracted once
    entries: int  # listed frames pointing at them
    views: int
    ok: int
    failed: int
    reasons: dict[str, int]
    shards_total: int
    shards_run: int
    seconds: float
    bytes_per_row: float


# --------------------------------------------------------------------------- one shard


def _batched(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def worker_slot(worker_name: object) -> int:
    """A number for a Dask worker's name, the same in every process, that spreads a cluster's
    workers over the GPUs: the name itself when it is a number (LocalCluster: 0, 1, ...), else
    its trailing number (dask-jobqueue: `SLURMCluster-3`, `SLURMCluster-0-1`), else its CRC-32.
    Not `hash()`: Python salts str hashes per process, so two workers could pick differently
    on every run."""
    text = str(worker_name)
    trailing = re.search(r"([0-9]+)$", text)
    if trailing:
        return int(trailing.group(1))
    return zlib.crc32(text.encode("utf-8"))


def _resolve_worker_device(name: str) -> torch.device:
    from clare.models.loading import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        # One GPU per Dask worker: worker i takes cuda:i (mod the GPUs it can see).
        try:
            from dask.distributed import get_worker

            device = torch.device("cuda", worker_slot(get_worker().name) % torch.cuda.device_count())
        except (ImportError, ValueError):
            pass
    return device


def compute_shard(job: ExtractJob, index: int) -> ShardResult:
    """Compute and write one shard of the store. Runs in the driver or in a Dask worker."""
    cfg = Config.model_validate(job.config)
    device = _resolve_worker_device(job.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.extract.cpu_threads)
    try:
        return _compute_shard(job, index, cfg, device)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _ShardOutput:
    """The arrays and manifest columns of one shard, filled row by row (NaN / failed until a
    row's features are in and finite)."""

    out: dict[str, np.ndarray]
    status: list[str]
    errors: list[str]
    sha: list[str]
    width: np.ndarray
    height: np.ndarray

    @classmethod
    def empty(cls, n: int, shapes: dict[str, Any]) -> _ShardOutput:
        out = {
            "lare": np.full((n, *shapes["lare"]), np.nan, dtype=np.float32),
            "cls": np.full((n, *shapes["cls"]), np.nan, dtype=np.float32),
            "tokens": np.full((n, *shapes["tokens"]), np.nan, dtype=np.float16),
        }
        return cls(out, ["failed"] * n, [""] * n, [""] * n,
                   np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32))

    def record_prepared(self, i: int, item: Prepared) -> None:
        if item.error is not None:
            self.errors[i] = item.error
        else:
            self.sha[i], self.width[i], self.height[i] = item.sha256 or "", item.width or 0, item.height or 0

    def record_features(self, i: int, lare: np.ndarray, cls: np.ndarray, tokens: np.ndarray) -> None:
        self.out["lare"][i], self.out["cls"][i], self.out["tokens"][i] = lare, cls, tokens
        if all(np.isfinite(self.out[name][i]).all() for name in self.out):
            self.status[i] = "ok"
            return
        self.errors[i] = "non-finite features: the model produced NaN or inf"
        for name in self.out:
            self.out[name][i] = np.nan

    def manifest(self, rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(status=self.status, error=self.errors, sha256=self.sha,
                           width=self.width, height=self.height)


def _prepared_batches(batches: list[list[int]], prepare: Any,
                      threads: int) -> Iterator[tuple[list[int], list[Prepared]]]:
    """(batch, its prepared rows) in order, decoding up to two batches ahead in a thread pool."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: list[list[Future[Prepared]]] = [
            [pool.submit(prepare, i) for i in batch] for batch in batches[:2]
        ]
        for number, batch in enumerate(batches):
            prepared = [future.result() for future in pending.pop(0)]
            if number + 2 < len(batches):
                pending.append([pool.submit(prepare, i) for i in batches[number + 2]])
            yield batch, prepared


def _run_models(extractor: FeatureExtractor, seed: int, views: list[int], batch: list[int],
                prepared: list[Prepared], output: _ShardOutput) -> None:
    """Both frozen branches on the batch's good rows; failures of the models stop the run."""
    features = compute_features(extractor, seed, views, prepared)
    if features is None:
        return
    for j, k in enumerate(features.index):
        output.record_features(batch[k], features.lare[j], features.cls[j], features.tokens[j])


def _compute_shard(job: ExtractJob, index: int, cfg: Config, device: torch.device) -> ShardResult:
    started = time.perf_counter()
    extractor = get_extractor(cfg, device)
    store = FeatureStore(job.store_path)
    start, stop = store.shard_bounds(index)
    rows = job.rows.iloc[start:stop].reset_index(drop=True)
    n = len(rows)
    output = _ShardOutput.empty(n, store.meta["shapes"])
    prepare_row = RowPreparer(cfg, Path(job.data_root), extractor.clip_preprocess,
                               parse_perturbation(job.perturb))
    paths, views = rows["path"].tolist(), [int(v) for v in rows["view"]]

    def prepare(i: int) -> Prepared:
        return prepare_row(paths[i], views[i])

    batches = list(_batched(list(range(n)), cfg.extract.batch_size))
    for batch, prepared in _prepared_batches(batches, prepare, cfg.extract.decode_threads):
        for k, item in enumerate(prepared):
            output.record_prepared(batch[k], item)
        _run_models(extractor, cfg.seed, [views[i] for i in batch], batch, prepared, output)
    StoreWriter(store).write_shard(index, output.out, output.manifest(rows))
    failed = int(sum(1 for s in output.status if s != "ok"))
    return ShardResult(index, n - failed, failed, time.perf_counter() - started)


# --------------------------------------------------------------------------- driver


def store_dir(cfg: Config, split: str, perturbation: Perturbation | None) -> Path:
    name = split if perturbation is None else f"{split}-{perturbation.tag}"
    return cfg.paths.stores / name


_INDEX_COLUMNS = ("path", "subset", "label", "video", "frame")


def _read_index(path: Path) -> pd.DataFrame:
    """The index `clare prepare` wrote, checked: readable Parquet with the index columns."""
    rerun = "rerun `clare prepare --config CONFIG` to rewrite it"
    try:
        index = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for damaged files
        raise StoreError(f"{path}: not a readable index ({one_line(exc, 120)}); {rerun}") from None
    missing = [c for c in _INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise StoreError(f"{path}: index lacks column(s) {', '.join(missing)}; {rerun}")
    return index


def load_index(cfg: Config, split: str, subsets: list[str] | None) -> pd.DataFrame:
    path = cfg.data.index_dir / f"{split}.parquet"
    if not path.is_file():
        raise StoreError(f"{path}: index not found; run `clare prepare --config CONFIG` first")
    index = _read_index(path)
    if subsets:
        unknown = sorted(set(subsets) - set(index["subset"]))
        if unknown:
            raise ConfigError(
                f"--subset {', '.join(unknown)}: not in {path}; known: {', '.join(sorted(set(index['subset'])))}"
            )
        index = index[index["subset"].isin(subsets)].reset_index(drop=True)
    if index.empty:
        raise StoreError(f"{path}: the {split} index is empty; check data.{split} in the config")
    return index


def _feature_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    from clare.models.clip_image import clip_dims
    from clare.models.loading import load_clip

    dims = clip_dims(load_clip(cfg.models.clip, local_files_only=cfg.models.local_files_only).model)
    side = cfg.lare.image_size // 8
    return {"lare": (4, side, side), "cls": (dims["embed"],), "tokens": (dims["tokens"], dims["width"])}


def _connect(scheduler: str, timeout: float) -> Any:
    """A client of a running Dask scheduler; an address that does not answer within `timeout`
    seconds (extract.connect_timeout) is the user's."""
    import dask
    from dask.distributed import Client

    try:
        # Dask retries a connect until its comm timeout, whatever Client's own timeout says.
        with dask.config.set({"distributed.comm.timeouts.connect": f"{timeout}s"}):
            return Client(scheduler, timeout=timeout)
    except (OSError, ValueError, TimeoutError) as exc:
        raise ConfigError(
            f"--scheduler {short_repr(scheduler)}: cannot connect within {timeout:g} s "
            f"({one_line(exc, 120)}); start the scheduler or fix the address, e.g. tcp://host:8786, "
            "or raise extract.connect_timeout"
        ) from None


def _run_shards(job: ExtractJob, pending: list[int], store: FeatureStore, workers: int,
                scheduler: str | None, on_done) -> None:
    if workers == 1 and scheduler is None:
        for index in pending:
            on_done(compute_shard(job, index))
        return
    # Dask logs its cluster's life cycle at INFO (some 37 lines for two workers, "killed by
    # signal 9" among them on a normal shutdown): shown only with --verbose. Importing it sets
    # its loggers' levels, so the import comes first.
    import dask.distributed  # noqa: F401

    with library_logging("distributed"):
        _run_on_dask(job, pending, workers, scheduler, on_done)


def _run_on_dask(job: ExtractJob, pending: list[int], workers: int, scheduler: str | None,
                 on_done) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler is not None:
        client = _connect(scheduler, float(job.config["extract"]["connect_timeout"]))
        cluster = None
    else:
        # silence_logs sets the level of the worker processes' own log handlers.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=library_log_level())
        client = Client(cluster)
    try:
        futures = [client.submit(compute_shard, job, index, pure=False, key=f"clare-shard-{index}")
                   for index in pending]
        for future in as_completed(futures):
            on_done(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk or quota, or the same error from zarrs' Rust codec pipeline,
    which reaches Python as a RuntimeError ending in Rust's "(os error 28)"."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    return isinstance(exc, RuntimeError) and any(f"(os error {code})" in str(exc) for code in _DISK_FULL)


@contextmanager
def _disk_full_as_store_error(path: Path) -> Iterator[None]:
    # A full disk is the user's to fix; finished shards stay valid, so the rerun resumes.
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not _is_disk_full(exc):
            raise
        raise StoreError(
            f"no space left on {path}; free space and rerun the same command to resume"
        ) from None


def run_extract(
    cfg: Config,
    *,
    split: str = "train",
    subsets: list[str] | None = None,
    views: int | None = None,
    perturb: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str | None = None,
    max_failures: float | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> ExtractSummary:

    if split not in ("train", "test"):
        raise ConfigError(f"--split '{split}': expected train or test")
    views = views if views is not None else cfg.extract.views
    if views < 1:
        raise ConfigError(f"--views {views}: must be at least 1")
    if split == "test" and views != 1:
        raise ConfigError("--views: test stores hold view 0 only; drop --views for --split test")
    perturbation = parse_perturbation(perturb)
    workers = workers if workers is not None else cfg.extract.workers
    if workers < 1:  # a Dask cluster of no workers would wait for ever
        raise ConfigError(f"--workers {workers}: must be at least 1")
    max_failures = max_failures if max_failures is not None else cfg.extract.max_failures
    if not 0 <= max_failures <= 1:  # NaN fails this too
        raise ConfigError(f"--max-failures {max_failures}: expected a fraction from 0 to 1, "
                          "e.g. 0.01 for 1 %")
    console = make_console(quiet=quiet)
    if scheduler is not None:
        # Before anything is written: an address that does not answer leaves no store behind.
        _connect(scheduler, cfg.extract.connect_timeout).close()

    index = load_index(cfg, split, subsets)
    layout = store_layout(index, views, perturbation.spec if perturbation else None, cfg.seed,
                          describe_conflicts=describe_label_conflicts)
    rows = layout.rows
    fingerprint = fp.store_fingerprint(cfg, index_sha256=layout.digest(), views=views,
                                       perturb=perturbation.spec if perturbation else None)
    path = store_dir(cfg, split, perturbation)
    started = time.perf_counter()
    with StoreWriter(path).lock(), _disk_full_as_store_error(path):
        writer = open_or_create(
            path, layout, fingerprint, shapes=lambda: _feature_shapes(cfg),
            shard_rows=cfg.extract.shard_rows, overwrite=overwrite,
            notify=lambda line: console.print(escape(line)),
            meta=store_meta(cfg, split=split, layout=layout,
                            perturb=perturbation.spec if perturbation else None),
        )
        store = writer.store
        done = store.completed_shards()
        pending = [i for i in range(store.n_shards) if i not in done]
        job = ExtractJob(
            config=cfg.model_dump(mode="json"),
            store_path=str(path),
            data_root=str(cfg.data.root),
            rows=rows,
            device=device or cfg.extract.device,
            perturb=perturbation.spec if perturbation else None,
        )
        if done:
            console.print(f"resuming {escape(str(path))}: {len(done)} of {store.n_shards} shards already complete")
        progress = step_progress(console, f"extract {path.name}", "img")
        already = sum(store.shard_bounds(i)[1] - store.shard_bounds(i)[0] for i in done)
        with progress:
            task = progress.add_task("extract", total=len(rows), completed=already)

            def on_done(result: ShardResult) -> None:
                start, stop = store.shard_bounds(result.index)
                writer.record_progress()
                progress.advance(task, stop - start)

            _run_shards(job, pending, store, workers, scheduler, on_done)
        manifest = writer.finalize()
    seconds = time.perf_counter() - started
    failed_rows = manifest[manifest["status"] != "ok"]
    all_reasons = Counter(reason_label(e) for e in failed_rows["error"])
    size = sum(p.stat().st_size for p in store.zarr_path.rglob("*") if p.is_file())
    summary = ExtractSummary(
        store=path, rows=len(manifest), images=layout.n_images, entries=len(index), views=views,
        ok=int(len(manifest) - len(failed_rows)), failed=len(failed_rows), reasons=dict(all_reasons),
        shards_total=store.n_shards, shards_run=len(pending), seconds=seconds,
        bytes_per_row=size / max(len(manifest), 1),
    )
    _print_summary(console, summary)
    fraction = summary.failed / max(summary.rows, 1)
    if fraction > max_failures:
        raise StoreError(
            f"{path}: {summary.failed} of {summary.rows} rows failed ({fraction:.1%}), above "
            f"--max-failures {max_failures:.1%}; see the error column of manifest.parquet"
        )
    return summary


def _print_summary(console: Any, summary: ExtractSummary) -> None:
    reasons = escape(", ".join(f"{k}: {v}" for k, v in sorted(summary.reasons.items())) or "none")
    console.print(
        f"[bold]{escape(str(summary.store))}[/]: {summary.rows} rows ({summary.images} distinct images x "
        f"{summary.views} view(s), for {summary.entries} listed entries), {summary.ok} ok, "
        f"{summary.failed} failed ({reasons}); "
        f"{summary.shards_run} of {summary.shards_total} shards computed in {summary.seconds:.1f} s; "
        f"{summary.bytes_per_row / 1024:.1f} KiB per row on disk"
    )
