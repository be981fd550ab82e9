"""The Xet CAS service: verify uploads completely, store them, answer dedup queries, and
reconstruct files — over any :class:`~adapterhub.xet.storage.XetStorage`.

Nothing reaches the store before it is verified:

- a xorb: every chunk decompressed and re-hashed, the xorb hash recomputed and compared with
  the hash it was uploaded as (and with its footer's, if it has one), sizes within limits;
- a shard: its structure; every xorb it lists is stored, visible to the uploader's scope and
  has exactly the chunks the shard states; every file's terms name stored, visible xorbs and
  valid chunk ranges, state the right byte counts and verification hashes; the file hash
  recomputed from the chunks equals the one stated; the stated sha256 equals the sha256 of
  the file's bytes, reconstructed from the store.

Refusals raise :class:`~adapterhub.errors.FormatError` (malformed) or
:class:`~adapterhub.errors.IntegrityError` (hashes, sizes or references that do not hold).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate

from adapterhub.errors import AdapterNotFoundError, FormatError, IntegrityError
from adapterhub.xet.hashes import (ZERO_HASH, chunk_hash, file_hash, hash_to_hex, hex_to_hash,
                                   is_global_dedup_eligible, verification_hash)
from adapterhub.xet.shard import (CHUNK_FLAG_GLOBAL_DEDUP, ChunkEntry, FileEntry, Term, XorbEntry,
                                  build_shard, parse_shard)
from adapterhub.xet.storage import XetStorage
from adapterhub.xet.xorb import (CHUNK_HEADER_LEN, MAX_XORB_BYTES, MAX_XORB_CHUNKS, XorbInfo,
                                 decode_chunk, parse_xorb, xorb_footer)

#: a serialized xorb: its data, a header per chunk, and a footer of 40 bytes per chunk + 100
MAX_XORB_UPLOAD = MAX_XORB_BYTES + MAX_XORB_CHUNKS * (CHUNK_HEADER_LEN + 48) + 1024


@dataclass(frozen=True)
class XetLimits:
    """Bounds on what one request may make the service do."""

    max_xorb_bytes: int = MAX_XORB_UPLOAD
    #: clients cut shards at 64 MiB
    max_shard_bytes: int = 64 * 1024 * 1024 + 1024 * 1024
    max_file_bytes: int = 50 * 1024**3
    #: xorbs one global-dedup answer may describe
    dedup_xorbs: int = 8
    #: how long a dedup answer's chunk key (and the client's cached copy) stays valid
    dedup_key_ttl_s: int = 7 * 24 * 3600
    #: compressed bytes read from the store at once while reconstructing
    read_window: int = 8 * 1024 * 1024
    #: xorb and shard uploads held in memory and verified at the same time (per router)
    max_parallel_uploads: int = 4


ShardProgress = Callable[[int, int], None]


class XetService:
    """Upload verification, dedup answers and reconstruction over a store."""

    def __init__(self, storage: XetStorage, limits: XetLimits | None = None) -> None:
        self.storage = storage
        self.limits = limits or XetLimits()

    # --- xorbs ---------------------------------------------------------------------------

    def upload_xorb(self, xorb_hex: str, data: bytes, scope: str) -> bool:
        """Verify a serialized xorb uploaded as ``xorb_hex`` and store it (with a canonical
        footer). Returns whether it is new *to this scope*: whether another scope stored the
        same bytes before is not the uploader's to learn."""
        expected = hex_to_hash(xorb_hex)
        if len(data) > self.limits.max_xorb_bytes:
            raise FormatError(f"a xorb is at most {self.limits.max_xorb_bytes} bytes; this one "
                              f"has {len(data)}")
        info = parse_xorb(data, expected)
        known = self.storage.xorb_visible(info.hash, scope)
        stored = bytes(data[:info.data_size]) + xorb_footer(info)
        eligible = [h for h in info.chunk_hashes if is_global_dedup_eligible(h)]
        self.storage.put_xorb(info, stored, scope, eligible)
        return not known

    # --- shards --------------------------------------------------------------------------

    def _visible_xorb(self, xorb_hash: bytes, scope: str, what: str) -> XorbInfo:
        info = self.storage.xorb_info(xorb_hash)
        if info is None or not self.storage.xorb_visible(xorb_hash, scope):
            raise IntegrityError(f"{what} names xorb {hash_to_hex(xorb_hash)}, which was not "
                                 f"uploaded", hint="Upload the xorb before the shard")
        return info

    def _check_xorb_entry(self, x: XorbEntry, scope: str) -> list[tuple[bytes, bytes]]:
        info = self._visible_xorb(x.xorb_hash, scope, "the shard's xorb section")
        name = hash_to_hex(x.xorb_hash)
        stated = [(c.chunk_hash, c.unpacked_offset, c.unpacked_bytes) for c in x.chunks]
        offsets = accumulate(info.chunk_sizes[:-1], initial=0)
        actual = list(zip(info.chunk_hashes, offsets, info.chunk_sizes))
        if stated != actual or x.unpacked_bytes != info.unpacked_size:
            raise IntegrityError(f"the shard describes xorb {name} with chunks or sizes that "
                                 f"are not the stored xorb's")
        return [(c.chunk_hash, x.xorb_hash) for c in x.chunks
                if c.flags & CHUNK_FLAG_GLOBAL_DEDUP]

    def _check_file(self, f: FileEntry, scope: str) -> list[tuple[bytes, int]]:
        name = hash_to_hex(f.file_hash)
        if f.verification is None or len(f.verification) != len(f.terms):
            raise FormatError(f"file {name}: every term needs a verification entry")
        if f.size > self.limits.max_file_bytes:
            raise FormatError(f"file {name} has {f.size} bytes; the limit is "
                              f"{self.limits.max_file_bytes}")
        chunks: list[tuple[bytes, int]] = []
        for i, (term, stated) in enumerate(zip(f.terms, f.verification)):
            info = self._visible_xorb(term.xorb_hash, scope, f"file {name} term {i}")
            if not 0 <= term.chunk_start < term.chunk_end <= info.num_chunks:
                raise IntegrityError(f"file {name} term {i}: chunks [{term.chunk_start}, "
                                     f"{term.chunk_end}) are not in xorb "
                                     f"{hash_to_hex(term.xorb_hash)} ({info.num_chunks} chunks)")
            hashes = info.chunk_hashes[term.chunk_start:term.chunk_end]
            sizes = info.chunk_sizes[term.chunk_start:term.chunk_end]
            if sum(sizes) != term.unpacked_bytes:
                raise IntegrityError(f"file {name} term {i} states {term.unpacked_bytes} bytes; "
                                     f"its chunks hold {sum(sizes)}")
            if verification_hash(hashes) != stated:
                raise IntegrityError(f"file {name} term {i}: the verification hash does not "
                                     f"match the xorb's chunks")
            chunks.extend(zip(hashes, sizes))
        computed = file_hash(chunks) if chunks else ZERO_HASH
        if computed != f.file_hash:
            raise IntegrityError(f"file {name}: its chunks make the file hash "
                                 f"{hash_to_hex(computed)}, not the one the shard states")
        return chunks

    def upload_shard(self, data: bytes, scope: str,
                     progress: ShardProgress | None = None) -> bool:
        """Verify an uploaded shard and keep its files. ``progress(done, total)`` is called as
        files' sha256 are checked (the slow part). Returns whether anything was new."""
        if len(data) > self.limits.max_shard_bytes:
            raise FormatError(f"a shard is at most {self.limits.max_shard_bytes} bytes; this "
                              f"one has {len(data)}")
        shard = parse_shard(data)
        if shard.hmac_key != ZERO_HASH:
            raise FormatError("an uploaded shard must not have keyed chunk hashes")
        dedup: list[tuple[bytes, bytes]] = []
        for x in shard.xorbs:
            dedup += self._check_xorb_entry(x, scope)
        files = list({f.file_hash: f for f in shard.files}.values())
        for f in files:
            self._check_file(f, scope)
            if f.terms:  # clients look a file up by its first chunk: it leads to every
                first = self.storage.xorb_info(f.terms[0].xorb_hash)  # xorb of the file
                assert first is not None
                lead = first.chunk_hashes[f.terms[0].chunk_start]
                xorbs = list(dict.fromkeys(t.xorb_hash for t in f.terms))
                dedup += [(lead, x) for x in xorbs[:self.limits.dedup_xorbs]]
        total = sum(f.size for f in files if f.sha256 is not None)
        done = 0
        for f in files:
            if f.sha256 is None:
                continue
            digest = hashlib.sha256()
            for piece in self.reconstruct(f, check_sha256=False):
                digest.update(piece)
                done += len(piece)
                if progress:
                    progress(done, total)
            if digest.hexdigest() != f.sha256:
                raise IntegrityError(f"file {hash_to_hex(f.file_hash)}: its bytes have sha256 "
                                     f"{digest.hexdigest()}, not the {f.sha256} the shard states")
        shard_id = hashlib.sha256(data).hexdigest()
        return self.storage.put_shard(shard_id, data, files, scope, dedup)

    # --- global deduplication ------------------------------------------------------------

    def dedup_shard(self, chunk_hex: str, scope: str) -> bytes | None:
        """The global-dedup answer for a chunk: a shard listing the xorbs (visible to
        ``scope``) that hold it, their chunk hashes keyed with a fresh random key; or None."""
        chunk = hex_to_hash(chunk_hex)
        xorbs = self.storage.xorbs_with_chunk(chunk, scope)[:self.limits.dedup_xorbs]
        entries = []
        for xorb in xorbs:
            info = self.storage.xorb_info(xorb)
            if info is None:
                continue
            offset, chunks = 0, []
            for h, size in zip(info.chunk_hashes, info.chunk_sizes):
                chunks.append(ChunkEntry(h, offset, size))
                offset += size
            entries.append(XorbEntry(xorb, tuple(chunks), 0, info.unpacked_size,
                                     info.data_size))
        if not entries:
            return None
        now = int(time.time())
        return build_shard((), entries, footer=True, hmac_key=os.urandom(32), created=now,
                           key_expiry=now + self.limits.dedup_key_ttl_s)

    # --- files ---------------------------------------------------------------------------

    def file_by_hash(self, file_hex: str, scope: str) -> FileEntry | None:
        return self.storage.file_by_hash(hex_to_hash(file_hex), scope)

    def file_by_sha256(self, sha256: str, scope: str) -> FileEntry | None:
        return self.storage.file_by_sha256(sha256.lower(), scope)

    def read_by_sha256(self, sha256: str, scope: str) -> Iterator[bytes]:
        """The bytes of the file with this sha256 uploaded under ``scope``, streamed and
        verified (AdapterNotFoundError if there is none)."""
        entry = self.file_by_sha256(sha256, scope)
        if entry is None:
            raise AdapterNotFoundError(f"no file with sha256 {sha256} was uploaded through Xet",
                                       hint="Upload it (hf_xet does) before committing it")
        return self.reconstruct(entry)

    def _term_chunks(self, term: Term) -> Iterator[bytes]:
        info = self.storage.xorb_info(term.xorb_hash)
        if info is None:
            raise IntegrityError(f"xorb {hash_to_hex(term.xorb_hash)} is missing from the store")
        index = term.chunk_start
        while index < term.chunk_end:
            start, last = info.chunk_start(index), index
            while last + 1 < term.chunk_end and \
                    info.chunk_ends[last + 1] - start <= self.limits.read_window:
                last += 1
            window = self.storage.read_xorb(term.xorb_hash, start, info.chunk_ends[last])
            pos = 0
            for i in range(index, last + 1):
                chunk, pos = decode_chunk(window, pos)
                if chunk_hash(chunk) != info.chunk_hashes[i]:
                    raise IntegrityError(f"stored xorb {hash_to_hex(term.xorb_hash)} chunk {i} "
                                         f"is corrupt")
                yield chunk
            index = last + 1

    def reconstruct(self, entry: FileEntry, *, check_sha256: bool = True) -> Iterator[bytes]:
        """The file's bytes, chunk by chunk, read from the store in bounded windows; every
        chunk is re-hashed, and (``check_sha256``) the sha256 is checked at the end."""
        digest = hashlib.sha256() if check_sha256 and entry.sha256 else None
        for term in entry.terms:
            for chunk in self._term_chunks(term):
                if digest is not None:
                    digest.update(chunk)
                yield chunk
        if digest is not None and digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"file {hash_to_hex(entry.file_hash)} reconstructs to sha256 "
                                 f"{digest.hexdigest()}, not {entry.sha256}")
