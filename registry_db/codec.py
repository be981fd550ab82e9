"""How blob bytes are stored: fixed-size chunks, each compressed with zstd.

For tensors of 2-, 4- or 8-byte elements the chunk is first split into byte planes (all first
bytes, then all second bytes, ...), each compressed on its own: the plane with the sign and
exponent bits is very compressible while the low mantissa bytes are close to random, and
interleaved they compress poorly. ``benchmarks/registry.py`` measures both on
normal-distributed values (see docs/registry.md for the figures).
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

import zstandard

from registry_db.errors import IntegrityError

if TYPE_CHECKING:
    import numpy as np

CHUNK_SIZE = 8 * 1024 * 1024
MAX_CHUNK_BYTES = 64 << 20
MAX_BLOB_BYTES = 64 << 30  # the largest blob (one tensor) a registry accepts
#: the codec of a blob kept whole as an object (:mod:`registry_db.objectstore`): no chunk rows
OBJECT_CODEC = "s3"
PLANE_ITEMSIZES = (2, 4, 8)

# zstd's fast strategy with a small hash table: on tensor byte planes it is ~30% faster than
# level 1 and compresses slightly better (most of the gain is entropy coding, not matches).
_PARAMS = zstandard.ZstdCompressionParameters(window_log=17, hash_log=10, search_log=1,
                                              min_match=7, target_length=0,
                                              strategy=zstandard.STRATEGY_FAST)
_local = threading.local()


def codec_for(itemsize: int, *sizes: int) -> str:
    """The codec for a blob of ``itemsize``-byte elements whose chunks have ``sizes`` bytes
    (planes only when every chunk holds whole elements)."""
    if itemsize in PLANE_ITEMSIZES and all(size % itemsize == 0 for size in sizes):
        return f"zstd+bp{itemsize}"
    return "zstd"


def _itemsize(codec: str) -> int:
    if codec == "zstd":
        return 1
    if codec.startswith("zstd+bp") and int(codec[7:]) in PLANE_ITEMSIZES:
        return int(codec[7:])
    raise IntegrityError(f"unknown blob codec {codec!r}",
                          hint="The registry was written by a newer adapterhub; upgrade")


def _compressor() -> zstandard.ZstdCompressor:
    # zstd (de)compressor objects are not thread-safe; encode runs in worker threads
    if not hasattr(_local, "c"):
        _local.c = zstandard.ZstdCompressor(compression_params=_PARAMS)
        _local.d = zstandard.ZstdDecompressor()
    return _local.c


#: chunks at least this long are joined with numpy; shorter ones by slice assignment
_NUMPY_JOIN = 256 * 1024


def _planes(data: memoryview, k: int) -> np.ndarray:
    """``k`` contiguous rows: byte 0 of every element, byte 1 of every element, ..."""
    import numpy as np

    return np.frombuffer(data, np.uint8).reshape(-1, k).T.copy()


def _join_planes(planes: list[bytes], k: int) -> bytes:
    """The elements back from their byte planes (the inverse of :func:`_planes`).

    numpy releases the GIL while it copies: decoding 8 MiB chunks on two threads is ~1.3x
    faster with it than with ``bytearray`` slice assignment. Below :data:`_NUMPY_JOIN` the
    two decode at about the same speed (within ~5% on 128 KiB chunks, measured), and a
    process that reads only small blobs (``adapterhub pull`` of a LoRA) is spared numpy's
    ~65 ms import.
    """
    n = len(planes[0])
    if n * k < _NUMPY_JOIN:
        out = bytearray(n * k)
        for i, plane in enumerate(planes):
            out[i::k] = plane
        return bytes(out)
    import numpy as np

    joined = np.empty((n, k), np.uint8)
    for i, plane in enumerate(planes):  # column by column is ~5x faster than one transposed copy
        joined[:, i] = np.frombuffer(plane, np.uint8)
    return joined.tobytes()


def encode(raw: bytes | memoryview, codec: str) -> bytes:
    """One chunk's stored bytes.

    Byte planes are compressed as separate zstd frames behind a table of their lengths
    (``k`` little-endian uint32): within one frame, zstd would code a high-entropy and a
    low-entropy plane that share a 128 KiB block with a single entropy table, losing most of
    the gain for small tensors.
    """
    k = _itemsize(codec)
    view = memoryview(raw).cast("B")
    compressor = _compressor()
    if k == 1:
        return compressor.compress(view)
    frames = [compressor.compress(plane) for plane in _planes(view, k)]
    return struct.pack(f"<{k}I", *map(len, frames)) + b"".join(frames)


def decode(stored: bytes, codec: str, raw_size: int) -> bytes:
    """One chunk's raw bytes; :class:`IntegrityError` if the stored bytes cannot be decoded."""
    k = _itemsize(codec)
    _compressor()
    try:
        if k == 1:
            data = _local.d.decompress(stored, max_output_size=raw_size)
        else:
            lengths = struct.unpack_from(f"<{k}I", stored)
            if sum(lengths) + 4 * k != len(stored):
                raise IntegrityError("chunk plane table does not match its size")
            planes, offset = [], 4 * k
            for length in lengths:
                planes.append(_local.d.decompress(stored[offset:offset + length],
                                                  max_output_size=raw_size // k))
                offset += length
            if any(len(plane) != raw_size // k for plane in planes):
                raise IntegrityError("chunk planes have the wrong size")
            data = _join_planes(planes, k)
    except (zstandard.ZstdError, struct.error) as exc:
        raise IntegrityError(f"chunk does not decompress ({exc})") from None
    if len(data) != raw_size:
        raise IntegrityError(f"chunk decodes to {len(data)} bytes, expected {raw_size}")
    return data


def chunk_views(data: bytes | memoryview, chunk_size: int) -> list[memoryview]:
    view = memoryview(data).cast("B")
    return [view[i:i + chunk_size] for i in range(0, len(view), chunk_size)] or [view[0:0]]
