"""Content-addressed blobs inside the database: chunk rows, compressed, hashed both ways.

Bytes are checked against their sha256 digest before anything is stored (``write``,
``finish_upload``) and again on every read (``read``, ``iter``), so corruption is reported
with the blob's digest instead of surfacing as wrong weights.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry_db import codec
from registry_db.database import Database, batched, utcnow
from registry_db.digests import is_digest
from registry_db.errors import ConflictError, CorruptionError, InvalidNameError, NotFoundError
from registry_db.models import Blob, Chunk
from registry_db.records import BlobInfo, UploadInfo

Buffer = Union[bytes, bytearray, memoryview]
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_BATCH_BYTES = 16 * 1024 * 1024  # raw bytes per write transaction
_READ_BYTES = 64 * 1024 * 1024  # raw bytes fetched per query when reading


def _check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidNameError(f"invalid blob digest {str(digest)[:80]!r}: expected "
                               f"sha256:<64 lowercase hex>")
    return digest


def _info(blob: Blob) -> BlobInfo:
    return BlobInfo(blob.digest, blob.size, blob.stored_size, blob.codec)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Worker threads for hashing and zstd (both release the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="registry-db")
    return _POOL


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _sha256(data: Buffer) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class _Job:
    """One blob being hashed and encoded in the pool."""

    digest: str
    size: int
    codec: str
    raw_sizes: list[int]
    hashed: Future[str]
    chunks: list[Future[bytes]]

    @classmethod
    def submit(cls, digest: str, view: memoryview, itemsize: int) -> _Job:
        pieces = codec.chunk_views(view, codec.CHUNK_SIZE)
        chosen = codec.codec_for(itemsize, *map(len, pieces))
        pool = _pool()
        return cls(digest, len(view), chosen, [len(p) for p in pieces],
                   pool.submit(_sha256, view),
                   [pool.submit(codec.encode, piece, chosen) for piece in pieces])


def _decode_blob(digest: str, size: int, blob_codec: str, rows: list) -> bytearray:
    """A blob's bytes from its chunk rows, checked for completeness and against the digest."""
    if [row.index for row in rows] != list(range(len(rows))) or not rows:
        raise CorruptionError(f"blob {digest} is corrupt: its chunks are not a complete "
                              f"sequence")
    parts = []
    for row in rows:
        try:
            parts.append(codec.decode(row.data, blob_codec, row.raw_size))
        except CorruptionError as exc:
            raise CorruptionError(f"blob {digest} is corrupt: chunk {row.index}: "
                                  f"{exc.message}") from None
    data = bytearray().join(parts)  # writable: tensors can be built on it without a copy
    actual = _sha256(data)
    if len(data) != size or actual != digest:
        raise CorruptionError(f"blob {digest} is corrupt: its bytes hash to {actual}")
    return data


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

    # -- writing whole blobs ----------------------------------------------------------------

    def write(self, digest: str, data: Buffer, *, itemsize: int = 1) -> None:
        """Store one blob (see :meth:`write_many`)."""
        self.write_many([(digest, data, itemsize)])

    def write_many(self, blobs: Iterable[tuple[str, Buffer, int]]) -> None:
        """Store ``(digest, bytes, itemsize)`` blobs; those already stored are skipped.

        Worker threads hash and compress while earlier blobs are being inserted; blobs go in
        transactions of about :data:`_BATCH_BYTES`. Bytes that do not match their digest raise
        :class:`CorruptionError` before their batch is written (blobs of earlier batches stay,
        unreferenced, until gc).
        """
        in_flight: deque[list[_Job]] = deque()
        batch: list[_Job] = []
        size = 0
        seen: set[str] = set()
        for digest, data, itemsize in blobs:
            if _check_digest(digest) in seen:
                continue
            seen.add(digest)
            batch.append(_Job.submit(digest, memoryview(data).cast("B"), itemsize))
            size += len(data)
            if size >= _BATCH_BYTES:
                in_flight.append(batch)
                batch, size = [], 0
                if len(in_flight) > 1:  # encode the next batch while this one is written
                    self._store(in_flight.popleft())
        if batch:
            in_flight.append(batch)
        while in_flight:
            self._store(in_flight.popleft())

    def _store(self, jobs: list[_Job]) -> None:
        for job in jobs:
            actual = job.hashed.result()
            if actual != job.digest:
                raise CorruptionError(f"bytes sent for blob {job.digest} hash to {actual}",
                                      hint="The source is corrupt or changed while reading")
        encoded = {job.digest: [future.result() for future in job.chunks] for job in jobs}
        now = utcnow()
        with self.db.write() as s:
            digests = [job.digest for job in jobs]
            present = set(s.scalars(select(Blob.digest).where(Blob.digest.in_(digests),
                                                              Blob.complete)))
            if present:
                s.execute(update(Blob).where(Blob.digest.in_(present), Blob.complete)
                          .values(touched_at=now))
            rows = [{"digest": job.digest, "size": job.size, "codec": job.codec,
                     "stored_size": sum(map(len, encoded[job.digest])),
                     "chunk_size": codec.CHUNK_SIZE, "complete": True, "created_at": now,
                     "touched_at": now} for job in jobs if job.digest not in present]
            if not rows:
                return
            table = Blob.__table__
            statement = insert(table)
            if self.db.dialect == "postgresql":  # a concurrent writer may store one first
                statement = postgresql.insert(table).on_conflict_do_nothing(
                    index_elements=["digest"], index_where=table.c.complete)
            # Core, not the ORM's bulk insert: rows skipped on conflict return nothing
            conn = s.connection()
            ids = dict(conn.execute(statement.returning(table.c.digest, table.c.id),
                                    rows).all())
            chunks = [{"blob_id": ids[job.digest], "index": i, "raw_size": job.raw_sizes[i],
                       "data": stored}
                      for job in jobs if job.digest in ids
                      for i, stored in enumerate(encoded[job.digest])]
            if chunks:  # (an empty list would execute once, with no values)
                conn.execute(insert(Chunk.__table__), chunks)

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
            chosen = codec.codec_for(itemsize, chunk_size, size % chunk_size)
            blob = Blob(digest=digest, size=size, stored_size=0, codec=chosen,
                        chunk_size=chunk_size, complete=False, created_at=now, touched_at=now)
            s.add(blob)
            s.flush()
            return UploadInfo(str(blob.id), digest, size, chunk_size, ())

    def resume_upload(self, digest: str, size: int, *, itemsize: int = 1,
                      chunk_size: int | None = None) -> UploadInfo | None:
        """Like :meth:`begin_upload`, but continue the newest unfinished upload of the same
        blob (same size and chunk size) if there is one, so a client that lost its upload id
        (a crash, a new process) resends only the chunks the registry lacks."""
        _check_digest(digest)
        chunk_size = chunk_size or codec.CHUNK_SIZE
        if not self.missing([digest]):
            return None
        with self.db.read() as s:
            upload_id = s.scalar(select(Blob.id).where(
                Blob.digest == digest, Blob.complete.is_(False), Blob.size == size,
                Blob.chunk_size == chunk_size).order_by(Blob.id.desc()).limit(1))
        if upload_id is not None:
            try:
                return self.upload_status(str(upload_id))
            except NotFoundError:  # finished or collected meanwhile
                pass
        return self.begin_upload(digest, size, itemsize=itemsize, chunk_size=chunk_size)

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

    def read(self, digest: str) -> bytearray:
        """The blob's bytes, verified against its digest."""
        return next(self.read_many([digest]))[1]

    def read_many(self, digests: Iterable[str]) -> Iterator[tuple[str, bytearray]]:
        """``(digest, bytes)`` for each digest, in order, each verified against its digest.

        Blobs are fetched a batch of about :data:`_READ_BYTES` per query and decoded and hashed
        by worker threads; a blob larger than that streams through :meth:`iter`.
        """
        wanted = list(dict.fromkeys(_check_digest(d) for d in digests))
        for names in batched(wanted):
            with self.db.read() as s:
                found = {b.digest: b for b in s.execute(
                    select(Blob.id, Blob.digest, Blob.size, Blob.codec)
                    .where(Blob.digest.in_(names), Blob.complete))}
            for digest in names:
                if digest not in found:
                    raise NotFoundError(f"blob {digest} is not in the registry")
            group: list = []
            size = 0
            for digest in names + [None]:
                blob = found.get(digest)
                if group and (blob is None or size + blob.size > _READ_BYTES):
                    yield from self._read_group(group)
                    group, size = [], 0
                if blob is not None and blob.size > _READ_BYTES:
                    yield digest, bytearray().join(self.iter(digest))
                elif blob is not None:
                    group.append(blob)
                    size += blob.size

    def _read_group(self, blobs: list) -> Iterator[tuple[str, bytearray]]:
        with self.db.read() as s:
            rows = s.execute(select(Chunk.blob_id, Chunk.index, Chunk.raw_size, Chunk.data)
                             .where(Chunk.blob_id.in_([b.id for b in blobs]))
                             .order_by(Chunk.blob_id, Chunk.index)).all()
        chunks: dict[int, list] = {b.id: [] for b in blobs}
        for row in rows:
            chunks[row.blob_id].append(row)
        futures = [_pool().submit(_decode_blob, b.digest, b.size, b.codec, chunks[b.id])
                   for b in blobs]
        for blob, future in zip(blobs, futures, strict=True):
            yield blob.digest, future.result()

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
