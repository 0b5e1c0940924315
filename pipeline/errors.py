"""Errors that reach the user as one line and exit code 2 (no traceback unless --debug)."""

from __future__ import annotations


class ClareError(Exception):
    """A problem with the user's input (file, key, data) that the user can fix.

    The message is one line that names the file or key and says how to fix it.
    """

    exit_code = 2


class ConfigError(ClareError):
    """A configuration file or override is malformed or fails validation."""


class DataError(ClareError):
    """A dataset list, folder or image set is malformed or incomplete."""


class ModelLoadError(ClareError):
    """Model weights are missing or do not match what the config names."""


class StoreError(ClareError):
    """A feature store is missing, locked, incomplete or built with other settings."""


class FingerprintError(StoreError):
    """Two things that must come from the same frozen models and settings do not."""


class RunError(ClareError):
    """A run folder is missing, unfinished, held by another fit, or would be overwritten."""


class CheckpointError(RunError):
    """A model file or training checkpoint is unreadable, damaged, or made with other settings."""


class ExportError(RunError):
    """`clare export` cannot write its folder, or an exported folder cannot be trusted."""


class ReportError(ClareError):
    """A report folder is held by another evaluation."""


class TrainingError(ClareError):
    """Training cannot go on (the loss became NaN or infinite)."""


class ShapeMismatchError(ClareError):
    """Features have other shapes than the model they are fed to was built for."""


# --------------------------------------------------------------------------- message helpers
# Every message that quotes a value or an exception goes through these, so that no input
# (a 10^9-element YAML alias bomb, a multi-line decoder complaint) can make an error message
# unbounded or break the one-line rule.

MESSAGE_LIMIT = 200  # characters of one quoted exception or value inside a message


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def one_line(problem: BaseException | str, limit: int = MESSAGE_LIMIT) -> str:
    """An exception (or a text) as one bounded line: its message's first non-empty line, or
    the exception's type name when the message is empty."""
    text = str(problem)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        first = lines[0]
    else:
        first = type(problem).__name__ if isinstance(problem, BaseException) else ""
    return _clip(first, limit)


def reason_label(failure: object) -> str:
    """The groupable label of a "reason: detail" failure text ("truncated: x.png ..." ->
    "truncated"); failed rows and undefined metrics both record their reason this way."""
    return str(failure).split(":", 1)[0].strip() or "unknown"


def short_repr(value: object, limit: int = 60) -> str:
    """repr() of any value, bounded in both time and length (reprlib stops at a few items per
    level and a few levels, so a huge or self-similar structure is never expanded)."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxstring = shortener.maxother = limit
    for name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
        setattr(shortener, name, 4)
    return _clip(shortener.repr(value), limit)
