"""The SQLAlchemy-free read path (``registry_db.reads.open_sqlite``) answers exactly as the
service does, sees other processes' commits, and steps aside when it cannot read a file."""

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from helpers.registry_helpers import LOCAL, push_raw, tensor_bytes

from registry_db import (AdapterNotFoundError, Caller, PermissionDeniedError, RegistryService,
                         parse_scope)
from registry_db.access import TokenInfo
from registry_db.reads import open_sqlite


@pytest.fixture
def populated(tmp_path):
    db = tmp_path / "registry.db"
    with RegistryService(db) as service:
        first = push_raw(service, "team/bot", {"w": tensor_bytes(1)}, labels={"data": "v1"},
                         tags=["dev"], message="first").version
        push_raw(service, "team/bot", {"w": tensor_bytes(2)}, labels={"data": "v2", "a": "1"},
                 parents=(first.digest,), author="ana")
        push_raw(service, "team/bot", {"w": tensor_bytes(3)}, tags=["prod"])
        push_raw(service, "lab/other", {"w": tensor_bytes(4)})
        service.remove("team/bot@3", caller=LOCAL)
    return db


REFS = ["team/bot", "team/bot@1", "team/bot@2", "team/bot:dev", "lab/other"]


def test_reader_answers_as_the_service_does(populated):
    reader = open_sqlite(populated)
    assert reader is not None
    with RegistryService(populated) as service:
        for ref in REFS + [f"team/bot@{service.resolve('team/bot@1', caller=LOCAL).digest[:19]}"]:
            mine, theirs = reader.resolve(ref, caller=LOCAL), service.resolve(ref, caller=LOCAL)
            assert mine == theirs and mine.manifest == theirs.manifest, ref
        for kwargs in ({}, {"prefix": "team/"}, {"labels": {"data": "v2"}}, {"method": "lora"},
                       {"base": "tiny"}, {"include_deleted": True}):
            prefix = kwargs.pop("prefix", None)
            assert (reader.list_versions(prefix, caller=LOCAL, **kwargs)
                    == service.list_versions(prefix, caller=LOCAL, **kwargs)), kwargs
        assert reader.log("team/bot", caller=LOCAL) == service.log("team/bot", caller=LOCAL)
    log = reader.log("team/bot", caller=LOCAL)
    assert [v.number for v in log] == [3, 2, 1] and log[0].deleted
    assert log[1].parents == (log[2].digest,) and log[1].labels == {"a": "1", "data": "v2"}
    assert log[1].created_at.tzinfo is not None and log[1].author == "ana"
    with pytest.raises(AdapterNotFoundError, match="was deleted"):
        reader.resolve("team/bot@3", caller=LOCAL)
    with pytest.raises(AdapterNotFoundError, match="no repository"):
        reader.log("team/none", caller=LOCAL)
    reader.close()


def test_reader_applies_the_callers_rights(populated):
    reader = open_sqlite(populated)
    token = TokenInfo(id=1, name="ci", prefix="x", scopes=(parse_scope("read:team/*"),),
                      created_at=datetime.now(timezone.utc), expires_at=None, revoked_at=None)
    team_reader = Caller.for_token(token)
    assert {v.name for v in reader.list_versions(caller=team_reader)} == {"team/bot"}
    with pytest.raises(PermissionDeniedError, match="lab/other"):
        reader.resolve("lab/other", caller=team_reader)


def test_reader_sees_commits_of_other_processes(populated):
    reader = open_sqlite(populated)
    before = len(reader.list_versions(caller=LOCAL))
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from helpers.registry_helpers import push_raw, tensor_bytes\n"
            "from registry_db import RegistryService\n"
            f"with RegistryService({str(populated)!r}) as s:\n"
            "    push_raw(s, 'team/bot', {'w': tensor_bytes(9)})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(reader.list_versions(caller=LOCAL)) == before + 1
    assert reader.resolve("team/bot", caller=LOCAL).number == 4


def test_reader_steps_aside(tmp_path, populated):
    assert open_sqlite(tmp_path / "missing.db") is None
    assert open_sqlite("postgresql://u@127.0.0.1/db") is None
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 10)
    assert open_sqlite(junk) is None
    with sqlite3.connect(populated) as conn:  # a schema other than this code's
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    assert open_sqlite(populated) is None
    assert open_sqlite(f"sqlite:///{tmp_path / 'missing.db'}") is None
