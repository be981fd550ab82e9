"""Alembic environment: always runs on the connection given in ``config.attributes``."""

from __future__ import annotations

from alembic import context

import registry_db.models_hub  # noqa: F401  (the Xet tables)
from registry_db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
