"""Xet content-defined chunking: gear hash boundaries, 8 KiB ≤ chunk ≤ 128 KiB, ~64 KiB typical.

The gear hash after byte ``i`` is ``h = (h << 1) + TABLE[byte]`` (64-bit, reset to 0 at each
chunk start). Because of the shift it depends only on the last 64 bytes, and no boundary is
tested before :data:`MIN_CHUNK` bytes into a chunk, so at every testable position the hash is
the same as a 64-byte window sum. That lets numpy compute it for a whole block at once (six
doubling steps); the walk over candidate positions then applies the size rules:

- a chunk ends after byte ``i`` if its length is at least :data:`MIN_CHUNK` and
  ``h & MASK == 0`` (``MASK`` = the top 16 bits), or when it reaches :data:`MAX_CHUNK`;
- the last chunk is whatever remains (possibly shorter than the minimum).

The server does not need chunking to verify uploads (it checks hashes); this module exists so
that files can be hashed, xorbs built and the reference vectors checked in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from adapterhub.xet.gear_table import GEAR_TABLE
from adapterhub.xet.hashes import chunk_hash, file_hash

TARGET_CHUNK = 64 * 1024
MIN_CHUNK = TARGET_CHUNK // 8
MAX_CHUNK = TARGET_CHUNK * 2
MASK_SHIFT = 48  # MASK = (TARGET_CHUNK - 1) << 48: the hash's top 16 bits
WINDOW = 64
_BLOCK = 2 * 1024 * 1024
_TABLE = np.array(GEAR_TABLE, dtype=np.uint64)


def _candidates(data: bytes | memoryview, context: bytes) -> np.ndarray:
    """Indexes ``i`` into ``data`` where the 64-byte gear window ending at ``data[i]`` (with
    ``context``, the bytes just before ``data``, filling the start) has its top 16 bits zero."""
    buf = np.frombuffer(bytes(context) + bytes(data), dtype=np.uint8)
    h = _TABLE[buf]
    step = 1
    with np.errstate(over="ignore"):
        while step < WINDOW:  # h[i] = sum over k < 2*step of TABLE[b[i-k]] << k
            shifted = np.zeros_like(h)
            shifted[step:] = h[:-step] << np.uint64(step)
            h += shifted
            step *= 2
    hits = np.flatnonzero((h >> np.uint64(MASK_SHIFT)) == 0)
    return hits[hits >= len(context)] - len(context)


class Chunker:
    """Streams bytes in, chunks out: ``update(data)`` returns the chunks completed so far,
    ``finish()`` the rest. Chunks do not depend on how the input was split."""

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes of the current, unfinished chunk
        self._cands: list[int] = []  # candidate end indexes (into _pending), ascending
        self._context = b""  # the last WINDOW - 1 bytes fed in

    def _cut(self, final: bool) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        cands = self._cands
        ci = 0
        n = len(self._pending)
        while True:
            while ci < len(cands) and cands[ci] < start + MIN_CHUNK - 1:
                ci += 1
            if ci < len(cands) and cands[ci] + 1 - start < MAX_CHUNK:
                end = cands[ci] + 1
            elif n - start >= MAX_CHUNK:
                end = start + MAX_CHUNK
            else:
                break
            out.append(bytes(self._pending[start:end]))
            start = end
        if final and start < n:
            out.append(bytes(self._pending[start:]))
            start = n
        del self._pending[:start]
        self._cands = [c - start for c in cands[ci:] if c >= start]
        return out

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        for off in range(0, len(view), _BLOCK):
            block = view[off:off + _BLOCK]
            base = len(self._pending)
            self._cands.extend(int(i) + base for i in _candidates(block, self._context))
            self._pending += block
            tail = bytes(self._context) + bytes(block[-(WINDOW - 1):])
            self._context = tail[-(WINDOW - 1):]
            out.extend(self._cut(final=False))
        return out

    def finish(self) -> list[bytes]:
        out = self._cut(final=True)
        self._context = b""
        return out


def chunk_bytes(data: bytes | bytearray | memoryview) -> list[bytes]:
    """The chunks of ``data`` in order (none for empty data; one below 8 KiB)."""
    chunker = Chunker()
    return chunker.update(data) + chunker.finish()


def iter_chunks(stream: BinaryIO, block: int = 8 * 1024 * 1024) -> Iterator[bytes]:
    """The chunks of a binary stream, reading ``block`` bytes at a time."""
    chunker = Chunker()
    while piece := stream.read(block):
        yield from chunker.update(piece)
    yield from chunker.finish()


def boundaries(chunks: Iterable[bytes]) -> list[int]:
    """The end offset of each chunk (the form the reference tests list)."""
    total, out = 0, []
    for c in chunks:
        total += len(c)
        out.append(total)
    return out


def hash_stream(stream: BinaryIO) -> tuple[bytes, int]:
    """The Xet file hash and size of a stream's bytes."""
    pairs = [(chunk_hash(c), len(c)) for c in iter_chunks(stream)]
    return file_hash(pairs), sum(s for _, s in pairs)
