"""Stage two: train the prompts and the error-guided head from the train store alone.

- Model selection on held-out *training* videos (never on test): per class, a seeded
  `val_fraction` of the videos (keyed by their frame folder), so the frames of one video never
  straddle train and validation, even when a list repeats a video under several subsets. The
  kept checkpoint is chosen by `fit.select` (clare.selection; default: highest validation AUC,
  ties broken by the lower validation loss), and run.yaml's `selection` says which and why.
- Only trainable parameters are optimised (two groups: prompt context and head, each with its
  own learning rate and weight decay); the CLIP and SD weights are frozen.
- Learning rate per step: `warmup_steps` (or `warmup_epochs` whole epochs) at `warmup_lr`, then
  cosine from the group's lr to 0.
  It is a pure function of the step, so resuming needs no scheduler state.
- `last.ckpt` (weights_only-loadable) is written at every validation point with optimiser,
  RNG state, position and the settings that change the numbers; `--resume` continues from it
  (refusing other settings) and ends with the same weights as an uninterrupted run, because
  the batch order is a pure function of (seed, epoch).
- A run is published whole or not at all: everything is written to `runs/.<name>.staging`
  and swapped into `runs/<name>` at the end; run.yaml records the model file's sha256. A
  finished run is replaced only with `--overwrite`, and one fit at a time holds a run's lock.

The steps: `select_rows` (store checks, validation split), `FitSession` (build; `restore`;
`train` with `validate` at each validation point; `publish`), driven by `run_fit`.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.markup import escape

from clare import fingerprint as fp
from clare import selection
from clare.cache.loader import RowCache, StoreLoader
from clare.cache.store import FeatureStore, open_store
from clare.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    fit_settings,
    load_checkpoint,
    save_checkpoint,
)
from clare.config import Config, FitConfig
from clare.console import command_console, step_progress
from clare.errors import CheckpointError, ConfigError, RunError, StoreError, TrainingError
from clare.files import file_sha256
from clare.provenance import provenance
from clare.records import RunRecord
from clare.runs import (
    FIT_LOG,
    MODEL_FILE,
    RUN_FILE,
    StagedFolder,
)
from clare.scoring import batch_logits, entry_scores, score_loader, validation_threshold


@dataclass
class FitResult:
    run_dir: Path
    best_step: int
    best_metrics: dict[str, Any]
    steps: int
    train_rows: int  # distinct store rows (image x view) trained on; entries share them
    val_rows: int  # distinct store rows held out (view 0)
    skipped_failed: int
    skipped_nonfinite: int
    seconds: float
    train_losses: list[float]


# --------------------------------------------------------------------------- data selection


def _video_bucket(seed: int, video_key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{video_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def video_keys(manifest: pd.DataFrame) -> pd.Series:
    """A video's identity is the folder of its frames, not its name inside one list.

    DF40 lists every real video once per method, so the same frames appear in several
    subsets under different names; keying on the folder keeps all their copies on one side.
    """
    return manifest["path"].astype(str).map(lambda p: p.rsplit("/", 1)[0] if "/" in p else p)


def split_videos(manifest: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole videos, a seeded `fraction` of each class."""
    keys = video_keys(manifest)
    chosen: set[str] = set()
    for _label, group in keys.groupby(manifest["label"].astype(int), sort=True):
        names = sorted(set(group))
        if len(names) < 2:
            continue  # a lone video stays in training
        ranked = sorted(names, key=lambda v: _video_bucket(seed, v))
        count = min(len(names) - 1, max(1, round(fraction * len(names))))
        chosen.update(ranked[:count])
    return keys.isin(chosen).to_numpy()


