"""The shard format (Xet's "MDB shard"): file reconstructions and xorb chunk lists.

Every record is 48 bytes; all integers little-endian::

    header      tag[32] = "HFRepoMetaData\\0" + 17 fixed bytes, u64 version = 2, u64 footer_size
    file info   per file: file_hash[32] u32 flags u32 n u64 0
                          n terms: xorb_hash[32] u32 xorb_flags u32 unpacked_bytes
                                   u32 chunk_index_start u32 chunk_index_end (exclusive)
                          if flags & 1<<31: n verification entries: range_hash[32] + 16 zero bytes
                          if flags & 1<<30: one metadata entry: sha256[32] + 16 zero bytes
                bookend: hash = 32 × 0xff, rest zero
    xorb info   per xorb: xorb_hash[32] u32 flags u32 n u32 unpacked_bytes u32 bytes_on_disk
                          n chunks: chunk_hash[32] u32 unpacked_offset u32 unpacked_bytes
                                    u32 flags (1<<31: global dedup) u32 0
                bookend
    (footer_size > 0 only) file lookup (u64 truncated hash, u32 entry index) × F,
                xorb lookup (u64, u32) × X, chunk lookup (u64, u32 xorb entry, u32 chunk) × C,
                footer (200 bytes: offsets, counts, chunk-hash HMAC key, timestamps, sizes)

Clients upload shards without lookups or footer (``footer_size = 0``). The global dedup answer
is a full shard whose chunk hashes are keyed: ``chunk_hash_hmac_key`` in the footer, each stored
chunk hash replaced by ``keyed(hash, key)`` so the asker can match only chunks it holds.
The sha256 of a file is stored so that its Xet text form (:func:`hash_to_hex`) is the usual
lowercase sha256 hex.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from adapterhub.errors import FormatError
from adapterhub.xet.hashes import (HASH_LEN, MARKER_HASH, ZERO_HASH, hash_to_hex, hex_to_hash,
                                   keyed, truncated)

HEADER_TAG = b"HFRepoMetaData\0" + bytes([85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189,
                                           217, 92, 205, 209, 74, 169])
HEADER_VERSION = 2
FOOTER_VERSION = 1
HEADER_LEN = 48
ENTRY = 48
FOOTER_LEN = 200
FLAG_VERIFICATION = 1 << 31
FLAG_METADATA_EXT = 1 << 30
CHUNK_FLAG_GLOBAL_DEDUP = 1 << 31
assert len(HEADER_TAG) == 32


@dataclass(frozen=True)
class Term:
    """One run of chunks ``[chunk_start, chunk_end)`` of one xorb, in a file's reconstruction."""

    xorb_hash: bytes
    unpacked_bytes: int
    chunk_start: int
    chunk_end: int
    xorb_flags: int = 0


@dataclass(frozen=True)
class FileEntry:
    """A file reconstruction: its terms in order, their verification hashes and its sha256."""

    file_hash: bytes
    terms: tuple[Term, ...]
    verification: tuple[bytes, ...] | None = None
    sha256: str | None = None  # lowercase hex

    @property
    def size(self) -> int:
        return sum(t.unpacked_bytes for t in self.terms)


@dataclass(frozen=True)
class ChunkEntry:
    chunk_hash: bytes
    unpacked_offset: int
    unpacked_bytes: int
    flags: int = 0


@dataclass(frozen=True)
class XorbEntry:
    """A xorb's chunk list as a shard states it."""

    xorb_hash: bytes
    chunks: tuple[ChunkEntry, ...]
    flags: int = 0
    unpacked_bytes: int = 0
    bytes_on_disk: int = 0


@dataclass(frozen=True)
class Shard:
    files: tuple[FileEntry, ...]
    xorbs: tuple[XorbEntry, ...]
    hmac_key: bytes = ZERO_HASH
    created: int = 0
    key_expiry: int = 0


