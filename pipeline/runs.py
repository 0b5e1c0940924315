"""What `clare fit` and `clare eval` leave on disk, and how they write it.

A run, `runs/<name>/`: model.safetensors (the trainable parameters only, megabytes, with the
detector's config in its metadata), run.yaml (config, store fingerprint, best step, counts),
last.ckpt (for --resume), dvclive/ and fit.log. The frozen CLIP weights are rebuilt from the
config and checked against the store fingerprint recorded in run.yaml.

A report, `reports/<name>/`: metrics.json, scores.parquet, roc.json, the report files, eval.log.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clare import fingerprint as fp
from clare.config import Config, DetectorConfig, reserved_name_problem
from clare.errors import CheckpointError, ClareError, RunError, short_repr
from clare.files import file_sha256, open_lock_file, pid_lock
from clare.models.detector import MODEL_FILE  # noqa: F401 - its home is the detector
from clare.records import RUN_FILE, RunRecord

FIT_LOG = "fit.log"
EVAL_LOG = "eval.log"


# --------------------------------------------------------------------------- runs


class StagedFolder:
    """An output folder that a command builds beside its place and publishes whole.

    `runs/base` is built in `runs/.base.staging` and swapped in at the end, in one step where
    the system allows it (Linux renameat2 RENAME_EXCHANGE), so a reader sees the old folder or
    the new one, never a mix. Elsewhere the swap is two renames through `runs/.base.old`, and
    `recover` finishes one that a kill interrupted. `lock` keeps a second writer out.

    Only what clare made is ever deleted: a staging folder carries STAGING_MARK from its
    creation until it is published, and `.base.old` is clare's only while the journal file
    `.base.publishing`, written before the old folder is moved, exists. A folder of those
    names without its evidence is refused, not removed.
    """

    STAGING_MARK = ".clare-staging"

    def __init__(self, final: Path, command: str) -> None:
        self.final = Path(final)
        self.command = command  # names the holder in "locked" errors, e.g. "clare fit"
        parent, name = self.final.parent, self.final.name
        self.staging = parent / f".{name}.staging"
        self.old = parent / f".{name}.old"
        self.lock_path = parent / f".{name}.lock"
        self.journal = parent / f".{name}.publishing"
        self._error: type[ClareError] = RunError

    @contextmanager
    def lock(self, error: type[ClareError] = RunError) -> Iterator[None]:
        """Exclusive for the whole command; the kernel releases it when the process dies."""
        self._error = error
        problem = reserved_name_problem(self.final.name, "the folder name")
        if problem:
            raise error(f"{self.final}: {problem}")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        handle = open_lock_file(self.lock_path, error)  # held until the block ends

        def held(holder: str) -> ClareError:
            return error(f"{self.final}: another {self.command} is writing it (pid {holder}); "
                         "wait for it to finish or stop it, or choose another name")

        with pid_lock(handle, held):
            self.recover()
            yield

    def _not_ours(self, path: Path) -> ClareError:
        return self._error(f"{path}: has the name of clare's working folder for {self.final.name} "
                           "but clare did not make it; move it away (clare deletes only what "
                           "it made) and rerun")

    def recover(self) -> None:
        """Finish a publish that was killed half-way (called under the lock)."""
        if not self.journal.is_file():
            if self.old.exists():
                raise self._not_ours(self.old)
            return
        # A publish was under way: what is at the staging name (the new folder or, after an
        # exchange, the old one) is clare's, whether or not its mark was already removed.
        if self.staging.exists():
            self.mark_staging()
        if self.old.exists():
            if self.final.exists():
                shutil.rmtree(self.old)  # the new folder made it; the old one is garbage
            else:
                os.rename(self.old, self.final)  # killed between the renames: old one back
        self.journal.unlink()

    def fresh_staging(self) -> Path:
        """An empty staging folder (a leftover of a killed command is removed)."""
        self.remove_staging()
        self.staging.mkdir(parents=True)
        self.mark_staging()
        return self.staging

    def remove_staging(self) -> None:
        """Remove a staging folder clare made; one it did not make is refused."""
        if self.staging.exists():
            if not self.staged_by_clare():
                raise self._not_ours(self.staging)
            shutil.rmtree(self.staging)

    def staged_by_clare(self) -> bool:
        """Whether the staging folder is clare's (marked since its creation, see recover)."""
        return (self.staging / self.STAGING_MARK).is_file()

    def mark_staging(self) -> None:
        (self.staging / self.STAGING_MARK).write_text("made by clare; removed when published\n")

    def publish(self) -> None:
        """Put the staging folder in the final place, replacing what was there as one step."""
        # The journal first: from here to its removal, recover knows the folders are clare's.
        self.journal.write_text(f"clare: {self.command} is publishing {self.final.name}\n")
        (self.staging / self.STAGING_MARK).unlink(missing_ok=True)
        if not self.final.exists():
            os.rename(self.staging, self.final)
        elif exchange_paths(self.staging, self.final):
            # The staging name now holds the old folder: out of the way first, so a resume
            # never mistakes it for work in progress, then deleted (recover finishes a kill).
            os.rename(self.staging, self.old)
        else:
            os.rename(self.final, self.old)
            os.rename(self.staging, self.final)
        if self.old.exists():
            shutil.rmtree(self.old)
        self.journal.unlink()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where that is not offered."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                 _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or file system lacks it
        return False
    raise OSError(code, os.strerror(code), str(second))


