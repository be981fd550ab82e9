"""The schema, as a typed SQLAlchemy 2 ORM (``Mapped[...]``; ``X | None`` means nullable).

Tables are never renamed (alembic's batch mode on SQLite copies tables, and names are what
migrations refer to); constraints are named by the ``MetaData`` convention so batch mode can
drop them. Change this module only together with a new migration in ``registry_db/migrations``
(``tests/test_registry_schema.py`` runs ``alembic check``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary,
                        MetaData, String, Text, UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
DIGEST = String(71)  # "sha256:" + 64 hex
NAME = String(129)  # "ns/name", 64 + 1 + 64


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored in the registry; use UTC-aware datetimes")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), int: Integer(), str: Text()}


class Repository(Base):
    """A named line of versions, ``ns/name``. ``next_number`` never goes back, so a number
    once given is never reused even after gc purges the version."""

    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    next_number: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime]


class Version(Base):
    """One immutable adapter version: the canonical manifest plus columns that listings filter
    on (copied from the manifest). ``deleted_at`` marks a soft delete."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("repository_id", "number"),
                      UniqueConstraint("repository_id", "digest"))

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"))
    number: Mapped[int]
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    manifest: Mapped[str]
    method: Mapped[str] = mapped_column(String(64), index=True)
    base_name: Mapped[str | None] = mapped_column(String(256), index=True)
    base_fingerprint: Mapped[str | None] = mapped_column(DIGEST, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    author: Mapped[str | None] = mapped_column(String(256))
    message: Mapped[str | None]
    deleted_at: Mapped[datetime | None]


class VersionTensor(Base):
    """A version's reference to the blob holding one of its tensors."""

    __tablename__ = "version_tensors"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    name: Mapped[str] = mapped_column(String(1024), primary_key=True)
    blob_digest: Mapped[str] = mapped_column(DIGEST, index=True)


class Lineage(Base):
    """An edge from a version to one of its parents (by version digest, in manifest order)."""

    __tablename__ = "lineage"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    parent_digest: Mapped[str] = mapped_column(DIGEST, index=True)


class VersionLabel(Base):
    """A manifest label as a row, so ``list --label K=V`` is an index lookup."""

    __tablename__ = "version_labels"
    __table_args__ = (Index(None, "key", "value"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))


class Tag(Base):
    """A movable name for a version within its repository."""

    __tablename__ = "tags"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            index=True)
    updated_at: Mapped[datetime]


class Blob(Base):
    """Content-addressed bytes (a tensor's raw data), stored as compressed chunk rows.

    A blob is visible only once ``complete``: its bytes were hashed and matched ``digest``.
    Incomplete rows are uploads in progress (or left by a crash) and gc reclaims them once
    ``touched_at`` is older than its grace window. ``codec`` names how chunks are encoded
    (``zstd`` or ``zstd+bp<k>``, zstd after splitting ``k``-byte elements into byte planes).
    """

    __tablename__ = "blobs"
    # one complete blob per digest; any number of uploads of it may be in flight
    __table_args__ = (Index("uq_blobs_digest_complete", "digest", unique=True,
                            sqlite_where=text("complete"), postgresql_where=text("complete")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger, default=0)
    codec: Mapped[str] = mapped_column(String(16))
    chunk_size: Mapped[int]
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    touched_at: Mapped[datetime]
    #: an upload in progress: its unguessable id and the caller that opened it
    upload_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    #: a presigned upload's multipart upload id in the object store (``s3`` backend)
    object_upload: Mapped[str | None]


class BlobGrant(Base):
    """A caller proved it holds a blob's bytes (it uploaded them), so it may use the blob in
    its commits even where no version it can read references it yet (see
    :mod:`registry_db.access`). Storage deduplicates the bytes; grants keep them private."""

    __tablename__ = "blob_grants"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[datetime]


class Chunk(Base):
    """One encoded piece of a blob: raw bytes ``[index·chunk_size, …)`` after the codec."""

    __tablename__ = "chunks"

    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="CASCADE"),
                                         primary_key=True)
    index: Mapped[int] = mapped_column(primary_key=True)
    raw_size: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RemoteRow(Base):
    """A named remote registry (``adapterhub remote add NAME URL``)."""

    __tablename__ = "remotes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str]
    created_at: Mapped[datetime]


class Event(Base):
    """The audit log: pushes, pulls, tag moves, deletions, gc runs. ``actor`` comes from the
    caller's credentials (a token's name, the local user), never from what a client sent."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(16))
    repository: Mapped[str | None] = mapped_column(NAME, index=True)
    number: Mapped[int | None]
    digest: Mapped[str | None] = mapped_column(DIGEST)
    actor: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[str | None]
    #: the hub token that did it (the actor is its name); None for the local user
    token_id: Mapped[int | None]


class Token(Base):
    """An API token of ``adapterhub serve``: only the sha256 of the secret is stored.

    ``scopes`` is a JSON list of ``level:pattern`` strings (``write:team-*``); ``prefix`` is
    the start of the secret, shown by ``token list`` so a person can tell tokens apart.
    """

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Setting(Base):
    """A registry-wide setting chosen once (``blob_backend``: ``db`` or ``s3://BUCKET/PREFIX``,
    recorded by ``adapterhub init --blobs``). Never credentials."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str]