class _Reader:
    def __init__(self, data: memoryview, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def entry(self) -> bytes:
        if self.pos + ENTRY > self.end:
            raise FormatError("the shard is truncated (a section runs past its end)")
        out = bytes(self.data[self.pos:self.pos + ENTRY])
        self.pos += ENTRY
        return out

    def need(self, entries: int) -> None:
        if self.pos + entries * ENTRY > self.end:
            raise FormatError(f"the shard announces {entries} more records than it holds")


def _parse_files(r: _Reader) -> list[FileEntry]:
    files = []
    while True:
        e = r.entry()
        file_hash = e[:32]
        flags, n, _ = struct.unpack("<IIQ", e[32:])
        if file_hash == MARKER_HASH:
            return files
        if flags & ~(FLAG_VERIFICATION | FLAG_METADATA_EXT):
            raise FormatError(f"file {hash_to_hex(file_hash)}: unknown flags {flags:#x}")
        r.need(n * (2 if flags & FLAG_VERIFICATION else 1) + (1 if flags & FLAG_METADATA_EXT
                                                                else 0))
        terms = []
        for _ in range(n):
            t = r.entry()
            xorb_flags, unpacked, start, end = struct.unpack("<IIII", t[32:])
            terms.append(Term(t[:32], unpacked, start, end, xorb_flags))
        verification = tuple(r.entry()[:32] for _ in range(n)) \
            if flags & FLAG_VERIFICATION else None
        sha256 = hash_to_hex(r.entry()[:32]) if flags & FLAG_METADATA_EXT else None
        files.append(FileEntry(file_hash, tuple(terms), verification, sha256))


def _parse_xorbs(r: _Reader) -> list[XorbEntry]:
    xorbs = []
    while True:
        e = r.entry()
        xorb_hash = e[:32]
        flags, n, unpacked, on_disk = struct.unpack("<IIII", e[32:])
        if xorb_hash == MARKER_HASH:
            return xorbs
        r.need(n)
        chunks = []
        for _ in range(n):
            c = r.entry()
            offset, size, chunk_flags, _ = struct.unpack("<IIII", c[32:])
            chunks.append(ChunkEntry(c[:32], offset, size, chunk_flags))
        xorbs.append(XorbEntry(xorb_hash, tuple(chunks), flags, unpacked, on_disk))


def parse_shard(data: bytes | bytearray | memoryview) -> Shard:
    """Parse a shard, uploaded form (no footer) or full (lookups + footer), checking its
    structure; the meaning of its records is the service's to verify."""
    view = memoryview(data)
    if len(view) < HEADER_LEN or bytes(view[:32]) != HEADER_TAG:
        raise FormatError("not a Xet shard (wrong header tag)")
    version, footer_size = struct.unpack("<QQ", view[32:48])
    if version != HEADER_VERSION:
        raise FormatError(f"shard header version {version} is not supported (only "
                          f"{HEADER_VERSION})")
    if footer_size not in (0, FOOTER_LEN):
        raise FormatError(f"shard footer size {footer_size} is not 0 or {FOOTER_LEN}")
    end = len(view) - footer_size
    if end < HEADER_LEN:
        raise FormatError("the shard is shorter than its header and footer")
    r = _Reader(view, end)
    r.pos = HEADER_LEN
    files = _parse_files(r)
    xorb_start = r.pos
    xorbs = _parse_xorbs(r)
    if not footer_size:
        if r.pos != len(view):
            raise FormatError("the shard has bytes after its xorb section")
        return Shard(tuple(files), tuple(xorbs))
    f = struct.unpack("<9Q32s2Q6Q4Q", view[end:])
    (fversion, file_off, xorb_off, flook_off, flook_n, xlook_off, xlook_n, clook_off,
     clook_n, key, created, expiry) = f[:12]
    footer_offset = f[-1]
    n_chunks = sum(len(x.chunks) for x in xorbs)
    expected = [FOOTER_VERSION, HEADER_LEN, xorb_start, r.pos, len(files),
                r.pos + 12 * len(files), len(xorbs), r.pos + 12 * (len(files) + len(xorbs)),
                n_chunks, end]
    actual = [fversion, file_off, xorb_off, flook_off, flook_n, xlook_off, xlook_n, clook_off,
              clook_n, footer_offset]
    if actual != expected or clook_off + 16 * clook_n != end:
        raise FormatError("the shard footer's offsets or counts do not match its sections")
    return Shard(tuple(files), tuple(xorbs), key, created, expiry)


def _file_records(f: FileEntry) -> bytes:
    flags = (FLAG_VERIFICATION if f.verification is not None else 0) | \
        (FLAG_METADATA_EXT if f.sha256 is not None else 0)
    out = [f.file_hash + struct.pack("<IIQ", flags, len(f.terms), 0)]
    out += [t.xorb_hash + struct.pack("<IIII", t.xorb_flags, t.unpacked_bytes, t.chunk_start,
                                      t.chunk_end) for t in f.terms]
    if f.verification is not None:
        out += [v + bytes(16) for v in f.verification]
    if f.sha256 is not None:
        out.append(hex_to_hash(f.sha256) + bytes(16))
    return b"".join(out)


def build_shard(files: Sequence[FileEntry] = (), xorbs: Sequence[XorbEntry] = (), *,
                footer: bool = False, hmac_key: bytes = ZERO_HASH, created: int = 0,
                key_expiry: int = 2**64 - 1) -> bytes:
    """Serialize a shard: the uploaded form, or (``footer=True``) the full form with lookup
    tables, chunk hashes keyed with ``hmac_key`` unless it is zero."""
    bookend = MARKER_HASH + bytes(16)
    body = bytearray(HEADER_TAG + struct.pack("<QQ", HEADER_VERSION,
                                              FOOTER_LEN if footer else 0))
    file_lookup, index = [], 0
    for f in files:
        records = _file_records(f)
        file_lookup.append((truncated(f.file_hash), index))
        index += len(records) // ENTRY
        body += records
    body += bookend
    xorb_off = len(body)
    xorb_lookup, chunk_lookup, index = [], [], 0
    for x in xorbs:
        body += x.xorb_hash + struct.pack("<IIII", x.flags, len(x.chunks), x.unpacked_bytes,
                                          x.bytes_on_disk)
        xorb_lookup.append((truncated(x.xorb_hash), index))
        for i, c in enumerate(x.chunks):
            h = keyed(c.chunk_hash, hmac_key) if hmac_key != ZERO_HASH else c.chunk_hash
            body += h + struct.pack("<IIII", c.unpacked_offset, c.unpacked_bytes, c.flags, 0)
            chunk_lookup.append((truncated(h), index, i))
        index += 1 + len(x.chunks)
    body += bookend
    if not footer:
        return bytes(body)
    flook_off = len(body)
    for key, idx in sorted(file_lookup):
        body += struct.pack("<QI", key, idx)
    xlook_off = len(body)
    for key, idx in sorted(xorb_lookup):
        body += struct.pack("<QI", key, idx)
    clook_off = len(body)
    for key, xi, ci in sorted(chunk_lookup):
        body += struct.pack("<QII", key, xi, ci)
    materialized = sum(f.size for f in files)
    stored = sum(x.unpacked_bytes for x in xorbs)
    body += struct.pack("<9Q", FOOTER_VERSION, HEADER_LEN, xorb_off, flook_off, len(files),
                        xlook_off, len(xorbs), clook_off, len(chunk_lookup))
    body += hmac_key + struct.pack("<2Q", created, key_expiry) + bytes(48)
    body += struct.pack("<4Q", sum(x.bytes_on_disk for x in xorbs), materialized, stored,
                        clook_off + 16 * len(chunk_lookup))
    return bytes(body)


assert struct.calcsize("<9Q32s2Q6Q4Q") == FOOTER_LEN and HASH_LEN == 32
