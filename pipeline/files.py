"""File helpers every stage shares: writes that are never seen half-done, and file hashes.

A write goes to a new sibling `<name>.<random>.partial` file that is renamed into place, so a
reader, or a run resumed after a kill, sees the old file or the new one and never a torn one. A `.partial`
left by a killed process is what `StoreWriter.remove_partials` cleans up.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from clare.errors import ClareError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a sibling temporary path, then rename it over `path`.

    The temporary file is created new (O_EXCL, a random part in its name): a fixed
    `<name>.partial` that already existed as a symlink was written through, destroying its
    target, and two writers of one file shared it. Its mode is what open() would give."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.chmod(0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Bytes, flushed to disk before the rename (store markers, metadata, model files).

    An OSError that names no file (a full disk reports none from write()) is raised again
    naming `path`, so the one-line error says which file could not be written.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        atomic_write(path, write)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def atomic_write_json(path: Path, payload: Any) -> None:
    """Indented, key-sorted JSON (store.json, shard markers): diffs and reviews stay readable."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has neither); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_metrics_json(path: Path, payload: Any) -> None:
    """Metrics as strict JSON: an undefined value is null, never NaN (metrics.json, DVC files)."""
    text = json.dumps(_json_safe(payload), indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


# OWASP's CSV-injection rule: a spreadsheet runs a cell that begins with one of these as a
# formula (`=HYPERLINK(...)` in a file name), so such a text cell is written with a leading '.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text value that a spreadsheet would run as a formula, prefixed with a single quote;
    anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def atomic_write_csv(path: Path, frame: Any) -> None:
    """A table as CSV for spreadsheets: text cells (and headers) escaped by `spreadsheet_safe`;
    numbers stay numbers (-0.5 is data, not a formula). Every CSV clare writes goes here."""
    import pandas as pd

    safe = frame.rename(columns=spreadsheet_safe)
    for column in safe.columns:
        values = safe[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
                or pd.api.types.is_datetime64_any_dtype(values)):
            safe[column] = values.astype(object).map(spreadsheet_safe)
    # CRLF line ends (RFC 4180): the csv writer then quotes any cell holding a CR or LF, which
    # with "\n" endings a CR in a file name would leave bare and split the row for readers.
    atomic_write(path, lambda tmp: safe.to_csv(tmp, index=False, lineterminator="\r\n"))


def atomic_write_parquet(path: Path, frame: Any) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


RECORD_LIMIT = 32 << 20  # bytes: far above any record clare writes, far below a memory problem


def read_record_bytes(path: Path, limit: int = RECORD_LIMIT) -> bytes:
    """The bytes of a small file clare keeps beside the data (run.yaml, metrics.json,
    store.json, hashes.json, markers), read only when it is a regular file of at most `limit`
    bytes: a symlink to /dev/zero, a FIFO or a runaway file would otherwise be read whole
    into memory (or block). Refusals are OSErrors with a strerror that says which."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for a file.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB, not a record clare wrote", str(path))
    return data


PARTIAL_MARK = ".clare-partial"


def fresh_partial_folder(out: Path) -> Path:
    """`<out>.partial`: an empty folder to build `out` in, marked as clare's. A leftover of a
    killed build is removed only when it carries the mark: a user's folder of that name is
    an OSError naming it, never deleted."""
    staging = Path(out).with_name(Path(out).name + ".partial")
    if staging.exists() or staging.is_symlink():
        if not (staging / PARTIAL_MARK).is_file():
            raise FileExistsError(errno.EEXIST, "exists but clare did not make it (move it away, "
                                  "clare deletes only what it made)", str(staging))
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / PARTIAL_MARK).write_text("made by clare; removed when published\n")
    return staging


def publish_partial_folder(staging: Path, out: Path) -> None:
    """Rename a finished `fresh_partial_folder` into place, without its mark."""
    (staging / PARTIAL_MARK).unlink()
    staging.rename(out)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def open_lock_file(path: Path, error: type[ClareError]) -> IO[str]:
    """A lock file for `pid_lock`, created when missing. Never opened through a symlink nor
    as anything but a regular file: the pid written into it truncates what it is, so a `.lock`
    planted as a link (a copied store, a shared folder) destroyed the file it pointed at, even
    for `clare verify`. Such a path is `error`, one line naming it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise error(f"{path}: a symbolic link where clare keeps its lock file (it never writes "
                    "through one); delete the link") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path}: not a regular file, where clare keeps its lock file; move it away")
    return os.fdopen(fd, "r+")


@contextmanager
def pid_lock(handle: IO[str], held: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an exclusive flock on an open lock file (`a+` mode) and write this pid into it.

    When another process holds it, the handle is closed and `held(its pid)` is raised. The
    kernel releases the lock when the process dies, so a killed writer never leaves it held.
    """
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(64).strip() or "unknown"
        handle.close()
        raise held(holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
