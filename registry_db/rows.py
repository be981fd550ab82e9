"""ORM rows to the records callers get (:mod:`registry_db.records`), in few queries."""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry_db.database import batched
from registry_db.manifest import Manifest
from registry_db.models import Lineage, Repository, Tag, Version, VersionLabel
from registry_db.records import VersionInfo


#: parsed manifests by version digest (content-addressed, so never stale); bounded
_MANIFESTS: dict[str, Manifest] = {}
MANIFEST_CACHE = 256


def manifest_of(version: Version) -> Manifest:
    """The version's manifest, parsed once per process (hubs resolve the same versions over
    and over; parsing and validating a large manifest costs milliseconds)."""
    found = _MANIFESTS.get(version.digest)
    if found is None:
        found = Manifest.from_dict(json.loads(version.manifest))
        if len(_MANIFESTS) >= MANIFEST_CACHE:
            _MANIFESTS.pop(next(iter(_MANIFESTS)))
        _MANIFESTS[version.digest] = found
    return found


def version_infos(s: Session, versions: list[Version], *, with_manifest: bool = False
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
        manifest=manifest_of(v) if with_manifest else None)
        for v in versions]
