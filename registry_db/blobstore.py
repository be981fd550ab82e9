"""Content-addressed blobs, in one of two backends chosen once per registry.

``db`` (the default): chunk rows inside the database, compressed, hashed both ways. ``s3``
(:mod:`registry_db.objectstore`): one immutable object per blob in an S3-compatible store, its
row in the database marked ``codec = "s3"``. Resumable uploads of large blobs are in
:mod:`registry_db.uploads`.

Bytes are checked against their sha256 digest before anything is stored (``write``,
``finish_upload``) and again on every read (``read``, ``iter``), so corruption is reported
with the blob's digest instead of surfacing as wrong weights.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from functools import partial

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from registry_db import codec
from registry_db.clock import utcnow
from registry_db.database import Database
from registry_db.digests import sha256_digest
from registry_db.encode import Job, check_hash, encoded, write_encoded
from registry_db.errors import AdapterNotFoundError, IntegrityError
from registry_db.models import Blob, Chunk, Setting
from registry_db.objectstore import CODEC as OBJECT_CODEC
from registry_db.objectstore import Location, ObjectStore
from registry_db.reads import batched
from registry_db.records import BlobInfo, BlobStream, Buffer, StoredBlob
from registry_db.stored import BATCH_BYTES, write_checked
from registry_db.uploads import Uploads, blob_info, check_digest
from registry_db.workers import WORKERS, pool
from registry_db.writes import DB_BACKEND, insert_blobs, touch

_STREAM_OWNER = "store:stream"  # the owner of a streamed write's upload row (no caller's)
_READ_BYTES = 64 * 1024 * 1024  # raw bytes fetched per query when reading


def recorded_objects(db: Database) -> ObjectStore | None:
    """The registry's object store as ``init --blobs`` (or ``blobs migrate``) recorded it;
    None: the ``db`` backend."""
    with db.read() as s:
        where = s.scalar(select(Setting.value).where(Setting.key == "blob_backend"))
    return None if where in (None, DB_BACKEND) else ObjectStore(Location.parse(where))


def _decode_blob(digest: str, size: int, blob_codec: str, rows: list) -> bytearray:
    """A blob's bytes from its chunk rows, checked for completeness and against the digest."""
    if [row.index for row in rows] != list(range(len(rows))) or not rows:
        raise IntegrityError(f"blob {digest} is corrupt: its chunks are not a complete "
                              f"sequence")
    parts = []
    for row in rows:
        try:
            parts.append(codec.decode(row.data, blob_codec, row.raw_size))
        except IntegrityError as exc:
            raise IntegrityError(f"blob {digest} is corrupt: chunk {row.index}: "
                                  f"{exc.message}") from None
    data = bytearray().join(parts)  # writable: tensors can be built on it without a copy
    actual = sha256_digest(data)
    if len(data) != size or actual != digest:
        raise IntegrityError(f"blob {digest} is corrupt: its bytes hash to {actual}")
    return data


