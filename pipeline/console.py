"""One way to make the rich console every command prints through."""

from __future__ import annotations

from rich.console import Console

# Logs, CI and pipes are not terminals: rich would squeeze tables into 80 columns there.
PIPE_WIDTH = 160


def make_console(*, stderr: bool = True, quiet: bool = False) -> Console:
    console = Console(stderr=stderr, quiet=quiet, soft_wrap=True)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console
