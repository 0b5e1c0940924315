"""The records clare writes and reads back, each named and validated here: run.yaml (a run,
written by `clare fit`) and the report folder (`clare eval`: metrics.json, scores.parquet, ...).

A run record is read by `clare eval`, `predict`, `compare` and the DVC summary; each of them
once trusted what it found (a hand-edited `threshold: .nan` made every verdict "real" with
exit 0). `RunRecord.load` is the one reader: a record that is not a regular file of bounded
size, not YAML, or whose values are out of range or contradict each other is a one-line
RunError naming the file, the key and the fix. `RunRecord.save` is the one writer and checks
the same rules before anything is published.

Unknown top-level keys are kept (`extra="allow"`): a newer clare, or another tool, may add
blocks (`provenance`, ...) that an older reader must pass through rather than refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clare.config_files import format_validation_error
from clare.errors import ReportError, RunError, one_line, short_repr
from clare.files import (
    atomic_write_bytes,
    atomic_write_metrics_json,
    atomic_write_parquet,
    read_record_bytes,
)

RUN_FILE = "run.yaml"
# A report folder (`clare eval`): the full metrics, every score, the ROC points, and the small
# files DVC experiments read (`clare.dvc_summary`).
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"
ROC_FILE = "roc.json"
RUN_SPEC_FILE = "run_spec.json"
DVC_METRICS_FILE = "dvc_metrics.json"
RERUN_EVAL = "rerun `clare eval --config CONFIG --report` to rewrite it"
REFIT = "refit the run with `clare fit --overwrite` (or restore the run.yaml it wrote)"

# Strict: a YAML string ("high") or boolean is never read as a number; NaN is never a value.
Probability = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, strict=True)]
OptionalMetric = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]


class _Block(BaseModel):
    # Blocks may grow keys in later versions of clare; the ones read here are checked.
    model_config = ConfigDict(extra="allow")


class ThresholdRecord(_Block):
    """The operating threshold fit chose on validation; predict and eval apply it."""

    value: Probability
    rule: str | None = None
    step: Count | None = None
    fpr: Probability | None = None
    fnr: Probability | None = None


class SelectionRecord(_Block):
    """How fit chose the checkpoint it kept."""

    rule: str
    step: Count
    val_auc: OptionalMetric = None
    val_loss: OptionalMetric = None
    decided_by: str


class RunRecord(_Block):
    """run.yaml: the config, the store the run learned from, its best step, counts, threshold."""

    config: dict[str, Any]
    module: str | None = None
    strategy: str | None = None
    attention: str | None = None
    store: str | None = None
    store_fingerprint: dict[str, Any]
    store_fingerprint_sha256: str | None = None
    best_step: Count | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    threshold: ThresholdRecord | None = None
    selection: SelectionRecord | None = None
    steps: Count | None = None
    counts: dict[str, Any] = Field(default_factory=dict)
    trainable_parameters: Count | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    model_sha256: str | None = None

    @model_validator(mode="after")
    def _spec_matches_config(self) -> RunRecord:
        """module, strategy and attention at the top must be the config's (reports label the run
        with the top-level ones, the model is built from the config's)."""
        fit = self.config.get("fit")
        fit = fit if isinstance(fit, dict) else {}
        for key in ("module", "strategy", "attention"):
            top, configured = getattr(self, key), fit.get(key)
            if top is not None and configured is not None and top != configured:
                raise ValueError(f"{key} is {top!r} but config.fit.{key} is {configured!r}")
        return self

    def spec(self) -> dict[str, str | None]:
        """module, strategy and attention: the top-level keys, else the config's."""
        fit = self.config.get("fit")
        fit = fit if isinstance(fit, dict) else {}
        return {key: getattr(self, key) or fit.get(key) for key in ("module", "strategy", "attention")}

    @classmethod
    def parse(cls, tree: Any, source: Path) -> RunRecord:
        """A record from a parsed mapping; any invalid value is a RunError naming `source`."""
        if not isinstance(tree, Mapping):
            raise RunError(f"{source}: a run record must be a mapping, not {type(tree).__name__}; {REFIT}")
        try:
            return cls.model_validate(dict(tree))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            if first["type"] == "value_error" and not first["loc"]:  # a rule across keys
                reason = str(first["msg"]).removeprefix("Value error, ")
                raise RunError(f"{source}: {reason}; {REFIT}") from None
            raise RunError(f"{format_validation_error(exc, str(source))}; {REFIT}") from None

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """run.yaml read (bounded), parsed with yaml.safe_load and validated."""
        path = Path(path)
        try:
            tree = yaml.safe_load(read_record_bytes(path).decode("utf-8"))
        except OSError as exc:
            raise RunError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__}); {REFIT}") from None
        except UnicodeDecodeError:
            raise RunError(f"{path}: not UTF-8 text; {REFIT}") from None
        except (yaml.YAMLError, RecursionError) as exc:
            raise RunError(f"{path}: not valid YAML ({type(exc).__name__}); {REFIT}") from None
        return cls.parse(tree, path)

    @classmethod
    def save(cls, path: Path, record: Mapping[str, Any]) -> RunRecord:
        """Validate `record` by the rules every reader applies, then write it (atomically, in
        its own key order)."""
        checked = cls.parse(record, Path(path))
        atomic_write_bytes(Path(path), yaml.safe_dump(dict(record), sort_keys=False).encode())
        return checked


