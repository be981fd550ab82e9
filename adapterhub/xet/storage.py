"""What the Xet service needs from a store: :class:`XetStorage`, and an in-memory one.

The service verifies everything before it calls a ``put_*`` method, so a store only keeps what
it is given. Visibility is the store's decision, per ``scope`` (the service passes the scope of
the credentials an upload came with; the hub uses the repository's namespace): a xorb or a file
becomes visible to a scope when it is uploaded under it, and a store answers lookups for a scope
only with what is visible to it. Hashes are the 32 raw bytes (see :mod:`adapterhub.xet.hashes`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from adapterhub.errors import AdapterNotFoundError
from adapterhub.xet.hashes import hash_to_hex
from adapterhub.xet.shard import FileEntry
from adapterhub.xet.xorb import XorbInfo


@runtime_checkable
class XetStorage(Protocol):
    """The store behind :class:`~adapterhub.xet.service.XetService`.

    Every method may be called from several threads at once; ``put_*`` must be atomic (all of
    a call is stored, or none of it) and idempotent (storing what is there again is no error).
    """

    def xorb_info(self, xorb_hash: bytes) -> XorbInfo | None:
        """The chunk list of a stored xorb, or None (no scope check: for the service's own
        reads once an upload's visibility was checked)."""

    def xorb_visible(self, xorb_hash: bytes, scope: str) -> bool:
        """Whether ``scope`` may reference this xorb (it is stored and visible to it)."""

    def put_xorb(self, info: XorbInfo, data: bytes, scope: str,
                 dedup_chunks: Sequence[bytes]) -> bool:
        """Store a verified xorb (``data``: its chunks and footer) and make it visible to
        ``scope``; index ``dedup_chunks`` (chunk hashes in it) for global deduplication.
        Returns whether the xorb's bytes were new (False: it was stored already, and is now
        also visible to ``scope``)."""

    def read_xorb(self, xorb_hash: bytes, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a stored xorb; AdapterNotFoundError if it is absent."""

    def xorbs_with_chunk(self, chunk_hash: bytes, scope: str) -> list[bytes]:
        """Xorbs visible to ``scope`` that were indexed under this chunk hash."""

    def put_shard(self, shard_id: str, data: bytes, files: Sequence[FileEntry], scope: str,
                  dedup: Sequence[tuple[bytes, bytes]]) -> bool:
        """Keep a verified shard and its file reconstructions (visible to ``scope``, found by
        Xet file hash and by sha256), and index ``(chunk hash, xorb hash)`` pairs for global
        deduplication. Returns whether anything was new."""

    def file_by_hash(self, file_hash: bytes, scope: str) -> FileEntry | None:
        """A file reconstruction visible to ``scope``, by Xet file hash."""

    def file_by_sha256(self, sha256: str, scope: str) -> FileEntry | None:
        """A file reconstruction visible to ``scope``, by the file's sha256 (lowercase hex)."""


class MemoryXetStorage:
    """:class:`XetStorage` in memory, for tests and tools (one lock; nothing persists)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.xorbs: dict[bytes, tuple[XorbInfo, bytes]] = {}
        self.xorb_scopes: dict[bytes, set[str]] = {}
        self.chunk_index: dict[bytes, set[bytes]] = {}
        self.shards: dict[str, bytes] = {}
        self.files: dict[tuple[str, bytes], FileEntry] = {}
        self.files_by_sha256: dict[tuple[str, str], FileEntry] = {}

    def xorb_info(self, xorb_hash: bytes) -> XorbInfo | None:
        with self._lock:
            stored = self.xorbs.get(xorb_hash)
        return stored[0] if stored else None

    def xorb_visible(self, xorb_hash: bytes, scope: str) -> bool:
        with self._lock:
            return scope in self.xorb_scopes.get(xorb_hash, ())

    def put_xorb(self, info: XorbInfo, data: bytes, scope: str,
                 dedup_chunks: Sequence[bytes]) -> bool:
        with self._lock:
            new = info.hash not in self.xorbs
            if new:
                self.xorbs[info.hash] = (info, bytes(data))
            self.xorb_scopes.setdefault(info.hash, set()).add(scope)
            for chunk in dedup_chunks:
                self.chunk_index.setdefault(chunk, set()).add(info.hash)
            return new

    def read_xorb(self, xorb_hash: bytes, start: int, end: int) -> bytes:
        with self._lock:
            stored = self.xorbs.get(xorb_hash)
        if stored is None:
            raise AdapterNotFoundError(f"xorb {hash_to_hex(xorb_hash)} is not stored")
        return stored[1][start:end]

    def xorbs_with_chunk(self, chunk_hash: bytes, scope: str) -> list[bytes]:
        with self._lock:
            return sorted(x for x in self.chunk_index.get(chunk_hash, ())
                          if scope in self.xorb_scopes.get(x, ()))

    def put_shard(self, shard_id: str, data: bytes, files: Sequence[FileEntry], scope: str,
                  dedup: Sequence[tuple[bytes, bytes]]) -> bool:
        with self._lock:
            new = shard_id not in self.shards
            self.shards.setdefault(shard_id, bytes(data))
            for f in files:
                new |= (scope, f.file_hash) not in self.files
                self.files.setdefault((scope, f.file_hash), f)
                if f.sha256 is not None:
                    self.files_by_sha256.setdefault((scope, f.sha256), f)
            for chunk, xorb in dedup:
                self.chunk_index.setdefault(chunk, set()).add(xorb)
            return new

    def file_by_hash(self, file_hash: bytes, scope: str) -> FileEntry | None:
        with self._lock:
            return self.files.get((scope, file_hash))

    def file_by_sha256(self, sha256: str, scope: str) -> FileEntry | None:
        with self._lock:
            return self.files_by_sha256.get((scope, sha256))

    def stored_bytes(self) -> int:
        """Bytes of xorbs and shards held (for tests that check nothing was stored)."""
        with self._lock:
            return sum(len(d) for _, d in self.xorbs.values()) + sum(
                len(d) for d in self.shards.values())
