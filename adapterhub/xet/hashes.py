"""Xet hashes: chunk hashes, xorb and file merkle hashes, term verification hashes.

Every hash is 32 bytes, kept here as raw ``bytes``. Xet writes a hash as text in its own way
(:func:`hash_to_hex`): the 32 bytes are four little-endian 64-bit words, each printed as 16
hex digits, most significant first. URLs, shard lookups and the merkle tree's node text all use
that form, so ``hash_to_hex(h) != h.hex()``.

- chunk hash: BLAKE3 keyed with :data:`DATA_KEY` over the chunk's bytes;
- xorb hash: the root of an aggregated merkle tree over ``(chunk hash, chunk size)`` pairs,
  each internal node a BLAKE3 keyed with :data:`INTERNAL_NODE_KEY` over lines
  ``"{hex} : {size}\\n"``; groups are cut where a hash's last word is 0 mod 4 (2 to 9 children);
- file hash: the same root over all of a file's chunks, then BLAKE3 keyed with 32 zero bytes;
- verification (range) hash: BLAKE3 keyed with :data:`VERIFICATION_KEY` over the raw chunk
  hashes of one term's chunk range, concatenated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from blake3 import blake3

from adapterhub.errors import FormatError

HASH_LEN = 32

DATA_KEY = bytes([
    102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28, 157, 228, 33, 16,
    155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41])
INTERNAL_NODE_KEY = bytes([
    1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230, 93, 221, 83, 111,
    55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63])
VERIFICATION_KEY = bytes([
    127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243, 164, 205, 38, 213,
    181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195])
FILE_HASH_KEY = bytes(HASH_LEN)

ZERO_HASH = bytes(HASH_LEN)
#: the bookend marker that ends a shard section (all bits set)
MARKER_HASH = b"\xff" * HASH_LEN

#: a chunk whose hash's last word is 0 mod this is indexed for global deduplication
GLOBAL_DEDUP_MODULUS = 1024
_BRANCHING = 4
_MAX_GROUP = 2 * _BRANCHING + 1
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def hash_to_hex(raw: bytes) -> str:
    """The Xet text form of a 32-byte hash (each little-endian u64 word as 16 hex digits)."""
    if len(raw) != HASH_LEN:
        raise FormatError(f"a Xet hash has {HASH_LEN} bytes, not {len(raw)}")
    return "".join(raw[i:i + 8][::-1].hex() for i in range(0, HASH_LEN, 8))


def hex_to_hash(text: str) -> bytes:
    """The 32 bytes of a hash written in Xet text form (64 lowercase hex digits)."""
    if not isinstance(text, str) or not _HEX_RE.match(text):
        raise FormatError(f"a Xet hash is 64 lowercase hex digits; got {str(text)[:80]!r}",
                          hint="Hashes in Xet URLs are written as 64 lowercase hex digits")
    return b"".join(bytes.fromhex(text[i:i + 16])[::-1] for i in range(0, 64, 16))


def is_hex_hash(text: str) -> bool:
    return isinstance(text, str) and bool(_HEX_RE.match(text))


def word(raw: bytes, index: int) -> int:
    """The ``index``-th little-endian 64-bit word of a hash (0 … 3)."""
    return int.from_bytes(raw[8 * index:8 * index + 8], "little")


def truncated(raw: bytes) -> int:
    """The first word: the key of a shard's lookup tables."""
    return word(raw, 0)


def keyed(raw: bytes, key: bytes) -> bytes:
    """BLAKE3 keyed with ``key`` over a hash (Xet's ``hmac``, used for file hashes and for
    the chunk hashes a global-dedup answer hides)."""
    return blake3(raw, key=key).digest()


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The hash of one chunk's bytes."""
    return blake3(data, key=DATA_KEY).digest()


def is_global_dedup_eligible(raw: bytes) -> bool:
    """Whether a chunk hash is one that global deduplication indexes on its own."""
    return word(raw, 3) % GLOBAL_DEDUP_MODULUS == 0


def _merge(group: Sequence[tuple[bytes, int]]) -> tuple[bytes, int]:
    text = "".join(f"{hash_to_hex(h)} : {size}\n" for h, size in group)
    return blake3(text.encode("ascii"), key=INTERNAL_NODE_KEY).digest(), sum(s for _, s in group)


def _next_cut(level: Sequence[tuple[bytes, int]], start: int) -> int:
    remaining = len(level) - start
    if remaining <= 2:
        return remaining
    end = min(_MAX_GROUP, remaining)
    for i in range(2, end):
        if word(level[start + i][0], 3) % _BRANCHING == 0:
            return i + 1
    return end


def merkle_root(chunks: Iterable[tuple[bytes, int]]) -> bytes:
    """The root of the aggregated merkle tree over ``(chunk hash, size)`` pairs (zero if none)."""
    level = list(chunks)
    if not level:
        return ZERO_HASH
    while len(level) > 1:
        merged: list[tuple[bytes, int]] = []
        i = 0
        while i < len(level):
            cut = _next_cut(level, i)
            merged.append(_merge(level[i:i + cut]))
            i += cut
        level = merged
    return level[0][0]


def xorb_hash(chunks: Iterable[tuple[bytes, int]]) -> bytes:
    """The hash of a xorb holding these ``(chunk hash, size)`` pairs in order."""
    return merkle_root(chunks)


def file_hash(chunks: Iterable[tuple[bytes, int]], salt: bytes = FILE_HASH_KEY) -> bytes:
    """The Xet file hash of a file made of these ``(chunk hash, size)`` pairs (zero if empty)."""
    chunks = list(chunks)
    if not chunks:
        return ZERO_HASH
    return keyed(merkle_root(chunks), salt)


def verification_hash(chunk_hashes: Iterable[bytes]) -> bytes:
    """The term verification ("range") hash over the raw chunk hashes of one chunk range."""
    return blake3(b"".join(chunk_hashes), key=VERIFICATION_KEY).digest()
