"""store boundary: upload ownership, blob grants, token ids in the audit log

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import registry_db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_grants",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("granted_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", "owner", name=op.f("pk_blob_grants")),
    )
    # uploads left unfinished by an earlier version have no owner: nobody can resume them,
    # and gc reclaims them after its grace period
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("upload_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f("uq_blobs_upload_id"), ["upload_id"])
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("token_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("token_id")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_constraint("uq_blobs_upload_id", type_="unique")
        batch.drop_column("owner")
        batch.drop_column("upload_id")
    op.drop_table("blob_grants")
