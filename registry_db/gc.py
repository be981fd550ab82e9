"""Garbage collection: retention, then mark and sweep, in one write transaction.

1. **Retention** (only when ``keep_last`` is given): in each repository (and, with
   ``per_label``, for each value of that label) the newest ``keep_last`` live versions stay;
   older ones are soft-deleted unless ``keep_tagged`` protects tagged ones.
2. **Mark**: every live version is a root; the parents it names are marked, transitively.
3. **Purge**: soft-deleted versions that nothing marked are removed for good.
4. **Sweep**: blobs no remaining version references, and abandoned partial uploads, are
   removed, but only if untouched for ``grace``: a push negotiates and uploads blobs before
   its commit references them, and renews ``touched_at`` of every blob it relies on, so a
   sweep never takes a blob from under a push in flight. (On PostgreSQL the sweep also takes
   an exclusive advisory lock that commits share.)
   Xet uploads (:mod:`registry_db.xet`) older than ``grace`` that no version uses are
   forgotten first, so their xorbs and shards are swept with the other blobs.
5. **Objects** (``s3`` backend), after that transaction commits: objects that no complete
   blob row names and that were last written before the grace window are deleted: those of
   the blobs just removed, and orphans a crashed push left (a push writes the object before
   its row, and writes it again, renewing its date, when it sends the bytes); then the
   staging uploads of presigned uploads that no open upload row names (a client or hub killed
   mid-upload), opened before the grace window, are aborted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from registry_db.clock import utcnow
from registry_db.reads import batched
from registry_db.errors import InvalidRequestError
from registry_db.files import forget_versions, part_blobs
from registry_db.models import (Blob, Chunk, Event, Lineage, Repository, Tag, Version, VersionLabel,
                                VersionTensor)
from registry_db.objectstore import CODEC as OBJECT_CODEC
from registry_db.records import GcReport
from registry_db.uploads import DIRECT
from registry_db.refs import validate_key
from registry_db.xet import XetStore

if TYPE_CHECKING:
    from registry_db.access import Caller
    from registry_db.objectstore import ObjectStore
    from registry_db.service import RegistryService


def collect(service: RegistryService, *, keep_last: int | None, keep_tagged: bool,
            per_label: str | None, prefix: str | None, dry_run: bool, grace: timedelta,
            caller: Caller) -> GcReport:
    if keep_last is None and (keep_tagged or per_label or prefix):
        raise InvalidRequestError("--keep-tagged, --per-label and a prefix refine "
                                  "--keep-last N", hint="Add --keep-last N")
    if keep_last is not None and keep_last < 0:
        raise InvalidRequestError(f"--keep-last must be 0 or more; got {keep_last}")
    if per_label is not None:
        validate_key(per_label, "label key")
    if grace < timedelta(0):
        raise InvalidRequestError("the grace period cannot be negative")
    now = utcnow()
    with service.db.write(gc_lock="exclusive", dry_run=dry_run) as s:
        names = dict(s.execute(select(Repository.id, Repository.name)).all())
        rows = s.execute(select(Version.id, Version.repository_id, Version.number,
                                Version.digest, Version.deleted_at)).all()
        ref = {r.id: f"{names[r.repository_id]}@{r.number}" for r in rows}
        deleted = {r.id for r in rows if r.deleted_at is not None}

        retired: list[int] = []
        if keep_last is not None:
            retired = _retire(s, rows, names, deleted, keep_last, keep_tagged, per_label, prefix)
            for batch in batched(retired):
                s.execute(delete(Tag).where(Tag.version_id.in_(batch)))
                for version in s.scalars(select(Version).where(Version.id.in_(batch))):
                    version.deleted_at = now
            deleted |= set(retired)

        by_digest: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            by_digest[r.digest].append(r.id)
        parents: dict[int, list[str]] = defaultdict(list)
        for version_id, parent in s.execute(select(Lineage.version_id, Lineage.parent_digest)):
            parents[version_id].append(parent)
        marked = {r.id for r in rows if r.id not in deleted}
        frontier = list(marked)
        while frontier:
            version_id = frontier.pop()
            for parent in parents[version_id]:
                for parent_id in by_digest.get(parent, ()):
                    if parent_id not in marked:
                        marked.add(parent_id)
                        frontier.append(parent_id)
        purged = sorted(deleted - marked)
        for batch in batched(purged):
            for table in (VersionTensor, Lineage, VersionLabel, Tag):
                s.execute(delete(table).where(table.version_id.in_(batch)))
            forget_versions(s, batch)
            s.execute(delete(Version).where(Version.id.in_(batch)))

        cutoff = now - grace
        XetStore.collect(s, cutoff)  # Xet uploads no version uses, once past the grace period
        referenced = set(s.scalars(select(VersionTensor.blob_digest).distinct()))
        referenced |= XetStore.kept_blobs(s) | part_blobs(s)  # Xet's; kept files' parts
        stale = s.execute(select(Blob.id, Blob.digest, Blob.complete, Blob.stored_size)
                          .where(Blob.touched_at < cutoff)).all()
        blobs = [b for b in stale if b.complete and b.digest not in referenced]
        uploads = [b.id for b in stale if not b.complete]
        store = service.blobs.store
        freed = sum(b.stored_size for b in blobs) + store.stored_bytes(s, uploads)
        store.remove(s, [b.id for b in blobs] + uploads)
        if store.objects is not None:  # chunk rows left by blobs migrate
            moved = list(s.scalars(select(Chunk.blob_id).distinct().join(
                Blob, Blob.id == Chunk.blob_id).where(
                    Blob.complete, Blob.codec == OBJECT_CODEC, Blob.touched_at < cutoff)))
            freed += store.stored_bytes(s, moved)
            store.remove_chunks(s, moved)
        service.blobs.forget_grants(s, [b.digest for b in blobs])

        report = GcReport(dry_run=dry_run, retired=tuple(ref[i] for i in sorted(retired)),
                          purged=tuple(ref[i] for i in purged),
                          kept_for_lineage=tuple(ref[i] for i in sorted(deleted & marked)),
                          blobs_removed=len(blobs), bytes_freed=freed,
                          uploads_removed=len(uploads))
        if store.objects is not None:
            report = replace(report, objects_removed=len(_unnamed_objects(s, store.objects,
                                                                          cutoff)))
        s.add(Event(at=now, action="gc", actor=caller.actor, token_id=caller.token_id,
                    detail=json.dumps(report.to_dict(), sort_keys=True)))
    if store.objects is not None and not dry_run:
        with service.db.read() as s:
            doomed = _unnamed_objects(s, store.objects, cutoff)
            open_uploads = set(s.scalars(select(Blob.upload_id).where(
                Blob.object_upload.is_not(None))))
        store.objects.delete(doomed)
        for upload_id, multipart, initiated in list(store.objects.staged()):
            if upload_id not in open_uploads and initiated < cutoff:
                store.objects.abort(upload_id, multipart)
    return report


def _unnamed_objects(s, objects: ObjectStore, cutoff: datetime) -> list[str]:
    """Digests of the objects older than ``cutoff`` that no complete blob row names, nor a
    direct presigned upload still open (its object is the blob's, waiting to be finished)."""
    listed = [(digest, modified) for digest, _, modified in objects.stored()
              if modified < cutoff]
    named: set[str] = set()
    for batch in batched([digest for digest, _ in listed]):
        named |= set(s.scalars(select(Blob.digest).where(
            Blob.digest.in_(batch), Blob.complete | (Blob.object_upload == DIRECT))))
    return [digest for digest, _ in listed if digest not in named]


def _retire(s, rows, names: dict[int, str], deleted: set[int], keep_last: int,
            keep_tagged: bool, per_label: str | None, prefix: str | None) -> list[int]:
    """The live versions the retention policy lets go."""
    tagged = set(s.scalars(select(Tag.version_id)))
    label_of: dict[int, str] = {}
    if per_label:
        label_of = dict(s.execute(select(VersionLabel.version_id, VersionLabel.value)
                                  .where(VersionLabel.key == per_label)).all())
    groups: dict[tuple[int, str | None], list] = defaultdict(list)
    for r in rows:
        if r.id in deleted or (prefix and not names[r.repository_id].startswith(prefix)):
            continue
        groups[(r.repository_id, label_of.get(r.id))].append(r)
    retired = []
    for members in groups.values():
        members.sort(key=lambda r: r.number, reverse=True)
        retired += [r.id for r in members[keep_last:]
                    if not (keep_tagged and r.id in tagged)]
    return retired