def _training_rows(entries: pd.DataFrame, views: int, epoch: int, seed: int) -> pd.DataFrame:
    """Every training entry once per epoch, each with one view of its image (seeded per entry,
    so the copies of a shared real frame see different views); view 0 when there is one.

    `entries` holds the usable (entry, view) lines only: an entry whose drawn view failed
    extraction takes its next usable view after the drawn one (cyclically), so every entry
    with a usable view is visited in every epoch and every epoch has the same length."""
    if views == 1:
        return entries
    rng = np.random.default_rng([seed, epoch, 7])
    pick = rng.integers(0, views, size=int(entries["entry"].max()) + 1)
    entry = entries["entry"].to_numpy()
    after_pick = (entries["view"].to_numpy().astype(np.int64) - pick[entry]) % views
    nearest = pd.Series(after_pick).groupby(entry).transform("min").to_numpy()
    return entries[after_pick == nearest]


# --------------------------------------------------------------------------- checks


def check_store_matches_config(store: FeatureStore, cfg: Config) -> None:
    """The frozen CLIP the head is built on must be the one that made the store's features, and
    the LaRE settings the run record will claim must be the store's (fingerprint scope TRAINING)."""
    fp.require_match(store.meta.get("fingerprint") or {}, fp.feature_settings(cfg, sd=False),
                     fp.TRAINING, expected_name=f"store {store.path}", actual_name="the config",
                     fix="use the config that built the store, or re-extract with --overwrite")


# --------------------------------------------------------------------------- schedule


