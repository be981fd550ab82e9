"""Content-addressed blobs inside the database: chunk rows, compressed, hashed both ways.

Bytes are checked against their sha256 digest before anything is stored (``write``,
``finish_upload``) and again on every read (``read``, ``iter``), so corruption is reported
with the blob's digest instead of surfacing as wrong weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry_db import codec
from registry_db.database import Database, batched, utcnow
from registry_db.digests import is_digest
from registry_db.errors import ConflictError, CorruptionError, InvalidNameError, NotFoundError
from registry_db.models import Blob, Chunk
from registry_db.records import BlobInfo, UploadInfo

_WORKERS = max(1, min(4, os.cpu_count() or 1))
_READ_BYTES = 64 * 1024 * 1024  # chunks fetched per query when reading


def _check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidNameError(f"invalid blob digest {str(digest)[:80]!r}: expected "
                               f"sha256:<64 lowercase hex>")
    return digest


def _info(blob: Blob) -> BlobInfo:
    return BlobInfo(blob.digest, blob.size, blob.stored_size, blob.codec)


class BlobStore:
    """The blobs of one registry database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- what is there ---------------------------------------------------------------------

    def missing(self, digests: Iterable[str]) -> set[str]:
        """The digests not stored yet. Those that are get their ``touched_at`` renewed, so a
        gc running before the caller's commit keeps them (they are about to be used)."""
        wanted = {_check_digest(d) for d in digests}
        present: set[str] = set()
        now = utcnow()
        with self.db.write() as s:
            for batch in batched(sorted(wanted)):
                found = set(s.scalars(select(Blob.digest).where(Blob.digest.in_(batch),
                                                                Blob.complete)))
                if found:
                    s.execute(update(Blob).where(Blob.digest.in_(found), Blob.complete)
                              .values(touched_at=now))
                present |= found
        return wanted - present

    def info(self, digest: str) -> BlobInfo:
        with self.db.read() as s:
            return _info(self._complete(s, digest))

    @staticmethod
    def _complete(s: Session, digest: str) -> Blob:
        blob = s.scalar(select(Blob).where(Blob.digest == _check_digest(digest), Blob.complete))
        if blob is None:
            raise NotFoundError(f"blob {digest} is not in the registry")
        return blob

    # -- writing in one go ------------------------------------------------------------------

    def write(self, digest: str, data: bytes | memoryview, *, itemsize: int = 1) -> BlobInfo:
        """Store ``data`` under ``digest`` in one transaction (a no-op if already stored).

        The bytes are hashed (in this thread) while worker threads compress the chunks; a
        mismatch raises :class:`CorruptionError` and nothing is written.
        """
        _check_digest(digest)
        if not self.missing([digest]):
            return self.info(digest)
        view = memoryview(data).cast("B")
        chosen = codec.codec_for(itemsize)
        pieces = codec.chunk_views(view, codec.CHUNK_SIZE)
        with ThreadPoolExecutor(_WORKERS) as pool:
            futures = [pool.submit(codec.encode, piece, chosen) for piece in pieces]
            actual = "sha256:" + hashlib.sha256(view).hexdigest()
            if actual != digest:
                for future in futures:
                    future.cancel()
                raise CorruptionError(f"bytes sent for blob {digest} hash to {actual}",
                                      hint="The source is corrupt or changed while reading")
            encoded = [future.result() for future in futures]
        now = utcnow()
        with self.db.write() as s:
            existing = s.scalar(select(Blob).where(Blob.digest == digest, Blob.complete))
            if existing is not None:  # another writer stored it meanwhile
                existing.touched_at = now
                return _info(existing)
            blob = Blob(digest=digest, size=len(view), stored_size=sum(map(len, encoded)),
                        codec=chosen, chunk_size=codec.CHUNK_SIZE, complete=True,
                        created_at=now, touched_at=now)
            try:
                with s.begin_nested():
                    s.add(blob)
            except IntegrityError:  # PostgreSQL: a concurrent writer of the same blob won
                return _info(self._complete(s, digest))
            s.execute(insert(Chunk), [{"blob_id": blob.id, "index": i, "raw_size": len(piece),
                                       "data": stored}
                                      for i, (piece, stored) in enumerate(zip(pieces, encoded))])
            return _info(blob)

    # -- resumable uploads ------------------------------------------------------------------

    def begin_upload(self, digest: str, size: int, *, itemsize: int = 1,
                     chunk_size: int | None = None) -> UploadInfo | None:
        """Start a resumable upload; ``None`` when the blob is already stored."""
        _check_digest(digest)
        chunk_size = chunk_size or codec.CHUNK_SIZE
        if size < 0 or chunk_size <= 0:
            raise InvalidNameError(f"invalid upload size {size} / chunk size {chunk_size}")
        if not self.missing([digest]):
            return None
        now = utcnow()
        with self.db.write() as s:
            blob = Blob(digest=digest, size=size, stored_size=0, codec=codec.codec_for(itemsize),
                        chunk_size=chunk_size, complete=False, created_at=now, touched_at=now)
            s.add(blob)
            s.flush()
            return UploadInfo(str(blob.id), digest, size, chunk_size, ())

    def upload_status(self, upload_id: str) -> UploadInfo:
        """Which chunks of an upload the registry holds (to resume after a failure)."""
        with self.db.read() as s:
            blob = self._upload(s, upload_id)
            received = tuple(s.scalars(select(Chunk.index).where(Chunk.blob_id == blob.id)
                                       .order_by(Chunk.index)))
            return UploadInfo(upload_id, blob.digest, blob.size, blob.chunk_size, received)

    def upload_chunk(self, upload_id: str, index: int, data: bytes | memoryview) -> None:
        """Store chunk ``index`` of an upload (again, if it was sent before)."""
        with self.db.read() as s:
            blob = self._upload(s, upload_id)
            count = max(1, -(-blob.size // blob.chunk_size))
            expected = min(blob.chunk_size, blob.size - index * blob.chunk_size)
            blob_codec = blob.codec
        if not 0 <= index < count or len(data) != expected:
            raise InvalidNameError(f"upload {upload_id}: chunk {index} must be {expected} bytes "
                                   f"(chunks 0..{count - 1}); got {len(data)}")
        stored = codec.encode(data, blob_codec)
        with self.db.write() as s:
            blob = self._upload(s, upload_id)
            s.execute(delete(Chunk).where(Chunk.blob_id == blob.id, Chunk.index == index))
            s.add(Chunk(blob_id=blob.id, index=index, raw_size=len(data), data=stored))
            blob.touched_at = utcnow()

    def finish_upload(self, upload_id: str) -> BlobInfo:
        """Re-hash everything received; mark the blob stored, or discard it on a mismatch."""
        info = self.upload_status(upload_id)
        if info.missing:
            raise ConflictError(f"upload {upload_id} of {info.digest} is missing chunks "
                                f"{list(info.missing)[:10]}", hint="Send them, then finish")
        h = hashlib.sha256()
        stored = 0
        try:
            for raw, size in self._decoded(int(upload_id), info.digest):
                h.update(raw)
                stored += size
        except CorruptionError:
            self._discard(int(upload_id))
            raise
        actual = "sha256:" + h.hexdigest()
        if actual != info.digest:
            self._discard(int(upload_id))
            raise CorruptionError(f"upload {upload_id}: the bytes received hash to {actual}, not "
                                  f"{info.digest}; the upload was discarded",
                                  hint="Upload the blob again")
        with self.db.write() as s:
            blob = self._upload(s, upload_id)
            if s.scalar(select(Blob.id).where(Blob.digest == blob.digest, Blob.complete)):
                s.execute(delete(Blob).where(Blob.id == blob.id))  # stored meanwhile: dedup
                return _info(self._complete(s, info.digest))
            try:
                with s.begin_nested():
                    blob.complete, blob.stored_size, blob.touched_at = True, stored, utcnow()
            except IntegrityError:  # PostgreSQL: a concurrent finish of the same digest won
                s.execute(delete(Blob).where(Blob.id == blob.id))
                return _info(self._complete(s, info.digest))
            return _info(blob)

    def _upload(self, s: Session, upload_id: str) -> Blob:
        blob = s.get(Blob, int(upload_id)) if str(upload_id).isdigit() else None
        if blob is None or blob.complete:
            raise NotFoundError(f"no upload {upload_id} in progress",
                                hint="It finished, or gc removed it after it was abandoned; "
                                     "start a new upload")
        return blob

    def _discard(self, blob_id: int) -> None:
        with self.db.write() as s:
            s.execute(delete(Chunk).where(Chunk.blob_id == blob_id))
            s.execute(delete(Blob).where(Blob.id == blob_id, Blob.complete.is_(False)))

    # -- reading ----------------------------------------------------------------------------

    def read(self, digest: str) -> bytes:
        """The blob's bytes, verified against its digest."""
        return b"".join(self.iter(digest))

    def iter(self, digest: str, *, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` in chunks. The whole blob is hashed as it goes (the
        chunks before ``offset`` too); a mismatch raises :class:`CorruptionError` after the
        last chunk, so consumers must not trust the data before the iterator is exhausted."""
        with self.db.read() as s:
            blob_id = self._complete(s, digest).id
        h = hashlib.sha256()
        position = 0
        for raw, _ in self._decoded(blob_id, digest):
            h.update(raw)
            end = position + len(raw)
            if end > offset:
                yield raw[max(0, offset - position):]
            position = end
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            raise CorruptionError(f"blob {digest} is corrupt: its bytes hash to {actual}")

    def _decoded(self, blob_id: int, digest: str) -> Iterator[tuple[bytes, int]]:
        """(raw bytes, stored size) of each chunk in order, checking the chunk sequence."""
        with self.db.read() as s:
            blob = s.get(Blob, blob_id)
            if blob is None:
                raise NotFoundError(f"blob {digest} is not in the registry")
            size, blob_codec, chunk_size = blob.size, blob.codec, blob.chunk_size
            indexes = list(s.scalars(select(Chunk.index).where(Chunk.blob_id == blob_id)
                                     .order_by(Chunk.index)))
        if indexes != list(range(len(indexes))) or not indexes:
            raise CorruptionError(f"blob {digest} is corrupt: chunks {indexes[:10]} are not a "
                                  f"complete sequence")
        total = 0
        per_read = max(1, _READ_BYTES // chunk_size)  # bounded memory, few round trips
        for start in range(0, len(indexes), per_read):
            with self.db.read() as s:
                rows = s.execute(select(Chunk.index, Chunk.raw_size, Chunk.data)
                                 .where(Chunk.blob_id == blob_id, Chunk.index >= start,
                                        Chunk.index < start + per_read)
                                 .order_by(Chunk.index)).all()
            if len(rows) != min(per_read, len(indexes) - start):
                raise NotFoundError(f"blob {digest} was removed while it was being read")
            for row in rows:
                try:
                    raw = codec.decode(row.data, blob_codec, row.raw_size)
                except CorruptionError as exc:
                    raise CorruptionError(f"blob {digest} is corrupt: chunk {row.index}: "
                                          f"{exc.message}") from None
                total += len(raw)
                yield raw, len(row.data)
        if total != size:
            raise CorruptionError(f"blob {digest} is corrupt: {total} bytes stored, "
                                  f"{size} expected")

    # -- maintenance ------------------------------------------------------------------------

    def stored_bytes(self, s: Session, blob_ids: list[int]) -> int:
        total = 0
        for batch in batched(blob_ids):
            total += s.scalar(select(func.coalesce(func.sum(func.length(Chunk.data)), 0))
                              .where(Chunk.blob_id.in_(batch))) or 0
        return total

    @staticmethod
    def remove(s: Session, blob_ids: list[int]) -> None:
        for batch in batched(blob_ids):
            s.execute(delete(Chunk).where(Chunk.blob_id.in_(batch)))
            s.execute(delete(Blob).where(Blob.id.in_(batch)))
