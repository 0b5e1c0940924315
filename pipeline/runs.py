"""What `clare fit` and `clare eval` leave on disk, and how they write it.

A run, `runs/<name>/`: model.safetensors (the trainable parameters only, megabytes, with the
detector's config in its metadata), run.yaml (config, store fingerprint, best step, counts),
last.ckpt (for --resume), dvclive/ and fit.log. The frozen CLIP weights are rebuilt from the
config and checked against the store fingerprint recorded in run.yaml.

A report, `reports/<name>/`: metrics.json, scores.parquet, roc.json, the report files, eval.log.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from clare.config import Config
from clare.console import make_console
from clare.errors import ClareError, StoreError
from clare.models.detector import MODEL_FILE  # noqa: F401 - its home is the detector

RUN_FILE = "run.yaml"
CHECKPOINT_FILE = "last.ckpt"
FIT_LOG = "fit.log"
EVAL_LOG = "eval.log"


# --------------------------------------------------------------------------- console and log


def command_console(log_file: Path, *, quiet: bool) -> Console:
    """The command's console; everything it prints is also appended to `log_file`.

    Each command starts its part of the log with the time and its command line.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as handle:
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        handle.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
    return make_console(quiet=quiet, log_file=log_file)


class RateColumn(ProgressColumn):
    """Items per second over rich's recent window (blank until it has a sample)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:.2f} {self.unit}/s")


def step_progress(console: Console, label: str, unit: str) -> Progress:
    """A progress bar with count, rate and time left, like `clare extract`'s."""
    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    )


# --------------------------------------------------------------------------- runs


@dataclass
class RunInfo:
    path: Path
    config: Config
    record: dict[str, Any]  # the whole run.yaml

    @property
    def store_fingerprint(self) -> dict[str, Any]:
        return self.record["store_fingerprint"]


def read_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    run_file, model_file = run_dir / RUN_FILE, run_dir / MODEL_FILE
    if not run_file.is_file() or not model_file.is_file():
        raise ClareError(
            f"{run_dir}: not a finished run (needs {RUN_FILE} and {MODEL_FILE}); "
            "train one with `clare fit --config CONFIG`"
        )
    record = yaml.safe_load(run_file.read_text())
    if not isinstance(record, dict) or "config" not in record:
        raise ClareError(f"{run_file}: malformed run record; rerun `clare fit`")
    return RunInfo(run_dir, Config.model_validate(record["config"]), record)


def model_settings(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The part of a store fingerprint that must agree between training and test stores."""
    return {
        "clip": fingerprint.get("clip"),
        "clip_weights": fingerprint.get("weights", {}).get("clip"),
        "sd_weights": fingerprint.get("weights", {}).get("sd"),
        "lare": fingerprint.get("lare"),
        "precision": fingerprint.get("precision"),
        "decode": fingerprint.get("decode"),
    }


def check_compatible(train_fp: dict[str, Any], other_fp: dict[str, Any], train_name: str,
                     other_name: str) -> None:
    """Raise when two stores were built with different frozen models or LaRE settings."""
    a, b = model_settings(train_fp), model_settings(other_fp)
    differing = sorted(key for key in a if a[key] != b[key])
    if differing:
        key = differing[0]
        theirs, ours = _differing_parts(b[key], a[key])
        raise StoreError(
            f"{other_name} was built with other {', '.join(differing)} than {train_name} "
            f"({key}: {_short(theirs)} vs {_short(ours)}); rebuild one of them with the same config"
        )


def _differing_parts(left: Any, right: Any) -> tuple[Any, Any]:
    """For two mappings, only the entries that differ, so a long setting stays readable."""
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
        return {k: left.get(k) for k in keys}, {k: right.get(k) for k in keys}
    return left, right


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_detector(info: RunInfo, device: Any) -> Any:
    """The run's trained detector, rebuilt from its model file (eval mode, on `device`)."""
    from clare.models.detector import Detector

    return Detector.load(info.path, device=device)
