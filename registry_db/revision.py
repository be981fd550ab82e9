"""The schema revision this code expects and how long a SQLite writer waits for the lock,
apart from the engine so that reading and writing a SQLite file with the standard library
alone (:mod:`registry_db.reads`, :mod:`registry_db.writes`) agree with it."""

#: the alembic revision this version of the code expects (a test checks it is the head)
SCHEMA_REVISION = "0005"
#: seconds a SQLite connection waits for another writer (concurrent pushers all succeed)
BUSY_TIMEOUT_S = 300
