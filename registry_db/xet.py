"""The hub's persistent Xet upload store: verified xorbs and shards, the dedup index, file
reconstructions, and who may use them.

The bytes of xorbs and shards go through the ordinary blob store (so they follow its backend
and its integrity checks); the rows of :mod:`registry_db.models_hub` say what they hold.
What a xorb or file *is* (chunk lists, terms) is the hub's business: the store keeps it as
opaque bytes. Hashes are Xet's 64-hex text form.

**Visibility** follows the blobs' rule (:mod:`registry_db.blobs`): an ``owner`` (a caller's
:attr:`~registry_db.access.Caller.owner`) may find, dedup against or reference a xorb or a
file only if it uploaded it (which records a grant). Callers verify before they store; every
``put_*`` is one transaction and idempotent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry_db.blobstore import BlobStore
from registry_db.clock import utcnow
from registry_db.database import Database
from registry_db.errors import AdapterNotFoundError
from registry_db.models_hub import (VersionFile, XetChunk, XetFile, XetFileXorb, XetGrant,
                                    XetShard, XetXorb)
from registry_db.reads import batched


@dataclass(frozen=True)
class StoredFile:
    """A file reconstruction as kept: ``entry`` is the hub's packed terms."""

    file_hash: str
    sha256: str | None
    size: int
    entry: bytes
    xorbs: tuple[str, ...] = ()  # the xorbs its reconstruction reads


