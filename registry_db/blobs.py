"""Blobs as each caller sees them: the store boundary's rule for content-addressed bytes.

Storage deduplicates blobs across the whole registry, but **visibility is per caller**, as
in the OCI distribution spec: a caller may reference a blob in a commit, download it, or
learn that it exists or its size only if

- a version in a repository it may read references the blob, or
- it uploaded those bytes itself (a bundle it sent, or an upload it owns and finished),
  which records a *grant* for it.

Otherwise the blob is missing to that caller, who must send the bytes; the registry hashes
them, keeps one copy, and grants the sender. The local user sees every stored blob.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry_db import writes
from registry_db.access import Caller
from registry_db.blobstore import BlobStore, Buffer, check_digest
from registry_db.clock import utcnow
from registry_db.database import Database
from registry_db.errors import AdapterNotFoundError
from registry_db.models import BlobGrant, Repository, Version, VersionTensor
from registry_db.models_hub import VersionFilePart
from registry_db.reads import batched
from registry_db.records import BlobInfo, BlobStream, StoredBlob, UploadInfo


class BlobService:
    """The blobs of one registry, every call decided for its :class:`Caller`.

    ``store`` is the storage itself (:class:`~registry_db.blobstore.BlobStore`), for gc and
    verify, which act on all blobs.
    """

    def __init__(self, db: Database, store: BlobStore) -> None:
        self.db = db
        self.store = store

    # -- visibility -------------------------------------------------------------------------

    def visible(self, digests: Iterable[str], *, caller: Caller) -> set[str]:
        """The stored blobs among ``digests`` that ``caller`` may see."""
        with self.db.read() as s:
            return self.visible_in(s, digests, caller)

    def visible_in(self, s: Session, digests: Iterable[str], caller: Caller) -> set[str]:
        """:meth:`visible` inside an open session (a commit checks its blobs in its own
        transaction: a second connection there could wait on a pool that waits on it)."""
        stored = writes.stored(self.db.statements(s), {check_digest(d) for d in digests})
        if caller.local or not stored:  # the local user sees every stored blob
            return stored
        seen: set[str] = set()
        for batch in batched(sorted(stored)):
            for ref in (VersionTensor, VersionFilePart):  # tensors, kept files' parts
                rows = s.execute(
                    select(ref.blob_digest, Repository.name).distinct()
                    .join(Version, Version.id == ref.version_id)
                    .join(Repository, Repository.id == Version.repository_id)
                    .where(ref.blob_digest.in_(batch)))
                seen |= {digest for digest, name in rows if caller.can("read", name)}
            if caller.owner is not None:
                seen |= set(s.scalars(select(BlobGrant.digest).where(
                    BlobGrant.owner == caller.owner, BlobGrant.digest.in_(batch))))
        return seen

    def require_visible(self, digests: Iterable[str], *, caller: Caller) -> None:
        wanted = set(digests)
        hidden = wanted - self.visible(wanted, caller=caller)
        if hidden:
            raise AdapterNotFoundError(f"blob {min(hidden)} is not in the registry")

    def _grant(self, digests: Iterable[str], caller: Caller) -> None:
        if caller.local or caller.owner is None:
            return
        rows = [{"digest": d, "owner": caller.owner, "granted_at": utcnow()}
                for d in sorted(set(digests))]
        if not rows:
            return
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        with self.db.write() as s:
            for batch in batched(rows):
                s.execute(dialect.insert(BlobGrant).values(batch).on_conflict_do_nothing())

    # -- pushing ----------------------------------------------------------------------------

    def missing(self, digests: Iterable[str], *, caller: Caller) -> set[str]:
        """Which of ``digests`` the caller must send: those not stored, and those stored but
        not visible to it (it cannot tell the two apart). The visible ones are kept from gc
        from now on (see :meth:`BlobStore.touch`)."""
        caller.require("write")
        wanted = {check_digest(d) for d in digests}
        visible = self.visible(wanted, caller=caller)
        self.store.touch(visible)
        return wanted - visible

    def write(self, digest: str, data: Buffer, *, caller: Caller, itemsize: int = 1) -> None:
        """Store one blob (see :meth:`write_many`)."""
        self.write_many([(digest, data, itemsize)], caller=caller)

    def write_many(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                   caller: Caller) -> None:
        """Store ``(digest, bytes, itemsize)`` blobs after hashing every one (bytes already
        stored are not stored twice) and grant them to the caller, who proved it holds them.
        A large blob may come as a :class:`BlobStream` (stored as it is read)."""
        caller.require("write")
        sent: list[str] = []

        def recorded() -> Iterator[tuple[str, Buffer | BlobStream, int]]:
            for blob in blobs:
                sent.append(blob[0])
                yield blob

        self.store.write_many(recorded())
        self._grant(sent, caller)

    def write_stored(self, blobs: Iterable[StoredBlob], *, caller: Caller) -> None:
        """Store blobs as another registry stored them (see :meth:`BlobStore.write_stored`):
        every chunk decoded and every blob hashed before it is written, then granted to the
        caller, who proved it holds the bytes."""
        caller.require("write")
        sent: list[str] = []

        def recorded() -> Iterator[StoredBlob]:
            for blob in blobs:
                sent.append(blob.digest)
                yield blob

        self.store.write_stored(recorded())
        self._grant(sent, caller)

    def begin_upload(self, digest: str, size: int, *, caller: Caller, itemsize: int = 1,
                     chunk_size: int | None = None, presigned: bool = False,
                     direct: bool = False) -> UploadInfo | None:
        """Start, or continue the caller's own unfinished, upload of one large blob; None
        when the caller may already use the blob. ``presigned``: with an object store, the
        answer lists presigned URLs the chunks go to; ``direct``: the client sends the
        headers it lists too (see :meth:`BlobStore.begin_upload`)."""
        caller.require("write")
        if self.visible([digest], caller=caller):
            self.store.touch([digest])
            return None
        return (self.store.own_upload(digest, size, caller.owner, chunk_size=chunk_size,
                                      presigned=presigned, direct=direct)
                or self.store.begin_upload(digest, size, caller.owner, itemsize=itemsize,
                                           chunk_size=chunk_size, presigned=presigned,
                                           direct=direct))

    def finish_own_upload(self, digest: str, size: int, *, caller: Caller) -> BlobInfo:
        """Finish the caller's own unfinished presigned upload of ``digest`` (for a client
        that knows only the digest: HF LFS sent it straight to the object store)."""
        caller.require("write")
        upload = self.store.own_upload(digest, size, caller.owner, presigned=True)
        if upload is None:
            raise AdapterNotFoundError(f"no upload of {digest} in progress",
                                       hint="Start the upload again")
        return self.finish_upload(upload.upload_id, caller=caller)

    def upload_status(self, upload_id: str, *, caller: Caller) -> UploadInfo:
        caller.require("write")
        return self.store.upload_status(upload_id, caller.owner)

    def upload_chunk(self, upload_id: str, index: int, data: bytes | memoryview, *,
                     caller: Caller) -> None:
        caller.require("write")
        self.store.upload_chunk(upload_id, caller.owner, index, data)

    def finish_upload(self, upload_id: str, *, caller: Caller) -> BlobInfo:
        """Re-hash the whole upload; on success the caller may use the blob."""
        caller.require("write")
        info = self.store.finish_upload(upload_id, caller.owner)
        self._grant([info.digest], caller)
        return info

    # -- pulling ----------------------------------------------------------------------------

    def info(self, digest: str, *, caller: Caller) -> BlobInfo:
        self.require_visible([digest], caller=caller)
        return self.store.info(digest)

    def read(self, digest: str, *, caller: Caller) -> bytearray:
        """The blob's bytes, verified against its digest."""
        self.require_visible([digest], caller=caller)
        return self.store.read(digest)

    def read_many(self, digests: Iterable[str], *, caller: Caller, streamed: bool = False
                  ) -> Iterator[tuple[str, bytearray | BlobStream]]:
        """``(digest, bytes)`` for each digest, in order, each verified (all must be visible
        to the caller before anything is read); ``streamed``: large blobs as
        :class:`BlobStream` (see :meth:`BlobStore.read_many`)."""
        wanted = list(digests)
        self.require_visible(wanted, caller=caller)
        return self.store.read_many(wanted, streamed=streamed)

    def read_stored(self, digests: Iterable[str], *, caller: Caller) -> Iterator[StoredBlob]:
        """Each blob as stored, in order, for a receiver that checks it (all must be visible
        to the caller before anything is read)."""
        wanted = list(digests)
        self.require_visible(wanted, caller=caller)
        return self.store.read_stored(wanted)

    def download_url(self, digest: str, *, caller: Caller, expires: int = 3600) -> str | None:
        """A presigned URL of the blob's object for a caller who may see it; None when the
        blob is in the database (then read it through the registry)."""
        return self.download_urls([digest], caller=caller, expires=expires).get(digest)

    def download_urls(self, digests: Iterable[str], *, caller: Caller,
                      expires: int = 3600) -> dict[str, str]:
        """Presigned URLs of the blobs kept as objects, by digest (all must be blobs the
        caller may see; blobs in the database get none)."""
        wanted = list(dict.fromkeys(digests))
        self.require_visible(wanted, caller=caller)
        if self.store.objects is None:
            return {}
        return {digest: self.store.objects.presign_get(digest, expires)
                for digest in self.store.in_objects(wanted)}

    def iter(self, digest: str, *, caller: Caller, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` (see :meth:`BlobStore.iter`)."""
        self.require_visible([digest], caller=caller)
        return self.store.iter(digest, offset=offset)

    # -- maintenance ------------------------------------------------------------------------

    @staticmethod
    def forget_grants(s, digests: list[str]) -> None:
        """Drop the grants of blobs gc removed."""
        for batch in batched(digests):
            s.execute(delete(BlobGrant).where(BlobGrant.digest.in_(batch)))
