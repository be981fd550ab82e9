"""Blobs from their raw bytes: hashed and compressed on the worker threads, kept in
transactions of about :data:`~registry_db.stored.BATCH_BYTES` while the next batch is being
encoded (small blobs :data:`TASK_BYTES` per worker task).

Shared by the service's blob store and :class:`registry_db.writes.SqliteWriter`, which differ
in how a batch is kept and how a blob too large for a batch is written as it is read.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from registry_db import codec, stored
from registry_db.digests import check_digest
from registry_db.errors import IntegrityError
from registry_db.records import BlobStream, Buffer, StoredBlob
from registry_db.workers import pool

#: raw bytes of small blobs hashed and encoded per worker task (one task per small blob
#: cost more in handing it over than in the work)
TASK_BYTES = 1024 * 1024


def _sha256(data: Buffer) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Job:
    """Blobs being hashed and encoded in the pool: one blob of at least :data:`TASK_BYTES`,
    its hash and each chunk a task of their own, or several smaller blobs in one task."""

    digests: list[str]
    views: list[memoryview]
    codecs: list[str]
    tasks: list[Future]

    @classmethod
    def submit(cls, blobs: list[tuple[str, memoryview, int]], *, encode: bool) -> Job:
        codecs = [_codec_of(view, itemsize, encode) for _, view, itemsize in blobs]
        views = [view for _, view, _ in blobs]
        digests = [digest for digest, _, _ in blobs]
        workers = pool()
        if len(blobs) > 1 or not encode:
            return cls(digests, views, codecs, [workers.submit(_hash_encode, views, codecs)])
        pieces = codec.chunk_views(views[0], codec.CHUNK_SIZE)
        return cls(digests, views, codecs, [workers.submit(_sha256, views[0])]
                   + [workers.submit(codec.encode, piece, codecs[0]) for piece in pieces])

    def results(self) -> list[tuple[str, list[bytes]]]:
        """``(sha256 of the bytes, stored chunks)`` of each blob, in order."""
        if len(self.tasks) == 1:
            return self.tasks[0].result()
        return [(self.tasks[0].result(), [task.result() for task in self.tasks[1:]])]

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def _codec_of(view: memoryview, itemsize: int, encode: bool) -> str:
    if not encode:  # an object store keeps the raw bytes
        return codec.OBJECT_CODEC
    return codec.codec_for(itemsize, *map(len, codec.chunk_views(view, codec.CHUNK_SIZE)))


def _hash_encode(views: list[memoryview], codecs: list[str]) -> list[tuple[str, list[bytes]]]:
    return [(_sha256(view), [] if blob_codec == codec.OBJECT_CODEC else
             [codec.encode(piece, blob_codec)
              for piece in codec.chunk_views(view, codec.CHUNK_SIZE)])
            for view, blob_codec in zip(views, codecs, strict=True)]


def check_hash(digest: str, actual: str) -> None:
    if actual != digest:
        raise IntegrityError(f"bytes sent for blob {digest} hash to {actual}",
                             hint="The source is corrupt or changed while reading")


def encoded(jobs: list[Job]) -> list[StoredBlob]:
    """The blobs of finished ``jobs`` as stored (no chunks for an object store's), each
    checked against its digest (:class:`IntegrityError` before any is returned)."""
    results = [job.results() for job in jobs]
    for job, done in zip(jobs, results, strict=True):
        for digest, (actual, _) in zip(job.digests, done, strict=True):
            check_hash(digest, actual)
    return [StoredBlob(digest, len(view), blob_codec, codec.CHUNK_SIZE,
                       tuple(zip(map(len, codec.chunk_views(view, codec.CHUNK_SIZE)), chunks)))
            for job, done in zip(jobs, results, strict=True)
            for digest, view, blob_codec, (_, chunks)
            in zip(job.digests, job.views, job.codecs, done, strict=True)]


def write_encoded(blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *, encode: bool,
                  store: Callable[[list[Job]], None],
                  stream: Callable[[str, BlobStream, int], None]) -> None:
    """Hash and encode ``(digest, bytes, itemsize)`` blobs (only hash them unless
    ``encode``) and hand them to ``store`` a batch of jobs at a time, the next batch encoding
    while one is stored; a :class:`BlobStream`, and when encoding any blob larger than a
    batch, goes to ``stream`` (after every batch before it). Repeated digests are skipped.
    After a refused batch the later ones are not stored, and no work is left running."""
    in_flight: deque[list[Job]] = deque()
    batch: list[Job] = []
    group: list[tuple[str, memoryview, int]] = []
    size = group_size = 0
    seen: set[str] = set()
    try:
        for digest, data, itemsize in blobs:
            if check_digest(digest) in seen:
                continue
            seen.add(digest)
            if isinstance(data, BlobStream) or (encode and len(data) > stored.BATCH_BYTES):
                if group:
                    batch.append(Job.submit(group, encode=encode))
                    group, group_size = [], 0
                if batch:
                    in_flight.append(batch)
                    batch, size = [], 0
                while in_flight:  # (bounded memory: nothing else is held meanwhile)
                    store(in_flight.popleft())
                stream(digest, data if isinstance(data, BlobStream) else BlobStream.of(data),
                       itemsize)
                continue
            view = memoryview(data).cast("B")
            if len(view) >= TASK_BYTES:
                batch.append(Job.submit([(digest, view, itemsize)], encode=encode))
            else:
                group.append((digest, view, itemsize))
                group_size += len(view)
                if group_size >= TASK_BYTES:
                    batch.append(Job.submit(group, encode=encode))
                    group, group_size = [], 0
            size += len(view)
            if size >= stored.BATCH_BYTES:
                if group:
                    batch.append(Job.submit(group, encode=encode))
                    group, group_size = [], 0
                in_flight.append(batch)
                batch, size = [], 0
                if len(in_flight) > 1:  # encode the next batch while this one is stored
                    store(in_flight.popleft())
        if group:
            batch.append(Job.submit(group, encode=encode))
        if batch:
            in_flight.append(batch)
        while in_flight:
            store(in_flight.popleft())
    finally:
        for job in [*batch, *(job for jobs in in_flight for job in jobs)]:
            job.cancel()
