"""xet: the hub's persistent Xet upload store (xorbs, dedup index, files, shards, grants) and
the files of versions committed through the Hugging Face API, kept byte for byte

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import registry_db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _when() -> sa.Column:
    return sa.Column("created_at", registry_db.models.UTCDateTime(timezone=True),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "xet_xorbs",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("blob_digest", sa.String(length=71), nullable=False),
        sa.Column("info", sa.LargeBinary(), nullable=False),
        _when(),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_xet_xorbs")),
    )
    op.create_index(op.f("ix_xet_xorbs_blob_digest"), "xet_xorbs", ["blob_digest"])
    op.create_table(
        "xet_chunks",
        sa.Column("chunk_hash", sa.String(length=64), nullable=False),
        sa.Column("xorb_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chunk_hash", "xorb_hash", name=op.f("pk_xet_chunks")),
    )
    op.create_table(
        "xet_files",
        sa.Column("file_hash", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        _when(),
        sa.PrimaryKeyConstraint("file_hash", name=op.f("pk_xet_files")),
    )
    op.create_index("ix_xet_files_sha256", "xet_files", ["sha256"])
    op.create_table(
        "xet_file_xorbs",
        sa.Column("file_hash", sa.String(length=64), nullable=False),
        sa.Column("xorb_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("file_hash", "xorb_hash", name=op.f("pk_xet_file_xorbs")),
    )
    op.create_table(
        "xet_shards",
        sa.Column("shard_id", sa.String(length=64), nullable=False),
        sa.Column("blob_digest", sa.String(length=71), nullable=False),
        _when(),
        sa.PrimaryKeyConstraint("shard_id", name=op.f("pk_xet_shards")),
    )
    op.create_index(op.f("ix_xet_shards_blob_digest"), "xet_shards", ["blob_digest"])
    op.create_table(
        "xet_grants",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("granted_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", "kind", "hash", name=op.f("pk_xet_grants")),
    )
    op.create_table(
        "version_files",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("rendered", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE",
                                name=op.f("fk_version_files_version_id_versions")),
        sa.PrimaryKeyConstraint("version_id", "path", name=op.f("pk_version_files")),
    )
    op.create_table(
        "version_file_parts",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("blob_digest", sa.String(length=71), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE",
                                name=op.f("fk_version_file_parts_version_id_versions")),
        sa.PrimaryKeyConstraint("version_id", "path", "index",
                                name=op.f("pk_version_file_parts")),
    )
    op.create_index(op.f("ix_version_file_parts_blob_digest"), "version_file_parts",
                    ["blob_digest"])


def downgrade() -> None:
    for table in ("version_file_parts", "version_files", "xet_grants", "xet_shards",
                  "xet_file_xorbs", "xet_files", "xet_chunks", "xet_xorbs"):
        op.drop_table(table)
