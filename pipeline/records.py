"""run.yaml as a typed record: written by `clare fit`, validated on every read.

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

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clare.config import format_validation_error
from clare.errors import RunError
from clare.files import atomic_write_bytes, read_record_bytes

RUN_FILE = "run.yaml"
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
