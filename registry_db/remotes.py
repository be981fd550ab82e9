"""Named remotes (``adapterhub remote add NAME URL``): the local user's settings, kept in the
registry database but never reachable through a hub."""

from __future__ import annotations

from registry_db import reads
from registry_db.clock import utcnow
from registry_db.database import Database
from registry_db.errors import AdapterNotFoundError, ConflictError
from registry_db.models import RemoteRow
from registry_db.records import RemoteInfo
from registry_db.refs import validate_key

def _info(row: RemoteRow) -> RemoteInfo:
    return RemoteInfo(row.name, row.url, row.created_at)

class RemoteStore:
    """The named remotes of one registry database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, name: str, url: str) -> RemoteInfo:
        validate_key(name, "remote name")
        with self.db.write() as s:
            if s.get(RemoteRow, name) is not None:
                raise ConflictError(f"remote {name!r} already exists",
                                    hint=f"Remove it first: adapterhub remote remove {name}")
            row = RemoteRow(name=name, url=url, created_at=utcnow())
            s.add(row)
            return _info(row)

    def list(self) -> list[RemoteInfo]:
        with self.db.rows() as rows:
            return reads.remotes(rows)

    def get(self, name: str) -> RemoteInfo | None:
        with self.db.rows() as rows:
            return next(iter(reads.remotes(rows, name)), None)

    def remove(self, name: str) -> RemoteInfo:
        with self.db.write() as s:
            row = s.get(RemoteRow, name)
            if row is None:
                raise AdapterNotFoundError(f"no remote named {name!r}",
                                           hint="See them with: adapterhub remote list")
            s.delete(row)
            return _info(row)
