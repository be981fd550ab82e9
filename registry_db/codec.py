"""How blob bytes are stored: fixed-size chunks, each compressed with zstd.

For tensors of 2-, 4- or 8-byte elements the chunk is first split into byte planes (all first
bytes, then all second bytes, ...): the plane with sign and exponent bits is highly
compressible while the low mantissa bytes are close to random, and zstd separates them
much better than when they are interleaved. Measured on normal-distributed values
(``benchmarks/registry.py``): bf16 0.78 → 0.67 of raw, fp16 0.92 → 0.84, fp32 0.92 → 0.84,
at about the same speed.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from registry_db.errors import CorruptionError

CHUNK_SIZE = 8 * 1024 * 1024
PLANE_ITEMSIZES = (2, 4, 8)

# zstd's fast strategy with a small hash table: on tensor byte planes it is ~30% faster than
# level 1 and compresses slightly better (most of the gain is entropy coding, not matches).
_PARAMS = zstandard.ZstdCompressionParameters(window_log=17, hash_log=10, search_log=1,
                                              min_match=7, target_length=0,
                                              strategy=zstandard.STRATEGY_FAST)
_local = threading.local()


def codec_for(itemsize: int) -> str:
    """The codec for a blob of ``itemsize``-byte elements."""
    return f"zstd+bp{itemsize}" if itemsize in PLANE_ITEMSIZES else "zstd"


def _itemsize(codec: str) -> int:
    if codec == "zstd":
        return 1
    if codec.startswith("zstd+bp") and int(codec[7:]) in PLANE_ITEMSIZES:
        return int(codec[7:])
    raise CorruptionError(f"unknown blob codec {codec!r}",
                          hint="The registry was written by a newer adapterhub; upgrade")


def _compressor() -> zstandard.ZstdCompressor:
    # zstd (de)compressor objects are not thread-safe; encode runs in worker threads
    if not hasattr(_local, "c"):
        _local.c = zstandard.ZstdCompressor(compression_params=_PARAMS)
        _local.d = zstandard.ZstdDecompressor()
    return _local.c


def _split_planes(data: memoryview, k: int) -> bytes:
    if len(data) % k:
        return bytes(data)  # not whole elements: the planes would not line up; store as is
    return np.frombuffer(data, np.uint8).reshape(-1, k).T.tobytes()


def _join_planes(data: bytes, k: int) -> bytes:
    if len(data) % k:
        return data
    planes = np.frombuffer(data, np.uint8).reshape(k, -1)
    out = np.empty((planes.shape[1], k), np.uint8)
    for i in range(k):  # column by column is ~5x faster than one transposed copy
        out[:, i] = planes[i]
    return out.tobytes()


def encode(raw: bytes | memoryview, codec: str) -> bytes:
    """One chunk's stored bytes."""
    k = _itemsize(codec)
    view = memoryview(raw).cast("B")
    return _compressor().compress(view if k == 1 else _split_planes(view, k))


def decode(stored: bytes, codec: str, raw_size: int) -> bytes:
    """One chunk's raw bytes; :class:`CorruptionError` if the stored bytes cannot be decoded."""
    k = _itemsize(codec)
    _compressor()
    try:
        data = _local.d.decompress(stored, max_output_size=raw_size)
    except zstandard.ZstdError as exc:
        raise CorruptionError(f"chunk does not decompress ({exc})") from None
    if len(data) != raw_size:
        raise CorruptionError(f"chunk decodes to {len(data)} bytes, expected {raw_size}")
    return data if k == 1 else _join_planes(data, k)


def chunk_views(data: bytes | memoryview, chunk_size: int) -> list[memoryview]:
    view = memoryview(data).cast("B")
    return [view[i:i + chunk_size] for i in range(0, len(view), chunk_size)] or [view[0:0]]
