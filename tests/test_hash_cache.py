"""The persistent weight-hash cache (clare.hash_cache): a second process reads no bytes, a
changed file is hashed again, a damaged cache file is ignored and rewritten."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from clare import hash_cache
from clare.files import RECORD_LIMIT, read_record_bytes
from clare.hash_cache import CACHE_ENV, FileKey, cache_file, weights_sha256

# The racy margin shrunk so that a test file is "settled" after a short sleep (the real one,
# 2 s, would slow every test); SETTLE is comfortably above it and the kernel clock's tick.
MARGIN_NS = 50_000_000
SETTLE_S = 0.12


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The cache turned on under a temporary XDG_CACHE_HOME; the list of files whose bytes
    were read. Each call stands for a new process: this process's digests are forgotten."""
    monkeypatch.setenv(CACHE_ENV, "on")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    read: list[str] = []
    real = hash_cache.file_sha256

    def spy(path: Path) -> str:
        read.append(str(path))
        return real(path)

    monkeypatch.setattr(hash_cache, "file_sha256", spy)
    monkeypatch.setattr(hash_cache, "_READ", {})
    monkeypatch.setattr(hash_cache, "RACY_MARGIN_NS", MARGIN_NS)
    return read


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hash_cache, "_READ", {})


def _weights(tmp_path: Path, data: bytes = b"weights" * 1000) -> tuple[Path, str]:
    """A weights file last changed long enough ago to be cached (not "racy")."""
    path = tmp_path / "unet.safetensors"
    path.write_bytes(data)
    time.sleep(SETTLE_S)
    return path, hashlib.sha256(data).hexdigest()


def test_second_process_takes_the_digest_from_the_cache(reads: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path, expected = _weights(tmp_path)
    assert weights_sha256(path) == expected
    assert cache_file() == tmp_path / "xdg" / "clare" / "hashes.json"
    stored = json.loads(cache_file().read_text())["files"][str(path.resolve())]
    assert stored["sha256"] == expected and stored["size"] == path.stat().st_size
    _new_process(monkeypatch)
    assert weights_sha256(path) == expected
    assert reads == [str(path.resolve())]  # read once, by the first "process"


def test_a_touched_or_rewritten_file_is_hashed_again(reads: list[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path, expected = _weights(tmp_path)
    weights_sha256(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _new_process(monkeypatch)
    assert weights_sha256(path) == expected and len(reads) == 2
    # Same size, new content, mtime put back by hand: the inode still differs (a new file).
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"W" * len(b"weights" * 1000))
    key = FileKey.of(path)
    os.replace(replacement, path)
    os.utime(path, ns=(key.mtime_ns, key.mtime_ns))
    _new_process(monkeypatch)
    assert weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(reads) == 3


def test_a_file_rewritten_in_place_with_its_mtime_put_back_is_hashed_again(
        reads: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack of issue 23: same size, same inode, `touch -r` restores the mtime; only the
    ctime (which no program can set) shows the change."""
    path, expected = _weights(tmp_path)
    weights_sha256(path)
    _new_process(monkeypatch)
    assert weights_sha256(path) == expected and len(reads) == 1  # cached
    before = path.stat()
    with open(path, "r+b") as handle:  # in place: the inode stays
        handle.write(b"X" * before.st_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size,
                                                                before.st_mtime_ns)
    _new_process(monkeypatch)
    assert weights_sha256(path) == hashlib.sha256(b"X" * before.st_size).hexdigest()
    assert len(reads) == 2


def test_a_file_changed_just_before_it_was_hashed_is_not_trusted(
        reads: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git's racy case: a change within the timestamps' resolution after hashing would keep
    the key, so a digest taken less than the margin after the last change is re-checked."""
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"fresh")
    weights_sha256(path)  # at once: within the margin of the file's last change
    entry = json.loads(cache_file().read_text())["files"][str(path.resolve())]
    assert entry["hashed_ns"] - max(entry["mtime_ns"], entry["ctime_ns"]) < MARGIN_NS
    _new_process(monkeypatch)
    weights_sha256(path)
    assert len(reads) == 2  # racy: read again, and remembered with the later time
    time.sleep(SETTLE_S)
    _new_process(monkeypatch)
    weights_sha256(path)
    _new_process(monkeypatch)
    weights_sha256(path)
    assert len(reads) == 3  # hashed once after it settled, then taken from the cache


@pytest.mark.parametrize("hostile", ["dev_zero", "fifo"])
def test_a_cache_file_that_is_no_record_is_bounded_and_ignored(
        reads: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile: str) -> None:
    """A symlink to /dev/zero or a FIFO in place of hashes.json is not read
    whole (or waited on): it is ignored and replaced with a valid cache."""
    path, expected = _weights(tmp_path)
    cache = cache_file()
    cache.parent.mkdir(parents=True)
    if hostile == "dev_zero":
        cache.symlink_to("/dev/zero")
    elif hostile == "fifo":
        os.mkfifo(cache)
    assert weights_sha256(path) == expected
    assert json.loads(cache.read_text())["files"][str(path.resolve())]["sha256"] == expected


@pytest.mark.parametrize("damage", ["not json {", '["a list"]', '{"format": "other", "files": {}}',
                                    "sha", "size"])
def test_a_damaged_cache_is_never_trusted(reads: list[str], tmp_path: Path, damage: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path, expected = _weights(tmp_path)
    weights_sha256(path)
    cache = cache_file()
    if damage in ("sha", "size"):  # one entry edited: a forged digest, or a key that differs
        content = json.loads(cache.read_text())
        entry = content["files"][str(path.resolve())]
        entry.update({"sha256": "0" * 64, "size": entry["size"] + 1} if damage == "size"
                     else {"sha256": "not a digest"})
        cache.write_text(json.dumps(content))
    else:
        cache.write_text(damage)
    _new_process(monkeypatch)
    assert weights_sha256(path) == expected and len(reads) == 2
    rewritten = json.loads(cache.read_text())  # valid again, with the true digest
    assert rewritten["files"][str(path.resolve())]["sha256"] == expected


def test_off_and_integrity_checks_read_the_bytes(reads: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path, expected = _weights(tmp_path)
    weights_sha256(path)
    _new_process(monkeypatch)
    assert weights_sha256(path, persistent=False) == expected and len(reads) == 2
    cache = cache_file()
    before = cache.read_bytes()
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_file() is None
    other = tmp_path / "clip.safetensors"
    other.write_bytes(b"clip")
    _new_process(monkeypatch)
    weights_sha256(other)
    weights_sha256(path)
    assert len(reads) == 4 and cache.read_bytes() == before  # neither read nor written


def test_the_cache_lives_under_xdg_cache_home_or_home(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_file() == tmp_path / ".cache" / "clare" / "hashes.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert cache_file() == tmp_path / ".cache" / "clare" / "hashes.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_file() == tmp_path / "xdg" / "clare" / "hashes.json"


def test_record_reads_are_bounded(tmp_path: Path) -> None:
    """The one reader of clare's own small files refuses what is not a regular file of at
    most the limit, before reading it whole."""
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(RECORD_LIMIT + 1)  # sparse: costs no disk
    with pytest.raises(OSError, match="larger than"):
        read_record_bytes(big)
    assert read_record_bytes(big, limit=RECORD_LIMIT + 1) == bytes(RECORD_LIMIT + 1)
    with pytest.raises(OSError, match="not a regular file"):
        read_record_bytes(Path("/dev/zero"))
    with pytest.raises(OSError, match="not a regular file"):
        read_record_bytes(tmp_path)
