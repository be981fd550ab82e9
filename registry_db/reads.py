"""Reading versions in plain SQL: the one implementation of ``resolve``, ``list`` and ``log``.

The queries run on whatever executes SQL: a SQLAlchemy session (both backends, inside the
service) or a bare ``sqlite3`` connection (:func:`open_sqlite`). The second is why this module
exists: ``adapterhub list``, ``show`` and ``log`` on a SQLite file answer without importing
SQLAlchemy, whose import alone takes longer than those commands' whole budget. This module
imports nothing but the standard library and SQLAlchemy-free parts of ``registry_db``.

Access is decided as the service decides it: ``caller.require`` before reading a repository,
``caller.can`` for each repository a listing would show.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from registry_db.access import Caller
from registry_db.digests import is_digest
from registry_db.errors import AdapterNotFoundError, ConflictError, InvalidRequestError
from registry_db.manifest import Manifest
from registry_db.records import RemoteInfo, VersionInfo
from registry_db.refs import Ref, parse_ref, validate_name
from registry_db.revision import SCHEMA_REVISION

T = TypeVar("T")
#: runs one SELECT with ``:name`` parameters and returns its rows
Rows = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]

_BATCH = 500  # values per IN (...) list
_COLUMNS = ("v.id, r.name, v.number, v.digest, v.method, v.base_name, v.base_fingerprint, "
            "v.size, v.created_at, v.author, v.message, v.deleted_at")
_FROM = " FROM versions v JOIN repositories r ON r.id = v.repository_id"


def resolve(rows: Rows, ref: str | Ref, *, caller: Caller) -> VersionInfo:
    """The live version a ref names, with its manifest."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    caller.require("read", ref.name)
    return version_infos(rows, [resolve_id(rows, ref)], with_manifest=True)[0]


def resolve_id(rows: Rows, ref: Ref) -> int:
    """The row id of the version ``ref`` names (no access check: callers make it)."""
    if ref.number is None and ref.tag is None and ref.digest_prefix is None:  # in one query
        found = rows(f"SELECT v.id{_FROM} WHERE r.name = :name AND v.deleted_at IS NULL "
                     f"ORDER BY v.number DESC LIMIT 1", {"name": ref.name})
        if found:
            return found[0][0]
        repository_id(rows, ref.name)  # says which is missing: the repository or versions
        raise AdapterNotFoundError(f"{ref.name} has no versions")
    repo = repository_id(rows, ref.name)
    live = "deleted_at IS NULL"
    base = "SELECT id, deleted_at FROM versions WHERE repository_id = :repo"
    if ref.number is not None:
        found = rows(f"{base} AND number = :number", {"repo": repo, "number": ref.number})
        if not found:
            raise AdapterNotFoundError(f"{ref} does not exist",
                                       hint=f"See its versions with: adapterhub log {ref.name}")
        if found[0][1] is not None:
            raise AdapterNotFoundError(f"{ref} was deleted",
                                       hint="An admin can restore it by pushing the same "
                                            "adapter again")
        return found[0][0]
    if ref.tag is not None:
        found = rows("SELECT version_id FROM tags WHERE repository_id = :repo AND name = :tag",
                     {"repo": repo, "tag": ref.tag})
        if not found:
            raise AdapterNotFoundError(f"{ref.name} has no tag {ref.tag!r}",
                                       hint=f"See its tags with: adapterhub log {ref.name}")
        return found[0][0]
    if ref.digest_prefix is not None:
        prefix = ref.digest_prefix
        found = rows(f"{base} AND {live} AND substr(digest, 1, :n) = :prefix LIMIT 2",
                     {"repo": repo, "n": len(prefix), "prefix": prefix})
        if not found:
            raise AdapterNotFoundError(f"{ref.name} has no version with digest {prefix}")
        if len(found) > 1:
            raise ConflictError(f"digest prefix {prefix} matches several versions of "
                                f"{ref.name}", hint="Give more hex digits")
        return found[0][0]
    raise AssertionError(f"unhandled ref {ref}")


def find(rows: Rows, digest: str, *, caller: Caller) -> VersionInfo | None:
    """A version with this manifest digest in a repository the caller may read (live ones
    first), with its manifest, or None."""
    found = find_id(rows, digest, caller=caller)
    return None if found is None else version_infos(rows, [found], with_manifest=True)[0]


def find_id(rows: Rows, digest: str, *, caller: Caller) -> int | None:
    """The row id of :func:`find`'s version. Soft-deleted versions count (last): they stay
    stored while live versions descend from them."""
    if not is_digest(digest):
        raise InvalidRequestError(f"invalid version digest {str(digest)[:80]!r}")
    found = rows(f"SELECT v.id, r.name{_FROM} WHERE v.digest = :digest "
                 f"ORDER BY (v.deleted_at IS NOT NULL), v.id", {"digest": digest})
    return next((id_ for id_, name in found if caller.can("read", name)), None)