class RobustnessRecord(_Block):
    """One perturbed store's entry of metrics.json: its perturbation and its mean metrics."""

    perturb: str | None = None
    mean: dict[str, Any]


class MetricsRecord(_Block):
    """metrics.json, written by `clare eval`: per-subset and mean metrics, robustness."""

    run: str | None = None
    subsets: dict[str, dict[str, Any]]
    mean: dict[str, Any]
    robustness: dict[str, RobustnessRecord] = Field(default_factory=dict)


# Metrics that are fractions (rates and areas); counts are the n_* and *_n_subsets keys. Any
# other value in a metrics table must be a finite number or null: the oracle threshold is on
# the score's own scale, which `clare compare` does not assume to be a probability.
_FRACTION_METRICS = frozenset({
    "auc", "ap", "eer", "acc", "real_acc", "fake_acc", "video_auc", "tpr_at_1fpr",
    "oracle_best_threshold_acc", "acc_at_val_threshold"})


def _metric_problem(key: str, value: Any) -> str | None:
    """Why `value` cannot be the metric `key` that eval writes, or None."""
    if key == "notes":
        return None if isinstance(value, dict) else "must be a mapping of notes"
    if key.startswith("n_") or key.endswith("_n_subsets"):
        if type(value) is not int or value < 0:
            return f"must be a count, a whole number from 0 (got {short_repr(value, 20)})"
        return None
    if value is None:
        return None  # an undefined metric is written as null
    if type(value) not in (int, float) or not math.isfinite(value):
        return f"must be a finite number or null (got {short_repr(value, 20)})"
    if key in _FRACTION_METRICS and not 0 <= value <= 1:
        return f"must be between 0 and 1 (got {short_repr(value, 20)})"
    return None


def _check_metric_values(shown: MetricsRecord) -> str | None:
    """'key': why, for the first value clare show would print that eval cannot have written."""
    tables = [(f"subsets.{name}", table) for name, table in shown.subsets.items()]
    tables.append(("mean", shown.mean))
    tables += [(f"robustness.{name}.mean", entry.mean) for name, entry in shown.robustness.items()]
    for where, table in tables:
        for key, value in table.items():
            problem = _metric_problem(str(key), value)
            if problem:
                return f"'{one_line(f'{where}.{key}', 80)}' {problem}"
    return None



def _metrics_problem(tree: Any) -> tuple[MetricsRecord | None, str | None]:
    """The record of a parsed metrics.json, or why it cannot be one that eval wrote."""
    if isinstance(tree, Mapping) and not isinstance(tree.get("subsets"), Mapping):
        return None, "no 'subsets' table (per-subset metrics)"
    try:
        record = MetricsRecord.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = one_line(".".join(str(part) for part in err["loc"]), 80) or "the top level"
        return None, f"'{key}': {one_line(err['msg'], 120)}"
    problem = _check_metric_values(record)
    return (record, None) if problem is None else (None, problem)


