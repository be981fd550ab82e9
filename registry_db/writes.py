"""Writing versions in plain SQL: the one implementation of storing verified blobs and of a
commit (the version, its tensor references, lineage, labels, kept files, tag moves and audit
entries), the counterpart of :mod:`registry_db.reads`.

The statements run on whatever executes SQL (:class:`Statements`): a SQLAlchemy session
inside the service (both backends), or a bare ``sqlite3`` connection
(:func:`open_sqlite_writer`). The second is why this module exists: ``adapterhub push``
and ``pull`` on a SQLite registry store blobs and versions without importing SQLAlchemy,
whose import alone takes longer than the rest of a small pull (``benchmarks/pull.py``). This
module imports nothing but the standard library and SQLAlchemy-free parts of
``registry_db``.

Access is decided as the service decides it: ``caller.require`` before anything is written,
and the caller's view of the blobs (``visible``) and versions (:func:`reads.find_id`) before
a manifest may name them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from registry_db import reads
from registry_db.access import Caller
from registry_db.clock import utcnow
from registry_db.digests import canonical_json
from registry_db.errors import (IntegrityError, InvalidRequestError, LimitExceededError,
                                MissingBlobsError, MissingParentsError, PermissionDeniedError,
                                RegistryError)
from registry_db.encode import encoded, write_encoded
from registry_db.manifest import MAX_MANIFEST_BYTES, Manifest
from registry_db.records import BlobStream, Buffer, CommitResult, StoredBlob, VersionInfo
from registry_db.refs import validate_key, validate_name, validate_tag
from registry_db.revision import BUSY_TIMEOUT_S
from registry_db.stored import write_checked

if TYPE_CHECKING:
    from registry_db.files import KeptFile

MAX_LABEL_VALUE = 1024
MAX_AUTHOR = 256
MAX_MESSAGE = 64 * 1024
#: the blob backend a registry without a ``blob_backend`` setting has
DB_BACKEND = "db"


@dataclass(frozen=True)
class Statements:
    """Plain SQL with ``:name`` parameters inside one write transaction: ``rows`` runs one
    statement and returns its rows (a ``SELECT`` or ``… RETURNING``), ``many`` runs one
    statement once per parameter set."""

    rows: reads.Rows
    many: Callable[[str, list[dict[str, Any]]], None]
    postgresql: bool

    def run(self, sql: str, params: dict[str, Any]) -> None:
        self.many(sql, [params])

    def time(self, value: datetime) -> datetime | str:
        """A time as the schema keeps it: SQLite as naive UTC text, as SQLAlchemy writes it
        (what :func:`reads._utc` reads back); PostgreSQL as the value."""
        if self.postgresql:
            return value
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")


# -- blobs ------------------------------------------------------------------------------------


def stored(sql: Statements, digests: Iterable[str]) -> set[str]:
    """Those of ``digests`` stored as complete blobs (every one the local user may see)."""
    found: set[str] = set()
    for batch in reads.batched(sorted(set(digests))):
        marks, params = reads.in_list(batch)
        found |= {d for (d,) in sql.rows(
            f"SELECT digest FROM blobs WHERE complete AND digest IN ({marks})", params)}
    return found


def touch(sql: Statements, digests: Iterable[str], now: datetime) -> None:
    """Renew ``touched_at`` of stored blobs, so a gc before the caller's commit keeps them."""
    for batch in reads.batched(sorted(set(digests))):
        marks, params = reads.in_list(batch)
        sql.run(f"UPDATE blobs SET touched_at = :now WHERE complete AND digest IN ({marks})",
                {**params, "now": sql.time(now)})