class BlobStore(Uploads):
    """The blobs of one registry database; ``objects`` is its object store when the registry
    keeps blobs in one (the ``s3`` backend), else None (the ``db`` backend)."""

    def __init__(self, db: Database, objects: ObjectStore | None = None) -> None:
        self.db = db
        self.objects = objects

    # -- what is there ---------------------------------------------------------------------

    def touch(self, digests: Iterable[str]) -> None:
        """Renew ``touched_at`` of stored blobs, so a gc running before the caller's commit
        keeps them (they are about to be used)."""
        with self.db.write() as s:
            touch(self.db.statements(s), digests, utcnow())

    def info(self, digest: str) -> BlobInfo:
        with self.db.read() as s:
            return blob_info(self._complete(s, digest))

    def in_objects(self, digests: list[str]) -> list[str]:
        """Those of ``digests`` stored as objects (not as chunk rows), in order."""
        found: set[str] = set()
        with self.db.read() as s:
            for batch in batched(digests):
                found |= set(s.scalars(select(Blob.digest).where(
                    Blob.digest.in_(batch), Blob.complete, Blob.codec == OBJECT_CODEC)))
        return [digest for digest in digests if digest in found]

    @staticmethod
    def _complete(s: Session, digest: str) -> Blob:
        blob = s.scalar(select(Blob).where(Blob.digest == check_digest(digest), Blob.complete))
        if blob is None:
            raise AdapterNotFoundError(f"blob {digest} is not in the registry")
        return blob

    # -- writing whole blobs ----------------------------------------------------------------

    def write(self, digest: str, data: Buffer, *, itemsize: int = 1) -> None:
        """Store one blob (see :meth:`write_many`)."""
        self.write_many([(digest, data, itemsize)])

    def write_many(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]]) -> None:
        """Store ``(digest, bytes, itemsize)`` blobs; those already stored are skipped.

        Worker threads hash and compress while earlier blobs are being inserted
        (:func:`registry_db.encode.write_encoded`). Bytes that do not match their digest raise
        :class:`IntegrityError` before their batch is written (blobs of earlier batches stay,
        unreferenced, until gc). A :class:`BlobStream`, and with the ``db`` backend any blob
        larger than a batch, is written as it is read (:meth:`_write_streamed`).
        """
        write_encoded(blobs, encode=self.objects is None, store=self._store,
                      stream=self._write_streamed)

    def _write_streamed(self, digest: str, blob: BlobStream, itemsize: int) -> None:
        """Store a blob as its bytes are read, in bounded memory: an upload of its own (an
        incomplete blob row) whose chunk rows are inserted as worker threads encode them,
        made the stored blob only once the whole blob hashed to ``digest``; a mismatch or a
        failure discards the chunks (a crash leaves them for gc)."""
        with self.db.read() as s:
            present = s.scalar(select(Blob.id).where(Blob.digest == digest, Blob.complete))
        h = hashlib.sha256()
        if present is not None:  # hashed anyway: a caller proves it holds the bytes
            for piece in blob.pieces():
                h.update(piece)
            check_hash(digest, "sha256:" + h.hexdigest())
            self.touch([digest])
            return
        info = self.begin_upload(digest, blob.size, _STREAM_OWNER, itemsize=itemsize)
        with self.db.read() as s:
            row = self._upload(s, info.upload_id, _STREAM_OWNER)
            blob_id, blob_codec = row.id, row.codec
        encoding: deque[tuple[int, int, Future[bytes]]] = deque()
        stored = 0

        def store_oldest(count: int) -> None:
            nonlocal stored
            if not count:
                return
            rows = [{"blob_id": blob_id, "index": index, "raw_size": raw_size,
                     "data": future.result()}
                    for index, raw_size, future in (encoding.popleft() for _ in range(count))]
            stored += sum(len(row["data"]) for row in rows)
            with self.db.write() as s:
                s.execute(insert(Chunk.__table__), rows)
                s.execute(update(Blob).where(Blob.id == blob_id).values(touched_at=utcnow()))

        try:
            for index, piece in enumerate(blob.chunks(info.chunk_size)):
                h.update(piece)
                encoding.append((index, len(piece),
                                 pool().submit(codec.encode, piece, blob_codec)))
                if len(encoding) > WORKERS:  # a chunk per worker in flight, one inserted
                    store_oldest(1)
            store_oldest(len(encoding))
            check_hash(digest, "sha256:" + h.hexdigest())
        except BaseException:
            for *_, future in encoding:
                future.cancel()
            self._discard(blob_id)
            raise
        self._complete_upload(info, _STREAM_OWNER, blob_id, stored)

    def _store(self, jobs: list[Job]) -> None:
        blobs = encoded(jobs)
        if self.objects is not None:
            with self.db.read() as s:
                present = set(s.scalars(select(Blob.digest).where(
                    Blob.digest.in_([b.digest for b in blobs]), Blob.complete)))
            views = {d: v for job in jobs for d, v in zip(job.digests, job.views, strict=True)}
            for blob in blobs:  # the object first: a row never names a missing object
                if blob.digest not in present:
                    self.objects.put(blob.digest, views[blob.digest])
        self._insert(blobs)

    def _insert(self, blobs: list[StoredBlob]) -> None:
        """Insert verified blobs (their chunks as stored; none for a blob kept as an object);
        those already stored are touched."""
        with self.db.write() as s:
            insert_blobs(self.db.statements(s), blobs, utcnow())

    def write_stored(self, blobs: Iterable[StoredBlob]) -> None:
        """Store blobs whose chunks arrive as another registry stored them (same codecs), kept
        as they are, each decoded and hashed first (:func:`registry_db.stored.write_checked`)."""
        write_checked(blobs, self._insert)

    # -- reading ----------------------------------------------------------------------------

    def read(self, digest: str) -> bytearray:
        """The blob's bytes, verified against its digest."""
        return next(self.read_many([digest]))[1]

    def read_many(self, digests: Iterable[str], *, streamed: bool = False
                  ) -> Iterator[tuple[str, bytearray | BlobStream]]:
        """``(digest, bytes)`` for each digest, in order, each verified against its digest.

        Blobs are fetched a batch of about :data:`_READ_BYTES` per query and decoded and hashed
        by worker threads; a blob larger than that streams through :meth:`iter`. ``streamed``:
        a blob larger than :data:`BATCH_BYTES` comes as a :class:`BlobStream` that reads it
        chunk by chunk (verified as it is read through), for a caller that sends or stores
        it on without holding it whole.
        """
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        for names in batched(wanted):
            with self.db.read() as s:
                found = {b.digest: b for b in s.execute(
                    select(Blob.id, Blob.digest, Blob.size, Blob.codec)
                    .where(Blob.digest.in_(names), Blob.complete))}
            for digest in names:
                if digest not in found:
                    raise AdapterNotFoundError(f"blob {digest} is not in the registry")
            group: list = []
            size = 0
            for digest in names + [None]:
                blob = found.get(digest)
                if group and (blob is None or size + blob.size > _READ_BYTES):
                    yield from self._read_group(group)
                    group, size = [], 0
                if blob is not None and streamed and blob.size > BATCH_BYTES:
                    yield digest, BlobStream(blob.size, partial(self.iter, digest))
                elif blob is not None and blob.codec == OBJECT_CODEC:
                    yield digest, self._objects().read(digest, blob.size)
                elif blob is not None and blob.size > _READ_BYTES:
                    yield digest, bytearray().join(self.iter(digest))
                elif blob is not None:
                    group.append(blob)
                    size += blob.size

    def _chunk_rows(self, blobs: list) -> dict[int, list]:
        """The chunk rows of ``blobs`` in one query, by blob id, in order."""
        with self.db.read() as s:
            rows = s.execute(select(Chunk.blob_id, Chunk.index, Chunk.raw_size, Chunk.data)
                             .where(Chunk.blob_id.in_([b.id for b in blobs]))
                             .order_by(Chunk.blob_id, Chunk.index)).all()
        chunks: dict[int, list] = {b.id: [] for b in blobs}
        for row in rows:
            chunks[row.blob_id].append(row)
        return chunks

    def _read_group(self, blobs: list) -> Iterator[tuple[str, bytearray]]:
        chunks = self._chunk_rows(blobs)
        futures = [pool().submit(_decode_blob, b.digest, b.size, b.codec, chunks[b.id])
                   for b in blobs]
        for blob, future in zip(blobs, futures, strict=True):
            yield blob.digest, future.result()

    def read_stored(self, digests: Iterable[str]) -> Iterator[StoredBlob]:
        """Each blob as stored (chunks not decoded, not hashed: the receiver checks them), in
        order; rows are fetched about :data:`BATCH_BYTES` of raw bytes per query, so a
        stream's first bytes go out while later rows are read."""
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        for names in batched(wanted):
            with self.db.read() as s:
                found = {b.digest: b for b in s.execute(
                    select(Blob.id, Blob.digest, Blob.size, Blob.codec, Blob.chunk_size)
                    .where(Blob.digest.in_(names), Blob.complete))}
            for digest in names:
                if digest not in found:
                    raise AdapterNotFoundError(f"blob {digest} is not in the registry")
            group: list = []
            for digest in names + [None]:
                blob = found.get(digest)
                if group and (blob is None
                              or sum(b.size for b in group) + blob.size > BATCH_BYTES):
                    yield from self._read_stored_group(group)
                    group = []
                if blob is not None:
                    group.append(blob)

    def _read_stored_group(self, blobs: list) -> Iterator[StoredBlob]:
        chunks = self._chunk_rows(blobs)
        for b in blobs:
            if b.codec == OBJECT_CODEC:  # kept raw in the object store: encoded for the trip
                yield self._encoded_object(b.digest, b.size)
                continue
            if [row.index for row in chunks[b.id]] != list(range(len(chunks[b.id]))):
                raise IntegrityError(f"blob {b.digest} is corrupt: its chunks are not a "
                                      f"complete sequence")
            yield StoredBlob(b.digest, b.size, b.codec, b.chunk_size,
                             tuple((row.raw_size, row.data) for row in chunks[b.id]))

    def _encoded_object(self, digest: str, size: int) -> StoredBlob:
        """A blob of the object store as the database backend would store it (plain zstd),
        for a receiver that takes blobs as stored."""
        data = self._objects().read(digest, size)
        pieces = codec.chunk_views(memoryview(data), codec.CHUNK_SIZE)
        return StoredBlob(digest, size, "zstd", codec.CHUNK_SIZE,
                          tuple((len(p), codec.encode(p, "zstd")) for p in pieces))

    def iter(self, digest: str, *, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` in chunks. The whole blob is hashed as it goes (the
        chunks before ``offset`` too); a mismatch raises :class:`IntegrityError` after the
        last chunk, so consumers must not trust the data before the iterator is exhausted."""
        with self.db.read() as s:
            blob = self._complete(s, digest)
            blob_id, blob_codec, size = blob.id, blob.codec, blob.size
        if blob_codec == OBJECT_CODEC:
            yield from self._objects().iter(digest, size, offset=offset)
            return
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
            raise IntegrityError(f"blob {digest} is corrupt: its bytes hash to {actual}")

    def _decoded(self, blob_id: int, digest: str) -> Iterator[tuple[bytes, int]]:
        """(raw bytes, stored size) of each chunk in order, checking the chunk sequence."""
        with self.db.read() as s:
            blob = s.get(Blob, blob_id)
            if blob is None:
                raise AdapterNotFoundError(f"blob {digest} is not in the registry")
            size, blob_codec, chunk_size = blob.size, blob.codec, blob.chunk_size
            indexes = list(s.scalars(select(Chunk.index).where(Chunk.blob_id == blob_id)
                                     .order_by(Chunk.index)))
        if indexes != list(range(len(indexes))) or not indexes:
            raise IntegrityError(f"blob {digest} is corrupt: chunks {indexes[:10]} are not a "
                                  f"complete sequence")
        total = 0
        per_read = max(1, BATCH_BYTES // chunk_size)  # bounded memory, few round trips
        for start in range(0, len(indexes), per_read):
            with self.db.read() as s:
                rows = s.execute(select(Chunk.index, Chunk.raw_size, Chunk.data)
                                 .where(Chunk.blob_id == blob_id, Chunk.index >= start,
                                        Chunk.index < start + per_read)
                                 .order_by(Chunk.index)).all()
            if len(rows) != min(per_read, len(indexes) - start):
                raise AdapterNotFoundError(f"blob {digest} was removed while it was being read")
            for row in rows:
                try:
                    raw = codec.decode(row.data, blob_codec, row.raw_size)
                except IntegrityError as exc:
                    raise IntegrityError(f"blob {digest} is corrupt: chunk {row.index}: "
                                          f"{exc.message}") from None
                total += len(raw)
                yield raw, len(row.data)
        if total != size:
            raise IntegrityError(f"blob {digest} is corrupt: {total} bytes stored, "
                                  f"{size} expected")

    def _objects(self) -> ObjectStore:
        if self.objects is None:  # moved there by blobs migrate since this process started
            self.objects = recorded_objects(self.db)
        if self.objects is None:
            raise IntegrityError("a blob of this registry is kept in an object store, and the "
                                 "registry records none", hint="Run: adapterhub verify")
        return self.objects

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

    @staticmethod
    def remove_chunks(s: Session, blob_ids: list[int]) -> None:
        """Drop the chunk rows of blobs kept as objects (left by ``blobs migrate``)."""
        for batch in batched(blob_ids):
            s.execute(delete(Chunk).where(Chunk.blob_id.in_(batch)))
