"""run.yaml read through one typed record (clare.records.RunRecord): every value a reader
uses is checked on every read, unknown blocks pass through, and the file read is bounded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from clare.errors import RunError
from clare.records import RunRecord


def _record(**changes: Any) -> dict[str, Any]:
    """A run record in the shape `clare fit` writes, with `changes` applied at the top."""
    record: dict[str, Any] = {
        "config": {"seed": 0, "fit": {"module": "fusion", "strategy": "coop", "attention": "v2"}},
        "module": "fusion", "strategy": "coop", "attention": "v2",
        "store": "stores/demo/train", "store_fingerprint": {"features": {}},
        "best_step": 6, "metrics": {"auc": 0.9, "val_loss": 0.4},
        "threshold": {"value": 0.46, "fpr": 0.0, "fnr": 0.1, "rule": "EER", "step": 6},
        "steps": 30, "counts": {"train_rows": 10}, "history": [{"step": 6, "val_auc": 0.9}],
        "model_sha256": "0" * 64,
    }
    record.update(changes)
    return record


def _write(tmp_path: Path, record: Any) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(record), encoding="utf-8")
    return path


def test_a_record_fit_writes_is_read_back(tmp_path: Path) -> None:
    loaded = RunRecord.load(_write(tmp_path, _record()))
    assert loaded.threshold is not None and loaded.threshold.value == 0.46
    assert loaded.spec() == {"module": "fusion", "strategy": "coop", "attention": "v2"}


def test_blocks_other_engineers_add_pass_through(tmp_path: Path) -> None:
    """The selection block fit adds, and top-level keys this clare does not know, are kept."""
    selection = {"rule": "best val AUC", "step": 6, "val_auc": 0.9, "val_loss": None,
                 "decided_by": "val_auc"}
    loaded = RunRecord.load(_write(tmp_path, _record(selection=selection,
                                                     provenance={"git": "abc"})))
    assert loaded.selection is not None and loaded.selection.step == 6
    assert loaded.model_extra == {"provenance": {"git": "abc"}}


@pytest.mark.parametrize("changes,says", [
    ({"threshold": {"value": float("nan")}}, "key 'threshold.value': Input should be a finite number"),
    ({"threshold": {"value": 7.5}}, "key 'threshold.value': Input should be less than or equal to 1"),
    ({"threshold": {"value": -0.1}}, "key 'threshold.value': Input should be greater than or equal to 0"),
    ({"threshold": {"value": "high"}}, "key 'threshold.value': Input should be a valid number"),
    ({"threshold": {"value": True}}, "key 'threshold.value': Input should be a valid number"),
    ({"threshold": "high"}, "key 'threshold': Input should be a valid dictionary"),
    ({"threshold": {"value": 0.5, "fpr": 2}}, "key 'threshold.fpr'"),
    ({"module": "lare"}, "module is 'lare' but config.fit.module is 'fusion'"),
    ({"attention": "v1"}, "attention is 'v1' but config.fit.attention is 'v2'"),
    ({"store_fingerprint": 5}, "key 'store_fingerprint'"),
    ({"config": None}, "key 'config'"),
    ({"steps": -3}, "key 'steps'"),
    ({"history": "lots"}, "key 'history'"),
    ({"selection": {"rule": "x", "step": "six", "decided_by": "auc"}}, "key 'selection.step'"),
    ({"selection": {"rule": "x", "step": 6, "val_auc": float("inf"), "decided_by": "auc"}},
     "key 'selection.val_auc'"),
])
def test_every_read_refuses_a_value_no_reader_could_use(tmp_path: Path, changes: dict[str, Any],
                                                        says: str) -> None:
    path = _write(tmp_path, _record(**changes))
    with pytest.raises(RunError) as caught:
        RunRecord.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message
    assert message.endswith("refit the run with `clare fit --overwrite` (or restore the run.yaml it wrote)")


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    with pytest.raises(RunError, match="threshold.value"):
        RunRecord.save(path, _record(threshold={"value": float("nan")}))
    assert not path.exists()
    RunRecord.save(path, _record())
    assert list(yaml.safe_load(path.read_text())) == list(_record())  # fit's key order kept


@pytest.mark.parametrize("hostile", ["dev_zero", "fifo", "not_yaml", "a_list", "not_utf8"])
def test_a_run_file_that_is_no_record_is_one_line(tmp_path: Path, hostile: str) -> None:
    """Never read whole into memory (a symlink to /dev/zero), never waited on (a FIFO)."""
    path = tmp_path / "run.yaml"
    if hostile == "dev_zero":
        path.symlink_to("/dev/zero")
    elif hostile == "fifo":
        os.mkfifo(path)
    elif hostile == "not_yaml":
        path.write_text("config: [unclosed")
    elif hostile == "a_list":
        path.write_text("- 1\n- 2\n")
    else:
        path.write_bytes(b"config: \xff\xfe")
    with pytest.raises(RunError, match=rf"^{path}: .*refit the run"):
        RunRecord.load(path)
