"""Blobs as another registry stored them (compressed chunks): each decoded and hashed on the
worker threads before it is kept, then kept as it came.

Shared by the service's blob store and :class:`registry_db.writes.SqliteWriter`, which differ
only in how a checked batch is inserted.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future

from registry_db import codec
from registry_db.digests import check_digest
from registry_db.errors import IntegrityError
from registry_db.records import StoredBlob
from registry_db.workers import pool

#: raw bytes per write transaction
BATCH_BYTES = 16 * 1024 * 1024
#: stored bytes checked per worker task (one task per small blob cost more in handing it
#: over than in checking it)
CHECK_BYTES = 1024 * 1024


def check_stored(blob: StoredBlob) -> None:
    """Decode every chunk of a blob as stored and hash the bytes: :class:`IntegrityError`
    unless they are exactly the blob its digest names, in chunks of its chunk size."""
    check_digest(blob.digest)
    count = max(1, -(-blob.size // blob.chunk_size)) if 0 < blob.chunk_size else 0
    if not 0 <= blob.size <= codec.MAX_BLOB_BYTES \
            or not 0 < blob.chunk_size <= codec.MAX_CHUNK_BYTES or len(blob.chunks) != count:
        raise IntegrityError(f"blob {blob.digest} arrived malformed: {len(blob.chunks)} chunks "
                             f"of {blob.chunk_size} bytes for {blob.size} bytes")
    h = hashlib.sha256()
    for i, (raw_size, data) in enumerate(blob.chunks):
        if raw_size != min(blob.chunk_size, blob.size - i * blob.chunk_size) and blob.size:
            raise IntegrityError(f"blob {blob.digest} arrived malformed: chunk {i} holds "
                                 f"{raw_size} bytes")
        try:
            h.update(codec.decode(data, blob.codec, raw_size))
        except IntegrityError as exc:
            raise IntegrityError(f"blob {blob.digest} arrived corrupt: chunk {i}: "
                                 f"{exc.message}") from None
    actual = "sha256:" + h.hexdigest()
    if actual != blob.digest:
        raise IntegrityError(f"blob {blob.digest} arrived corrupt: its bytes hash to {actual}",
                             hint="Pull again; if it persists, run 'adapterhub verify' on "
                                  "the source")


def _check_all(blobs: list[StoredBlob]) -> None:
    for blob in blobs:
        check_stored(blob)


def write_checked(blobs: Iterable[StoredBlob], insert: Callable[[list[StoredBlob]], None]
                  ) -> None:
    """Check ``blobs`` on the worker threads and pass them to ``insert`` in batches of about
    :data:`BATCH_BYTES` stored bytes, each once all of its blobs passed; the next batches are
    checked while one is inserted. A blob that fails raises :class:`IntegrityError` before
    its batch is inserted."""
    in_flight: deque[list[tuple[list[StoredBlob], Future[None]]]] = deque()
    batch: list[tuple[list[StoredBlob], Future[None]]] = []
    group: list[StoredBlob] = []
    size = group_size = 0

    def insert_checked(checked: list[tuple[list[StoredBlob], Future[None]]]) -> None:
        for _, done in checked:
            done.result()
        insert(list({blob.digest: blob for group, _ in checked for blob in group}.values()))

    for blob in blobs:
        group.append(blob)
        group_size += blob.stored_size
        if group_size >= CHECK_BYTES:
            batch.append((group, pool().submit(_check_all, group)))
            size += group_size
            group, group_size = [], 0
            if size >= BATCH_BYTES:
                in_flight.append(batch)
                batch, size = [], 0
                if len(in_flight) > 1:
                    insert_checked(in_flight.popleft())
    if group:
        batch.append((group, pool().submit(_check_all, group)))
    if batch:
        in_flight.append(batch)
    while in_flight:
        insert_checked(in_flight.popleft())
