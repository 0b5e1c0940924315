"""Stage two: train the prompts and the error-guided head from the train store alone.

- Model selection on held-out *training* videos (never on test): per class, a seeded
  `val_fraction` of the videos (keyed by their frame folder), so the frames of one video never
  straddle train and validation, even when a list repeats a video under several subsets. The checkpoint with the best validation AUC over the run is kept.
- Only trainable parameters are optimised (two groups: prompt context and head, each with its
  own learning rate and weight decay); the CLIP and SD weights are frozen.
- Learning rate per step: `warmup_steps` at `warmup_lr`, then cosine from the group's lr to 0.
  It is a pure function of the step, so resuming needs no scheduler state.
- `last.ckpt` (weights_only-loadable) is written at every validation point with optimiser,
  RNG state and position; `--resume` continues from it and ends with the same weights as an
  uninterrupted run, because the batch order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from clare.cache.loader import StoreLoader
from clare.cache.store import FeatureStore, open_store
from clare.config import Config, FitConfig
from clare.console import make_console
from clare.errors import ClareError, StoreError
from clare.files import atomic_write
from clare.runs import CHECKPOINT_FILE, MODEL_FILE, RUN_FILE

CHECKPOINT_FORMAT = "clare-fit-checkpoint/1"


@dataclass
class FitResult:
    run_dir: Path
    best_step: int
    best_metrics: dict[str, Any]
    steps: int
    train_rows: int
    val_rows: int
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


def _training_rows(manifest: pd.DataFrame, views: int, epoch: int, seed: int) -> pd.DataFrame:
    """One view per image per epoch (seeded); view 0 only when the store has one view."""
    if views == 1:
        return manifest
    images = manifest.assign(image=manifest["row"] // views)
    rng = np.random.default_rng([seed, epoch, 7])
    pick = rng.integers(0, views, size=int(images["image"].max()) + 1)
    return images[images["view"].to_numpy() == pick[images["image"].to_numpy()]]


# --------------------------------------------------------------------------- checks


def check_store_matches_config(store: FeatureStore, cfg: Config) -> None:
    """The frozen CLIP the head is built on must be the one that made the store's features."""
    from clare.models.loading import weights_fingerprint

    stored = store.meta.get("fingerprint", {})
    clip = stored.get("clip", {})
    wanted = (cfg.models.clip.model, cfg.models.clip.pretrained)
    if (clip.get("model"), clip.get("pretrained")) != wanted:
        raise StoreError(
            f"{store.path}: built with CLIP {clip.get('model')}/{clip.get('pretrained')} but the "
            f"config names {wanted[0]}/{wanted[1]}; use the config that built the store or re-extract"
        )
    current = weights_fingerprint(cfg.models)["clip"]
    if stored.get("weights", {}).get("clip", {}).get("sha256") != current.get("sha256"):
        raise StoreError(
            f"{store.path}: the CLIP checkpoint file changed since the store was built "
            "(sha256 differs); re-extract with --overwrite"
        )
    if stored.get("lare") != cfg.lare.model_dump(mode="json"):
        raise StoreError(
            f"{store.path}: built with LaRE settings {stored.get('lare')} but the config has "
            f"{cfg.lare.model_dump(mode='json')}; use the matching config or re-extract"
        )


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


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def score_loader(detector: torch.nn.Module, loader: StoreLoader, device: torch.device,
                 amp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """p(fake), labels and rows for every batch of a loader, plus the mean loss."""
    from clare.models.lare import autocast_context

    detector.eval()
    probs, labels, rows, losses, count = [], [], [], 0.0, 0
    for batch in loader.epoch(0):
        with autocast_context(device, "bf16" if amp else "fp32"):
            logits = detector(batch.cls.to(device), _opt(batch.tokens, device), _opt(batch.lare, device))
        logits = logits.float()
        losses += float(F.cross_entropy(logits, batch.label.to(device), reduction="sum"))
        count += len(batch.rows)
        probs.append(logits.softmax(-1)[:, 1].cpu().numpy())
        labels.append(batch.label.numpy())
        rows.append(batch.rows)
    if not probs:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), float("nan")
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(rows), losses / max(count, 1)


def _opt(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, non_blocking=True)


