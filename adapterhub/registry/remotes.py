"""Remote registries: the interface push and pull talk to, and the direct (database) remote.

A :class:`Remote` is built for a network: transfers are content-addressed (the client asks
which blobs are missing and sends only those), blobs move in chunks, and nothing is
visible on the remote until :meth:`Remote.commit` records the manifest atomically. The
receiving side always re-hashes what it gets, so a pull verifies every byte.

Remote kinds register by URL scheme through the ``adapterhub_register_remotes`` hook
(``register("http", HttpRemote)``). Built in: :class:`DatabaseRemote` for another registry
database (a path, ``sqlite:///…``, ``postgresql://…``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.progress import progress
from adapterhub.contracts.remote import BlobStream, Buffer, ProgressCallback, Remote
from adapterhub.errors import AdapterNotFoundError, IntegrityError, MissingBlobsError
from adapterhub.registry.ci import default_author

PROGRESS_MIN_BYTES = 1 << 20  # smaller transfers finish before a bar would help

if TYPE_CHECKING:
    from registry_db import (Caller, CommitResult, Manifest, RegistryService, StoredBlob,
                             VersionInfo)
    from registry_db.files import KeptFile
    from registry_db.writes import SqliteWriter


def counted_stream(blob: BlobStream, progress: ProgressCallback | None) -> BlobStream:
    """``blob`` calling ``progress`` with the size of each piece as it is read."""
    if progress is None:
        return blob

    def pieces() -> Iterator[Buffer]:
        for piece in blob.pieces():
            yield piece
            progress(len(piece))

    return BlobStream(blob.size, pieces)


def counted_raw(blobs: Iterable[tuple[str, Buffer | BlobStream, int]],
                progress: ProgressCallback | None
                ) -> Iterator[tuple[str, Buffer | BlobStream, int]]:
    """``(digest, bytes, itemsize)`` blobs, calling ``progress`` with the size of each once
    it was taken (a :class:`BlobStream` piece by piece, as it is read)."""
    for digest, data, itemsize in blobs:
        if isinstance(data, BlobStream):
            yield digest, counted_stream(data, progress), itemsize
            continue
        yield digest, data, itemsize
        if progress is not None:
            progress(len(data))


def counted_blobs(blobs: Iterable[StoredBlob], progress: ProgressCallback | None
                  ) -> Iterator[StoredBlob]:
    """``blobs``, calling ``progress`` with the size of each once it was taken."""
    for blob in blobs:
        yield blob
        if progress is not None:
            progress(blob.size)


class DatabaseRemote(Remote):
    """Another registry database, reached directly (a path or a SQLAlchemy URL), as the
    local user (``caller``, by default :meth:`Caller.local_user`)."""

    def __init__(self, url: str, *, service: RegistryService | None = None,
                 caller: Caller | None = None) -> None:
        from registry_db import Caller, RegistryService

        super().__init__(url)
        self._owned = service is None
        self.service = RegistryService(url) if service is None else service
        self.caller = caller or Caller.local_user(default_author())

    def resolve(self, ref: str) -> VersionInfo:
        return self.service.resolve(ref, caller=self.caller)

    def find(self, digest: str) -> VersionInfo | None:
        return self.service.find(digest, caller=self.caller)

    def missing_blobs(self, digests: Iterable[str]) -> set[str]:
        return self.service.blobs.missing(digests, caller=self.caller)

    def upload_blobs(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                     progress: ProgressCallback | None = None) -> None:
        self.service.blobs.write_many(counted_raw(blobs, progress), caller=self.caller)

    def download_blobs(self, digests: Iterable[str], *,
                       progress: ProgressCallback | None = None
                       ) -> Iterator[tuple[str, bytes | BlobStream]]:
        for digest, data in self.service.blobs.read_many(digests, caller=self.caller,
                                                         streamed=True):
            if isinstance(data, BlobStream):
                yield digest, counted_stream(data, progress)
                continue
            if progress is not None:
                progress(len(data))
            yield digest, data

    stored_reads = True

    @property
    def stored_writes(self) -> bool:
        """Chunks arriving as stored are kept as they are only by the database backend (an
        object store keeps raw bytes: those blobs come raw)."""
        return self.service.blobs.store.objects is None

    def download_stored(self, digests: Iterable[str], *,
                        progress: ProgressCallback | None = None) -> Iterator[StoredBlob]:
        for blob in self.service.blobs.read_stored(digests, caller=self.caller):
            if progress is not None:
                progress(blob.size)
            yield blob

    def upload_stored(self, blobs: Iterable[StoredBlob], *,
                      progress: ProgressCallback | None = None) -> None:
        self.service.blobs.write_stored(counted_blobs(blobs, progress), caller=self.caller)

    def commit(self, name: str, manifest: Manifest, *, message: str | None = None,
               author: str | None = None, tags: Sequence[str] = (),
               created_at: datetime | None = None, files: Sequence[KeptFile] = ()
               ) -> CommitResult:
        return self.service.commit(name, manifest, caller=self.caller, message=message,
                                   author=author, tags=tags, created_at=created_at,
                                   files=files)

    def record_event(self, action: str, version: VersionInfo, detail: dict[str, Any]) -> None:
        """An audit entry for what was done with ``version`` outside a commit (a pull)."""
        self.service.record_event(action, version=version, caller=self.caller, detail=detail)

    def close(self) -> None:
        if self._owned:
            self.service.close()


class SqliteFileRemote(Remote):
    """The local SQLite registry as the destination of a push or a pull, written through a
    :class:`~registry_db.writes.SqliteWriter` (the standard library, no SQLAlchemy). What the
    writer does not do goes to ``full()``, the :class:`DatabaseRemote` over the service: a
    blob too large for one transaction (written as it is read), a commit with kept files.
    The writer belongs to the :class:`~adapterhub.registry.Registry`; closing this does not
    close it."""

    def __init__(self, writer: SqliteWriter, caller: Caller,
                 full: Callable[[], DatabaseRemote]) -> None:
        super().__init__(writer.url)
        self.writer, self.caller, self.full = writer, caller, full

    def resolve(self, ref: str) -> VersionInfo:
        return self.writer.resolve(ref, caller=self.caller)

    def find(self, digest: str) -> VersionInfo | None:
        return self.writer.find(digest, caller=self.caller)

    def missing_blobs(self, digests: Iterable[str]) -> set[str]:
        return self.writer.missing(digests, caller=self.caller)

    def upload_blobs(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                     progress: ProgressCallback | None = None) -> None:
        def stream(digest: str, blob: BlobStream, itemsize: int) -> None:
            self.full().upload_blobs([(digest, blob, itemsize)])

        self.writer.write_many(counted_raw(blobs, progress), caller=self.caller, stream=stream)

    def download_blobs(self, digests: Iterable[str], *,
                       progress: ProgressCallback | None = None
                       ) -> Iterator[tuple[str, bytes | BlobStream]]:
        return self.full().download_blobs(digests, progress=progress)

    stored_writes = True

    def upload_stored(self, blobs: Iterable[StoredBlob], *,
                      progress: ProgressCallback | None = None) -> None:
        self.writer.write_stored(counted_blobs(blobs, progress), caller=self.caller)

    def commit(self, name: str, manifest: Manifest, *, message: str | None = None,
               author: str | None = None, tags: Sequence[str] = (),
               created_at: datetime | None = None, files: Sequence[KeptFile] = ()
               ) -> CommitResult:
        if files:
            return self.full().commit(name, manifest, message=message, author=author,
                                      tags=tags, created_at=created_at, files=files)
        return self.writer.commit(name, manifest, caller=self.caller, message=message,
                                  author=author, tags=tags, created_at=created_at)

    def record_event(self, action: str, version: VersionInfo, detail: dict[str, Any]) -> None:
        """An audit entry for what was done with ``version`` outside a commit (a pull)."""
        self.writer.record_event(action, version=version, caller=self.caller, detail=detail)


# -- finding remotes ---------------------------------------------------------------------------


def scheme_of(url: str) -> str:
    """The registered scheme a URL belongs to: ``postgresql+psycopg://`` → ``postgresql``;
    a plain path → ``sqlite``."""
    if "://" not in url:
        return "sqlite"
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def canonical_url(url: str) -> str:
    """A path becomes absolute (a remote stored by name must not depend on the cwd)."""
    return url if "://" in url else str(Path(url).expanduser().resolve())


def is_path_like(text: str) -> bool:
    """Whether a ``--to``/``--from`` value that is not a remote name should be read as a path."""
    return "/" in text or os.sep in text or text.endswith(".db") or Path(text).exists()


def remote_class(url: str) -> type[Remote]:
    """The class registered for ``url``'s scheme (:class:`UnknownRemoteError` if none)."""
    from adapterhub.contracts.plugins import plugin_manager

    return plugin_manager().lookup("remote", scheme_of(url))


