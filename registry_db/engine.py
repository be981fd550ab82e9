"""Opening a registry database: URLs, SQLite settings, and migrations run on open.

SQLite runs in WAL mode (readers never block the writer) with a long ``busy_timeout``, and
write transactions start with ``BEGIN IMMEDIATE``: a writer takes the lock up front and waits
its turn instead of failing half-way with "database is locked" when two processes push at
once. Migrations run on open, under a lock (a file lock beside a SQLite file, an advisory lock
on PostgreSQL) so parallel processes opening a new registry cannot race each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from registry_db.errors import RegistryError
from registry_db.revision import BUSY_TIMEOUT_S, SCHEMA_REVISION

WRITE_OPTION = "registry_db_write"
_PG_LOCK_KEY = 0x61646872  # "adhr": pg_advisory_xact_lock key for migrations


def normalize_url(url: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL for ``url``: a plain path means a SQLite file; ``postgresql://``
    without a driver means psycopg 3."""
    text_url = os.fspath(url)
    if "://" not in text_url:
        return f"sqlite:///{Path(text_url).expanduser().resolve()}"
    if text_url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text_url.split("://", 1)[1]
    return text_url


def display_url(url: str | URL) -> str:
    """The URL with any password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL (None for other backends and in-memory databases)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def open_engine(url: str | os.PathLike[str]) -> Engine:
    """An engine for the registry at ``url``, with the schema migrated to this code's revision.

    Raises :class:`RegistryError` if the database cannot be reached or was written by a newer
    version of adapterhub.
    """
    try:
        sa_url = make_url(normalize_url(url))
    except ArgumentError as exc:
        raise RegistryError(f"invalid registry URL {os.fspath(url)!r}: {exc}") from None
    path = sqlite_path(sa_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(sa_url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    elif sa_url.get_backend_name() == "sqlite":
        raise RegistryError("in-memory SQLite is not a registry (each connection would see an "
                          "empty database)", hint="Give a file path")
    else:
        engine = create_engine(sa_url, pool_pre_ping=True)
    try:
        upgrade(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        if path is not None and path.is_file() and any(m in reason for m in _NO_SPACE):
            return _read_only(path, reason)
        raise RegistryError(f"cannot open registry {display_url(sa_url)}: {reason}") from None
    return engine


#: what SQLite says when it cannot grow a file (a full disk, a file size limit)
_NO_SPACE = ("disk I/O error", "database or disk is full")


def _read_only(path: Path, reason: str) -> Engine:
    """The registry opened read-only and without its shared-memory file, for when the disk
    is full: reading commands (``list``, ``show``, ``log``, ``pull --out`` elsewhere) keep
    working; anything that writes says the registry is read-only."""
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true")
    event.listen(engine, "connect", _read_only_connect)
    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
    except OperationalError as exc:
        engine.dispose()
        raise RegistryError(f"cannot open registry {path}: {reason}") from exc
    if revision != SCHEMA_REVISION:
        engine.dispose()
        raise RegistryError(f"cannot open registry {path}: {reason} (and it needs a schema "
                            f"upgrade, which writes)", hint="Free disk space and retry")
    return engine


def _read_only_connect(dbapi_connection, connection_record) -> None:
    dbapi_connection.isolation_level = None


def writer(engine: Engine) -> Engine:
    """The same engine, but its transactions take the write lock up front (SQLite)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def _sqlite_connect(dbapi_connection, connection_record) -> None:
    # manage transactions ourselves (pysqlite's implicit BEGIN is deferred and too late)
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    # Settings stored in the file are written only when they differ: opening a registry must
    # not write (a read-only command works on a full disk, and a connection opened while
    # another holds the write lock must not wait for it).
    if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
        # a new file: 64 KiB pages write multi-MB blob rows ~5x faster than the default
        # 4 KiB (measured); incremental auto_vacuum lets gc hand freed pages back to the file
        # system. Both only take effect before the first table is created.
        cursor.execute("PRAGMA page_size = 65536")
        cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# -- migrations --------------------------------------------------------------------------------


def current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def alembic_config(conn: Connection):
    """An alembic ``Config`` for the migrations shipped in this package, bound to ``conn``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "registry_db:migrations")
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to :data:`SCHEMA_REVISION` (cheap when it already is)."""
    with engine.connect() as conn:
        revision = current_revision(conn)
        conn.rollback()
    if revision == SCHEMA_REVISION:
        return
    with _migration_lock(engine), writer(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        revision = current_revision(conn)
        if revision == SCHEMA_REVISION:
            return
        from alembic import command
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        cfg = alembic_config(conn)
        known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
        if revision is not None and revision not in known:
            raise RegistryError(f"the registry {display_url(engine.url)} has schema revision "
                              f"{revision!r}, newer than this adapterhub knows",
                              hint="Upgrade adapterhub to open it")
        try:
            command.upgrade(cfg, SCHEMA_REVISION)
        except CommandError as exc:
            raise RegistryError(f"cannot migrate {display_url(engine.url)}: {exc}") from None


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """A cross-process lock for SQLite files (PostgreSQL locks inside the transaction)."""
    path = sqlite_path(engine.url)
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