@dataclass
class RunInfo:
    path: Path
    config: Config
    record: RunRecord  # the whole run.yaml, validated

    @property
    def store_fingerprint(self) -> dict[str, Any]:
        return self.record.store_fingerprint

    @property
    def threshold(self) -> float | None:
        """The operating threshold fit chose on validation (None for runs that record none)."""
        return None if self.record.threshold is None else self.record.threshold.value


def read_run(run_dir: Path) -> RunInfo:
    """A finished run whose model file is the one its run.yaml records (sha256) and was built
    with the detector settings its config names."""
    run_dir = Path(run_dir)
    run_file, model_file = run_dir / RUN_FILE, run_dir / MODEL_FILE
    if not run_file.is_file() or not model_file.is_file():
        raise RunError(
            f"{run_dir}: not a finished run (needs {RUN_FILE} and {MODEL_FILE}); "
            "train one with `clare fit --config CONFIG`"
        )
    record = RunRecord.load(run_file)
    check_model_file(model_file, record.model_sha256, run_file)
    try:
        config = Config.model_validate(record.config)
    except ValidationError as exc:
        raise RunError(f"{run_file}: its config is invalid ({_first_error(exc)}); refit the run") from None
    _check_detector_matches(model_file, config, run_file)
    return RunInfo(run_dir, config, record)


def _check_detector_matches(model_file: Path, config: Config, run_file: Path) -> None:
    """The detector recorded in the model file must be the one run.yaml's config describes:
    the model is built from the file, reports and compare label it from the record."""
    from clare.models.detector import Detector

    built, _ = Detector.read_header(model_file)
    recorded = config.fit.detector()
    for key in DetectorConfig.model_fields:
        if getattr(built, key) != getattr(recorded, key):
            raise RunError(
                f"{run_file}: config.fit.{key} is {short_repr(getattr(recorded, key))} but "
                f"{model_file.name} was trained with {short_repr(getattr(built, key))}; "
                "restore the run.yaml fit wrote, or refit the run"
            )


def check_model_file(model_file: Path, expected: Any, run_file: Path) -> None:
    """The model file must be the one the run record was written with."""
    if not isinstance(expected, str):
        raise RunError(
            f"{run_file}: records no model_sha256 (written by an older clare); refit the run"
        )
    actual = file_sha256(model_file)
    if actual != expected:
        raise CheckpointError(
            f"{model_file}: sha256 {actual[:12]}... differs from the {expected[:12]}... that "
            f"{run_file.name} records; the weights and the record come from different fits, "
            "refit with `clare fit --overwrite`"
        )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{key}: {err['msg']}"[:160]


def load_detector(info: RunInfo, device: Any) -> Any:
    """The run's trained detector, rebuilt from its model file (eval mode, on `device`).

    The frozen CLIP it loads must still be the one it was trained on: a checkpoint file
    replaced after fit would give other text features and silently other scores.
    """
    from clare.models.detector import Detector

    fp.require_match(info.store_fingerprint, fp.feature_settings(info.config, sd=False), fp.CLIP,
                     expected_name=f"the CLIP run {info.path} was trained with",
                     actual_name="the CLIP its config names now",
                     fix="restore the original checkpoint file or retrain the run")
    from clare.models.loading import load_clip

    # The CLIP the config names (checked above), not the file's header: an exported run
    # records a portable location that only the config resolves (clare.export).
    parts = load_clip(info.config.models.clip, local_files_only=info.config.models.local_files_only)
    return Detector.load(info.path, device=device, clip_model=parts.model, tokenizer=parts.tokenizer)
