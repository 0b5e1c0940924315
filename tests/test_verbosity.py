"""--quiet and --verbose: on every command; quiet prints nothing on success, Dask's INFO lines
only with --verbose."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from helpers_extract import assert_stores_equal

from clare.cli import app
from clare.config_files import load_config
from clare.console import Verbosity, get_verbosity, library_logging, make_console, verbosity
from clare.stages.extract import run_extract
from clare.testing import make_config, make_image_tree

# Dask's own lines: "INFO:distributed.scheduler:..." in the client process and
# "... - distributed.worker - INFO - ..." in its worker processes.
DASK_INFO = re.compile(r"INFO.*distributed\.|distributed\.\S+ - INFO")


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf command of a click group, by its full name ("models tiny")."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[prefix + name] = command
    return found


def test_every_command_takes_quiet_and_verbose():
    commands = _commands(typer.main.get_command(app))
    assert {"extract", "fit", "eval", "models tiny", "config"} <= set(commands)
    for name, command in commands.items():
        flags = {flag for param in command.params for flag in param.opts}
        assert {"--quiet", "--verbose"} <= flags, name


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_models_dir) -> Path:
    root = tmp_path_factory.mktemp("verbosity")
    make_image_tree(root / "data", 4, seed=0)
    make_config(root / "work", tiny_models_dir, root / "data", extract__shard_rows=2)
    return root / "work" / "config.yaml"


def test_quiet_silences_output_and_is_restored_after_the_command(tiny_config, clare):
    root_level = logging.getLogger().level
    shown = clare("config", "--config", tiny_config)
    assert shown.exit_code == 0 and "shard_rows: 2" in shown.output
    quiet = clare("config", "--config", tiny_config, "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output == ""
    # The level belongs to one command: the next one (and Python callers) print again.
    assert get_verbosity() is Verbosity.NORMAL
    assert logging.getLogger().level == root_level
    assert not make_console().quiet


def test_quiet_and_verbose_together_is_one_line_and_exit_2(tiny_config):
    done = subprocess.run([sys.executable, "-m", "clare.cli", "config", "--config",
                           str(tiny_config), "-q", "-v"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --quiet and --verbose: pass one of them, not both"]


@pytest.mark.parametrize(
    "level,shown",
    [(Verbosity.QUIET, []), (Verbosity.NORMAL, ["warning"]),
     (Verbosity.VERBOSE, ["info", "warning"])],
)
def test_library_logging_follows_the_verbosity(level, shown, caplog):
    logger = logging.getLogger("clare-test-lib.part")
    with verbosity(level), library_logging("clare-test-lib"), caplog.at_level(logging.NOTSET):
        logger.info("info")
        logger.warning("warning")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == shown
    assert logging.getLogger("clare-test-lib").level == logging.NOTSET  # restored


def _extract(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "clare.cli", "extract", "--config", str(config), "--workers", "2",
         "--overwrite", *flags],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_dask_info_lines_only_with_verbose_and_quiet_prints_nothing(tiny_config):
    normal = _extract(tiny_config)
    assert not [line for line in normal.stderr.splitlines() if DASK_INFO.search(line)]
    assert "4 ok, 0 failed" in normal.stderr  # the summary still prints

    quiet = _extract(tiny_config, "--quiet")
    assert quiet.stdout == "" and quiet.stderr == ""

    verbose = _extract(tiny_config, "--verbose")
    # The lines the other two runs hide are really there: client and worker processes alike.
    info = [line for line in verbose.stderr.splitlines() if DASK_INFO.search(line)]
    assert any("distributed.scheduler" in line for line in info), verbose.stderr[-3000:]
    assert any("distributed.worker" in line for line in info), verbose.stderr[-3000:]
    assert "4 ok, 0 failed" in verbose.stderr

    # Two Dask workers wrote the same store, bit for bit, as one process does. (One extract of
    # each kind: Dask clusters are the slowest thing the suite starts.)
    cfg = load_config(tiny_config, [f"paths.stores={tiny_config.parent / 'one-process'}"])
    single = run_extract(cfg, split="train", quiet=True)
    assert_stores_equal(tiny_config.parent / "stores" / "train", single.store)
