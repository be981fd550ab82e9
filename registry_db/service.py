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
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from registry_db import reads
from registry_db.access import Caller
from registry_db.blobs import BlobService
from registry_db.blobstore import BlobStore, recorded_objects
from registry_db.clock import utcnow
from registry_db.database import Database, batched
from registry_db.digests import canonical_json, is_digest
from registry_db.errors import (AdapterNotFoundError, ConflictError, IntegrityError,
                                InvalidRequestError, LimitExceededError, MissingBlobsError,
                                MissingParentsError, PermissionDeniedError, RefError)
from registry_db.files import KeptFile, check_parts, files_of, insert_files
from registry_db.manifest import MAX_MANIFEST_BYTES, Manifest
from registry_db.models import (Blob, Event, Lineage, Repository, Setting, Tag, Version,
                                VersionLabel, VersionTensor)
from registry_db.objectstore import Location, ObjectStore
from registry_db.records import (CommitResult, EventInfo, GcReport, MigrateReport, Usage,
                                 VerifyReport, VersionInfo)
from registry_db.refs import Ref, parse_ref, validate_key, validate_name, validate_tag
from registry_db.remotes import RemoteStore
from registry_db.rows import session_rows, version_infos
from registry_db.tokens import TokenStore
from registry_db.xet import XetStore

MAX_LABEL_VALUE = 1024
MAX_AUTHOR = 256
MAX_MESSAGE = 64 * 1024