# --------------------------------------------------------------------------- checkpoint


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_checkpoint(path: Path, spec: dict[str, str]) -> dict[str, Any]:
    if not path.is_file():
        raise ClareError(f"{path}: no checkpoint to resume from; run without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle payloads and corrupt files end here
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ClareError(
            f"{path}: refused to load checkpoint ({first}); only plain tensors are accepted, "
            "start afresh without --resume"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ClareError(f"{path}: not a clare fit checkpoint; run without --resume")
    if payload.get("spec") != spec:
        raise ClareError(
            f"{path}: checkpoint is for {payload.get('spec')} but the config asks for {spec}; "
            "use the same fit settings or another --name"
        )
    return payload


# --------------------------------------------------------------------------- main


def run_fit(cfg: Config, *, resume: bool = False, quiet: bool = False) -> FitResult:
    from safetensors.torch import save_file

    from clare.metrics import compute_metrics
    from clare.models.detector import build_detector
    from clare.models.lare import autocast_context
    from clare.models.loading import load_clip, resolve_device

    console = make_console(quiet=quiet)
    started = time.perf_counter()
    fit = cfg.fit
    store = open_store(cfg.paths.stores / "train", hint="clare extract --config CONFIG --split train")
    check_store_matches_config(store, cfg)
    manifest = store.manifest()
    failed = int((manifest["status"] != "ok").sum())
    manifest = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if manifest.empty:
        raise StoreError(f"{store.path}: no usable rows (all {failed} failed); check the images")
    classes = set(manifest["label"].astype(int))
    if classes != {0, 1}:
        only = "real" if classes == {0} else "fake"
        raise StoreError(
            f"{store.path}: the train store holds only {only} images; fit needs both classes "
            "(check data.train)"
        )
    is_val = split_videos(manifest, fit.val_fraction, cfg.seed)
    val_rows = manifest[is_val & (manifest["view"] == 0)]
    train_manifest = manifest[~is_val]
    if val_rows.empty or set(val_rows["label"].astype(int)) != {0, 1}:
        raise StoreError(
            f"{store.path}: too few videos to hold out a validation set with both classes; "
            "raise fit.val_fraction or add training videos"
        )
    views = int(store.meta.get("views", 1))

    device = resolve_device(fit.device)
    amp = fit.amp and device.type == "cuda"
    torch.manual_seed(cfg.seed)
    clip = load_clip(cfg.models.clip, local_files_only=cfg.models.local_files_only)
    detector = build_detector(fit.module, fit.strategy, fit.attention, clip.model, clip.tokenizer,
                              fit.prompt, dropout=fit.dropout).to(device)
    del clip
    groups = detector.trainable_parameters()
    optimizer = make_optimizer(fit, groups)
    spec = {"module": fit.module, "strategy": fit.strategy, "attention": fit.attention}

    loader_args = dict(batch_size=fit.batch_size, shuffle_window=fit.shuffle_window,
                       prefetch=fit.prefetch, read_tokens=detector.needs_tokens,
                       read_lare=detector.needs_lare)
    val_loader = StoreLoader(store, val_rows["row"].to_numpy(), val_rows["label"].to_numpy(),
                             seed=cfg.seed, shuffle=False, **loader_args)
    steps_per_epoch = -(-len(_training_rows(train_manifest, views, 0, cfg.seed)) // fit.batch_size)
    total_steps = fit.max_steps or steps_per_epoch * fit.epochs
    epochs = -(-total_steps // steps_per_epoch)

    run_dir = cfg.paths.runs / cfg.run_name()
    run_dir.mkdir(parents=True, exist_ok=True)
    step, start_epoch, skip, best = 0, 0, 0, {"auc": -1.0, "step": -1}
    history: list[dict[str, Any]] = []
    if resume:
        payload = _load_checkpoint(run_dir / CHECKPOINT_FILE, spec)
        detector.load_trainable_state_dict(payload["trainable"], source=str(run_dir / CHECKPOINT_FILE))
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"])
        step, start_epoch, skip = int(payload["step"]), int(payload["epoch"]), int(payload["skip"])
        best = {"auc": float(payload["best_auc"]), "step": int(payload["best_step"])}
        history = list(payload.get("history", []))
        console.print(f"resuming {run_dir} at step {step} (epoch {start_epoch})")

    live = _open_live(run_dir, resume)
    skipped_nonfinite = 0
    train_losses: list[float] = []
    detector.train()

    def validate(epoch: int, batches_done: int) -> None:
        nonlocal best
        probs, labels, rows, loss = score_loader(detector, val_loader, device, amp)
        videos = manifest.set_index("row").loc[rows, "video"].to_numpy()
        metrics = compute_metrics(labels, probs, videos)
        record = {"step": step, "epoch": epoch, "val_loss": loss, "val_auc": metrics["auc"],
                  "val_ap": metrics["ap"], "val_acc": metrics["acc"]}
        history.append(record)
        for key, value in record.items():
            if key not in ("step", "epoch") and value is not None and live is not None:
                live.log_metric(key, float(value))
        if live is not None:
            live.step = step
            live.next_step()
        auc = metrics["auc"] if metrics["auc"] is not None else -1.0
        if auc > best["auc"]:
            best = {"auc": auc, "step": step, **{k: v for k, v in record.items() if k.startswith("val_")}}
            save_file(detector.trainable_state_dict(), str(run_dir / MODEL_FILE))
        console.print(
            f"step {step}/{total_steps} epoch {epoch}: val loss {loss:.4f} auc {auc:.4f} "
            f"acc {metrics['acc']:.4f} (best auc {best['auc']:.4f} @ step {best['step']})"
        )
        _save_checkpoint(run_dir / CHECKPOINT_FILE, {
            "format": CHECKPOINT_FORMAT, "spec": spec,
            "trainable": detector.trainable_state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "step": step, "epoch": epoch, "skip": batches_done,
            "best_auc": float(best["auc"]), "best_step": int(best["step"]), "history": history,
        })
        detector.train()

    for epoch in range(start_epoch, epochs):
        if step >= total_steps:
            break
        rows = _training_rows(train_manifest, views, epoch, cfg.seed)
        loader = StoreLoader(store, rows["row"].to_numpy(), rows["label"].to_numpy(),
                             seed=cfg.seed, shuffle=True, **loader_args)
        batches_done = skip
        for batch in loader.epoch(epoch, skip=skip):
            if step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(group["base_lr"], step, total_steps, fit.warmup_steps,
                                            fit.warmup_lr)
            with autocast_context(device, "bf16" if amp else "fp32"):
                logits = detector(batch.cls.to(device), _opt(batch.tokens, device),
                                  _opt(batch.lare, device))
            loss = F.cross_entropy(logits.float(), batch.label.to(device))
            if not torch.isfinite(loss):
                raise StoreError(f"{store.path}: training loss became {float(loss)} at step {step}; "
                                 "lower fit.lr or check the features with `clare verify`")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if fit.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in groups.values() for p in g], fit.grad_clip)
            optimizer.step()
            step += 1
            batches_done += 1
            train_losses.append(loss.item())
            if live is not None:
                live.log_metric("train_loss", train_losses[-1])
            if fit.val_every and step % fit.val_every == 0 and step < total_steps:
                validate(epoch, batches_done)
        skipped_nonfinite += loader.skipped_nonfinite
        skip = 0
        if fit.val_every is None or step >= total_steps:
            validate(epoch + 1, 0)
    if live is not None:
        live.end()

    record = {
        "config": cfg.model_dump(mode="json"),
        "module": fit.module, "strategy": fit.strategy, "attention": fit.attention,
        "store": str(store.path),
        "store_fingerprint": store.meta["fingerprint"],
        "store_fingerprint_sha256": store.meta.get("fingerprint_sha256"),
        "best_step": int(best["step"]),
        "metrics": {k: v for k, v in best.items() if k not in ("step",)},
        "steps": step,
        "counts": {"train_rows": int(len(train_manifest)), "val_rows": int(len(val_rows)),
                   "skipped_failed": failed, "skipped_nonfinite": skipped_nonfinite,
                   "val_videos": int(val_rows["video"].nunique())},
        "trainable_parameters": int(sum(p.numel() for g in groups.values() for p in g)),
        "history": history,
    }
    (run_dir / RUN_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
    result = FitResult(run_dir, int(best["step"]), record["metrics"], step, len(train_manifest),
                       len(val_rows), failed, skipped_nonfinite, time.perf_counter() - started,
                       train_losses)
    console.print(
        f"[bold]{run_dir}[/]: {step} steps in {result.seconds:.1f} s; best val AUC "
        f"{best['auc']:.4f} at step {best['step']}; {failed} failed rows skipped"
    )
    return result


def _open_live(run_dir: Path, resume: bool) -> Any:
    try:
        from dvclive import Live
    except ImportError:  # dvclive is a dependency; guard only against broken installs
        return None
    return Live(str(run_dir / "dvclive"), resume=resume, save_dvc_exp=False, dvcyaml=False)
