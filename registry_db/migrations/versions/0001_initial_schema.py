"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 12:10:28.025250
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import registry_db.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(length=16), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("touched_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blobs")),
    )
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blobs_digest"), ["digest"], unique=False)
        batch_op.create_index(
            "uq_blobs_digest_complete",
            ["digest"],
            unique=True,
            sqlite_where=sa.text("complete"),
            postgresql_where=sa.text("complete"),
        )

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("repository", sa.String(length=129), nullable=True),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("digest", sa.String(length=71), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_repository"), ["repository"], unique=False)

    op.create_table(
        "remotes",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("created_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_remotes")),
    )
    op.create_table(
        "repositories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=129), nullable=False),
        sa.Column("next_number", sa.Integer(), nullable=False),
        sa.Column("created_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repositories")),
        sa.UniqueConstraint("name", name=op.f("uq_repositories_name")),
    )
    op.create_table(
        "chunks",
        sa.Column("blob_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"], ["blobs.id"], name=op.f("fk_chunks_blob_id_blobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("blob_id", "index", name=op.f("pk_chunks")),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("base_name", sa.String(length=256), nullable=True),
        sa.Column("base_fingerprint", sa.String(length=71), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(length=256), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("deleted_at", registry_db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_versions_repository_id_repositories"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint(
            "repository_id", "digest", name=op.f("uq_versions_repository_id_digest")
        ),
        sa.UniqueConstraint(
            "repository_id", "number", name=op.f("uq_versions_repository_id_number")
        ),
    )
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_versions_base_fingerprint"), ["base_fingerprint"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_versions_base_name"), ["base_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_versions_digest"), ["digest"], unique=False)
        batch_op.create_index(batch_op.f("ix_versions_method"), ["method"], unique=False)

    op.create_table(
        "lineage",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("parent_digest", sa.String(length=71), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_lineage_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "position", name=op.f("pk_lineage")),
    )
    with op.batch_alter_table("lineage", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_lineage_parent_digest"), ["parent_digest"], unique=False
        )

    op.create_table(
        "tags",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"], ["repositories.id"], name=op.f("fk_tags_repository_id_repositories")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_tags_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", "name", name=op.f("pk_tags")),
    )
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tags_version_id"), ["version_id"], unique=False)

    op.create_table(
        "version_labels",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_version_labels_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "key", name=op.f("pk_version_labels")),
    )
    with op.batch_alter_table("version_labels", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_version_labels_key_value"), ["key", "value"], unique=False
        )

    op.create_table(
        "version_tensors",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("blob_digest", sa.String(length=71), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_version_tensors_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "name", name=op.f("pk_version_tensors")),
    )
    with op.batch_alter_table("version_tensors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_version_tensors_blob_digest"), ["blob_digest"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("version_tensors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_tensors_blob_digest"))

    op.drop_table("version_tensors")
    with op.batch_alter_table("version_labels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_labels_key_value"))

    op.drop_table("version_labels")
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tags_version_id"))

    op.drop_table("tags")
    with op.batch_alter_table("lineage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lineage_parent_digest"))

    op.drop_table("lineage")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_versions_method"))
        batch_op.drop_index(batch_op.f("ix_versions_digest"))
        batch_op.drop_index(batch_op.f("ix_versions_base_name"))
        batch_op.drop_index(batch_op.f("ix_versions_base_fingerprint"))

    op.drop_table("versions")
    op.drop_table("chunks")
    op.drop_table("repositories")
    op.drop_table("remotes")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_repository"))
        batch_op.drop_index(batch_op.f("ix_events_at"))

    op.drop_table("events")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_blobs_digest_complete",
            sqlite_where=sa.text("complete"),
            postgresql_where=sa.text("complete"),
        )
        batch_op.drop_index(batch_op.f("ix_blobs_digest"))

    op.drop_table("blobs")
