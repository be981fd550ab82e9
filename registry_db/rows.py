"""The service's sessions as :data:`registry_db.reads.Rows`, so it reads versions with the
same plain-SQL queries as the SQLAlchemy-free path."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from registry_db import reads
from registry_db.models import Version
from registry_db.records import VersionInfo


def session_rows(s: Session) -> reads.Rows:
    return lambda sql, params: s.execute(text(sql), params).all()


def version_infos(s: Session, versions: list[Version], *, with_manifest: bool = False
                  ) -> list[VersionInfo]:
    """Records for ORM versions (flushed first, so rows written in this session count)."""
    s.flush()
    return reads.version_infos(session_rows(s), [v.id for v in versions],
                               with_manifest=with_manifest)