class XetStore:
    """Xorbs, shards and files of one registry (see the module docstring)."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def _insert(self, s: Session, table: type, rows: list[dict]) -> None:
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        for batch in batched(rows):
            s.execute(dialect.insert(table).values(batch).on_conflict_do_nothing())

    def _grants(self, owner: str, kind: str, hashes: Sequence[str]) -> list[dict]:
        now = utcnow()
        return [{"owner": owner, "kind": kind, "hash": h, "granted_at": now}
                for h in sorted(set(hashes))]

    # -- xorbs ------------------------------------------------------------------------------

    def xorb_info(self, xorb_hash: str) -> bytes | None:
        with self.db.read() as s:
            return s.scalar(select(XetXorb.info).where(XetXorb.hash == xorb_hash))

    def granted(self, owner: str, kind: str, hashes: Sequence[str]) -> set[str]:
        """Which of ``hashes`` (xorbs or files, by ``kind``) ``owner`` may use."""
        seen: set[str] = set()
        with self.db.read() as s:
            for batch in batched(sorted(set(hashes))):
                seen |= set(s.scalars(select(XetGrant.hash).where(
                    XetGrant.owner == owner, XetGrant.kind == kind, XetGrant.hash.in_(batch))))
        return seen

    def put_xorb(self, xorb_hash: str, info: bytes, data: bytes, owner: str,
                 dedup_chunks: Sequence[str]) -> bool:
        """Store a verified xorb's bytes as a blob, its row, its dedup entries and the
        owner's grant. Returns whether the bytes were new."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        new = self.xorb_info(xorb_hash) is None
        if new:
            self.blobs.write(digest, data)
        else:
            self.blobs.touch([digest])
        with self.db.write() as s:
            self._insert(s, XetXorb, [{"hash": xorb_hash, "blob_digest": digest, "info": info,
                                       "created_at": utcnow()}])
            self._insert(s, XetChunk, [{"chunk_hash": c, "xorb_hash": xorb_hash}
                                       for c in sorted(set(dedup_chunks))])
            self._insert(s, XetGrant, self._grants(owner, "xorb", [xorb_hash]))
        return new

    def read_xorb(self, xorb_hash: str) -> bytearray:
        """A stored xorb's bytes, verified against their blob digest."""
        with self.db.read() as s:
            digest = s.scalar(select(XetXorb.blob_digest).where(XetXorb.hash == xorb_hash))
        if digest is None:
            raise AdapterNotFoundError(f"xorb {xorb_hash} is not stored")
        return self.blobs.read(digest)

    def xorbs_with_chunk(self, chunk_hash: str, owner: str) -> list[str]:
        """Xorbs indexed under this chunk hash that ``owner`` may use."""
        with self.db.read() as s:
            return list(s.scalars(
                select(XetChunk.xorb_hash)
                .join(XetGrant, (XetGrant.hash == XetChunk.xorb_hash) & (XetGrant.kind == "xorb"))
                .where(XetChunk.chunk_hash == chunk_hash, XetGrant.owner == owner)
                .order_by(XetChunk.xorb_hash)))

    # -- shards and files -------------------------------------------------------------------

    def put_shard(self, shard_id: str, data: bytes, files: Sequence[StoredFile], owner: str,
                  dedup: Sequence[tuple[str, str]]) -> bool:
        """Keep a verified shard (as a blob), its files, the owner's grants on them and
        ``(chunk, xorb)`` dedup pairs. Returns whether anything was new to the owner."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs.write(digest, data)
        known = self.granted(owner, "file", [f.file_hash for f in files])
        now = utcnow()
        with self.db.write() as s:
            new = s.scalar(select(XetShard.shard_id).where(XetShard.shard_id == shard_id)) \
                is None
            self._insert(s, XetShard, [{"shard_id": shard_id, "blob_digest": digest,
                                        "created_at": now}])
            self._insert(s, XetFile, [{"file_hash": f.file_hash, "sha256": f.sha256,
                                       "size": f.size, "entry": f.entry, "created_at": now}
                                      for f in files])
            self._insert(s, XetFileXorb, sorted(({"file_hash": f.file_hash, "xorb_hash": x}
                                                 for f in files for x in set(f.xorbs)),
                                                key=lambda r: (r["file_hash"], r["xorb_hash"])))
            self._insert(s, XetChunk, [{"chunk_hash": c, "xorb_hash": x}
                                       for c, x in sorted(set(dedup))])
            self._insert(s, XetGrant, self._grants(owner, "file", [f.file_hash for f in files]))
        return new or len(known) < len({f.file_hash for f in files})

    def _file(self, owner: str, where) -> StoredFile | None:
        with self.db.read() as s:
            row = s.execute(
                select(XetFile)
                .join(XetGrant, (XetGrant.hash == XetFile.file_hash) & (XetGrant.kind == "file"))
                .where(XetGrant.owner == owner, where).order_by(XetFile.file_hash).limit(1)
            ).scalar()
            return None if row is None else StoredFile(row.file_hash, row.sha256, row.size,
                                                       row.entry)

    def file_by_hash(self, file_hash: str, owner: str) -> StoredFile | None:
        return self._file(owner, XetFile.file_hash == file_hash)

    def file_by_sha256(self, sha256: str, owner: str) -> StoredFile | None:
        return self._file(owner, XetFile.sha256 == sha256)

    # -- maintenance ------------------------------------------------------------------------

    @staticmethod
    def collect(s: Session, cutoff: datetime) -> None:
        """Forget Xet data older than ``cutoff`` that no version uses: shards, files no
        version keeps (by sha256) and xorbs no kept file reads, with their dedup entries and
        grants. Their blobs are then unreferenced, and gc's sweep removes them."""
        kept = select(VersionFile.sha256).distinct()
        used_files = set(s.scalars(select(XetFile.file_hash).where(XetFile.sha256.in_(kept))))
        used_xorbs = set(s.scalars(select(XetFileXorb.xorb_hash).where(
            XetFileXorb.file_hash.in_(used_files)))) if used_files else set()
        old_files = set(s.scalars(select(XetFile.file_hash).where(
            XetFile.created_at < cutoff))) - used_files
        old_xorbs = set(s.scalars(select(XetXorb.hash).where(
            XetXorb.created_at < cutoff))) - used_xorbs
        for batch in batched(sorted(old_files)):
            s.execute(delete(XetFile).where(XetFile.file_hash.in_(batch)))
            s.execute(delete(XetFileXorb).where(XetFileXorb.file_hash.in_(batch)))
            s.execute(delete(XetGrant).where(XetGrant.kind == "file", XetGrant.hash.in_(batch)))
        for batch in batched(sorted(old_xorbs)):
            s.execute(delete(XetXorb).where(XetXorb.hash.in_(batch)))
            s.execute(delete(XetChunk).where(XetChunk.xorb_hash.in_(batch)))
            s.execute(delete(XetGrant).where(XetGrant.kind == "xorb", XetGrant.hash.in_(batch)))
        s.execute(delete(XetShard).where(XetShard.created_at < cutoff))

    @staticmethod
    def kept_blobs(s: Session) -> set[str]:
        """Blobs the Xet store holds (gc keeps them)."""
        return set(s.scalars(select(XetXorb.blob_digest))) | set(
            s.scalars(select(XetShard.blob_digest)))