def insert_blobs(sql: Statements, blobs: Sequence[StoredBlob], now: datetime) -> None:
    """Insert verified blobs, their chunks as stored (none for a blob kept as an object,
    whose stored size is its size); those already stored are touched."""
    present = stored(sql, [blob.digest for blob in blobs])
    if present:
        touch(sql, present, now)
    new = [(blob, blob.stored_size if blob.chunks else blob.size)
           for blob in blobs if blob.digest not in present]
    if not new:
        return
    # a concurrent PostgreSQL writer may store one first; SQLite writers take turns
    skip = " ON CONFLICT (digest) WHERE complete DO NOTHING" if sql.postgresql else ""
    ids: dict[str, int] = {}
    for start in range(0, len(new), 100):
        values, params = [], {"now": sql.time(now)}
        for i, (blob, size) in enumerate(new[start:start + 100]):
            values.append(f"(:d{i}, :s{i}, :t{i}, :c{i}, :k{i}, :yes, :now, :now)")
            params.update({f"d{i}": blob.digest, f"s{i}": blob.size, f"t{i}": size,
                           f"c{i}": blob.codec, f"k{i}": blob.chunk_size})
        params["yes"] = True
        ids.update(sql.rows(
            "INSERT INTO blobs (digest, size, stored_size, codec, chunk_size, complete, "
            f"created_at, touched_at) VALUES {', '.join(values)}{skip} RETURNING digest, id",
            params))
    chunks = [{"blob_id": ids[blob.digest], "index": i, "raw_size": raw_size, "data": data}
              for blob, _ in new if blob.digest in ids
              for i, (raw_size, data) in enumerate(blob.chunks)]
    if chunks:
        sql.many('INSERT INTO chunks (blob_id, "index", raw_size, data) '
                 'VALUES (:blob_id, :index, :raw_size, :data)', chunks)


# -- commits ----------------------------------------------------------------------------------


def label_rows(labels: dict[str, Any]) -> dict[str, str]:
    """Labels as indexed strings (non-string values as canonical JSON); validates keys."""
    out = {}
    for key, value in labels.items():
        validate_key(key, "label key")
        text = value if isinstance(value, str) else canonical_json(value).decode()
        if len(text) > MAX_LABEL_VALUE:
            raise LimitExceededError(f"label {key!r} is {len(text)} characters; the limit is "
                                     f"{MAX_LABEL_VALUE}", hint="Put large data in metrics")
        out[key] = text
    return out


@dataclass(frozen=True)
class Commit:
    """A commit's request, checked (:func:`check_commit`) before its transaction opens."""

    name: str
    manifest: Manifest
    labels: dict[str, str]
    tags: tuple[str, ...]
    message: str | None
    author: str | None
    created_at: datetime | None
    files: tuple[KeptFile, ...]


def check_commit(name: str, manifest: Manifest, *, caller: Caller, tags: Sequence[str] = (),
                 message: str | None = None, author: str | None = None,
                 created_at: datetime | None = None, files: Sequence[KeptFile] = ()) -> Commit:
    """Refuse a commit the caller may not make or whose arguments break the limits."""
    validate_name(name)
    caller.require("write", name)
    for tag in tags:
        validate_tag(tag)
    for key, value, limit in (("author", author, MAX_AUTHOR), ("message", message, MAX_MESSAGE)):
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise InvalidRequestError(f"{key} must be a string of at most {limit} characters")
    if created_at is not None and created_at.tzinfo is None:
        raise InvalidRequestError("created_at needs a time zone")
    manifest.validate()
    canonical = manifest.canonical()
    if len(canonical) > MAX_MANIFEST_BYTES:
        raise LimitExceededError(f"the manifest is {len(canonical)} bytes; the limit is "
                                 f"{MAX_MANIFEST_BYTES}")
    return Commit(name, manifest, label_rows(manifest.labels), tuple(tags), message, author,
                  created_at, tuple(files))