def open_remote(url: str) -> Remote:
    """Connect to the registry at ``url`` with the remote class its scheme selects."""
    return remote_class(url)(canonical_url(url))


# -- moving versions ---------------------------------------------------------------------------


def send_version(dst: Remote, name: str, manifest: Manifest,
                 read_blobs: Callable[[list[str]], Iterator[tuple[str, Buffer]]], *,
                 message: str | None = None, author: str | None = None,
                 tags: Sequence[str] = (), created_at: datetime | None = None,
                 show_progress: bool = True, what: str | None = None,
                 stored_from: Remote | None = None, files: Sequence[KeptFile] = ()
                 ) -> CommitResult:
    """Upload the blobs ``dst`` lacks (read through ``read_blobs``, or as stored from
    ``stored_from`` where both ends can), then commit the manifest (with ``files`` kept byte
    for byte: a database registry only).

    If a blob disappears between negotiation and commit (a gc on the remote that ran with no
    grace period), the missing blobs are sent again and the commit retried.
    """
    tensors_of: dict[str, list[str]] = {}
    for tensor, entry in sorted(manifest.tensors.items()):
        tensors_of.setdefault(entry.digest, []).append(tensor)
    entries = {d: manifest.tensors[names[0]] for d, names in tensors_of.items()}
    what = what or f"push {name}"
    for attempt in range(3):
        missing = sorted(dst.missing_blobs(tensors_of))
        total = sum(entries[d].nbytes for d in missing)
        with progress(total=total, unit="B", desc=what,
                      disable=not show_progress or total < PROGRESS_MIN_BYTES) as bar:
            stored: list[str] = []
            if stored_from is not None and stored_from.stored_reads and dst.stored_writes:
                limit = stored_from.stored_max_bytes
                stored = [d for d in missing if limit is None or entries[d].nbytes <= limit]
            raw = [d for d in missing if d not in set(stored)]
            try:
                if stored:
                    dst.upload_stored(stored_from.download_stored(stored), progress=bar.update)
                if raw:
                    dst.upload_blobs(((d, data, entries[d].itemsize)
                                      for d, data in read_blobs(raw)), progress=bar.update)
            except (IntegrityError, AdapterNotFoundError) as exc:
                digest = next((d for d in missing if d in exc.message), None)
                tensor = f" tensor {tensors_of[digest][0]!r}:" if digest else ""
                raise IntegrityError(f"{what}:{tensor} {exc.message}",
                                     hint=IntegrityError.default_hint) from None
        try:
            extra = {"files": files} if files else {}
            return dst.commit(name, manifest, message=message, author=author, tags=tags,
                              created_at=created_at, **extra)
        except MissingBlobsError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def ancestors_to_copy(manifest: Manifest, dst: Remote, src: Remote | None,
                      what: str) -> list[VersionInfo]:
    """The parent versions (transitively) ``dst`` lacks, oldest first, found in ``src``."""
    order: list[VersionInfo] = []
    seen: set[str] = set()

    def visit(current: Manifest, label: str) -> None:
        for parent in current.parents:
            if parent in seen:
                continue
            seen.add(parent)
            if dst.find(parent) is not None:
                continue
            found = src.find(parent) if src is not None else None
            if found is None:
                where = f" or {src.url}" if src is not None else ""
                raise IntegrityError(f"{label} names parent version {parent}, which neither "
                                     f"{dst.url}{where} holds",
                                     hint="Push or pull the parent version first")
            visit(found.manifest, found.ref)
            order.append(found)

    visit(manifest, what)
    return order


def copy_version(src: Remote, dst: Remote, version: VersionInfo, *, name: str | None = None,
                 tags: Sequence[str] = (), show_progress: bool = True,
                 verb: str = "copy") -> CommitResult:
    """Copy ``version`` (with its manifest) and the ancestors ``dst`` lacks from ``src``.

    ``verb`` (``push``/``pull``) starts progress bars and error messages.
    """

    def read(digests: list[str]) -> Iterator[tuple[str, Buffer]]:
        return src.download_blobs(digests)

    for parent in ancestors_to_copy(version.manifest, dst, src, version.ref):
        send_version(dst, parent.name, parent.manifest, read, message=parent.message,
                     author=parent.author, created_at=parent.created_at,
                     show_progress=show_progress, what=f"{verb} {parent.ref} from {src.url}",
                     stored_from=src)
    return send_version(dst, name or version.name, version.manifest, read,
                        message=version.message, author=version.author, tags=tags,
                        created_at=version.created_at, show_progress=show_progress,
                        what=f"{verb} {version.ref} from {src.url}", stored_from=src)