def label_rows(labels: dict[str, Any]) -> dict[str, str]:
    """Labels as indexed strings (non-string values as canonical JSON); validates keys."""
    out = {}
    for key, value in labels.items():
        validate_key(key, "label key")
        text = value if isinstance(value, str) else canonical_json(value).decode()
        if len(text) > MAX_LABEL_VALUE:
            raise LimitExceededError(f"label {key!r} is {len(text)} characters; the limit is "
                                     f"{MAX_LABEL_VALUE}", hint="Put large data in metrics")
        out[key] = text
    return out


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
        if not is_digest(digest):
            raise InvalidRequestError(f"invalid version digest {str(digest)[:80]!r}")
        with self.db.read() as s:
            version = self._find(s, digest, caller)
            return None if version is None else version_infos(s, [version],
                                                              with_manifest=True)[0]

    @staticmethod
    def _find(s: Session, digest: str, caller: Caller) -> Version | None:
        rows = s.execute(select(Version, Repository.name)
                         .join(Repository, Repository.id == Version.repository_id)
                         .where(Version.digest == digest)
                         .order_by(Version.deleted_at.is_not(None), Version.id)).all()
        return next((version for version, name in rows if caller.can("read", name)), None)

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
            self._repository_for_update(s, name, utcnow())
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
        validate_name(name)
        caller.require("write", name)
        for tag in tags:
            validate_tag(tag)
        for key, value, limit in (("author", author, MAX_AUTHOR),
                                  ("message", message, MAX_MESSAGE)):
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise InvalidRequestError(f"{key} must be a string of at most {limit} "
                                          f"characters")
        if created_at is not None and created_at.tzinfo is None:
            raise InvalidRequestError("created_at needs a time zone")
        manifest.validate()
        canonical = manifest.canonical()
        if len(canonical) > MAX_MANIFEST_BYTES:
            raise LimitExceededError(f"the manifest is {len(canonical)} bytes; the limit is "
                                     f"{MAX_MANIFEST_BYTES}")
        labels = label_rows(manifest.labels)
        digest = manifest.digest
        now = utcnow()
        with self.db.write(gc_lock="shared") as s:
            repo = self._repository_for_update(s, name, now)
            version = s.scalar(select(Version).where(Version.repository_id == repo.id,
                                                     Version.digest == digest))
            created = version is None
            if version is None:
                self._check_references(s, manifest, caller)
                parts = {d for f in files for d in f.parts or ()}
                check_parts(s, files, self.blobs.visible_in(s, parts, caller))
                version = self._insert_version(s, repo, manifest, labels, now,
                                               message=message, author=author,
                                               created_at=created_at or now)
                insert_files(s, version.id, files)
                self._event(s, "push", name, version, caller,
                            {"message": message, "author": author})
            elif version.deleted_at is not None:
                if not caller.can("admin", name):
                    raise PermissionDeniedError(
                        f"{name}@{version.number} was deleted; restoring it needs admin "
                        f"access to {name}", hint="Ask an admin of the repository")
                version.deleted_at = None
                self._event(s, "restore", name, version, caller, {})
            for tag in tags:
                self._set_tag(s, repo, tag, version, now, caller)
            info = version_infos(s, [version])[0]
            return CommitResult(replace(info, manifest=manifest), created)

    def _check_references(self, s: Session, manifest: Manifest, caller: Caller) -> None:
        by_digest: dict[str, list[str]] = defaultdict(list)
        for tensor, entry in sorted(manifest.tensors.items()):
            by_digest[entry.digest].append(tensor)
        usable = self.blobs.visible_in(s, by_digest, caller)
        missing = sorted(set(by_digest) - usable)
        if missing:
            first = missing[0]
            raise MissingBlobsError(
                f"the manifest names {len(missing)} blob(s) this registry does not hold, e.g. "
                f"{first} (tensor {by_digest[first][0]!r})", digests=missing,
                hint="Send the blobs before committing the manifest")
        sizes: dict[str, int] = {}
        for batch in batched(sorted(by_digest)):
            sizes.update(s.execute(select(Blob.digest, Blob.size).where(
                Blob.digest.in_(batch), Blob.complete)).all())
        for tensor, entry in sorted(manifest.tensors.items()):
            if sizes.get(entry.digest) != entry.nbytes:
                raise IntegrityError(
                    f"tensor {tensor!r} is {entry.dtype} {list(entry.shape)}, "
                    f"{entry.nbytes} bytes, but blob {entry.digest} holds "
                    f"{sizes.get(entry.digest)} bytes", hint="The manifest does not describe "
                                                            "its tensors; rebuild it")
        hidden = [p for p in dict.fromkeys(manifest.parents)
                  if self._find(s, p, caller) is None]
        if hidden:
            raise MissingParentsError(f"parent version(s) {hidden} are not in this registry")

    def _insert_version(self, s: Session, repo: Repository, manifest: Manifest,
                        labels: dict[str, str], now: datetime, *, message: str | None,
                        author: str | None, created_at: datetime) -> Version:
        base = manifest.base_model
        version = Version(repository_id=repo.id, number=repo.next_number, digest=manifest.digest,
                          manifest=manifest.canonical().decode("ascii"),
                          method=manifest.method_name, base_name=base.get("name"),
                          base_fingerprint=base.get("fingerprint"),
                          size=manifest.nbytes, created_at=created_at, author=author,
                          message=message)
        repo.next_number += 1
        s.add(version)
        s.flush()
        rows = {  # bulk inserts: a version may have thousands of tensors
            VersionTensor: [{"version_id": version.id, "name": tensor, "blob_digest": e.digest}
                            for tensor, e in manifest.tensors.items()],
            Lineage: [{"version_id": version.id, "position": i, "parent_digest": parent}
                      for i, parent in enumerate(manifest.parents)],
            VersionLabel: [{"version_id": version.id, "key": key, "value": value}
                           for key, value in labels.items()]}
        for model, values in rows.items():
            if values:
                s.execute(insert(model), values)
        return version

    def tag(self, ref: str | Ref, tag: str, *, caller: Caller) -> VersionInfo:
        """Point ``tag`` at the version ``ref`` names (creating or moving it)."""
        validate_tag(tag)
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        caller.require("write", ref.name)
        with self.db.write() as s:
            version = self._resolve(s, ref)
            repo = s.scalar(select(Repository).where(Repository.id == version.repository_id)
                            .with_for_update())  # tag writers of one repository queue up
            self._set_tag(s, repo, tag, version, utcnow(), caller)
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
        return "db" if objects is None else str(objects.location)

    def choose_blob_backend(self, where: str, *, caller: Caller) -> str:
        """Record where this registry keeps its blobs, once: ``db`` or ``s3://BUCKET/PREFIX``
        (the bucket must be reachable). Choosing again the same is a no-op; changing it once
        blobs are stored is refused. ``admin`` on the whole registry."""
        caller.require_all("admin")
        objects = None if where == "db" else ObjectStore(Location.parse(where))
        chosen = "db" if objects is None else str(objects.location)
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
            s.add(Event(at=utcnow(), action=action, repository=version and version.name,
                        number=version and version.number, digest=version and version.digest,
                        actor=caller.actor, token_id=caller.token_id,
                        detail=json.dumps(detail or {}, sort_keys=True)))

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _repository(s: Session, name: str) -> Repository:
        return s.get(Repository, reads.repository_id(session_rows(s), name))

    @staticmethod
    def _repository_for_update(s: Session, name: str, now: datetime) -> Repository:
        """The repository row, created if new, locked until commit (numbers come from it)."""
        query = select(Repository).where(Repository.name == name).with_for_update()
        repo = s.scalar(query)
        if repo is None:
            try:
                with s.begin_nested():
                    s.add(Repository(name=name, created_at=now))
            except SAIntegrityError:  # PostgreSQL: created concurrently; use theirs
                pass
            repo = s.scalar(query)
        return repo

    @staticmethod
    def _resolve(s: Session, ref: Ref) -> Version:
        return s.get(Version, reads.resolve_id(session_rows(s), ref))

    def _set_tag(self, s: Session, repo: Repository, tag: str, version: Version,
                 now: datetime, caller: Caller) -> None:
        row = s.get(Tag, (repo.id, tag))
        previous = None
        if row is None:
            s.add(Tag(repository_id=repo.id, name=tag, version_id=version.id, updated_at=now))
        else:
            previous = s.get(Version, row.version_id).number
            row.version_id, row.updated_at = version.id, now
        s.flush()
        self._event(s, "tag", repo.name, version, caller, {"tag": tag, "previous": previous})

    @staticmethod
    def _event(s: Session, action: str, name: str, version: Version, caller: Caller,
               detail: dict[str, Any]) -> None:
        s.add(Event(at=utcnow(), action=action, repository=name, number=version.number,
                    digest=version.digest, actor=caller.actor, token_id=caller.token_id,
                    detail=json.dumps(detail, sort_keys=True)))