def load_metrics(metrics_file: Path) -> MetricsRecord:
    """metrics.json, read (bounded) and checked; any way it can be unreadable or malformed is
    one ReportError naming the file."""
    problem: str | None
    try:
        tree = json.loads(read_record_bytes(metrics_file).decode("utf-8"))
    except OSError as exc:
        problem = f"unreadable, cannot read it ({exc.strerror or one_line(exc)})"
    except UnicodeDecodeError:
        problem = "unreadable, not UTF-8 text"
    except json.JSONDecodeError as exc:
        problem = f"unreadable, not valid JSON (line {exc.lineno}, column {exc.colno})"
    except RecursionError:
        problem = "unreadable, JSON nested too deeply"
    else:
        record, problem = _metrics_problem(tree)
        if record is not None:
            return record
    raise ReportError(f"{metrics_file}: {problem}; {RERUN_EVAL}")


# --------------------------------------------------------------------------- report folder


def _check_score_values(path: Path, scores: pd.DataFrame) -> None:
    """Labels 0/1 and p_fake numbers (any scale: intervals and curves use their ranks): other
    values would fail deep inside the metrics or sort as text into results that look sound."""
    if "label" in scores.columns and not scores["label"].isin([0, 1]).all():
        bad = scores["label"][~scores["label"].isin([0, 1])].iloc[0]
        bad = getattr(bad, "item", lambda: bad)()  # a numpy scalar as the plain value
        raise ReportError(f"{path}: column 'label' holds {bad!r}, not 0 (real) or 1 (fake); "
                          f"{RERUN_EVAL}")
    if "p_fake" in scores.columns:
        p_fake = scores["p_fake"]
        numeric = pd.api.types.is_float_dtype(p_fake) or pd.api.types.is_integer_dtype(p_fake)
        if not numeric:
            raise ReportError(f"{path}: column 'p_fake' holds {p_fake.dtype}, not numbers; "
                              f"{RERUN_EVAL}")


@dataclass(frozen=True)
class ReportFolder:
    """What `clare eval` writes into `reports/<run>`, each file named here and nowhere else."""

    path: Path

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def scores_file(self) -> Path:
        return self.path / SCORES_FILE

    @property
    def roc_file(self) -> Path:
        return self.path / ROC_FILE

    @property
    def run_spec_file(self) -> Path:
        return self.path / RUN_SPEC_FILE

    @property
    def dvc_metrics_file(self) -> Path:
        return self.path / DVC_METRICS_FILE

    def has_report(self) -> bool:
        """Whether the folder holds an evaluation (its metrics.json)."""
        return self.metrics_file.is_file()

    def holds_results(self) -> bool:
        """Whether the folder holds an evaluation's results (metrics.json or scores.parquet)."""
        return self.metrics_file.is_file() or self.scores_file.is_file()

    def load_metrics(self) -> MetricsRecord:
        return load_metrics(self.metrics_file)

    def load_scores(self, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
        """scores.parquet's `required` columns (each must be there) and those of `optional`
        that are; any problem is one ReportError naming the file."""
        path = self.scores_file
        if not path.is_file():
            raise ReportError(f"{path}: missing (needed for intervals and ROC curves); {RERUN_EVAL}")
        try:
            scores = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ReportError(f"{path}: unreadable parquet ({exc.__class__.__name__}); "
                              f"{RERUN_EVAL}") from None
        missing = [c for c in required if c not in scores.columns]
        if missing:
            raise ReportError(f"{path}: lacks column(s) {', '.join(missing)}; {RERUN_EVAL}")
        _check_score_values(path, scores)
        return scores[[c for c in (*required, *optional) if c in scores.columns]]

    def save(self, metrics: Mapping[str, Any], scores: pd.DataFrame, roc: Any) -> None:
        """metrics.json (strict JSON), scores.parquet and roc.json, each written atomically."""
        atomic_write_metrics_json(self.metrics_file, metrics)
        atomic_write_parquet(self.scores_file, scores)
        atomic_write_metrics_json(self.roc_file, roc)
