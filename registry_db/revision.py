"""The schema revision this code expects, apart from the engine so that reading a SQLite file
with the standard library alone (:mod:`registry_db.reads`) can check it."""

#: the alembic revision this version of the code expects (a test checks it is the head)
SCHEMA_REVISION = "0005"