def learning_rate(base: float, step: int, total: int, warmup: int, warmup_lr: float) -> float:
    if step < warmup:
        return warmup_lr
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(fit: FitConfig, groups: dict[str, list[torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """SGD or AdamW over the non-empty groups, each with its own lr and weight decay."""
    settings = {
        "prompt": (fit.prompt_lr or fit.lr,
                   fit.prompt_weight_decay if fit.prompt_weight_decay is not None else fit.weight_decay),
        "head": (fit.lr, fit.weight_decay),
    }
    param_groups = [
        {"params": params, "lr": settings[name][0], "base_lr": settings[name][0],
         "weight_decay": settings[name][1], "name": name}
        for name, params in groups.items() if params
    ]
    if fit.optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=fit.momentum)
    return torch.optim.AdamW(param_groups)


# fit.cache auto holds the rows in RAM when they take at most this share of the available
# memory; fit.cache ram refuses above RAM_CACHE_LIMIT (the rest is the model, batches, the OS).
RAM_AUTO_SHARE = 0.5
RAM_CACHE_LIMIT = 0.8


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- the steps of a fit


@dataclass
class TrainingRows:
    """What fit reads from the train store: the usable entries (each with its store rows, see
    `clare.cache.entries`), split into training and validation by video."""

    store: FeatureStore
    entries: pd.DataFrame  # every entry x view whose row is usable (status ok)
    train: pd.DataFrame  # entries of the training videos (all views)
    val: pd.DataFrame  # view 0 of the entries of the held-out videos
    failed: int  # store rows whose extraction failed
    views: int


def select_rows(cfg: Config) -> TrainingRows:
    """Open and check the train store; hold out whole videos of both classes for validation."""
    store = open_store(cfg.paths.stores / "train", hint="clare extract --config CONFIG --split train")
    check_store_matches_config(store, cfg)
    manifest = store.manifest()
    entries = store.entry_rows(manifest=manifest)
    failed = int((manifest["status"] != "ok").sum())
    entries = entries[entries["status"] == "ok"].reset_index(drop=True)
    if entries.empty:
        raise StoreError(f"{store.path}: no usable rows (all {failed} failed); check the images")
    classes = set(entries["label"].astype(int))
    if classes != {0, 1}:
        only = "real" if classes == {0} else "fake"
        raise StoreError(
            f"{store.path}: the train store holds only {only} images; fit needs both classes "
            "(check data.train)"
        )
    is_val = split_videos(entries, cfg.fit.val_fraction, cfg.seed)
    val = entries[is_val & (entries["view"] == 0)]
    if val.empty or set(val["label"].astype(int)) != {0, 1}:
        raise StoreError(
            f"{store.path}: too few videos to hold out a validation set with both classes; "
            "raise fit.val_fraction or add training videos"
        )
    return TrainingRows(store, entries, entries[~is_val], val, failed,
                        int(store.meta.get("views", 1)))


@dataclass
class TrainingState:
    """Where a fit stands; all of it goes into last.ckpt, so a resumed fit continues exactly."""

    step: int = 0
    epoch: int = 0
    skip: int = 0  # batches of `epoch` already trained
    # the kept validation point (step, val_* figures, threshold); None before the first one
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    skipped_nonfinite: int = 0


class FitSession:
    """One fit: the detector, its optimiser and loaders, the state, and the run folder it fills."""

    def __init__(self, cfg: Config, rows: TrainingRows, work_dir: Path, console: Any,
                 settings: dict[str, Any]) -> None:
        from clare.models.detector import Detector
        from clare.models.loading import load_clip, resolve_device

        fit = cfg.fit
        self.cfg, self.fit, self.rows, self.work_dir, self.console = cfg, fit, rows, work_dir, console
        self.device = resolve_device(fit.device)
        self.amp = fit.amp and self.device.type == "cuda"
        torch.manual_seed(cfg.seed)  # before the detector: its initial weights come from it
        clip = load_clip(cfg.models.clip, local_files_only=cfg.models.local_files_only)
        self.detector = Detector.from_config(fit.detector(), clip.model, clip.tokenizer,
                                             clip=cfg.models.clip).to(self.device)
        del clip
        self.groups = self.detector.trainable_parameters()
        self.optimizer = make_optimizer(fit, self.groups)
        self.settings = settings
        self.cache = self._row_cache()
        # Each held-out image is scored once; its score counts for every entry naming it.
        self.val_loader = self._loader(rows.val.drop_duplicates("row"), shuffle=False)
        steps_per_epoch = -(-len(_training_rows(rows.train, rows.views, 0, cfg.seed)) // fit.batch_size)
        self.total_steps = fit.max_steps or steps_per_epoch * fit.epochs
        self.epochs = -(-self.total_steps // steps_per_epoch)
        # Steps at the constant warm-up rate: fit.warmup_steps, or whole epochs of them.
        self.warmup_steps = fit.warmup_steps + fit.warmup_epochs * steps_per_epoch
        self.state = TrainingState()
        self.live: Any = None

    def _loader(self, rows: pd.DataFrame, *, shuffle: bool) -> StoreLoader:
        fit = self.fit
        return StoreLoader(self.rows.store, rows["row"].to_numpy(), rows["label"].to_numpy(),
                           batch_size=fit.batch_size, seed=self.cfg.seed, shuffle=shuffle,
                           shuffle_window=fit.shuffle_window, prefetch=fit.prefetch,
                           read_tokens=self.detector.needs_tokens, read_lare=self.detector.needs_lare,
                           pin_memory=self.device.type == "cuda", cache=self.cache)

    def _row_cache(self) -> RowCache | None:
        """fit.cache: every training and validation row in RAM, read once (ram, or auto when
        they take at most half the available memory), or read from the store each epoch."""
        names = ["cls"] + ["tokens"] * self.detector.needs_tokens + ["lare"] * self.detector.needs_lare
        rows = np.concatenate([self.rows.train["row"].to_numpy(), self.rows.val["row"].to_numpy()])
        need, free = RowCache.bytes_needed(self.rows.store, rows, names), available_memory()
        choice = self.fit.cache
        if choice == "ram" and need > free * RAM_CACHE_LIMIT:
            raise ConfigError(
                f"fit.cache ram: the selected rows take {need / 2**30:.1f} GiB, more than "
                f"{RAM_CACHE_LIMIT:.0%} of the {free / 2**30:.1f} GiB of memory available; set "
                "fit.cache: none (read the store every epoch) or auto"
            )
        if choice == "none" or (choice == "auto" and need > free * RAM_AUTO_SHARE):
            if choice == "auto":
                self.console.print(f"fit.cache auto: the selected rows take {need / 2**30:.1f} GiB, "
                                   f"more than half of the {free / 2**30:.1f} GiB available; "
                                   "reading the store every epoch")
            return None
        self.console.print(f"fit.cache {choice}: reading {need / 2**30:.2f} GiB of features into RAM once")
        return RowCache(self.rows.store, rows, names)

    # ------------------------------------------------------------------ restore
    def restore(self, payload: dict[str, Any], checkpoint: Path) -> None:
        """Continue from `last.ckpt`: weights, optimiser, RNG and position in the batch order."""
        self.detector.load_trainable_state_dict(payload["trainable"], source=str(checkpoint))
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            torch.set_rng_state(payload["rng"])
        except (ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{checkpoint}: damaged optimiser or RNG state ({str(exc)[:120]}); start afresh "
                "with --overwrite"
            ) from None
        self.state = TrainingState(
            step=int(payload["step"]), epoch=int(payload["epoch"]), skip=int(payload["skip"]),
            best=dict(payload["best"]) if payload["best"] is not None else None,
            history=list(payload.get("history", [])),
            skipped_nonfinite=int(payload.get("skipped_nonfinite", 0)),
        )
        self.console.print(f"resuming {escape(str(checkpoint))} at step {self.state.step} "
                           f"(epoch {self.state.epoch})")

    # ------------------------------------------------------------------ the train loop
    def train(self, resumed: bool) -> None:
        self.live = _open_live(self.work_dir, resumed)
        self.detector.train()
        with step_progress(self.console, f"fit {self.cfg.run_name()}", "steps") as progress:
            task = progress.add_task("fit", total=self.total_steps, completed=self.state.step)
            for epoch in range(self.state.epoch, self.epochs):
                if self.state.step >= self.total_steps:
                    break
                self._train_epoch(epoch, lambda: progress.advance(task))
        if self.live is not None:
            self.live.end()

    def _train_epoch(self, epoch: int, on_step: Any) -> None:
        state, fit = self.state, self.fit
        rows = _training_rows(self.rows.train, self.rows.views, epoch, self.cfg.seed)
        loader = self._loader(rows, shuffle=True)
        batches_done = state.skip
        for batch in loader.epoch(epoch, skip=state.skip):
            if state.step >= self.total_steps:
                break
            self._train_step(batch)
            batches_done += 1
            on_step()
            if fit.val_every and state.step % fit.val_every == 0 and state.step < self.total_steps:
                self.validate(epoch, batches_done)
        state.skipped_nonfinite += loader.skipped_nonfinite
        state.skip = 0
        if fit.val_every is None or state.step >= self.total_steps:
            self.validate(epoch + 1, 0)

    def _train_step(self, batch: Any) -> None:
        state, fit = self.state, self.fit
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(group["base_lr"], state.step, self.total_steps,
                                        self.warmup_steps, fit.warmup_lr)
        logits = batch_logits(self.detector, batch, self.device, self.amp)
        loss = F.cross_entropy(logits.float(), batch.label.to(self.device))
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{self.rows.store.path}: training loss became {float(loss)} at step {state.step}; "
                "lower fit.lr or check the features with `clare verify`"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if fit.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.groups.values() for p in g], fit.grad_clip)
        self.optimizer.step()
        state.step += 1
        state.train_losses.append(loss.item())
        if self.live is not None:
            self.live.log_metric("train_loss", state.train_losses[-1])

    # ------------------------------------------------------------------ validate
    def validate(self, epoch: int, batches_done: int) -> None:
        """Score the held-out videos, keep the weights when the point beats the kept one under
        `fit.select`, write last.ckpt."""
        from clare.metrics import compute_metrics

        state = self.state
        scored = score_loader(self.detector, self.val_loader, self.device, self.amp)
        val = self.rows.val
        labels, probs = val["label"].to_numpy().astype(np.int64), entry_scores(scored, val)
        # Video AUC over the held-out videos of every subset: a video is its frames' folder.
        metrics = compute_metrics(labels, probs, video_keys(val).to_numpy())
        loss = scored.loss
        record = {"step": state.step, "epoch": epoch, "val_loss": loss, "val_auc": metrics["auc"],
                  "val_ap": metrics["ap"], "val_acc": metrics["acc"]}
        state.history.append(record)
        self._log_live(record)
        if selection.beats(self.fit.select, record, state.best, self.fit.select_auc_digits):
            state.best = {"step": state.step,
                          **{k: v for k, v in record.items() if k.startswith("val_")},
                          "threshold": validation_threshold(labels, probs)}
            self.detector.save(self.work_dir)
        kept = state.best
        assert kept is not None  # the first validation point always beats "none kept yet"
        self.console.print(
            f"step {state.step}/{self.total_steps} epoch {epoch}: val loss {_shown(loss)} auc "
            f"{_shown(metrics['auc'])} acc {_shown(metrics['acc'])} (kept: step {kept['step']}, "
            f"auc {_shown(kept['val_auc'])}, loss {_shown(kept['val_loss'])})"
        )
        self._checkpoint(epoch, batches_done)
        self.detector.train()

    def _log_live(self, record: dict[str, Any]) -> None:
        if self.live is None:
            return
        for key, value in record.items():
            if key not in ("step", "epoch") and value is not None:
                self.live.log_metric(key, float(value))
        self.live.step = self.state.step
        self.live.next_step()

    def _checkpoint(self, epoch: int, batches_done: int) -> None:
        state = self.state
        save_checkpoint(self.work_dir / CHECKPOINT_FILE, {
            "format": CHECKPOINT_FORMAT, "settings": self.settings,
            "trainable": self.detector.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(), "step": state.step, "epoch": epoch, "skip": batches_done,
            "best": state.best,
            "history": state.history, "skipped_nonfinite": state.skipped_nonfinite,
        })

    # ------------------------------------------------------------------ publish
    def selection_block(self) -> dict[str, Any]:
        """run.yaml's `selection`: the rule, the kept point and what decided it."""
        best = self._kept()
        return selection.explain_choice(self.fit.select, self.state.history, int(best["step"]),
                                        self.fit.select_auc_digits)

    def _kept(self) -> dict[str, Any]:
        if self.state.best is None:
            raise TrainingError(f"{self.work_dir}: no validation point was reached, so there is no "
                                "model to keep; check fit.epochs and fit.max_steps")
        return self.state.best

    def run_record(self) -> dict[str, Any]:
        """run.yaml: the config, the store it learned from, the kept step and the counts."""
        cfg, rows, state, best = self.cfg, self.rows, self.state, self._kept()
        return {
            "config": cfg.model_dump(mode="json"),
            "module": cfg.fit.module, "strategy": cfg.fit.strategy, "attention": cfg.fit.attention,
            "store": str(rows.store.path),
            "store_fingerprint": rows.store.meta["fingerprint"],
            "store_fingerprint_sha256": rows.store.meta.get("fingerprint_sha256"),
            "best_step": int(best["step"]),
            "selection": self.selection_block(),
            "metrics": {k: v for k, v in best.items() if k not in ("step", "threshold")},
            "threshold": {**best["threshold"], "step": int(best["step"])},
            "steps": state.step,
            "counts": {"train_entries": int(len(_training_rows(rows.train, rows.views, 0, cfg.seed))),
                       "train_rows": int(rows.train["row"].nunique()),
                       "val_entries": int(len(rows.val)), "val_rows": int(rows.val["row"].nunique()),
                       "skipped_failed": rows.failed, "skipped_nonfinite": state.skipped_nonfinite,
                       "val_videos": int(video_keys(rows.val).nunique())},
            "trainable_parameters": int(sum(p.numel() for g in self.groups.values() for p in g)),
            "history": state.history,
            "model_sha256": file_sha256(self.work_dir / MODEL_FILE),
            "provenance": provenance(),
        }

    def publish(self, folder: StagedFolder) -> dict[str, Any]:
        """run.yaml beside the kept weights, then the whole run folder into its place."""
        record = self.run_record()
        RunRecord.save(self.work_dir / RUN_FILE, record)  # checked by the rules every reader applies
        folder.publish()
        return record

    def result(self, run_dir: Path, record: dict[str, Any], seconds: float) -> FitResult:
        state, rows = self.state, self.rows
        return FitResult(run_dir, int(record["best_step"]), record["metrics"], state.step,
                         int(rows.train["row"].nunique()), int(rows.val["row"].nunique()),
                         rows.failed, state.skipped_nonfinite,
                         seconds, state.train_losses)


# --------------------------------------------------------------------------- main


def run_fit(cfg: Config, *, resume: bool = False, overwrite: bool = False,
            quiet: bool = False) -> FitResult:
    """Train the detector from the train store and publish runs/<name>/ whole at the end.

    Work happens in a staging folder beside the run (see clare.runs.StagedFolder): a killed fit
    leaves the published run as it was. A finished run is replaced only with `overwrite`;
    `resume` continues the staged fit (or the finished run) with the same settings only.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    started = time.perf_counter()
    rows = select_rows(cfg)
    settings = fit_settings(cfg, rows.store)
    folder = StagedFolder(cfg.paths.runs / cfg.run_name(), "clare fit")
    with folder.lock():
        checkpoint, payload = (_prepare_resume(folder, settings) if resume
                               else _prepare_fresh(folder, overwrite))
        console = command_console(folder.staging / FIT_LOG, quiet=quiet)
        session = FitSession(cfg, rows, folder.staging, console, settings)
        if payload is not None:
            session.restore(payload, checkpoint)
        session.train(resumed=resume)
        record = session.publish(folder)
    result = session.result(folder.final, record, time.perf_counter() - started)
    console.print(selection.summary_line(record["selection"]), soft_wrap=True, markup=False)
    console.print(
        f"[bold]{escape(str(folder.final))}[/]: {result.steps} steps in {result.seconds:.1f} s; kept step "
        f"{result.best_step} (val AUC {_shown(record['metrics']['val_auc'])}, val loss "
        f"{_shown(record['metrics']['val_loss'])}), operating threshold "
        f"{record['threshold']['value']:.4f} ({record['threshold']['rule']}); {rows.failed} failed "
        "rows skipped"
    )
    return result


def _shown(value: Any) -> str:
    """A validation figure for the console: 4 decimals, or n/a when undefined (one class)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _prepare_fresh(folder: StagedFolder, overwrite: bool) -> tuple[Path, None]:
    """An empty staging folder; a finished run stays untouched unless `overwrite`."""
    if (folder.final / RUN_FILE).is_file() and not overwrite:
        raise RunError(
            f"{folder.final}: holds a finished run; pass --overwrite to replace it, --resume to "
            "continue it, or choose another --name"
        )
    folder.fresh_staging()
    return folder.staging / CHECKPOINT_FILE, None


def _prepare_resume(folder: StagedFolder, settings: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to continue from: the staged fit's, else the finished run's (copied to
    staging, so the run stays as it is until the resumed fit publishes)."""
    staged = folder.staging / CHECKPOINT_FILE
    if staged.is_file():
        return staged, load_checkpoint(staged, settings)
    published = folder.final / CHECKPOINT_FILE
    payload = load_checkpoint(published, settings)
    folder.remove_staging()  # a leftover is removed only when clare made it
    shutil.copytree(folder.final, folder.staging)
    folder.mark_staging()
    return staged, payload


def _open_live(run_dir: Path, resume: bool) -> Any:
    try:
        from dvclive import Live
    except ImportError:  # dvclive is a dependency; guard only against broken installs
        return None
    return Live(str(run_dir / "dvclive"), resume=resume, save_dvc_exp=False, dvcyaml=False)
