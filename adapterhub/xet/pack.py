"""Pack bytes the way a Xet client uploads them: chunks → xorbs → a shard describing the file.

No deduplication: every chunk goes into a new xorb. Tests and tools use this to drive the CAS
without the Rust client (and to build deliberately wrong uploads from correct ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from adapterhub.xet.chunking import chunk_bytes
from adapterhub.xet.hashes import chunk_hash, file_hash, hash_to_hex, verification_hash, xorb_hash
from adapterhub.xet.shard import ChunkEntry, FileEntry, Term, XorbEntry, build_shard
from adapterhub.xet.xorb import MAX_XORB_BYTES, MAX_XORB_CHUNKS, build_xorb


@dataclass(frozen=True)
class PackedXorb:
    hash: bytes
    data: bytes
    entry: XorbEntry

    @property
    def hex(self) -> str:
        return hash_to_hex(self.hash)


@dataclass(frozen=True)
class PackedFile:
    """A file as uploads carry it: its xorbs, its reconstruction and the shard holding both."""

    xorbs: tuple[PackedXorb, ...]
    entry: FileEntry
    shard: bytes

    @property
    def sha256(self) -> str:
        assert self.entry.sha256 is not None
        return self.entry.sha256


def pack_file(data: bytes, schemes: Sequence[int] = (0,), footer: bool = False,
              max_xorb_bytes: int = MAX_XORB_BYTES) -> PackedFile:
    """Chunk ``data`` and pack it; chunk ``i`` is stored with ``schemes[i % len(schemes)]``
    (0 none, 1 LZ4, 2 BG4-LZ4)."""
    chunks = chunk_bytes(data)
    groups: list[list[int]] = [[]]
    size = 0
    for i, c in enumerate(chunks):
        if groups[-1] and (size + len(c) > max_xorb_bytes or
                           len(groups[-1]) == MAX_XORB_CHUNKS):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += len(c)
    xorbs, terms, verification = [], [], []
    for group in groups if chunks else []:
        part = [chunks[i] for i in group]
        blob = build_xorb(part, [schemes[i % len(schemes)] for i in group], footer=footer)
        hashes = [chunk_hash(c) for c in part]
        offsets, entries = 0, []
        for h, c in zip(hashes, part):
            entries.append(ChunkEntry(h, offsets, len(c)))
            offsets += len(c)
        xh = xorb_hash(zip(hashes, map(len, part)))
        xorbs.append(PackedXorb(xh, blob, XorbEntry(xh, tuple(entries), 0, offsets, 0)))
        terms.append(Term(xh, offsets, 0, len(part)))
        verification.append(verification_hash(hashes))
    fh = file_hash((chunk_hash(c), len(c)) for c in chunks)
    entry = FileEntry(fh, tuple(terms), tuple(verification), hashlib.sha256(data).hexdigest())
    shard = build_shard([entry], [x.entry for x in xorbs])
    return PackedFile(tuple(xorbs), entry, shard)
