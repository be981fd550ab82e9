"""Alembic migrations of the registry schema, run on open by :func:`registry_db.engine.upgrade`.

To add one after changing :mod:`registry_db.models`::

    python -m registry_db.migrations "what changed"

writes ``versions/<rev>_<slug>.py`` by autogenerate against a scratch SQLite database at the
current head. Review it, then set ``registry_db.revision.SCHEMA_REVISION`` to the new revision.
"""
