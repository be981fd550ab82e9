"""blob backends: registry-wide settings (where blobs live: the database or an object store)
and the object store's id of a presigned upload

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("object_upload", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("object_upload")
    op.drop_table("settings")
