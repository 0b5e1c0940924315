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


class ReportError(ClareError):
    """A report folder is held by another evaluation."""


class TrainingError(ClareError):
    """Training cannot go on (the loss became NaN or infinite)."""


class ShapeMismatchError(ClareError):
    """Features have other shapes than the model they are fed to was built for."""