def remotes(rows: Rows, name: str | None = None) -> list[RemoteInfo]:
    """The named remotes (``adapterhub remote add``) by name, or the one called ``name``."""
    where = " WHERE name = :name" if name is not None else ""
    return [RemoteInfo(n, url, _utc(created_at)) for n, url, created_at in rows(
        f"SELECT name, url, created_at FROM remotes{where} ORDER BY name", {"name": name})]


def repository_id(rows: Rows, name: str) -> int:
    found = rows("SELECT id FROM repositories WHERE name = :name", {"name": name})
    if not found:
        raise AdapterNotFoundError(f"no repository {name!r} in this registry",
                                   hint="See what is there with: adapterhub list")
    return found[0][0]


def list_versions(rows: Rows, prefix: str | None = None, *, caller: Caller,
                  method: str | None = None, base: str | None = None,
                  labels: dict[str, str] | None = None,
                  include_deleted: bool = False) -> list[VersionInfo]:
    """Versions the caller may read whose repository name starts with ``prefix``, newest
    first per repository. ``base`` matches the base model's fingerprint (a ``sha256:``
    digest) or its name; ``labels`` must all match."""
    caller.require("read")
    where, params = [], {}
    if prefix:
        where.append("substr(r.name, 1, :prefix_n) = :prefix")
        params.update(prefix=prefix, prefix_n=len(prefix))
    if method:
        where.append("v.method = :method")
        params["method"] = method
    if base:
        column = "v.base_fingerprint" if base.startswith("sha256:") else "v.base_name"
        where.append(f"{column} = :base")
        params["base"] = base
    for i, (key, value) in enumerate(sorted((labels or {}).items())):
        where.append(f"v.id IN (SELECT version_id FROM version_labels "
                     f"WHERE key = :key{i} AND value = :value{i})")
        params.update({f"key{i}": key, f"value{i}": value})
    if not include_deleted:
        where.append("v.deleted_at IS NULL")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    # sorted here: SQLite would walk the join in name order, a random read per version
    found = sorted(rows(f"SELECT {_COLUMNS}{_FROM}{clause}", params),
                   key=lambda row: (row[1], -row[2]))
    if not (caller.can("read", None) and (caller.local or caller.public_read)):
        readable: dict[str, bool] = {}
        found = [row for row in found
                 if readable.setdefault(row[1], caller.can("read", row[1]))]
    return _records(rows, found, with_manifest=False)


def repositories(rows: Rows, prefix: str | None = None, *, caller: Caller) -> list[str]:
    """Names of the repositories the caller may read (with or without live versions) that
    start with ``prefix``, sorted."""
    caller.require("read")
    where = " WHERE substr(name, 1, :n) = :prefix" if prefix else ""
    found = rows(f"SELECT name FROM repositories{where} ORDER BY name",
                 {"n": len(prefix), "prefix": prefix} if prefix else {})
    return [name for (name,) in found if caller.can("read", name)]


def log(rows: Rows, name: str, *, caller: Caller) -> list[VersionInfo]:
    """Every version of a repository, newest first, soft-deleted ones included (flagged)."""
    validate_name(name)
    caller.require("read", name)
    repo = repository_id(rows, name)
    found = rows(f"SELECT {_COLUMNS}{_FROM} WHERE v.repository_id = :repo "
                 f"ORDER BY v.number DESC", {"repo": repo})
    return _records(rows, found, with_manifest=False)


def version_infos(rows: Rows, ids: Sequence[int], *, with_manifest: bool = False
                  ) -> list[VersionInfo]:
    """Records for the versions with these row ids, in that order, in a fixed number of
    queries (not one per version)."""
    by_id: dict[int, Sequence[Any]] = {}
    columns = f"{_COLUMNS}, v.manifest" if with_manifest else _COLUMNS
    for batch in batched(ids):
        marks, params = in_list(batch)
        for row in rows(f"SELECT {columns}{_FROM} WHERE v.id IN ({marks})", params):
            by_id[row[0]] = row
    return _records(rows, [by_id[i] for i in ids], with_manifest=with_manifest)


