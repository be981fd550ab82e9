"""Sessions and transactions: the only place that begins, commits or rolls back."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session

from registry_db.engine import display_url, open_engine, writer
from registry_db.errors import InvalidRequestError, RegistryError
from registry_db.writes import Statements

if TYPE_CHECKING:
    from registry_db.reads import Rows

#: PostgreSQL advisory lock between commits (shared) and gc's sweep (exclusive); SQLite
#: needs none because its write transactions already run one at a time
_GC_LOCK_KEY = 0x61646763  # "adgc"
_NAMED = re.compile(r"(?<!:):(\w+)")


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    return _NAMED.sub(r"%(\1)s", sql)


class Database:
    """An open registry database: an engine with the schema at the expected revision."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.engine = open_engine(url)
        self._writer = writer(self.engine)
        self.url = display_url(self.engine.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction (a consistent snapshot on SQLite; never blocks writers)."""
        with self._guard(), Session(self.engine, expire_on_commit=False) as session, \
                session.begin():
            yield session

    @contextlib.contextmanager
    def rows(self) -> Iterator[Rows]:
        """A read transaction for :mod:`registry_db.reads`: its plain SQL runs on the driver's
        own cursor, since SQLAlchemy's execution machinery costs several times what these
        small indexed queries do (it set a hub's request rate)."""
        pyformat = self.dialect == "postgresql"  # psycopg wants %(name)s, sqlite3 takes :name
        with self._guard(), self.engine.connect() as conn, conn.begin():
            cursor = conn.connection.driver_connection.cursor()
            errors = conn.dialect.loaded_dbapi

            def run(sql: str, params: dict[str, Any]) -> list[tuple]:
                try:
                    cursor.execute(_pyformat(sql) if pyformat else sql, params)
                    return cursor.fetchall()
                except errors.OperationalError as exc:
                    reason = str(exc).strip().splitlines()[0]
                    raise RegistryError(f"registry {self.url}: {reason}") from None

            yield run

    def statements(self, s: Session) -> Statements:
        """A write session's transaction as :class:`~registry_db.writes.Statements`."""
        def many(sql: str, params: list[dict[str, Any]]) -> None:
            if params:  # (an empty list would run the statement once, with no values)
                s.execute(text(sql), params)

        return Statements(lambda sql, params: s.execute(text(sql), params).all(), many,
                          postgresql=self.dialect == "postgresql")

    @contextlib.contextmanager
    def write(self, *, gc_lock: str | None = None, dry_run: bool = False) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on error or ``dry_run``.

        ``gc_lock`` is ``"shared"`` for commits and ``"exclusive"`` for gc's sweep, so on
        PostgreSQL a sweep never runs between a commit's blob check and its insert.
        """
        with self._guard(), Session(self._writer, expire_on_commit=False) as session:
            session.begin()
            try:
                if gc_lock and self.dialect == "postgresql":
                    lock = ("pg_advisory_xact_lock_shared" if gc_lock == "shared"
                            else "pg_advisory_xact_lock")
                    session.execute(select(getattr(func, lock)(_GC_LOCK_KEY)))
                yield session
                if dry_run:
                    session.rollback()
                else:
                    session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise RegistryError(f"registry {self.url}: {reason}") from None
        except (DataError, OverflowError) as exc:  # a value the schema cannot hold
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise InvalidRequestError(f"a value is out of range: {reason[:200]}") from None

    def vacuum(self) -> None:
        """Give pages freed by gc back to the file system (SQLite; PostgreSQL autovacuums)."""
        if self.dialect == "sqlite":
            with self._guard(), self._writer.begin() as conn:
                conn.execute(text("PRAGMA incremental_vacuum"))

    def close(self) -> None:
        self.engine.dispose()
