"""api tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:20:14.978825
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import registry_db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", registry_db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", registry_db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", registry_db.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tokens_token_hash")),
    )


def downgrade() -> None:
    op.drop_table("tokens")
