"""Rendering of `clare info` and `clare verify`: tables and lines on stdout from clare.cache.checks.

The checks themselves (what is counted, what makes a shard damaged) live in clare.cache.checks
and return data; this module only decides how it looks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clare.cache.checks import VerifyReport, shard_ranges, store_info, verify_store
from clare.console import make_console


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _state(info: dict[str, Any]) -> str:
    if info["complete"]:
        return "complete"
    shards = info["shards"]
    return (f"[bold yellow]incomplete[/]: {shards['complete']}/{shards['total']} shards done; "
            "rerun the same `clare extract` command to finish")


def _summary_table(info: dict[str, Any]) -> Table:
    shards = info["shards"]
    perturb = f" ({info['perturb']})" if info["perturb"] else ""
    rows = [
        ("state", _state(info)),
        ("split", escape(f"{info['split']}{perturb}")),
        ("subsets", escape(", ".join(info["subsets"] or []) or "-")),
        ("created", escape(str(info["created"]))),
        ("rows", f"{info['rows']} ({info['images']} distinct images x {info['views']} view(s); "
                 f"{info['entries']} listed entries)"),
        ("rows written", str(info["rows_done"])),
        ("ok", str(info["ok"])),
        ("failed", str(info["failed"])),
        ("shards", f"{shards['complete']}/{shards['total']} complete, {info['shard_rows']} rows each"),
    ]
    if shards["missing"]:
        rows.append(("missing shards", shard_ranges(shards["missing"])))
    rows += [
        ("on disk", f"{human_bytes(info['bytes_on_disk'])}; {human_bytes(info['bytes_per_image'])} "
                    f"per image, {human_bytes(info['bytes_per_row'])} per row"),
        ("fingerprint", escape(str(info["fingerprint_sha256"]))),
    ]
    return _key_value_table(f"store {escape(info['path'])}", rows)


def _key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _arrays_table(arrays: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="arrays", title_justify="left")
    for column in ("name", "shape", "dtype", "on disk"):
        table.add_column(column)
    for name, item in arrays.items():
        if item.get("error"):
            table.add_row(name, "-", "-", f"[red]{escape(item['error'])}[/]")
        else:
            table.add_row(name, " x ".join(map(str, item["shape"])), item["dtype"],
                          human_bytes(item["bytes_on_disk"]))
    return table


def _failures_table(failures: dict[str, int]) -> Table:
    table = Table(title="failures by reason", title_justify="left")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for reason, count in failures.items():
        table.add_row(escape(reason), str(count))
    return table


def _fingerprint_table(summary: dict[str, Any]) -> Table:
    rows = [(key, escape(json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)))
            for key, value in summary.items()]
    return _key_value_table("fingerprint (what the numbers depend on)", rows)


def print_info(path: Path | str, console: Console | None = None) -> dict[str, Any]:
    """Print store_info as tables on stdout; returns the same dictionary."""
    info = store_info(path)
    console = console or make_console(stderr=False)
    console.print(_summary_table(info))
    console.print(_arrays_table(info["arrays"]))
    if info["failures_by_reason"]:
        console.print(_failures_table(info["failures_by_reason"]))
    console.print(_fingerprint_table(info["fingerprint"]))
    return info


def print_verify(report: VerifyReport, console: Console | None = None) -> None:
    """One line per check and per damaged shard, what to do next, and the verdict."""
    console = console or make_console(stderr=False)
    console.print(f"[bold]verify {escape(str(report.path))}[/]")
    for check in report.checks:
        mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
        console.print(f"  {mark} {check.name}: {escape(check.detail)}", highlight=False)
    for index, problem in sorted(report.damaged.items()):
        console.print(f"  [red]damaged shard {index}[/]: {escape(problem)}", highlight=False)
    advice = report.advice()
    if advice:
        console.print(f"  {escape(advice)}", highlight=False)
    console.print("[green]store is sound[/]" if report.ok else "[red]store failed verification[/]")


def run_verify(path: Path | str) -> bool:
    """Verify a store (marking damaged shards for recomputation), print it; True when sound."""
    report = verify_store(path)
    print_verify(report)
    return report.ok
