"""The xorb format: parse and validate a serialized xorb completely, or build one.

A xorb is its chunks, optionally followed by a footer ("info") and the footer's length as a
u32 (hf_xet uploads the chunks alone; stored xorbs carry the footer)::

    [chunk header (8 bytes) + payload] × N
    "XETBLOB" u8=1 xorb_hash[32]
    "XBLBHSH" u8=0 u32=N chunk_hash[32] × N
    "XBLBBND" u8=1 u32=N end_offset u32 × N  unpacked_end_offset u32 × N
    u32=N  hashes_section_offset_from_end u32  boundary_section_offset_from_end u32  16 bytes
    u32 info_length

A chunk header is ``version u8 = 0``, ``compressed length u24``, ``scheme u8``,
``uncompressed length u24`` (little-endian). ``end_offset`` counts headers (the physical end of
each chunk); ``unpacked_end_offset`` the running total of uncompressed bytes. The last 16 footer
bytes are free (clients put a random nonce in the first 4); the xorb hash does not cover them.

:func:`parse_xorb` checks every field, decompresses every chunk, recomputes every chunk hash
and the xorb hash, and raises :class:`~adapterhub.errors.FormatError` or
:class:`~adapterhub.errors.IntegrityError` naming the first problem.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from adapterhub.errors import FormatError, IntegrityError
from adapterhub.xet import compression
from adapterhub.xet.chunking import MAX_CHUNK
from adapterhub.xet.hashes import HASH_LEN, chunk_hash, hash_to_hex, xorb_hash

IDENT = b"XETBLOB"
IDENT_HASHES = b"XBLBHSH"
IDENT_BOUNDARIES = b"XBLBBND"
VERSION = 1
HASHES_VERSION = 0
BOUNDARIES_VERSION = 1
CHUNK_HEADER_LEN = 8
FOOTER_BUFFER_LEN = 16
#: what the reference client puts in one xorb, at most
MAX_XORB_CHUNKS = 8 * 1024
MAX_XORB_BYTES = 64 * 1024 * 1024
#: a compressed payload may exceed its data (then it would be stored raw), up to this
MAX_COMPRESSED_CHUNK = 2 * MAX_CHUNK


@dataclass(frozen=True)
class XorbInfo:
    """What a validated xorb holds: per chunk its hash, its uncompressed size and the byte
    range ``[start, end)`` of its header + payload inside the serialized xorb."""

    hash: bytes
    chunk_hashes: tuple[bytes, ...]
    chunk_sizes: tuple[int, ...]
    chunk_ends: tuple[int, ...]
    data_size: int  # bytes of the chunk section (headers + payloads), footer excluded

    @property
    def hex(self) -> str:
        return hash_to_hex(self.hash)

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_hashes)

    @property
    def unpacked_size(self) -> int:
        return sum(self.chunk_sizes)

    def chunk_start(self, index: int) -> int:
        return self.chunk_ends[index - 1] if index else 0

    def unpacked_offset(self, index: int) -> int:
        return sum(self.chunk_sizes[:index])


def parse_chunk_header(header: bytes) -> tuple[int, int, int]:
    """``(scheme, compressed length, uncompressed length)`` of an 8-byte chunk header."""
    if len(header) != CHUNK_HEADER_LEN:
        raise FormatError("a xorb chunk header is truncated")
    version, scheme = header[0], header[4]
    compressed = int.from_bytes(header[1:4], "little")
    size = int.from_bytes(header[5:8], "little")
    if version != 0:
        raise FormatError(f"xorb chunk header version {version} is not supported (only 0)")
    if scheme not in compression.SCHEMES:
        raise FormatError(f"unknown chunk compression scheme {scheme}")
    if size > MAX_CHUNK or compressed > MAX_COMPRESSED_CHUNK:
        raise FormatError(f"a chunk of {size} bytes ({compressed} stored) exceeds the "
                          f"{MAX_CHUNK}-byte chunk limit")
    if scheme == compression.NONE and compressed != size:
        raise FormatError("an uncompressed chunk's stored and data lengths differ")
    return scheme, compressed, size


def decode_chunk(data: bytes | memoryview, offset: int) -> tuple[bytes, int]:
    """The bytes of the chunk whose header starts at ``offset``, and the offset after it."""
    scheme, compressed, size = parse_chunk_header(bytes(data[offset:offset + CHUNK_HEADER_LEN]))
    start = offset + CHUNK_HEADER_LEN
    if start + compressed > len(data):
        raise FormatError("a xorb chunk's payload is truncated")
    return compression.decompress(scheme, data[start:start + compressed], size), start + compressed


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError("the xorb footer is truncated")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u32s(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f"<{n}I", self.take(4 * n))


def _parse_footer(info: memoryview) -> tuple[bytes, list[bytes], tuple[int, ...],
                                               tuple[int, ...]]:
    """The stated xorb hash, chunk hashes, chunk end offsets and unpacked end offsets."""
    r = _Reader(info)
    if r.take(7) != IDENT:
        raise FormatError("not a xorb (the footer does not start with XETBLOB)")
    version = r.u8()
    if version != VERSION:
        raise FormatError(f"xorb footer version {version} is not supported (only {VERSION})")
    stated = r.take(HASH_LEN)
    hashes_start = r.pos
    if r.take(7) != IDENT_HASHES or r.u8() != HASHES_VERSION:
        raise FormatError("the xorb footer's hash section is malformed")
    n = r.u32()
    if n > MAX_XORB_CHUNKS:
        raise FormatError(f"the xorb claims {n} chunks; at most {MAX_XORB_CHUNKS} are allowed")
    hashes = [r.take(HASH_LEN) for _ in range(n)]
    bounds_start = r.pos
    if r.take(7) != IDENT_BOUNDARIES or r.u8() != BOUNDARIES_VERSION:
        raise FormatError("the xorb footer's boundary section is malformed or of an "
                          "unsupported version")
    if r.u32() != n:
        raise FormatError("the xorb footer's sections disagree on the number of chunks")
    ends, unpacked_ends = r.u32s(n), r.u32s(n)
    if r.u32() != n:
        raise FormatError("the xorb footer's sections disagree on the number of chunks")
    hashes_from_end, bounds_from_end = r.u32(), r.u32()
    r.take(FOOTER_BUFFER_LEN)
    if r.pos != len(info):
        raise FormatError("the xorb footer is longer than its sections")
    if hashes_from_end != r.pos - hashes_start or bounds_from_end != r.pos - bounds_start:
        raise FormatError("the xorb footer's section offsets are wrong")
    return stated, hashes, ends, unpacked_ends


def parse_xorb(data: bytes | bytearray | memoryview, expected: bytes | None = None) -> XorbInfo:
    """Validate a serialized xorb and describe it; ``expected`` is the hash it must have.

    The footer is optional (clients upload the chunks alone unless told otherwise): chunks are
    read until the data ends or a footer starts (a "chunk header" that reads ``XETBLOB``). A
    footer, when present, must agree with the chunks in every field. Raises FormatError for
    malformed bytes and IntegrityError when a chunk hash or the xorb hash does not match."""
    view = memoryview(data)
    pos, unpacked = 0, 0
    hashes: list[bytes] = []
    sizes: list[int] = []
    ends: list[int] = []
    unpacked_ends: list[int] = []
    while pos < len(view) and bytes(view[pos:pos + len(IDENT)]) != IDENT:
        if len(hashes) == MAX_XORB_CHUNKS:
            raise FormatError(f"the xorb holds more than {MAX_XORB_CHUNKS} chunks")
        chunk, pos = decode_chunk(view, pos)
        unpacked += len(chunk)
        if unpacked > MAX_XORB_BYTES:
            raise FormatError(f"the xorb holds more than {MAX_XORB_BYTES} bytes of data")
        hashes.append(chunk_hash(chunk))
        sizes.append(len(chunk))
        ends.append(pos)
        unpacked_ends.append(unpacked)
    if not hashes:
        raise FormatError("a xorb must hold at least one chunk")
    computed = xorb_hash(zip(hashes, sizes))
    if pos < len(view):
        footer = view[pos:]
        if len(footer) < 4 or int.from_bytes(footer[-4:], "little") != len(footer) - 4:
            raise FormatError("the xorb footer's length field does not match the footer")
        stated, stated_hashes, stated_ends, stated_unpacked = _parse_footer(footer[:-4])
        if len(stated_hashes) != len(hashes):
            raise FormatError(f"the xorb footer lists {len(stated_hashes)} chunks; the xorb "
                              f"holds {len(hashes)}")
        for i, (a, b) in enumerate(zip(stated_hashes, hashes)):
            if a != b:
                raise IntegrityError(f"xorb chunk {i}: its bytes do not hash to the chunk hash "
                                     f"the footer states")
        if list(stated_ends) != ends or list(stated_unpacked) != unpacked_ends:
            raise FormatError("the xorb footer's chunk offsets do not match the chunks")
        if stated != computed:
            raise IntegrityError(f"the xorb's chunks hash to {hash_to_hex(computed)}, not to "
                                 f"the {hash_to_hex(stated)} its footer states")
    if expected is not None and computed != expected:
        raise IntegrityError(f"the xorb's chunks hash to {hash_to_hex(computed)}, not to the "
                             f"{hash_to_hex(expected)} it was uploaded as")
    return XorbInfo(computed, tuple(hashes), tuple(sizes), tuple(ends), pos)


def read_footer(data: bytes | bytearray | memoryview) -> XorbInfo:
    """The :class:`XorbInfo` of a stored xorb, from its footer alone (chunks not decoded):
    for stores that keep the bytes and want the chunk list back cheaply. The footer must be
    self-consistent; the chunks themselves were verified when the xorb was uploaded."""
    view = memoryview(data)
    if len(view) < 4:
        raise FormatError("a stored xorb ends with its footer's length")
    start = len(view) - 4 - int.from_bytes(view[-4:], "little")
    if start < 0:
        raise FormatError("the xorb's footer length is larger than the xorb")
    stated, hashes, ends, unpacked_ends = _parse_footer(view[start:-4])
    sizes = [b - a for a, b in zip((0, *unpacked_ends), unpacked_ends)]
    if not hashes or (ends and ends[-1] != start) or min(sizes, default=0) < 0:
        raise FormatError("the xorb footer does not describe the chunks before it")
    return XorbInfo(stated, tuple(hashes), tuple(sizes), tuple(ends), start)


def xorb_footer(info: XorbInfo, nonce: bytes = b"") -> bytes:
    """The footer (with its trailing length) that describes ``info``'s chunks."""
    n = info.num_chunks
    unpacked_ends, total = [], 0
    for size in info.chunk_sizes:
        total += size
        unpacked_ends.append(total)
    hash_section = (IDENT_HASHES + bytes([HASHES_VERSION]) + struct.pack("<I", n)
                    + b"".join(info.chunk_hashes))
    bound_section = (IDENT_BOUNDARIES + bytes([BOUNDARIES_VERSION]) + struct.pack("<I", n)
                     + struct.pack(f"<{n}I", *info.chunk_ends)
                     + struct.pack(f"<{n}I", *unpacked_ends))
    tail_len = 4 * 3 + FOOTER_BUFFER_LEN
    tail = struct.pack("<III", n, len(hash_section) + len(bound_section) + tail_len,
                       len(bound_section) + tail_len) + nonce.ljust(FOOTER_BUFFER_LEN, b"\0")
    footer = IDENT + bytes([VERSION]) + info.hash + hash_section + bound_section + tail
    return footer + struct.pack("<I", len(footer))


def build_xorb(chunks: Sequence[bytes], schemes: Sequence[int] | None = None,
               footer: bool = True, nonce: bytes = b"") -> bytes:
    """Serialize chunks into a xorb (``schemes`` per chunk: 0 none, 1 LZ4, 2 BG4-LZ4;
    compressed ones need the ``lz4`` package). Used by tests and tools."""
    body, ends = bytearray(), []
    for i, chunk in enumerate(chunks):
        scheme = schemes[i] if schemes else compression.NONE
        payload = bytes(chunk)
        if scheme != compression.NONE:
            import lz4.frame  # only for building compressed test xorbs

            src = compression.bg4_split(payload) if scheme == compression.BG4_LZ4 else payload
            payload = lz4.frame.compress(src)
        body += bytes([0]) + len(payload).to_bytes(3, "little") + bytes([scheme]) + \
            len(chunk).to_bytes(3, "little") + payload
        ends.append(len(body))
    if not footer:
        return bytes(body)
    hashes = tuple(chunk_hash(c) for c in chunks)
    sizes = tuple(len(c) for c in chunks)
    info = XorbInfo(xorb_hash(zip(hashes, sizes)), hashes, sizes, tuple(ends), len(body))
    return bytes(body) + xorb_footer(info, nonce)