def commit(sql: Statements, request: Commit, *, caller: Caller,
           visible: Callable[[set[str]], set[str]]) -> CommitResult:
    """Record ``request`` as the next version of its repository and move its tags, inside
    the caller's write transaction (see :meth:`RegistryService.commit` for the rules).
    ``visible``: which of some blob digests the caller may use."""
    now = utcnow()
    repo_id, next_number = lock_repository(sql, request.name, now)
    manifest = request.manifest
    found = sql.rows("SELECT id, number, deleted_at FROM versions WHERE repository_id = :repo "
                     "AND digest = :digest", {"repo": repo_id, "digest": manifest.digest})
    created = not found
    if created:
        _check_references(sql, request, caller, visible)
        version_id, number = _insert_version(sql, request, repo_id, next_number, now), next_number
        event(sql, "push", request.name, number, manifest.digest, caller,
              {"message": request.message, "author": request.author}, now)
    else:
        (version_id, number, deleted_at), = found
        if deleted_at is not None:
            if not caller.can("admin", request.name):
                raise PermissionDeniedError(
                    f"{request.name}@{number} was deleted; restoring it needs admin access to "
                    f"{request.name}", hint="Ask an admin of the repository")
            sql.run("UPDATE versions SET deleted_at = NULL WHERE id = :id", {"id": version_id})
            event(sql, "restore", request.name, number, manifest.digest, caller, {}, now)
    for tag in request.tags:
        set_tag(sql, repo_id, request.name, tag, (version_id, number, manifest.digest), caller,
                now)
    info = reads.version_infos(sql.rows, [version_id])[0]
    return CommitResult(replace(info, manifest=manifest), created)


def lock_repository(sql: Statements, name: str, now: datetime) -> tuple[int, int]:
    """``(id, next_number)`` of the repository, created if new, locked until the transaction
    ends (version numbers come from it; a SQLite writer holds the whole database)."""
    query = "SELECT id, next_number FROM repositories WHERE name = :name" + (
        " FOR UPDATE" if sql.postgresql else "")
    found = sql.rows(query, {"name": name})
    if not found:  # (created concurrently on PostgreSQL: theirs is used)
        sql.run("INSERT INTO repositories (name, next_number, created_at) VALUES "
                "(:name, 1, :now) ON CONFLICT (name) DO NOTHING",
                {"name": name, "now": sql.time(now)})
        found = sql.rows(query, {"name": name})
    return found[0][0], found[0][1]


def _check_references(sql: Statements, request: Commit, caller: Caller,
                      visible: Callable[[set[str]], set[str]]) -> None:
    """Every blob the manifest and the kept files name is one the caller may use, of exactly
    the size its tensor needs; every parent a version the caller may read."""
    manifest = request.manifest
    by_digest: dict[str, list[str]] = {}
    for tensor, entry in sorted(manifest.tensors.items()):
        by_digest.setdefault(entry.digest, []).append(tensor)
    parts = {d for f in request.files for d in f.parts or ()}
    usable = visible(set(by_digest) | parts)
    missing = sorted(set(by_digest) - usable)
    if missing:
        first = missing[0]
        raise MissingBlobsError(
            f"the manifest names {len(missing)} blob(s) this registry does not hold, e.g. "
            f"{first} (tensor {by_digest[first][0]!r})", digests=missing,
            hint="Send the blobs before committing the manifest")
    sizes = _sizes(sql, set(by_digest))
    for tensor, entry in sorted(manifest.tensors.items()):
        if sizes.get(entry.digest) != entry.nbytes:
            raise IntegrityError(
                f"tensor {tensor!r} is {entry.dtype} {list(entry.shape)}, {entry.nbytes} "
                f"bytes, but blob {entry.digest} holds {sizes.get(entry.digest)} bytes",
                hint="The manifest does not describe its tensors; rebuild it")
    hidden = [p for p in dict.fromkeys(manifest.parents)
              if reads.find_id(sql.rows, p, caller=caller) is None]
    if hidden:
        raise MissingParentsError(f"parent version(s) {hidden} are not in this registry")
    missing = sorted(parts - usable)
    if missing:
        raise MissingBlobsError(f"a kept file names {len(missing)} blob(s) this registry does "
                                f"not hold, e.g. {missing[0]}", digests=missing)
    sizes = _sizes(sql, parts)
    for f in request.files:
        if f.parts is not None and sum(sizes[d] for d in f.parts) != f.size:
            raise IntegrityError(f"the blobs of {f.path!r} do not add up to its {f.size} bytes")


