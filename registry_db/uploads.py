"""Resumable uploads of one large blob, for :class:`registry_db.blobstore.BlobStore`.

An upload belongs to the caller that opened it (its id is random). On the ``db`` backend its
chunks arrive as chunk rows and the whole blob is re-hashed when it finishes (an object store
registry then writes the verified bytes as the blob's object). A *presigned* upload (``s3``
backend) sends its bytes straight to the store. A *direct* one (a client that sends the
headers an upload lists, on a store where
:attr:`~registry_db.objectstore.ObjectStore.direct_uploads`, a blob of up to
:data:`~registry_db.objectstore.DIRECT_MAX` bytes) is one ``PUT`` to the blob's own key that
the store accepts only with exactly the blob's bytes and marks with the upload's id: finishing
checks that mark, and reads nothing back. Otherwise the chunks are parts of a staging object,
and finishing reads every byte of it back and hashes it before it becomes the blob.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from registry_db import codec
from registry_db.clock import utcnow
from registry_db.codec import MAX_BLOB_BYTES, MAX_CHUNK_BYTES
from registry_db.digests import check_digest
from registry_db.errors import (AdapterNotFoundError, ConflictError, IntegrityError,
                                InvalidRequestError)
from registry_db.models import Blob, Chunk
from registry_db.objectstore import CODEC as OBJECT_CODEC
from registry_db.objectstore import DIRECT_MAX, PART_SIZE
from registry_db.records import BlobInfo, UploadInfo

if TYPE_CHECKING:
    from registry_db.database import Database
    from registry_db.objectstore import ObjectStore

UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_PARTS = 10_000  # S3's limit of parts in a multipart upload
PRESIGN_SECONDS = 3600  # how long a presigned URL works
#: ``Blob.object_upload`` of a presigned upload sent as one checksummed ``PUT`` to the blob's
#: key (otherwise it holds the staging object's S3 multipart upload id)
DIRECT = "put"


def part_size(size: int) -> int:
    """The part size of a presigned upload of ``size`` bytes (within S3's part limit)."""
    return max(PART_SIZE, -(-size // MAX_PARTS))


def blob_info(blob: Blob) -> BlobInfo:
    return BlobInfo(blob.digest, blob.size, blob.stored_size, blob.codec)



class Uploads:
    """The upload half of :class:`~registry_db.blobstore.BlobStore` (which provides the
    attributes and readers declared here)."""

    db: Database
    objects: ObjectStore | None

    def begin_upload(self, digest: str, size: int, owner: str, *, itemsize: int = 1,
                     chunk_size: int | None = None, presigned: bool = False,
                     direct: bool = False) -> UploadInfo:
        """Open a resumable upload of ``digest`` that belongs to ``owner``; its id is random,
        so nobody can guess another caller's upload. ``presigned`` (with an object store):
        the chunks go straight to the store through the presigned URLs in the answer;
        ``direct``: the client sends the headers the answer lists, so the upload may be one
        ``PUT`` to the blob's key (see the module docstring)."""
        check_digest(digest)
        if presigned and self.objects is not None:
            return self._begin_presigned(digest, size, owner, direct)
        chunk_size = chunk_size or codec.CHUNK_SIZE
        if not 0 <= size <= MAX_BLOB_BYTES or not 0 < chunk_size <= MAX_CHUNK_BYTES:
            raise InvalidRequestError(f"invalid upload size {size} / chunk size {chunk_size}: "
                                      f"a blob holds 0 to {MAX_BLOB_BYTES} bytes")
        now = utcnow()
        with self.db.write() as s:
            chosen = codec.codec_for(itemsize, chunk_size, size % chunk_size)
            upload_id = secrets.token_urlsafe(24)
            s.add(Blob(digest=digest, size=size, stored_size=0, codec=chosen,
                       chunk_size=chunk_size, complete=False, created_at=now, touched_at=now,
                       upload_id=upload_id, owner=owner))
            return UploadInfo(upload_id, digest, size, chunk_size, ())

    def _direct(self, size: int, direct: bool) -> bool:
        """Whether a presigned upload of ``size`` bytes is one ``PUT`` to the blob's key."""
        return direct and size <= DIRECT_MAX and self._objects().direct_uploads

    def _begin_presigned(self, digest: str, size: int, owner: str,
                         direct: bool) -> UploadInfo:
        if not 0 <= size <= MAX_BLOB_BYTES:
            raise InvalidRequestError(f"invalid upload size {size}: a blob holds 0 to "
                                      f"{MAX_BLOB_BYTES} bytes")
        direct = self._direct(size, direct)
        part = max(1, size) if direct else part_size(size)
        upload_id = secrets.token_urlsafe(24)
        multipart = DIRECT if direct else self._objects().begin_multipart(upload_id)
        now = utcnow()
        with self.db.write() as s:
            s.add(Blob(digest=digest, size=size, stored_size=0, codec=OBJECT_CODEC,
                       chunk_size=part, complete=False, created_at=now, touched_at=now,
                       upload_id=upload_id, owner=owner, object_upload=multipart))
        return self.upload_status(upload_id, owner)

    def own_upload(self, digest: str, size: int, owner: str, *,
                   chunk_size: int | None = None, presigned: bool = False,
                   direct: bool = False) -> UploadInfo | None:
        """The newest unfinished upload of the same blob (same size and chunk size, the same
        kind) that ``owner`` opened, so a client that lost its upload id (a crash, a new
        process) resends only the chunks the registry lacks. Never another caller's
        upload."""
        check_digest(digest)
        presigned = presigned and self.objects is not None
        direct = presigned and self._direct(size, direct)
        chunk_size = ((max(1, size) if direct else part_size(size)) if presigned
                      else chunk_size or codec.CHUNK_SIZE)
        kind = (Blob.object_upload == DIRECT if direct
                else (Blob.object_upload.is_not(None) & (Blob.object_upload != DIRECT))
                if presigned else Blob.object_upload.is_(None))
        with self.db.read() as s:
            upload_id = s.scalar(select(Blob.upload_id).where(
                Blob.digest == digest, Blob.complete.is_(False), Blob.size == size,
                Blob.chunk_size == chunk_size, Blob.owner == owner, kind)
                .order_by(Blob.id.desc()).limit(1))
        if upload_id is None:
            return None
        try:
            return self.upload_status(upload_id, owner)
        except AdapterNotFoundError:  # finished or collected meanwhile
            return None

    def upload_status(self, upload_id: str, owner: str) -> UploadInfo:
        """Which chunks of an upload the registry holds (to resume after a failure)."""
        with self.db.read() as s:
            blob = self._upload(s, upload_id, owner)
            received = tuple(s.scalars(select(Chunk.index).where(Chunk.blob_id == blob.id)
                                       .order_by(Chunk.index)))
            info = UploadInfo(upload_id, blob.digest, blob.size, blob.chunk_size, received)
            blob_id, multipart = blob.id, blob.object_upload
        if multipart is None:
            return info
        objects = self._objects()
        if multipart == DIRECT:  # received: this upload's PUT wrote the blob's object
            url, headers = objects.presign_put(info.digest, upload_id, PRESIGN_SECONDS)
            ours = objects.uploader(info.digest) == (info.size, upload_id)
            return replace(info, received=(0,) if ours else (), urls=(url,),
                           headers=tuple(headers.items()))
        parts = objects.parts(upload_id, multipart)
        if parts is None:  # a hub died while finishing it: the client starts again
            self._discard(blob_id)
            raise AdapterNotFoundError(f"upload {upload_id!r} was interrupted on the hub",
                                       hint="Start a new upload")
        sizes = {p["PartNumber"] - 1: p["Size"] for p in parts}
        received = tuple(i for i in range(info.chunk_count) if sizes.get(i) == min(
            info.chunk_size, info.size - i * info.chunk_size))
        return replace(info, received=received, urls=objects.presign_parts(
            upload_id, multipart, info.chunk_count, PRESIGN_SECONDS))

    def upload_chunk(self, upload_id: str, owner: str, index: int,
                     data: bytes | memoryview) -> None:
        """Store chunk ``index`` of an upload (again, if it was sent before)."""
        with self.db.read() as s:
            blob = self._upload(s, upload_id, owner)
            if blob.object_upload is not None:
                raise ConflictError("this upload's chunks go to the object store",
                                    hint="PUT them to the presigned URLs the upload lists")
            count = max(1, -(-blob.size // blob.chunk_size))
            expected = min(blob.chunk_size, blob.size - index * blob.chunk_size)
            blob_codec = blob.codec
        if not 0 <= index < count or len(data) != expected:
            raise InvalidRequestError(f"chunk {index} of this upload must be {expected} bytes "
                                      f"(chunks 0..{count - 1}); got {len(data)}")
        stored = codec.encode(data, blob_codec)
        with self.db.write() as s:
            blob = self._upload(s, upload_id, owner)
            s.execute(delete(Chunk).where(Chunk.blob_id == blob.id, Chunk.index == index))
            s.add(Chunk(blob_id=blob.id, index=index, raw_size=len(data), data=stored))
            blob.touched_at = utcnow()

    def finish_upload(self, upload_id: str, owner: str) -> BlobInfo:
        """Re-hash everything received; mark the blob stored (or, when the same bytes are
        stored already, drop this copy), or discard the upload on a mismatch."""
        info = self.upload_status(upload_id, owner)
        if info.missing:
            raise ConflictError(f"this upload of {info.digest} is missing chunks "
                                f"{list(info.missing)[:10]}", hint="Send them, then finish")
        with self.db.read() as s:
            blob = self._upload(s, upload_id, owner)
            blob_id, multipart = blob.id, blob.object_upload
        if multipart is not None:
            return self._finish_presigned(info, owner, blob_id, multipart)
        h = hashlib.sha256()
        stored = 0
        try:
            for raw, size in self._decoded(blob_id, info.digest):
                h.update(raw)
                stored += size
        except IntegrityError:
            self._discard(blob_id)
            raise
        actual = "sha256:" + h.hexdigest()
        if actual != info.digest:
            self._discard(blob_id)
            raise IntegrityError(f"the bytes received hash to {actual}, not {info.digest}; "
                                 f"the upload was discarded", hint="Upload the blob again")
        return self._complete_upload(info, owner, blob_id, stored)

    def _complete_upload(self, info: UploadInfo, owner: str | None, blob_id: int,
                         stored: int) -> BlobInfo:
        """Mark an upload whose bytes were hashed and matched its digest as the stored blob
        (``stored`` bytes of chunk rows), or drop it when the same blob is stored already.
        With an object store, the chunks become the blob's object first."""
        if self.objects is not None:  # the verified staging chunks become the object
            self.objects.put_stream(info.digest, (raw for raw, _ in
                                                  self._decoded(blob_id, info.digest)))
            stored = info.size
        with self.db.write() as s:
            blob = self._upload(s, info.upload_id, owner)
            if s.scalar(select(Blob.id).where(Blob.digest == blob.digest, Blob.complete)):
                s.execute(delete(Chunk).where(Chunk.blob_id == blob.id))
                s.execute(delete(Blob).where(Blob.id == blob.id))  # stored already: dedup
                return blob_info(self._complete(s, info.digest))
            try:
                with s.begin_nested():
                    blob.complete, blob.stored_size, blob.touched_at = True, stored, utcnow()
                    blob.upload_id = blob.owner = None
                    if self.objects is not None:
                        blob.codec = OBJECT_CODEC
                        s.execute(delete(Chunk).where(Chunk.blob_id == blob.id))
            except SAIntegrityError:  # PostgreSQL: a concurrent finish of the same digest won
                s.execute(delete(Chunk).where(Chunk.blob_id == blob.id))
                s.execute(delete(Blob).where(Blob.id == blob.id))
                return blob_info(self._complete(s, info.digest))
            return blob_info(blob)

    def _finish_presigned(self, info: UploadInfo, owner: str, blob_id: int,
                          multipart: str) -> BlobInfo:
        """Make the upload the blob: a direct upload's object is there, written by this
        upload (the store took only the blob's bytes); a staging object is verified (a
        server-side read of every byte) and copied to the blob's key, or discarded: bytes
        that are not ``digest`` never become it."""
        if multipart != DIRECT:
            actual = self._objects().promote(info.upload_id, multipart, info.digest,
                                             info.size)
            if actual is not None:
                self._discard(blob_id)
                raise IntegrityError(f"the bytes received hash to {actual}, not "
                                     f"{info.digest}; the upload was discarded",
                                     hint="Upload the blob again")
        with self.db.write() as s:
            blob = self._upload(s, info.upload_id, owner)
            if s.scalar(select(Blob.id).where(Blob.digest == blob.digest, Blob.complete)):
                s.execute(delete(Blob).where(Blob.id == blob.id))  # stored already: dedup
                return blob_info(self._complete(s, info.digest))
            try:
                with s.begin_nested():
                    blob.complete, blob.stored_size, blob.touched_at = True, blob.size, utcnow()
                    blob.upload_id = blob.owner = blob.object_upload = None
            except SAIntegrityError:  # PostgreSQL: a concurrent finish of the same digest won
                s.execute(delete(Blob).where(Blob.id == blob.id))
                return blob_info(self._complete(s, info.digest))
            return blob_info(blob)

    @staticmethod
    def _upload(s: Session, upload_id: str, owner: str) -> Blob:
        blob = None
        if isinstance(upload_id, str) and UPLOAD_ID_RE.fullmatch(upload_id):
            blob = s.scalar(select(Blob).where(Blob.upload_id == upload_id,
                                               Blob.complete.is_(False)))
        if blob is None or blob.owner != owner:
            raise AdapterNotFoundError(f"no upload {str(upload_id)[:64]!r} in progress",
                                       hint="It finished, or gc removed it after it was "
                                            "abandoned; start a new upload")
        return blob

    def _discard(self, blob_id: int) -> None:
        with self.db.write() as s:  # (a presigned upload's staging object is gone already)
            s.execute(delete(Chunk).where(Chunk.blob_id == blob_id))
            s.execute(delete(Blob).where(Blob.id == blob_id, Blob.complete.is_(False)))
