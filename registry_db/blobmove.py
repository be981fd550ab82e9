"""``blobs migrate``: move a registry's blobs from the database into an object store.

The registry's backend is switched first (processes that open it from then on write new
blobs to the store), then each blob still in chunk rows is read (hashed while read), written
as its object, read back and hashed again, and only then marked ``codec = "s3"`` in its own
transaction. Readers are served throughout: a blob is readable from its chunks until the
switch and from its object after it, and the chunk rows stay until gc (after its grace
window) so a read already under way finishes. Interrupted, it resumes where it stopped: run
it again (a hub that was already running before the switch may still write blobs into the
database until restarted; a second run moves those too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from registry_db.clock import utcnow
from registry_db.errors import InvalidRequestError
from registry_db.models import Blob, Setting
from registry_db.objectstore import CODEC, Location, ObjectStore
from registry_db.records import MigrateReport

if TYPE_CHECKING:
    from collections.abc import Callable

    from registry_db.access import Caller
    from registry_db.service import RegistryService


def migrate(service: RegistryService, to: str, *, caller: Caller,
            progress: Callable[[int], None] | None = None) -> MigrateReport:
    """Move every blob kept in the database to the object store ``to`` (``s3://…``)."""
    caller.require_all("admin")
    if not to.startswith("s3://"):
        raise InvalidRequestError(f"blobs migrate moves blobs into an object store; got "
                                  f"{to[:200]!r}", hint="Use --to s3://BUCKET/PREFIX")
    objects = ObjectStore(Location.parse(to))
    current = service.blobs.store.objects
    if current is not None and current.location != objects.location:
        raise InvalidRequestError(f"this registry keeps its blobs in {current.location}; "
                                  f"moving them to another store is not supported")
    objects.check_bucket()
    with service.db.write() as s:
        s.merge(Setting(key="blob_backend", value=str(objects.location)))
    service.blobs.store.objects = objects
    with service.db.read() as s:
        todo = s.execute(select(Blob.id, Blob.digest, Blob.size).where(
            Blob.complete, Blob.codec != CODEC).order_by(Blob.id)).all()
        there = s.scalar(select(func.count()).select_from(Blob).where(
            Blob.complete, Blob.codec == CODEC)) or 0
    moved = moved_bytes = 0
    for blob in todo:
        objects.put_stream(blob.digest, service.blobs.store.iter(blob.digest))
        for _ in objects.iter(blob.digest, blob.size):  # read back: every byte hashed again
            pass
        with service.db.write() as s:
            s.execute(update(Blob).where(Blob.id == blob.id).values(
                codec=CODEC, stored_size=blob.size, touched_at=utcnow()))
        moved += 1
        moved_bytes += blob.size
        if progress:
            progress(blob.size)
    return MigrateReport(str(objects.location), moved, moved_bytes, there)
