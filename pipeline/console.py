"""One way to make the rich console every command prints through."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, ConsoleRenderable, RenderHook
from rich.control import Control

# Logs, CI and pipes are not terminals: rich would squeeze tables into 80 columns there.
PIPE_WIDTH = 160


def make_console(*, stderr: bool = True, quiet: bool = False, log_file: Path | None = None) -> Console:
    console = Console(stderr=stderr, quiet=quiet, soft_wrap=True)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    if log_file is not None:
        console.push_render_hook(LogFileHook(log_file))
    return console


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
