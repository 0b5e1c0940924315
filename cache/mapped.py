"""Rows of an uncompressed store array used in place, from a read-only mapping of the shard file.

Why: zarr's readers (zarrs and zarr-python alike) copy every inner chunk through a freshly
allocated heap buffer, and for a 512 KiB token row the 4 KiB page faults of those buffers cost
more than the copy itself; the whole read ran at a sixth of a NumPy memmap copy of the same
bytes (BENCHMARKS.md §2). An array whose inner chunks are its raw values followed by a crc32c
(the store's tokens) needs no decoding at all, so its rows can be read the way a memmap reads:
straight from the page cache, after checking each row's crc32c.

This is the one place that reads the Zarr v3 shard layout by hand, and it reads one layout
only: the sharding codec with its index at the end of the file, inner chunks of one row, and
`bytes` (little-endian) + `crc32c` both inside and for the index. For anything else, and for
every problem it meets (a missing file or inner chunk, a checksum that does not match, sizes
that disagree), it declines by returning None and the caller reads through zarr, which raises
the store's usual error naming the array and shard. So a damaged store reads exactly as before;
a sound one reads the same values faster (tests/test_mapped.py compares the two). Given the
crc32c each row was written with (its shard marker's record), a row whose stored crc32c is
another declines too: the bytes are intact but another shard's (`chunk_checksums` reads the
record's values from a shard file when it is written).

The checksum is computed by the `crc32c` package, which releases the GIL: the page faults that
bring a shard in from disk happen inside it, in the loader's read-ahead thread, while the
training thread runs. A row is checked when its window is read and copied into a batch a
little later, from the same mapping.

What a mapping cannot do: a page that fails to read (an I/O error on a soft-mounted network
file system) or a file truncated under it kills the process with SIGBUS instead of raising.
clare never rewrites a finished shard in place (a write replaces the file), and `CLARE_MMAP=0`
turns mapping off for file systems that need it.
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from clare.config import env_switch

# An index entry of a chunk that was never written (fill value).
_MISSING = 2**64 - 1
_CRC_BYTES = 4
_INDEX_ENTRY_BYTES = 16  # offset and length, two little-endian uint64


def mapping_enabled() -> bool:
    """Whether the platform can map shard files and the user has not turned it off."""
    return env_switch("CLARE_MMAP") and os.name == "posix" and sys.byteorder == "little"


def raw_layout(array: Any) -> bool:
    """True when `array` (a zarr.Array) is sharded along its first axis into one-row inner chunks
    stored as raw little-endian values plus a crc32c, with a crc32c-checked index at the end.
    Any other layout, or metadata this zarr version describes otherwise, is False."""
    try:
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.bytes import Endian
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        def raw(chain: tuple[Any, ...]) -> bool:
            return (len(chain) == 2 and isinstance(chain[0], BytesCodec)
                    and chain[0].endian in (None, Endian.little)
                    and isinstance(chain[1], Crc32cCodec))

        codecs = array.metadata.codecs
        sharding = codecs[0] if len(codecs) == 1 else None
        return (isinstance(sharding, ShardingCodec) and raw(sharding.codecs)
                and raw(sharding.index_codecs)
                and sharding.index_location == ShardingCodecIndexLocation.end
                and tuple(sharding.chunk_shape) == (1, *array.shape[1:]))
    except (ImportError, AttributeError, TypeError):
        return False


def _crc_ok(piece: np.ndarray) -> bool:
    """Whether the last 4 bytes of `piece` are the crc32c of the rest (zarr's crc32c codec)."""
    import crc32c

    return int(crc32c.crc32c(piece[:-_CRC_BYTES].data)) == _stored_crc(piece)


def _map(path: Path) -> np.ndarray | None:
    """The file's bytes, mapped read-only (None when it is missing or empty). Pages are not
    populated here: Python holds the GIL in mmap(), and the checksum touches them without it."""
    try:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except (OSError, ValueError):  # missing file; an empty file cannot be mapped
        return None
    return np.frombuffer(mapped, dtype=np.uint8)


def _index_table(data: np.ndarray | None, shard_rows: int) -> np.ndarray | None:
    """The (offset, length) of every inner chunk, from the index at the end of a shard file's
    bytes after its crc32c is checked; None when the bytes hold no sound index."""
    index_bytes = shard_rows * _INDEX_ENTRY_BYTES + _CRC_BYTES
    if data is None or len(data) < index_bytes or not _crc_ok(data[-index_bytes:]):
        return None
    return data[-index_bytes:-_CRC_BYTES].view("<u8").reshape(shard_rows, 2)


def _stored_crc(chunk: np.ndarray) -> int:
    return int.from_bytes(chunk[-_CRC_BYTES:].tobytes(), "little")


def chunk_checksums(path: Path, shard_rows: int) -> list[int | None] | None:
    """The crc32c stored at the end of each inner chunk of a shard file (None for a chunk never
    written), for any inner codecs that end in crc32c; None when the file is missing or its
    index is unsound. Reads the index and 4 bytes per chunk, never the chunks themselves."""
    data = _map(path)
    table = _index_table(data, shard_rows)
    if data is None or table is None:
        return None
    body = len(data) - (shard_rows * _INDEX_ENTRY_BYTES + _CRC_BYTES)
    found: list[int | None] = []
    for offset, length in table.tolist():
        if offset == _MISSING:
            found.append(None)
        elif length < _CRC_BYTES or offset + length > body:
            return None
        else:
            found.append(_stored_crc(data[offset : offset + length]))
    return found


def map_rows(path: Path, local_rows: np.ndarray, *, shard_rows: int, row_shape: tuple[int, ...],
             dtype: np.dtype, expected_crcs: np.ndarray | None = None) -> list[np.ndarray] | None:
    """Rows `local_rows` (positions inside the shard, repeats allowed) of the shard file `path`
    as read-only arrays over its mapping, each row's crc32c checked; None on any problem.

    `expected_crcs` (the crc32c each row of the shard was written with): a row whose stored
    crc32c differs, though its bytes match it, is another shard's row, and is declined too."""
    local_rows = np.asarray(local_rows, dtype=np.int64)
    wanted = np.unique(local_rows)
    if len(wanted) == 0 or wanted[0] < 0 or wanted[-1] >= shard_rows:
        return None
    data = _map(path)
    table = _index_table(data, shard_rows)
    if data is None or table is None:
        return None
    chunk_bytes = int(np.prod(row_shape)) * dtype.itemsize + _CRC_BYTES
    body = len(data) - (shard_rows * _INDEX_ENTRY_BYTES + _CRC_BYTES)
    rows: dict[int, np.ndarray] = {}
    for local in wanted.tolist():
        offset, length = (int(v) for v in table[local])
        if offset == _MISSING or length != chunk_bytes or offset + length > body:
            return None
        chunk = data[offset : offset + length]
        if not _crc_ok(chunk) or (expected_crcs is not None
                                  and _stored_crc(chunk) != int(expected_crcs[local])):
            return None
        rows[local] = chunk[:-_CRC_BYTES].view(dtype).reshape(row_shape)
    return [rows[local] for local in local_rows.tolist()]
