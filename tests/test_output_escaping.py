"""CSV files clare writes are safe to open in a spreadsheet (OWASP's CSV-injection rule)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from clare.files import atomic_write_csv


def test_text_cells_that_a_spreadsheet_would_run_get_a_leading_quote(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "input": ["=1+2.png", "+A1", "-A1", "@SUM(A1)", "\tA", "\rA", "a=b.png", "", "'q"],
        "p_fake": [-0.5, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, None, 0.7],
        "subset": pd.Categorical(["=cmd"] * 9),
        "=header": [True] * 9,
    })
    path = tmp_path / "out.csv"
    atomic_write_csv(path, frame)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["input", "p_fake", "subset", "'=header"]
    assert [row[0] for row in rows[1:]] == ["'=1+2.png", "'+A1", "'-A1", "'@SUM(A1)", "'\tA", "'\rA",
                                            "a=b.png", "", "'q"]
    assert [row[1] for row in rows[1:]] == ["-0.5", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "", "0.7"]
    assert {row[2] for row in rows[1:]} == {"'=cmd"}
    assert list(frame["input"])[0] == "=1+2.png"  # the caller's frame is not changed
