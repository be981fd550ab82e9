"""The registry service: versions, tags, lineage, remotes and the audit log over one database.

It owns every session and transaction and returns frozen dataclasses
(:mod:`registry_db.records`). A push is ``blobs.write`` (or an upload) for each missing blob,
then one :meth:`RegistryService.commit` transaction that allocates the version number and
writes the version, its tensor references, lineage, labels and tag moves together.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry_db.blobstore import BlobStore
from registry_db.database import Database, batched, utcnow
from registry_db.digests import canonical_json, is_digest
from registry_db.errors import (ConflictError, InvalidNameError, MissingBlobsError,
                                MissingParentsError, NotFoundError)
from registry_db.manifest import Manifest
from registry_db.models import (Blob, Event, Lineage, RemoteRow, Repository, Tag, Version,
                                VersionLabel, VersionTensor)
from registry_db.records import (CommitResult, EventInfo, GcReport, RemoteInfo, Usage,
                                 VerifyReport, VersionInfo)
from registry_db.refs import Ref, parse_ref, validate_key, validate_name, validate_tag
from registry_db.tokens import TokenStore

MAX_LABEL_VALUE = 1024


def label_rows(labels: dict[str, Any]) -> dict[str, str]:
    """Labels as indexed strings (non-string values as canonical JSON); validates keys."""
    out = {}
    for key, value in labels.items():
        validate_key(key, "label key")
        text = value if isinstance(value, str) else canonical_json(value).decode()
        if len(text) > MAX_LABEL_VALUE:
            raise InvalidNameError(f"label {key!r} is {len(text)} characters; the limit is "
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
        self.blobs = BlobStore(self.db)
        self.tokens = TokenStore(self.db)
        self.url = self.db.url

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RegistryService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading versions -------------------------------------------------------------------

    def resolve(self, ref: str | Ref) -> VersionInfo:
        """The live version a ref names, with its manifest."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with self.db.read() as s:
            version = self._resolve(s, ref)
            return self._infos(s, [version], with_manifest=True)[0]

    def find(self, digest: str) -> VersionInfo | None:
        """A version with this manifest digest in any repository (live ones first), or None.
        Soft-deleted versions count: they stay stored while live versions descend from them."""
        if not is_digest(digest):
            raise InvalidNameError(f"invalid version digest {digest[:80]!r}")
        with self.db.read() as s:
            version = s.scalar(select(Version).where(Version.digest == digest)
                               .order_by(Version.deleted_at.is_not(None), Version.id).limit(1))
            return None if version is None else self._infos(s, [version], with_manifest=True)[0]

    def list_versions(self, prefix: str | None = None, *, method: str | None = None,
                      base: str | None = None, labels: dict[str, str] | None = None,
                      include_deleted: bool = False) -> list[VersionInfo]:
        """Versions whose repository name starts with ``prefix``, newest first per repository.

        ``base`` matches the base model's fingerprint (a ``sha256:`` digest) or its name;
        ``labels`` must all match.
        """
        query = select(Version).join(Repository, Version.repository_id == Repository.id)
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(Repository.name.like(escaped + "%", escape="\\"))
        if method:
            query = query.where(Version.method == method)
        if base:
            query = query.where(Version.base_fingerprint == base if base.startswith("sha256:")
                                else Version.base_name == base)
        for key, value in (labels or {}).items():
            query = query.where(Version.id.in_(select(VersionLabel.version_id).where(
                VersionLabel.key == key, VersionLabel.value == value)))
        if not include_deleted:
            query = query.where(Version.deleted_at.is_(None))
        query = query.order_by(Repository.name, Version.number.desc())
        with self.db.read() as s:
            return self._infos(s, list(s.scalars(query)))

    def log(self, name: str) -> list[VersionInfo]:
        """Every version of a repository, newest first, soft-deleted ones included (flagged)."""
        validate_name(name)
        with self.db.read() as s:
            repo = self._repository(s, name)
            versions = s.scalars(select(Version).where(Version.repository_id == repo.id)
                                 .order_by(Version.number.desc()))
            return self._infos(s, list(versions))

    def repositories(self, prefix: str | None = None) -> list[str]:
        """Names of repositories (with or without live versions), sorted."""
        query = select(Repository.name).order_by(Repository.name)
        if prefix:
            query = query.where(Repository.name.startswith(prefix, autoescape=True))
        with self.db.read() as s:
            return list(s.scalars(query))

    def children(self, digest: str) -> list[VersionInfo]:
        """Live versions that name ``digest`` among their parents (lineage downwards)."""
        with self.db.read() as s:
            versions = s.scalars(
                select(Version).join(Lineage, Lineage.version_id == Version.id)
                .where(Lineage.parent_digest == digest, Version.deleted_at.is_(None))
                .order_by(Version.id))
            return self._infos(s, list(versions))

    def references_blob(self, name: str, digest: str) -> bool:
        """Whether a version of repository ``name`` (live or deleted) uses blob ``digest``
        (so a reader of ``name`` may fetch it)."""
        validate_name(name)
        with self.db.read() as s:
            return s.scalar(
                select(VersionTensor.version_id)
                .join(Version, Version.id == VersionTensor.version_id)
                .join(Repository, Repository.id == Version.repository_id)
                .where(Repository.name == name, VersionTensor.blob_digest == digest)
                .limit(1)) is not None

    # -- writing versions -------------------------------------------------------------------

    def create_repository(self, name: str) -> bool:
        """Create an empty repository; False if it exists already."""
        validate_name(name)
        with self.db.write() as s:
            if s.scalar(select(Repository.id).where(Repository.name == name)) is not None:
                return False
            self._repository_for_update(s, name, utcnow())
            return True

    def commit(self, name: str, manifest: Manifest, *, message: str | None = None,
               author: str | None = None, tags: Sequence[str] = (),
               created_at: datetime | None = None) -> CommitResult:
        """Record ``manifest`` as the next version of ``name`` and move ``tags`` to it, in one
        transaction. Every blob must already be stored and every parent must exist here.

        An identical manifest already in the repository is returned as it is (restored if it
        was soft-deleted) and only the tags move. ``created_at`` keeps the original time when
        a version is copied from another registry.
        """
        validate_name(name)
        for tag in tags:
            validate_tag(tag)
        labels = label_rows(manifest.labels)
        digest = manifest.digest
        now = utcnow()
        with self.db.write(gc_lock="shared") as s:
            repo = self._repository_for_update(s, name, now)
            version = s.scalar(select(Version).where(Version.repository_id == repo.id,
                                                     Version.digest == digest))
            created = version is None
            if version is None:
                self._check_references(s, manifest)
                version = self._insert_version(s, repo, manifest, labels, now,
                                               message=message, author=author,
                                               created_at=created_at or now)
                self._event(s, "push", name, version, author, {"message": message})
            elif version.deleted_at is not None:
                version.deleted_at = None
                self._event(s, "restore", name, version, author, {})
            for tag in tags:
                self._set_tag(s, repo, tag, version, now, author)
            info = self._infos(s, [version])[0]
            return CommitResult(replace(info, manifest=manifest), created)

    def _check_references(self, s: Session, manifest: Manifest) -> None:
        by_digest: dict[str, list[str]] = defaultdict(list)
        for tensor, entry in sorted(manifest.tensors.items()):
            by_digest[entry.digest].append(tensor)
        present: set[str] = set()
        for batch in batched(sorted(by_digest)):
            present |= set(s.scalars(select(Blob.digest).where(Blob.digest.in_(batch),
                                                               Blob.complete)))
        missing = sorted(set(by_digest) - present)
        if missing:
            first = missing[0]
            raise MissingBlobsError(
                f"the manifest names {len(missing)} blob(s) this registry does not hold, e.g. "
                f"{first} (tensor {by_digest[first][0]!r})", digests=missing,
                hint="Send the blobs before committing the manifest")
        parents = set(manifest.parents)
        found: set[str] = set()
        for batch in batched(sorted(parents)):
            found |= set(s.scalars(select(Version.digest).where(Version.digest.in_(batch))))
        if parents - found:
            raise MissingParentsError(f"parent version(s) {sorted(parents - found)} are not in "
                                      f"this registry")

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

    def tag(self, ref: str | Ref, tag: str, *, actor: str | None = None) -> VersionInfo:
        """Point ``tag`` at the version ``ref`` names (creating or moving it)."""
        validate_tag(tag)
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with self.db.write() as s:
            version = self._resolve(s, ref)
            repo = s.scalar(select(Repository).where(Repository.id == version.repository_id)
                            .with_for_update())  # tag writers of one repository queue up
            self._set_tag(s, repo, tag, version, utcnow(), actor)
            return self._infos(s, [version])[0]

    def untag(self, name: str, tag: str, *, actor: str | None = None) -> VersionInfo:
        """Delete a tag; returns the version it pointed at."""
        validate_name(name)
        with self.db.write() as s:
            repo = self._repository(s, name)
            row = s.get(Tag, (repo.id, tag))
            if row is None:
                raise NotFoundError(f"{name} has no tag {tag!r}")
            version = s.get(Version, row.version_id)
            s.delete(row)
            self._event(s, "untag", name, version, actor, {"tag": tag})
            return self._infos(s, [version])[0]

    def remove(self, ref: str | Ref, *, actor: str | None = None) -> VersionInfo:
        """Soft-delete a version (its tags go with it); gc reclaims its bytes later."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.is_latest:
            raise InvalidNameError(f"{ref} names no particular version",
                                   hint=f"Say which one: {ref.name}@N or {ref.name}:TAG")
        with self.db.write() as s:
            version = self._resolve(s, ref)
            name = s.get(Repository, version.repository_id).name
            tags = list(s.scalars(select(Tag.name).where(Tag.version_id == version.id)))
            s.execute(delete(Tag).where(Tag.version_id == version.id))
            version.deleted_at = utcnow()
            self._event(s, "rm", name, version, actor, {"tags": tags})
            return self._infos(s, [version])[0]

    # -- maintenance ------------------------------------------------------------------------

    def gc(self, *, keep_last: int | None = None, keep_tagged: bool = False,
           per_label: str | None = None, prefix: str | None = None, dry_run: bool = False,
           grace: timedelta = timedelta(hours=1), actor: str | None = None) -> GcReport:
        """Apply a retention policy, then mark and sweep (see :func:`registry_db.gc.collect`)."""
        from registry_db.gc import collect

        report = collect(self, keep_last=keep_last, keep_tagged=keep_tagged,
                         per_label=per_label, prefix=prefix, dry_run=dry_run, grace=grace,
                         actor=actor)
        if not dry_run:
            self.db.vacuum()
        return report

    def verify(self) -> VerifyReport:
        """Re-hash every blob and check every reference (see :func:`registry_db.verify.check`)."""
        from registry_db.verify import check

        return check(self)

    def usage(self) -> Usage:
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

    def events(self, *, repository: str | None = None, limit: int = 100) -> list[EventInfo]:
        """The audit log, newest first."""
        query = select(Event).order_by(Event.id.desc()).limit(limit)
        if repository:
            query = query.where(Event.repository == repository)
        with self.db.read() as s:
            return [EventInfo(e.at, e.action, e.repository, e.number, e.digest, e.actor,
                              json.loads(e.detail) if e.detail else {})
                    for e in s.scalars(query)]

    def record_event(self, action: str, *, version: VersionInfo | None = None,
                     actor: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Add an audit entry for something done outside a commit (a pull, a promotion)."""
        with self.db.write() as s:
            s.add(Event(at=utcnow(), action=action, repository=version and version.name,
                        number=version and version.number, digest=version and version.digest,
                        actor=actor, detail=json.dumps(detail or {}, sort_keys=True)))

    # -- remotes ----------------------------------------------------------------------------

    def add_remote(self, name: str, url: str) -> RemoteInfo:
        validate_key(name, "remote name")
        with self.db.write() as s:
            if s.get(RemoteRow, name) is not None:
                raise ConflictError(f"remote {name!r} already exists",
                                    hint=f"Remove it first: adapterhub remote remove {name}")
            row = RemoteRow(name=name, url=url, created_at=utcnow())
            s.add(row)
            return RemoteInfo(row.name, row.url, row.created_at)

    def remotes(self) -> list[RemoteInfo]:
        with self.db.read() as s:
            return [RemoteInfo(r.name, r.url, r.created_at)
                    for r in s.scalars(select(RemoteRow).order_by(RemoteRow.name))]

    def remote(self, name: str) -> RemoteInfo | None:
        with self.db.read() as s:
            row = s.get(RemoteRow, name)
            return None if row is None else RemoteInfo(row.name, row.url, row.created_at)

    def remove_remote(self, name: str) -> RemoteInfo:
        with self.db.write() as s:
            row = s.get(RemoteRow, name)
            if row is None:
                raise NotFoundError(f"no remote named {name!r}",
                                    hint="See them with: adapterhub remote list")
            s.delete(row)
            return RemoteInfo(row.name, row.url, row.created_at)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _repository(s: Session, name: str) -> Repository:
        repo = s.scalar(select(Repository).where(Repository.name == name))
        if repo is None:
            raise NotFoundError(f"no repository {name!r} in this registry",
                                hint="See what is there with: adapterhub list")
        return repo

    @staticmethod
    def _repository_for_update(s: Session, name: str, now: datetime) -> Repository:
        """The repository row, created if new, locked until commit (numbers come from it)."""
        query = select(Repository).where(Repository.name == name).with_for_update()
        repo = s.scalar(query)
        if repo is None:
            try:
                with s.begin_nested():
                    s.add(Repository(name=name, created_at=now))
            except IntegrityError:  # PostgreSQL: created concurrently; use theirs
                pass
            repo = s.scalar(query)
        return repo

    def _resolve(self, s: Session, ref: Ref) -> Version:
        repo = self._repository(s, ref.name)
        live = Version.deleted_at.is_(None)
        base = select(Version).where(Version.repository_id == repo.id)
        if ref.number is not None:
            version = s.scalar(base.where(Version.number == ref.number))
            if version is None:
                raise NotFoundError(f"{ref} does not exist",
                                    hint=f"See its versions with: adapterhub log {ref.name}")
            if version.deleted_at is not None:
                raise NotFoundError(f"{ref} was deleted",
                                    hint="Push the same adapter again to restore it")
            return version
        if ref.tag is not None:
            tag = s.get(Tag, (repo.id, ref.tag))
            if tag is None:
                raise NotFoundError(f"{ref.name} has no tag {ref.tag!r}",
                                    hint=f"See its tags with: adapterhub log {ref.name}")
            return s.get(Version, tag.version_id)
        if ref.digest_prefix is not None:
            matches = list(s.scalars(base.where(live, Version.digest.startswith(
                ref.digest_prefix, autoescape=True)).limit(2)))
            if not matches:
                raise NotFoundError(f"{ref.name} has no version with digest {ref.digest_prefix}")
            if len(matches) > 1:
                raise ConflictError(f"digest prefix {ref.digest_prefix} matches several "
                                    f"versions of {ref.name}", hint="Give more hex digits")
            return matches[0]
        version = s.scalar(base.where(live).order_by(Version.number.desc()).limit(1))
        if version is None:
            raise NotFoundError(f"{ref.name} has no versions")
        return version

    def _set_tag(self, s: Session, repo: Repository, tag: str, version: Version,
                 now: datetime, actor: str | None) -> None:
        row = s.get(Tag, (repo.id, tag))
        previous = None
        if row is None:
            s.add(Tag(repository_id=repo.id, name=tag, version_id=version.id, updated_at=now))
        else:
            previous = s.get(Version, row.version_id).number
            row.version_id, row.updated_at = version.id, now
        s.flush()
        self._event(s, "tag", repo.name, version, actor, {"tag": tag, "previous": previous})

    @staticmethod
    def _event(s: Session, action: str, name: str, version: Version, actor: str | None,
               detail: dict[str, Any]) -> None:
        s.add(Event(at=utcnow(), action=action, repository=name, number=version.number,
                    digest=version.digest, actor=actor, detail=json.dumps(detail, sort_keys=True)))

    @staticmethod
    def _infos(s: Session, versions: list[Version], *, with_manifest: bool = False
               ) -> list[VersionInfo]:
        """Build records for ``versions`` with a fixed number of queries (not one per row)."""
        if not versions:
            return []
        s.flush()
        ids = [v.id for v in versions]
        tags: dict[int, list[str]] = defaultdict(list)
        labels: dict[int, dict[str, str]] = defaultdict(dict)
        parents: dict[int, list[tuple[int, str]]] = defaultdict(list)
        names: dict[int, str] = {}
        for batch in batched(ids):
            for version_id, tag in s.execute(select(Tag.version_id, Tag.name)
                                             .where(Tag.version_id.in_(batch))
                                             .order_by(Tag.name)):
                tags[version_id].append(tag)
            for version_id, key, value in s.execute(
                    select(VersionLabel.version_id, VersionLabel.key, VersionLabel.value)
                    .where(VersionLabel.version_id.in_(batch))):
                labels[version_id][key] = value
            for version_id, position, parent in s.execute(
                    select(Lineage.version_id, Lineage.position, Lineage.parent_digest)
                    .where(Lineage.version_id.in_(batch))):
                parents[version_id].append((position, parent))
        repo_ids = sorted({v.repository_id for v in versions})
        for batch in batched(repo_ids):
            names.update(s.execute(select(Repository.id, Repository.name)
                                   .where(Repository.id.in_(batch))).all())
        return [VersionInfo(
            name=names[v.repository_id], number=v.number, digest=v.digest, method=v.method,
            base_name=v.base_name, base_fingerprint=v.base_fingerprint, size=v.size,
            created_at=v.created_at, author=v.author, message=v.message,
            tags=tuple(tags[v.id]), labels=dict(sorted(labels[v.id].items())),
            parents=tuple(p for _, p in sorted(parents[v.id])),
            deleted=v.deleted_at is not None,
            manifest=Manifest.from_dict(json.loads(v.manifest)) if with_manifest else None)
            for v in versions]

