"""Decompression of xorb chunks: none, LZ4 (frame format), byte-grouping-4 + LZ4.

Pure Python with hard output bounds: every decoder is told the size the chunk header
announces and refuses to produce a byte more (a compressed chunk cannot become a memory bomb).
LZ4 frame checksums are parsed but not checked; the chunk's BLAKE3 hash, which the caller
verifies after decompression, covers the same bytes.

- ``0`` none: the bytes as stored;
- ``1`` LZ4: an LZ4 frame (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md);
- ``2`` BG4-LZ4: an LZ4 frame holding the data split into 4 byte planes (byte ``i`` goes
  to plane ``i % 4``; planes concatenated, the first ``len % 4`` planes one byte longer).
"""

from __future__ import annotations

from adapterhub.errors import FormatError

NONE, LZ4, BG4_LZ4 = 0, 1, 2
SCHEMES = {NONE: "none", LZ4: "lz4", BG4_LZ4: "bg4-lz4"}
_FRAME_MAGIC = 0x184D2204
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50
_BLOCK_MAX = {4: 64 * 1024, 5: 256 * 1024, 6: 1024 * 1024, 7: 4 * 1024 * 1024}


def _u32(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise FormatError("the LZ4 frame is truncated")
    return int.from_bytes(data[pos:pos + 4], "little")


def lz4_block_decode(src: bytes | memoryview, out: bytearray, limit: int) -> None:
    """Decode one LZ4 block, appending to ``out`` (earlier output stays addressable by
    matches, as linked frame blocks need); refuse to grow ``out`` past ``limit`` bytes."""
    src = bytes(src)
    pos, n = 0, len(src)
    while True:
        if pos >= n:
            raise FormatError("an LZ4 block ends inside a sequence")
        token = src[pos]
        pos += 1
        lit = token >> 4
        if lit == 15:
            while True:
                if pos >= n:
                    raise FormatError("an LZ4 literal length runs past the block")
                b = src[pos]
                pos += 1
                lit += b
                if b != 255:
                    break
        if pos + lit > n:
            raise FormatError("LZ4 literals run past the block")
        if len(out) + lit > limit:
            raise FormatError(f"the LZ4 data decompresses to more than the {limit} bytes "
                              f"announced")
        out += src[pos:pos + lit]
        pos += lit
        if pos == n:  # the last sequence has literals only
            return
        if pos + 2 > n:
            raise FormatError("an LZ4 match offset is truncated")
        offset = src[pos] | (src[pos + 1] << 8)
        pos += 2
        if offset == 0 or offset > len(out):
            raise FormatError(f"an LZ4 match points {offset} bytes back, outside the output")
        length = token & 15
        if length == 15:
            while True:
                if pos >= n:
                    raise FormatError("an LZ4 match length runs past the block")
                b = src[pos]
                pos += 1
                length += b
                if b != 255:
                    break
        length += 4
        if len(out) + length > limit:
            raise FormatError(f"the LZ4 data decompresses to more than the {limit} bytes "
                              f"announced")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # overlapping copy: the last `offset` bytes repeat
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]


def lz4_frame_decode(src: bytes | memoryview, limit: int) -> bytes:
    """Decode LZ4 frames (concatenated frames and skippable frames allowed) into at most
    ``limit`` bytes."""
    src = bytes(src)
    out = bytearray()
    pos = 0
    if not src:
        raise FormatError("an LZ4 chunk is empty")
    while pos < len(src):
        magic = _u32(src, pos)
        pos += 4
        if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            pos += 4 + _u32(src, pos)
            if pos > len(src):
                raise FormatError("a skippable LZ4 frame is truncated")
            continue
        if magic != _FRAME_MAGIC:
            raise FormatError(f"not an LZ4 frame (magic {magic:#010x})")
        if pos + 2 > len(src):
            raise FormatError("the LZ4 frame header is truncated")
        flg, bd = src[pos], src[pos + 1]
        pos += 2
        if flg >> 6 != 1 or flg & 0b10 or bd & 0b10001111:
            raise FormatError("the LZ4 frame header has an unknown version or reserved bits")
        block_max = _BLOCK_MAX.get((bd >> 4) & 7)
        if block_max is None:
            raise FormatError("the LZ4 frame header names an invalid block size")
        block_checksum, content_size, content_checksum, dict_id = (
            flg & 0x10, flg & 0x08, flg & 0x04, flg & 0x01)
        if dict_id:
            raise FormatError("LZ4 frames with a dictionary are not supported")
        pos += (8 if content_size else 0) + 1  # content size, then the header checksum
        if pos > len(src):
            raise FormatError("the LZ4 frame header is truncated")
        while True:
            size = _u32(src, pos)
            pos += 4
            if size == 0:  # end mark
                break
            raw, size = size & 0x80000000, size & 0x7FFFFFFF
            if size > block_max or pos + size > len(src):
                raise FormatError("an LZ4 block is larger than its frame allows or truncated")
            block = memoryview(src)[pos:pos + size]
            pos += size + (4 if block_checksum else 0)
            if raw:
                if len(out) + size > limit:
                    raise FormatError(f"the LZ4 data decompresses to more than the {limit} "
                                      f"bytes announced")
                out += block
            else:
                before = len(out)
                lz4_block_decode(block, out, min(limit, before + block_max))
        pos += 4 if content_checksum else 0
        if pos > len(src):
            raise FormatError("the LZ4 frame's content checksum is truncated")
    return bytes(out)


def bg4_regroup(planes: bytes) -> bytes:
    """Undo the byte grouping: interleave the 4 planes back into the original bytes."""
    n = len(planes)
    split, rem = divmod(n, 4)
    out = bytearray(n)
    pos = 0
    for j in range(4):
        size = split + (1 if j < rem else 0)
        out[j::4] = planes[pos:pos + size]
        pos += size
    return bytes(out)


def bg4_split(data: bytes) -> bytes:
    """The byte grouping itself (``bg4_regroup``'s inverse), for building test xorbs."""
    return b"".join(bytes(data[j::4]) for j in range(4))


def decompress(scheme: int, payload: bytes | memoryview, size: int) -> bytes:
    """The ``size`` bytes a chunk payload stored with ``scheme`` holds; FormatError if the
    payload does not decompress to exactly ``size`` bytes."""
    if scheme == NONE:
        data = bytes(payload)
    elif scheme == LZ4:
        data = lz4_frame_decode(payload, size)
    elif scheme == BG4_LZ4:
        data = bg4_regroup(lz4_frame_decode(payload, size))
    else:
        raise FormatError(f"unknown chunk compression scheme {scheme}",
                          hint="Xorb chunks use 0 (none), 1 (LZ4) or 2 (BG4-LZ4)")
    if len(data) != size:
        raise FormatError(f"a chunk decompresses to {len(data)} bytes; its header says {size}")
    return data