def _records(rows: Rows, found: Sequence[Sequence[Any]], *, with_manifest: bool
             ) -> list[VersionInfo]:
    ids = [row[0] for row in found]
    tags: dict[int, list[str]] = defaultdict(list)
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    parents: dict[int, list[str]] = defaultdict(list)
    # with thousands of versions, one pass over each small table beats IN lists
    whole = len(ids) > _BATCH
    for batch in [ids] if whole else batched(ids):
        marks, params = in_list(batch)
        where = "" if whole else f" WHERE version_id IN ({marks})"
        for version_id, tag in rows(f"SELECT version_id, name FROM tags{where} ORDER BY name",
                                    {} if whole else params):
            tags[version_id].append(tag)
        for version_id, key, value in rows(f"SELECT version_id, key, value FROM version_labels"
                                           f"{where} ORDER BY key", {} if whole else params):
            labels[version_id][key] = value
        for version_id, parent in rows(
                f"SELECT version_id, parent_digest FROM lineage{where} ORDER BY position",
                {} if whole else params):
            parents[version_id].append(parent)
    records = []
    for row in found:
        (id_, name, number, digest, method, base_name, base_fingerprint, size, created_at,
         author, message, deleted_at) = row[:12]
        records.append(VersionInfo(
            name=name, number=number, digest=digest, method=method, base_name=base_name,
            base_fingerprint=base_fingerprint, size=size, created_at=_utc(created_at),
            author=author, message=message, tags=tuple(tags.get(id_, ())),
            labels=dict(labels.get(id_, ())), parents=tuple(parents.get(id_, ())),
            deleted=deleted_at is not None,
            manifest=_manifest(digest, row[12]) if with_manifest else None))
    return records


_MANIFESTS: OrderedDict[str, Manifest] = OrderedDict()
_MANIFESTS_LOCK = threading.Lock()
MANIFEST_CACHE = 512  # parsed manifests kept per process


def _manifest(digest: str, text: str | bytes) -> Manifest:
    """The parsed manifest of version ``digest``. A digest names one manifest for ever (it
    is the hash of the canonical bytes), so parsed manifests are kept by digest: parsing a
    few hundred tensors' entries costs milliseconds, per request on a busy hub."""
    with _MANIFESTS_LOCK:
        found = _MANIFESTS.get(digest)
        if found is not None:
            _MANIFESTS.move_to_end(digest)
            return found
    manifest = Manifest.from_dict(json.loads(text))
    with _MANIFESTS_LOCK:
        _MANIFESTS[digest] = manifest
        while len(_MANIFESTS) > MANIFEST_CACHE:
            _MANIFESTS.popitem(last=False)
    return manifest


def _utc(value: datetime | str) -> datetime:
    """SQLite keeps datetimes as naive UTC text; PostgreSQL returns aware datetimes."""
    if isinstance(value, str):
        return datetime.fromisoformat(f"{value}+00:00")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def batched(items: Iterable[T], size: int = _BATCH) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size`` (by default, values per ``IN (...)`` list)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def in_list(values: Sequence[T]) -> tuple[str, dict[str, T]]:
    """The placeholders of an ``IN (...)`` list of ``values`` and their parameters."""
    params = {f"id{i}": value for i, value in enumerate(values)}
    return ", ".join(f":{name}" for name in params) or "NULL", params


def open_sqlite(url: str | os.PathLike[str]) -> SqliteReader | None:
    """A read-only view of the SQLite registry at ``url`` (a path or ``sqlite:///`` URL), or
    None when it is not one that can be read as is: another backend, a file that does not
    exist yet, or a schema other than this code's (opening it properly migrates it)."""
    text = os.fspath(url)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    elif "://" in text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        return None
    try:
        # one caller at a time, but maybe not the thread that opened it (a hub opens its
        # registry in one thread and serves from others)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        revision = []
    if revision != [(SCHEMA_REVISION,)]:
        conn.close()
        return None
    return SqliteReader(conn, path)


class SqliteReader:
    """A SQLite registry opened for reading with the standard library alone; each call
    reads one consistent snapshot."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn, self.path = conn, path
        self.url = f"sqlite:///{path.resolve()}"

    def _run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.conn.execute("BEGIN")
        try:
            return call(lambda sql, params: self.conn.execute(sql, params).fetchall(),
                        *args, **kwargs)
        finally:
            self.conn.execute("COMMIT")

    def resolve(self, ref: str | Ref, *, caller: Caller) -> VersionInfo:
        return self._run(resolve, ref, caller=caller)

    def list_versions(self, prefix: str | None = None, *, caller: Caller,
                      **filters: Any) -> list[VersionInfo]:
        return self._run(list_versions, prefix, caller=caller, **filters)

    def log(self, name: str, *, caller: Caller) -> list[VersionInfo]:
        return self._run(log, name, caller=caller)

    def find(self, digest: str, *, caller: Caller) -> VersionInfo | None:
        return self._run(find, digest, caller=caller)

    def remote(self, name: str) -> RemoteInfo | None:
        return next(iter(self._run(remotes, name)), None)

    def close(self) -> None:
        self.conn.close()
