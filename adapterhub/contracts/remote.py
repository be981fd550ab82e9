"""The remote contract: a registry that push and pull can talk to, registered by URL scheme
through ``adapterhub_register_remotes`` (``register("http", HttpRemote)``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from registry_db.records import BlobStream, Buffer

if TYPE_CHECKING:
    from registry_db import CommitResult, Manifest, StoredBlob, VersionInfo

__all__ = ["BlobStream", "Buffer", "ProgressCallback", "Remote"]
ProgressCallback = Callable[[int], None]


class Remote(ABC):
    """A registry that push and pull can talk to.

    Subclasses implement the seven operations below; ``url`` is what the user gave (or what
    a remote name stands for). Methods raise :mod:`adapterhub.errors` classes:
    :class:`AdapterNotFoundError` for unknown refs, :class:`IntegrityError` for bytes that do
    not match their digest, :class:`MissingBlobsError` from :meth:`commit` when blobs are
    missing (the caller uploads them and commits again), :class:`RegistryError` when the
    remote cannot be reached.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def resolve(self, ref: str) -> VersionInfo:
        """The version ``ref`` names, with its manifest."""

    @abstractmethod
    def find(self, digest: str) -> VersionInfo | None:
        """A version whose manifest digest is ``digest`` (any repository), with its manifest;
        ``None`` if the remote has none. Used to walk and copy lineage."""

    @abstractmethod
    def missing_blobs(self, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` the remote lacks. Blobs it has count as in use from now on, so
        its gc keeps them until the commit that needs them."""

    @abstractmethod
    def upload_blobs(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                     progress: ProgressCallback | None = None) -> None:
        """Store ``(digest, bytes, itemsize)`` blobs; the remote re-hashes each and refuses a
        mismatch (:class:`IntegrityError` naming the digest).

        ``blobs`` is consumed lazily, so a caller can read its bytes as they are needed; a
        large blob may come as a :class:`BlobStream`, to be sent or stored as it is read
        (never held whole: blobs may be GBs).
        ``itemsize`` (bytes per tensor element) lets the remote pick its compression. A
        network remote sends large blobs in chunks and resumes after a failure, and may
        bundle small ones; ``progress`` is called with a byte count as data goes out.
        """

    @abstractmethod
    def download_blobs(self, digests: Iterable[str], *,
                       progress: ProgressCallback | None = None
                       ) -> Iterator[tuple[str, bytes | BlobStream]]:
        """``(digest, bytes)`` for each digest, in order; a large blob may come as a
        :class:`BlobStream` (read it before asking for the next blob). The receiver hashes
        them again."""

    #: :meth:`download_stored` and :meth:`upload_stored` work: blobs can move as a registry
    #: stores them (compressed chunks), with no decompress and recompress on the way
    stored_reads = False
    stored_writes = False
    #: the largest blob (raw bytes) :meth:`download_stored` sends; larger ones go through
    #: :meth:`download_blobs` (a network remote resumes those mid-blob)
    stored_max_bytes: int | None = None

    def download_stored(self, digests: Iterable[str], *,
                        progress: ProgressCallback | None = None) -> Iterator[StoredBlob]:
        """Each blob as the remote stores it, in order (when :attr:`stored_reads`);
        ``progress`` gets raw byte counts. The receiver decodes and hashes every chunk."""
        raise NotImplementedError

    def upload_stored(self, blobs: Iterable[StoredBlob], *,
                      progress: ProgressCallback | None = None) -> None:
        """Store blobs as another registry stored them (when :attr:`stored_writes`), after
        decoding and hashing each; :class:`IntegrityError` naming the digest on a mismatch."""
        raise NotImplementedError

    @abstractmethod
    def commit(self, name: str, manifest: Manifest, *, message: str | None = None,
               author: str | None = None, tags: Sequence[str] = (),
               created_at: datetime | None = None) -> CommitResult:
        """Record ``manifest`` as a version of ``name`` and move ``tags`` to it, atomically.
        An identical manifest returns the existing version (``created`` is False)."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