def _sizes(sql: Statements, digests: set[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for batch in reads.batched(sorted(digests)):
        marks, params = reads.in_list(batch)
        sizes.update(sql.rows(f"SELECT digest, size FROM blobs WHERE complete AND digest IN "
                              f"({marks})", params))
    return sizes


def _insert_version(sql: Statements, request: Commit, repo_id: int, number: int,
                    now: datetime) -> int:
    manifest = request.manifest
    base = manifest.base_model
    ((version_id,),) = sql.rows(
        "INSERT INTO versions (repository_id, number, digest, manifest, method, base_name, "
        "base_fingerprint, size, created_at, author, message) VALUES (:repo, :number, "
        ":digest, :manifest, :method, :base_name, :base_fingerprint, :size, :created_at, "
        ":author, :message) RETURNING id",
        {"repo": repo_id, "number": number, "digest": manifest.digest,
         "manifest": manifest.canonical().decode("ascii"), "method": manifest.method_name,
         "base_name": base.get("name"), "base_fingerprint": base.get("fingerprint"),
         "size": manifest.nbytes, "created_at": sql.time(request.created_at or now),
         "author": request.author, "message": request.message})
    sql.run("UPDATE repositories SET next_number = :next WHERE id = :id",
            {"next": number + 1, "id": repo_id})
    rows = {  # a version may have thousands of tensors
        "INSERT INTO version_tensors (version_id, name, blob_digest) VALUES "
        "(:v, :name, :digest)": [{"v": version_id, "name": tensor, "digest": e.digest}
                                 for tensor, e in manifest.tensors.items()],
        "INSERT INTO lineage (version_id, position, parent_digest) VALUES (:v, :i, :parent)":
            [{"v": version_id, "i": i, "parent": p} for i, p in enumerate(manifest.parents)],
        "INSERT INTO version_labels (version_id, key, value) VALUES (:v, :key, :value)":
            [{"v": version_id, "key": k, "value": v} for k, v in request.labels.items()],
        "INSERT INTO version_files (version_id, path, sha256, size, rendered) VALUES "
        "(:v, :path, :sha256, :size, :rendered)":
            [{"v": version_id, "path": f.path, "sha256": f.sha256, "size": f.size,
              "rendered": f.parts is None} for f in request.files],
        'INSERT INTO version_file_parts (version_id, path, "index", blob_digest) VALUES '
        "(:v, :path, :i, :digest)":
            [{"v": version_id, "path": f.path, "i": i, "digest": d}
             for f in request.files for i, d in enumerate(f.parts or ())]}
    for statement, values in rows.items():
        if values:
            sql.many(statement, values)
    return version_id


def set_tag(sql: Statements, repo_id: int, name: str, tag: str,
            version: tuple[int, int, str], caller: Caller, now: datetime) -> None:
    """Point ``tag`` of the repository at ``version`` (``(id, number, digest)``)."""
    version_id, number, digest = version
    found = sql.rows("SELECT v.number FROM tags t JOIN versions v ON v.id = t.version_id "
                     "WHERE t.repository_id = :repo AND t.name = :tag",
                     {"repo": repo_id, "tag": tag})
    params = {"repo": repo_id, "tag": tag, "v": version_id, "now": sql.time(now)}
    if found:
        sql.run("UPDATE tags SET version_id = :v, updated_at = :now WHERE repository_id = "
                ":repo AND name = :tag", params)
    else:
        sql.run("INSERT INTO tags (repository_id, name, version_id, updated_at) VALUES "
                "(:repo, :tag, :v, :now)", params)
    event(sql, "tag", name, number, digest, caller,
          {"tag": tag, "previous": found[0][0] if found else None}, now)


def event(sql: Statements, action: str, repository: str | None, number: int | None,
          digest: str | None, caller: Caller, detail: dict[str, Any], now: datetime) -> None:
    """An audit entry; the actor comes from the caller's credentials."""
    sql.run("INSERT INTO events (at, action, repository, number, digest, actor, detail, "
            "token_id) VALUES (:at, :action, :repository, :number, :digest, :actor, :detail, "
            ":token_id)",
            {"at": sql.time(now), "action": action, "repository": repository,
             "number": number, "digest": digest, "actor": caller.actor,
             "detail": json.dumps(detail, sort_keys=True), "token_id": caller.token_id})


# -- a SQLite file without SQLAlchemy ---------------------------------------------------------


def open_sqlite_writer(reader: reads.SqliteReader) -> SqliteWriter | None:
    """The registry ``reader`` reads (a SQLite file at this code's schema, see
    :func:`reads.open_sqlite`) opened for :class:`SqliteWriter`'s writes with the standard
    library, or None where the service must do them: its blobs live in an object store."""
    backend = reader.conn.execute(
        "SELECT value FROM settings WHERE key = 'blob_backend'").fetchall()
    if backend not in ([], [(DB_BACKEND,)]):
        return None
    conn = sqlite3.connect(reader.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    # as registry_db.engine opens a connection (the file is WAL already)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return SqliteWriter(conn, reader.path)


class SqliteWriter(reads.SqliteReader):
    """A SQLite registry's reads, and what a push or a pull stores in it (blobs, the
    version, the audit entry), with the standard library alone. Each write is one
    ``BEGIN IMMEDIATE`` transaction, as the service's are."""

    def _write(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        conn = self.conn
        sql = Statements(lambda text, params: conn.execute(text, params).fetchall(),
                         conn.executemany, postgresql=False)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = call(sql, *args, **kwargs)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            raise RegistryError(f"registry {self.url}: {str(exc).splitlines()[0]}") from None

    def missing(self, digests: Iterable[str], *, caller: Caller) -> set[str]:
        """Which of ``digests`` are not stored (the local user sees every stored blob); those
        stored are touched, as the service does."""
        caller.require("write")
        wanted = set(digests)

        def check(sql: Statements) -> set[str]:
            present = stored(sql, wanted)
            touch(sql, present, utcnow())
            return wanted - present

        return self._write(check)

    def write_stored(self, blobs: Iterable[StoredBlob], *, caller: Caller) -> None:
        """Store blobs as another registry stored them, each decoded and hashed first (see
        :func:`registry_db.stored.write_checked`)."""
        caller.require("write")
        write_checked(blobs, lambda batch: self._write(insert_blobs, batch, utcnow()))

    def write_many(self, blobs: Iterable[tuple[str, Buffer | BlobStream, int]], *,
                   caller: Caller, stream: Callable[[str, BlobStream, int], None]) -> None:
        """Store blobs from their raw bytes, each hashed and compressed first (see
        :func:`registry_db.encode.write_encoded`); a blob too large for one transaction goes
        to ``stream``, which must store it otherwise (the service writes it as it is read)."""
        caller.require("write")
        write_encoded(blobs, encode=True, stream=stream, store=lambda jobs: self._write(
            insert_blobs, encoded(jobs), utcnow()))

    def commit(self, name: str, manifest: Manifest, *, caller: Caller,
               message: str | None = None, author: str | None = None,
               tags: Sequence[str] = (), created_at: datetime | None = None) -> CommitResult:
        request = check_commit(name, manifest, caller=caller, tags=tags, message=message,
                               author=author, created_at=created_at)
        return self._write(lambda sql: commit(sql, request, caller=caller,
                                              visible=lambda d: stored(sql, d)))

    def record_event(self, action: str, *, caller: Caller, version: VersionInfo | None = None,
                     detail: dict[str, Any] | None = None) -> None:
        self._write(lambda sql: event(sql, action, version and version.name,
                                      version and version.number, version and version.digest,
                                      caller, detail or {}, utcnow()))

