"""``verify``: re-hash every stored blob and check every reference.

Blobs in the database are always re-hashed. Blobs in an object store (``s3`` backend) are
checked for existence and size; ``deep`` downloads and re-hashes them too.

Problems found (each names the blob and the versions it affects):
``corrupt-blob`` (bytes do not match the digest, or do not decode), ``missing-blob`` (a version
references a blob that is not stored), ``size`` (a tensor's dtype and shape do not need exactly
the bytes its blob holds), ``manifest`` (a stored manifest does not hash to its version digest,
is not a valid manifest, or disagrees with the version's tensor rows), ``lineage`` (a parent
version is not in the registry). Unreferenced blobs and partial uploads are counted, not
reported: gc
reclaims them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import select

from registry_db.digests import sha256_digest
from registry_db.errors import AdapterNotFoundError, FormatError, IntegrityError
from registry_db.manifest import Manifest
from registry_db.models import Blob, Lineage, Repository, Version, VersionTensor
from registry_db.objectstore import CODEC as OBJECT_CODEC
from registry_db.objectstore import ObjectStore
from registry_db.records import Problem, VerifyReport

if TYPE_CHECKING:
    from registry_db.service import RegistryService


def check(service: RegistryService, *, deep: bool = False) -> VerifyReport:
    problems: list[Problem] = []
    with service.db.read() as s:
        names = dict(s.execute(select(Repository.id, Repository.name)).all())
        versions = s.execute(select(Version.id, Version.repository_id, Version.number,
                                    Version.digest, Version.manifest, Version.deleted_at)).all()
        tensor_rows = s.execute(select(VersionTensor.version_id, VersionTensor.name,
                                       VersionTensor.blob_digest)).all()
        lineage = s.execute(select(Lineage.version_id, Lineage.parent_digest)).all()
        blobs = s.execute(select(Blob.id, Blob.digest, Blob.size, Blob.complete,
                                 Blob.codec)).all()

    def ref(row) -> str:
        return f"{names[row.repository_id]}@{row.number}" + (
            " (deleted)" if row.deleted_at is not None else "")

    refs = {v.id: ref(v) for v in versions}
    users: dict[str, list[str]] = defaultdict(list)  # blob digest -> "ns/name@N (tensor t)"
    tensors_of: dict[int, dict[str, str]] = defaultdict(dict)
    for version_id, tensor, digest in tensor_rows:
        users[digest].append(f"{refs[version_id]} tensor {tensor!r}")
        tensors_of[version_id][tensor] = digest

    version_digests = {v.digest for v in versions}
    sizes = {b.digest: b.size for b in blobs if b.complete}
    for v in versions:
        if sha256_digest(v.manifest.encode()) != v.digest:
            problems.append(Problem("manifest", f"{refs[v.id]}: the stored manifest does not "
                                    f"hash to the version digest {v.digest}",
                                    versions=(refs[v.id],)))
            continue
        try:
            manifest = Manifest.from_dict(json.loads(v.manifest))
        except (ValueError, FormatError) as exc:
            problems.append(Problem("manifest", f"{refs[v.id]}: unreadable manifest ({exc})",
                                    versions=(refs[v.id],)))
            continue
        named = {t: e.digest for t, e in manifest.tensors.items()}
        if named != tensors_of[v.id]:
            problems.append(Problem("manifest", f"{refs[v.id]}: the tensor rows disagree with "
                                    f"the manifest", versions=(refs[v.id],)))
        for tensor, entry in sorted(manifest.tensors.items()):
            stored = sizes.get(entry.digest)
            if stored is not None and stored != entry.nbytes:
                problems.append(Problem(
                    "size", f"{refs[v.id]}: tensor {tensor!r} is {entry.dtype} "
                            f"{list(entry.shape)} ({entry.nbytes} bytes) but blob "
                            f"{entry.digest} holds {stored} bytes",
                    blob=entry.digest, versions=(refs[v.id],)))
    for version_id, parent in lineage:
        if parent not in version_digests:
            problems.append(Problem("lineage", f"{refs[version_id]}: parent version {parent} is "
                                    f"not in the registry", versions=(refs[version_id],)))

    complete = {b.digest: b for b in blobs if b.complete}
    for digest in sorted(set(users) - set(complete)):
        problems.append(Problem("missing-blob", f"blob {digest} is missing; used by "
                                f"{', '.join(users[digest][:3])}", blob=digest,
                                versions=tuple(users[digest])))
    checked = 0
    store = service.blobs.store
    for digest, blob in sorted(complete.items()):
        try:
            if blob.codec == OBJECT_CODEC and not deep:
                _check_object(store.objects, digest, blob.size)
            else:
                for _ in store.iter(digest):
                    pass
        except (IntegrityError, AdapterNotFoundError) as exc:
            used = ", ".join(users[digest][:3]) or "no version"
            problems.append(Problem("corrupt-blob", f"{exc.message}; used by {used}",
                                    blob=digest, versions=tuple(users[digest])))
        checked += blob.size
    return VerifyReport(problems=tuple(problems), versions_checked=len(versions),
                        blobs_checked=len(complete), bytes_checked=checked,
                        unreferenced_blobs=len(set(complete) - set(users)),
                        partial_uploads=sum(1 for b in blobs if not b.complete))


def _check_object(objects: ObjectStore | None, digest: str, size: int) -> None:
    """The object of a blob exists and holds ``size`` bytes."""
    if objects is None:
        raise IntegrityError(f"blob {digest} is kept in an object store, and the registry "
                             f"records none")
    found = objects.size(digest)
    if found is None:
        raise IntegrityError(f"blob {digest} is missing from the object store "
                             f"{objects.location}")
    if found != size:
        raise IntegrityError(f"blob {digest} is corrupt in the object store: it holds "
                             f"{found} bytes, {size} expected")
