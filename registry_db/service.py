"""The registry service: the store boundary every door goes through.

Versions, tags, lineage, blobs (:mod:`registry_db.blobs`) and the audit log over one
database. Every call carries the :class:`~registry_db.access.Caller` and is authorized here,
once: the Python API and the CLI pass the local user, the hub passes the request's token.
It owns every session and transaction and returns frozen dataclasses
(:mod:`registry_db.records`). A push is ``blobs.write_many`` (or an upload) for each blob the
caller may not use yet, then one :meth:`RegistryService.commit` transaction that checks the
manifest against the stored blobs, allocates the version number and writes the version, its
tensor references, lineage, labels and tag moves together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from registry_db import reads, writes
from registry_db.access import Caller
from registry_db.blobs import BlobService
from registry_db.blobstore import BlobStore, recorded_objects
from registry_db.clock import utcnow
from registry_db.database import Database
from registry_db.errors import AdapterNotFoundError, ConflictError, RefError
from registry_db.files import KeptFile, files_of
from registry_db.manifest import Manifest
from registry_db.models import Blob, Event, Lineage, Repository, Setting, Tag, Version
from registry_db.objectstore import Location, ObjectStore
from registry_db.records import (CommitResult, EventInfo, GcReport, MigrateReport, Usage,
                                 VerifyReport, VersionInfo)
from registry_db.refs import Ref, parse_ref, validate_name, validate_tag
from registry_db.remotes import RemoteStore
from registry_db.rows import session_rows, version_infos
from registry_db.tokens import TokenStore
from registry_db.xet import XetStore


class RegistryService:
    """One registry database. ``url`` is any SQLAlchemy URL or a path (a SQLite file).

    Opening runs the migrations if the schema is behind. Safe to share between threads; each
    process opens its own.
    """

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.db = Database(url)
        self.blobs = BlobService(self.db, BlobStore(self.db, recorded_objects(self.db)))
        self.tokens = TokenStore(self.db)
        self.remotes = RemoteStore(self.db)
        self.xet = XetStore(self.db, self.blobs.store)
        self.url = self.db.url

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RegistryService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading versions -------------------------------------------------------------------

    def resolve(self, ref: str | Ref, *, caller: Caller) -> VersionInfo:
        """The live version a ref names, with its manifest."""
        with self.db.rows() as rows:
            return reads.resolve(rows, ref, caller=caller)

    def kept_files(self, ref: str | Ref, *, caller: Caller) -> list[KeptFile]:
        """The files a version keeps byte for byte (see :mod:`registry_db.files`); empty
        when all of its files are rendered from the manifest."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        caller.require("read", ref.name)
        with self.db.read() as s:
            return files_of(s, self._resolve(s, ref).id)

    def find(self, digest: str, *, caller: Caller) -> VersionInfo | None:
        """A version with this manifest digest in a repository the caller may read (live ones
        first), or None. Soft-deleted versions count: they stay stored while live versions
        descend from them."""
        with self.db.rows() as rows:
            return reads.find(rows, digest, caller=caller)

    def list_versions(self, prefix: str | None = None, *, caller: Caller,
                      method: str | None = None, base: str | None = None,
                      labels: dict[str, str] | None = None,
                      include_deleted: bool = False) -> list[VersionInfo]:
        """Versions the caller may read whose repository name starts with ``prefix``, newest
        first per repository. ``base`` matches the base model's fingerprint (a ``sha256:``
        digest) or its name; ``labels`` must all match."""
        with self.db.rows() as rows:
            return reads.list_versions(rows, prefix, caller=caller, method=method, base=base,
                                       labels=labels, include_deleted=include_deleted)

    def log(self, name: str, *, caller: Caller) -> list[VersionInfo]:
        """Every version of a repository, newest first, soft-deleted ones included (flagged)."""
        with self.db.rows() as rows:
            return reads.log(rows, name, caller=caller)

    def repositories(self, prefix: str | None = None, *, caller: Caller) -> list[str]:
        """Names of the repositories the caller may read (with or without live versions),
        sorted."""
        with self.db.rows() as rows:
            return reads.repositories(rows, prefix, caller=caller)

    def children(self, digest: str, *, caller: Caller) -> list[VersionInfo]:
        """Live versions the caller may read that name ``digest`` among their parents."""
        with self.db.read() as s:
            rows = s.execute(
                select(Version, Repository.name)
                .join(Lineage, Lineage.version_id == Version.id)
                .join(Repository, Repository.id == Version.repository_id)
                .where(Lineage.parent_digest == digest, Version.deleted_at.is_(None))
                .order_by(Version.id)).all()
            return version_infos(s, [v for v, name in rows if caller.can("read", name)])

    # -- writing versions -------------------------------------------------------------------

    def create_repository(self, name: str, *, caller: Caller) -> bool:
        """Create an empty repository; False if it exists already."""
        validate_name(name)
        caller.require("write", name)
        with self.db.write() as s:
            if s.scalar(select(Repository.id).where(Repository.name == name)) is not None:
                return False
            writes.lock_repository(self.db.statements(s), name, utcnow())
            return True

    def commit(self, name: str, manifest: Manifest, *, caller: Caller,
               message: str | None = None, author: str | None = None,
               tags: Sequence[str] = (), created_at: datetime | None = None,
               files: Sequence[KeptFile] = ()) -> CommitResult:
        """Record ``manifest`` as the next version of ``name`` and move ``tags`` to it, in one
        transaction. ``files``: the version's files kept byte for byte (see
        :mod:`registry_db.files`; their blobs must be ones the caller may use).

        The manifest is checked first: every blob must be one the caller may use (see
        :mod:`registry_db.blobs`) whose stored size is exactly what its tensor's dtype and
        shape need, and every parent a version the caller may read. An identical manifest
        already in the repository is returned as it is and only the tags move; one that was
        soft-deleted comes back only for a caller with ``admin``. ``author`` and
        ``created_at`` are kept as the version's metadata (a version copied from another
        registry keeps them); the audit log names the caller.
        """
        request = writes.check_commit(name, manifest, caller=caller, tags=tags,
                                      message=message, author=author, created_at=created_at,
                                      files=files)
        with self.db.write(gc_lock="shared") as s:
            return writes.commit(self.db.statements(s), request, caller=caller,
                                 visible=lambda digests: self.blobs.visible_in(s, digests,
                                                                               caller))

    def tag(self, ref: str | Ref, tag: str, *, caller: Caller) -> VersionInfo:
        """Point ``tag`` at the version ``ref`` names (creating or moving it)."""
        validate_tag(tag)
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        caller.require("write", ref.name)
        with self.db.write() as s:
            version = self._resolve(s, ref)
            repo = s.scalar(select(Repository).where(Repository.id == version.repository_id)
                            .with_for_update())  # tag writers of one repository queue up
            writes.set_tag(self.db.statements(s), repo.id, repo.name, tag,
                           (version.id, version.number, version.digest), caller, utcnow())
            return version_infos(s, [version])[0]

    def untag(self, name: str, tag: str, *, caller: Caller) -> VersionInfo:
        """Delete a tag; returns the version it pointed at."""
        validate_name(name)
        caller.require("write", name)
        with self.db.write() as s:
            repo = self._repository(s, name)
            row = s.get(Tag, (repo.id, tag)) if isinstance(tag, str) else None
            if row is None:
                raise AdapterNotFoundError(f"{name} has no tag {str(tag)[:64]!r}")
            version = s.get(Version, row.version_id)
            s.delete(row)
            self._event(s, "untag", name, version, caller, {"tag": tag})
            return version_infos(s, [version])[0]

    def remove(self, ref: str | Ref, *, caller: Caller) -> VersionInfo:
        """Soft-delete a version (its tags go with it; ``admin``); gc reclaims its bytes
        later."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        caller.require("admin", ref.name)
        if ref.is_latest:
            raise RefError(f"{ref} names no particular version",
                           hint=f"Say which one: {ref.name}@N or {ref.name}:TAG")
        with self.db.write() as s:
            version = self._resolve(s, ref)
            name = s.get(Repository, version.repository_id).name
            tags = list(s.scalars(select(Tag.name).where(Tag.version_id == version.id)))
            s.execute(delete(Tag).where(Tag.version_id == version.id))
            version.deleted_at = utcnow()
            self._event(s, "rm", name, version, caller, {"tags": tags})
            return version_infos(s, [version])[0]

    # -- maintenance ------------------------------------------------------------------------

    def gc(self, *, caller: Caller, keep_last: int | None = None, keep_tagged: bool = False,
           per_label: str | None = None, prefix: str | None = None, dry_run: bool = False,
           grace: timedelta = timedelta(hours=1)) -> GcReport:
        """Apply a retention policy, then mark and sweep (see :func:`registry_db.gc.collect`);
        ``admin`` on the whole registry."""
        from registry_db.gc import collect

        caller.require_all("admin")
        report = collect(self, keep_last=keep_last, keep_tagged=keep_tagged,
                         per_label=per_label, prefix=prefix, dry_run=dry_run, grace=grace,
                         caller=caller)
        if not dry_run:
            self.db.vacuum()
        return report

    def verify(self, *, caller: Caller, deep: bool = False) -> VerifyReport:
        """Re-hash every blob and check every reference and size (see
        :func:`registry_db.verify.check`; ``deep`` re-hashes object-store blobs too);
        ``admin`` on the whole registry."""
        from registry_db.verify import check

        caller.require_all("admin")
        return check(self, deep=deep)

    @property
    def blob_backend(self) -> str:
        """``db`` or the ``s3://BUCKET/PREFIX`` the registry keeps its blobs in."""
        objects = self.blobs.store.objects
        return writes.DB_BACKEND if objects is None else str(objects.location)

    def choose_blob_backend(self, where: str, *, caller: Caller) -> str:
        """Record where this registry keeps its blobs, once: ``db`` or ``s3://BUCKET/PREFIX``
        (the bucket must be reachable). Choosing again the same is a no-op; changing it once
        blobs are stored is refused. ``admin`` on the whole registry."""
        caller.require_all("admin")
        objects = None if where == writes.DB_BACKEND else ObjectStore(Location.parse(where))
        chosen = writes.DB_BACKEND if objects is None else str(objects.location)
        if chosen == self.blob_backend:
            return chosen
        if objects is not None:
            objects.check_bucket()
        with self.db.write() as s:
            if s.scalar(select(func.count()).select_from(Blob)):
                raise ConflictError(f"this registry already stores blobs in "
                                    f"{self.blob_backend}; its blob backend is chosen once",
                                    hint="Create a new registry for the other backend")
            s.merge(Setting(key="blob_backend", value=chosen))
            s.add(Event(at=utcnow(), action="init", actor=caller.actor,
                        token_id=caller.token_id, detail=json.dumps({"blobs": chosen})))
        self.blobs.store.objects = objects
        return chosen

    def migrate_blobs(self, to: str, *, caller: Caller,
                      progress: Callable[[int], None] | None = None) -> MigrateReport:
        """Move the blobs kept in the database into the object store ``to``, resumable,
        every byte verified (see :mod:`registry_db.blobmove`); ``admin`` on the registry."""
        from registry_db.blobmove import migrate

        return migrate(self, to, caller=caller, progress=progress)

    def ping(self) -> None:
        """One round trip to the database (raises :class:`RegistryError` if it is down)."""
        with self.db.read() as s:
            s.execute(select(1))

    def usage(self) -> Usage:
        """How much the registry holds, in aggregate (counts and bytes, no names)."""
        with self.db.read() as s:
            live = Version.deleted_at.is_(None)
            return Usage(
                repositories=s.scalar(select(func.count()).select_from(Repository)) or 0,
                versions=s.scalar(select(func.count()).select_from(Version).where(live)) or 0,
                deleted_versions=s.scalar(select(func.count()).select_from(Version)
                                          .where(~live)) or 0,
                blobs=s.scalar(select(func.count()).select_from(Blob).where(Blob.complete)) or 0,
                raw_bytes=s.scalar(select(func.coalesce(func.sum(Blob.size), 0))
                                   .where(Blob.complete)) or 0,
                stored_bytes=s.scalar(select(func.coalesce(func.sum(Blob.stored_size), 0))
                                      .where(Blob.complete)) or 0,
                partial_uploads=s.scalar(select(func.count()).select_from(Blob)
                                         .where(Blob.complete.is_(False))) or 0)

    def events(self, *, caller: Caller, repository: str | None = None,
               limit: int = 100) -> list[EventInfo]:
        """The audit log, newest first (``admin`` on the repository, or on the whole registry
        for all of it)."""
        if repository is None:
            caller.require_all("admin")
        else:
            caller.require("admin", validate_name(repository))
        query = select(Event).order_by(Event.id.desc()).limit(max(0, min(limit, 10_000)))
        if repository:
            query = query.where(Event.repository == repository)
        with self.db.read() as s:
            return [EventInfo(e.at, e.action, e.repository, e.number, e.digest, e.actor,
                              json.loads(e.detail) if e.detail else {}, e.token_id)
                    for e in s.scalars(query)]

    def record_event(self, action: str, *, caller: Caller, version: VersionInfo | None = None,
                     detail: dict[str, Any] | None = None) -> None:
        """Add an audit entry for something done outside a commit (a pull, a promotion)."""
        with self.db.write() as s:
            writes.event(self.db.statements(s), action, version and version.name,
                         version and version.number, version and version.digest, caller,
                         detail or {}, utcnow())

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _repository(s: Session, name: str) -> Repository:
        return s.get(Repository, reads.repository_id(session_rows(s), name))

    @staticmethod
    def _resolve(s: Session, ref: Ref) -> Version:
        return s.get(Version, reads.resolve_id(session_rows(s), ref))

    def _event(self, s: Session, action: str, name: str, version: Version, caller: Caller,
               detail: dict[str, Any]) -> None:
        s.flush()  # (the version's changes go first)
        writes.event(self.db.statements(s), action, name, version.number, version.digest,
                     caller, detail, utcnow())
