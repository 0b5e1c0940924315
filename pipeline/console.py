"""One way to make the rich console every command prints through, and how much it prints.

The verbosity is process state, set by the CLI's `--quiet` / `--verbose` for one command:
- QUIET: nothing but errors. Consoles are silent, libraries log errors only, and Hugging Face
  progress bars are off (also in Dask worker processes, which inherit the environment).
- NORMAL: progress, summaries and warnings.
- VERBOSE: also the INFO lines of the libraries clare drives (Dask's cluster life cycle).
Stages called from Python keep NORMAL unless their caller sets another level.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import IntEnum
from pathlib import Path

from rich.console import Console, ConsoleRenderable, RenderHook
from rich.control import Control
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

# Logs, CI and pipes are not terminals: rich would squeeze tables into 80 columns there.
PIPE_WIDTH = 160
# Read by huggingface_hub, transformers and diffusers when they are imported.
HF_PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


class Verbosity(IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


_state = {"level": Verbosity.NORMAL}


def get_verbosity() -> Verbosity:
    return _state["level"]


def make_console(*, stderr: bool = True, quiet: bool = False, log_file: Path | None = None) -> Console:
    quiet = quiet or get_verbosity() is Verbosity.QUIET
    console = Console(stderr=stderr, quiet=quiet, soft_wrap=True)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    if log_file is not None:
        console.push_render_hook(LogFileHook(log_file))
    return console


def library_log_level() -> int:
    """The level third-party loggers run at: INFO only when verbose, errors only when quiet."""
    return {Verbosity.QUIET: logging.ERROR, Verbosity.NORMAL: logging.WARNING,
            Verbosity.VERBOSE: logging.INFO}[get_verbosity()]


@contextmanager
def _logger_level(logger: logging.Logger, level: int) -> Iterator[None]:
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def library_logging(name: str) -> Iterator[None]:
    """For the block, the logger `name` and its children log at `library_log_level()`.

    Children that set a stricter level of their own keep it (Dask keeps distributed.client
    at WARNING). When verbose and nothing would print the lines, a stderr handler is added.
    """
    level = library_log_level()
    logger = logging.getLogger(name)
    with ExitStack() as stack:
        stack.enter_context(_logger_level(logger, level))
        for child_name, child in list(logging.root.manager.loggerDict.items()):
            if (child_name.startswith(name + ".") and isinstance(child, logging.Logger)
                    and logging.NOTSET < child.level < level):
                stack.enter_context(_logger_level(child, level))
        if level < logging.WARNING and not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            stack.callback(logger.removeHandler, handler)
        yield


@contextmanager
def _hf_progress_bars_off() -> Iterator[None]:
    before = os.environ.get(HF_PROGRESS_ENV)
    os.environ[HF_PROGRESS_ENV] = "1"
    # Libraries already imported read the variable at import time: switch them directly.
    switched = []
    for module_name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(module_name)
        if module is not None and module.is_progress_bar_enabled():
            module.disable_progress_bar()
            switched.append(module)
    try:
        yield
    finally:
        for module in switched:
            module.enable_progress_bar()
        if before is None:
            os.environ.pop(HF_PROGRESS_ENV, None)
        else:
            os.environ[HF_PROGRESS_ENV] = before


@contextmanager
def verbosity(level: Verbosity) -> Iterator[None]:
    """Run the block at `level`; consoles made inside it, the root logger (where libraries such
    as open_clip log) and Hugging Face progress bars follow it. Restored on exit."""
    before = _state["level"]
    _state["level"] = level
    try:
        with ExitStack() as stack:
            stack.enter_context(_logger_level(logging.getLogger(), library_log_level()))
            if level is Verbosity.QUIET:
                stack.enter_context(_hf_progress_bars_off())
            yield
    finally:
        _state["level"] = before


class LogFileHook(RenderHook):
    """Appends what a console prints to a plain-text file, even with --quiet.

    Pushed before any progress display starts, so it sees printed lines only: the progress
    bar's redraws (Control renderables and the live display appended after this hook) stay
    out of the file.
    """

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", encoding="utf-8", buffering=1)  # closed with the process
        self.console = Console(file=handle, width=PIPE_WIDTH, no_color=True, soft_wrap=True,
                               force_terminal=False, highlight=False)

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        printed = [r for r in renderables if not isinstance(r, Control)]
        if printed:
            self.console.print(*printed)
        return renderables


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
