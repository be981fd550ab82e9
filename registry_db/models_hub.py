"""The hub's tables: the Xet upload store (see :mod:`registry_db.xet`) and the files kept
byte for byte for Hugging Face commits (see :mod:`registry_db.files`); same rules as
:mod:`registry_db.models`: change only together with a migration.

Xorb and shard bytes are blobs of the ordinary blob store (``blob_digest``); these rows say
what they hold and who may use them. Hashes are Xet's 64-hex text form.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from registry_db.models import DIGEST, Base

XET_HASH = String(64)


class XetXorb(Base):
    """A verified xorb: its bytes (chunks + footer) are the blob ``blob_digest``; ``info``
    is its chunk list, packed by the hub (the store keeps it opaque)."""

    __tablename__ = "xet_xorbs"

    hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)
    blob_digest: Mapped[str] = mapped_column(DIGEST, index=True)
    info: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class XetChunk(Base):
    """The global-dedup index: a chunk hash → a xorb that holds it."""

    __tablename__ = "xet_chunks"

    chunk_hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)
    xorb_hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)


class XetFile(Base):
    """A verified file reconstruction (``entry``: its terms, packed by the hub)."""

    __tablename__ = "xet_files"
    __table_args__ = (Index("ix_xet_files_sha256", "sha256"),)

    file_hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class XetFileXorb(Base):
    """The xorbs a file's reconstruction reads (what gc must keep for a kept file)."""

    __tablename__ = "xet_file_xorbs"

    file_hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)
    xorb_hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)


class XetShard(Base):
    """An uploaded shard, kept as the blob ``blob_digest``."""

    __tablename__ = "xet_shards"

    shard_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    blob_digest: Mapped[str] = mapped_column(DIGEST, index=True)
    created_at: Mapped[datetime]


class XetGrant(Base):
    """``owner`` (a caller's :attr:`~registry_db.access.Caller.owner`) uploaded this xorb
    (``kind`` "xorb") or file ("file"), so it may reference it; nobody else may."""

    __tablename__ = "xet_grants"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    hash: Mapped[str] = mapped_column(XET_HASH, primary_key=True)
    granted_at: Mapped[datetime]


class VersionFile(Base):
    """A file of a version committed through the Hugging Face API, kept byte for byte (see
    :mod:`registry_db.files`); a version with such rows has exactly these files."""

    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    #: the hub renders this file itself (its bytes are what it would render); no parts
    rendered: Mapped[bool]


class VersionFilePart(Base):
    """The blobs a kept file's bytes are, in order (a safetensors file: its header, then one
    blob per tensor, the version's own tensor blobs)."""

    __tablename__ = "version_file_parts"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    index: Mapped[int] = mapped_column(primary_key=True)
    blob_digest: Mapped[str] = mapped_column(DIGEST, index=True)
