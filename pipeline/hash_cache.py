"""sha256 of model weight files, remembered across processes.

Every fingerprint hashes the Stable Diffusion and CLIP weights (gigabytes at real size), and
`clare predict`, `eval` and `fit` each compute one. The digest of a file is kept in
`$XDG_CACHE_HOME/clare/hashes.json` (default `~/.cache/clare/hashes.json`) under its
absolute path, with the size, mtime, ctime (ns) and inode it had when it was hashed and the
time it was hashed; it is used only while all of them still match, the way git's index judges
a file unchanged:

- ctime is kept because a program cannot set it: a file overwritten in place with another of
  the same size and its mtime put back (`touch -r`) keeps size, mtime and inode, but its ctime
  moves, so it is hashed again.
- the "racy" case: a file changed again within the timestamps' resolution after it was hashed
  keeps the mtime and ctime it was hashed with. An entry is therefore trusted only when the
  file's mtime and ctime are at least RACY_MARGIN_NS older than the moment it was hashed;
  a file changed just before (or while) it was hashed is hashed again next time.

What it still cannot see: a change that does not go through this machine's file system
(bytes written to the block device, a network file system whose server keeps no ctime or
whose clock runs behind by more than the margin), and a system clock set back to forge a
ctime. `CLARE_HASH_CACHE=off` (or `clare models check`) reads the bytes. A cache file that
cannot be read or parsed, is not a regular file or is larger than any cache clare writes, is
ignored and rewritten. `CLARE_HASH_CACHE=off` turns the cache off.

The cache is an optimisation: if it cannot be written (a read-only home), hashing goes on.
Integrity checks (`clare models check`, downloads) read the bytes instead (`persistent=False`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clare.config import env_switch
from clare.files import atomic_write_json, file_sha256, read_record_bytes

CACHE_ENV = "CLARE_HASH_CACHE"
FORMAT = "clare-hashes/2"  # /2 added ctime_ns and hashed_ns; /1 files are ignored and rewritten
# Coarser than any file system's timestamps (FAT: 2 s; the kernel's coarse clock: a few ms)
# and than the lag of the file timestamps behind time.time_ns().
RACY_MARGIN_NS = 2_000_000_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileKey:
    """What must be unchanged for a remembered digest to be used."""

    path: str  # absolute, symlinks resolved
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileKey:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


# Digests this process read from the bytes: an integrity check (persistent=False) may use
# them, never one taken from the cache file.
_READ: dict[FileKey, str] = {}


def cache_file() -> Path | None:
    """hashes.json under the user's cache folder (XDG), or None when CLARE_HASH_CACHE=off."""
    if not env_switch(CACHE_ENV):
        return None
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative or empty XDG_CACHE_HOME is ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "clare" / "hashes.json"


def _entries(cache: Path) -> dict[str, Any]:
    """The remembered files of a cache file; {} when it is absent, unreadable or not ours."""
    try:
        raw = json.loads(read_record_bytes(cache).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("files"), dict):
        return {}
    return raw["files"]


def _remembered(entry: Any, key: FileKey) -> str | None:
    """The digest of `entry` when every part of its key equals `key`, the file was last changed
    safely before it was hashed (not "racy"), and it looks like a digest."""
    if not isinstance(entry, dict):
        return None
    sha, hashed_ns = entry.get("sha256"), entry.get("hashed_ns")
    same = all(entry.get(name) == value for name, value in asdict(key).items())
    settled = (type(hashed_ns) is int
               and hashed_ns - max(key.mtime_ns, key.ctime_ns) >= RACY_MARGIN_NS)
    return sha if same and settled and isinstance(sha, str) and _SHA256.match(sha) else None


def _remember(cache: Path, key: FileKey, sha: str, hashed_ns: int) -> None:
    """Add one digest, under an exclusive lock (several processes may hash at once); entries
    of files that are gone are dropped so the file stays small. Failures are ignored."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.with_name(cache.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            files = {path: entry for path, entry in _entries(cache).items() if os.path.exists(path)}
            files[key.path] = {**asdict(key), "sha256": sha, "hashed_ns": hashed_ns}
            atomic_write_json(cache, {"format": FORMAT, "files": files})
    except OSError:
        pass


def weights_sha256(path: Path, *, persistent: bool = True) -> str:
    """sha256 of a file: read once per process, and (when `persistent`) taken from the user's
    cache while its path, size, mtime, ctime and inode are unchanged (see the module notes)."""
    hashed_ns = time.time_ns()  # before the stat: a change after it is never older than this
    key = FileKey.of(path)
    if key in _READ:
        return _READ[key]
    cache = cache_file() if persistent else None
    if cache is not None:
        remembered = _remembered(_entries(cache).get(key.path), key)
        if remembered is not None:
            return remembered
    sha = file_sha256(Path(key.path))
    _READ[key] = sha
    if cache is not None and FileKey.of(path) == key:  # unchanged while it was read
        _remember(cache, key, sha, hashed_ns)
    return sha
