"""A push or a pull into an existing SQLite registry is written with the standard library
(:class:`registry_db.writes.SqliteWriter`, no SQLAlchemy import): the same rows as the
service writes, the same checks, and the service takes over for what the writer does not do.
"""

import sqlite3

import pytest
import torch
from helpers.hub_server import HubServer
from test_cli_imports import command
from test_stored_pull import lora, stored_chunks

from adapterhub.errors import IntegrityError
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry
from adapterhub.registry.remotes import SqliteFileRemote
from registry_db import RegistryService
from registry_db.reads import open_sqlite
from registry_db.writes import open_sqlite_writer

TABLES = {  # what a pull writes, without row ids and times (those differ between two pulls)
    "versions": "SELECT r.name, v.number, v.digest, v.manifest, v.method, v.base_name, "
                "v.base_fingerprint, v.size, v.created_at, v.author, v.message, v.deleted_at "
                "FROM versions v JOIN repositories r ON r.id = v.repository_id ORDER BY 1, 2",
    "tensors": "SELECT v.digest, t.name, t.blob_digest FROM version_tensors t "
               "JOIN versions v ON v.id = t.version_id ORDER BY 1, 2",
    "lineage": "SELECT v.digest, l.position, l.parent_digest FROM lineage l "
               "JOIN versions v ON v.id = l.version_id ORDER BY 1, 2",
    "labels": "SELECT v.digest, l.key, l.value FROM version_labels l "
              "JOIN versions v ON v.id = l.version_id ORDER BY 1, 2",
    "blobs": "SELECT b.digest, b.size, b.stored_size, b.codec, b.chunk_size, b.complete, "
             "c.\"index\", c.raw_size, c.data FROM blobs b JOIN chunks c ON c.blob_id = b.id "
             "ORDER BY 1, 7",
    "repositories": "SELECT name, next_number FROM repositories ORDER BY 1",
    "events": "SELECT action, repository, number, digest, actor, detail, token_id FROM events "
              "ORDER BY id",
}


def rows(db) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        return {table: conn.execute(sql).fetchall() for table, sql in TABLES.items()}


def existing(path):
    """A registry as ``adapterhub init`` leaves it (so a pull need not create the schema)."""
    RegistryService(path).close()
    return path


def merged(parent: AdapterPackage) -> AdapterPackage:
    g = torch.Generator().manual_seed(7)
    child = AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8, "target_modules": ["lin0"]}, {
        "lin0.lora_A": torch.randn(4, 64, generator=g).to(torch.bfloat16),
        "lin0.lora_B": parent.tensors["lin0.lora_B"]}, base_name="tiny")
    return child.with_manifest(parents=[parent.digest], labels={"run": "7", "step": 3})


def test_a_pull_writes_the_same_rows_as_the_service(tmp_path, monkeypatch):
    parent = lora()
    child = merged(parent)
    with HubServer(str(tmp_path / "hub.db")) as server:
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("write:team"))
        server.hub.registry.push(parent, "team/base", progress=False)
        server.hub.registry.push(child, "team/bot", progress=False, tags=["prod"])
        written = {}
        for how, db in (("service", tmp_path / "service.db"),  # a new file: the service
                        ("writer", existing(tmp_path / "writer.db"))):
            with Registry(db) as local:
                assert (local._write_target().__class__ is SqliteFileRemote) == (how == "writer")
                pulled = local.pull("team/bot:prod", server.url, progress=False)
                assert pulled.digest == child.digest and pulled.parents == (parent.digest,)
                again = local.pull("team/bot:prod", server.url, progress=False)
                assert again.number == pulled.number  # the same version, not a new one
                assert local.verify().ok
            written[how] = rows(db)
        theirs = stored_chunks(server.hub.registry.service)
    assert written["writer"] == written["service"]
    assert written["writer"]["lineage"] == [(child.digest, 0, parent.digest)]
    assert [e[0] for e in written["writer"]["events"]] == ["push", "push", "pull", "pull"]
    with RegistryService(tmp_path / "writer.db") as service:
        assert stored_chunks(service) == theirs  # kept as the hub stores them


def test_large_blobs_hand_the_pull_to_the_service(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(3)
    package = AdapterPackage.build("lora", {"r": 8, "lora_alpha": 8, "target_modules": ["w"]}, {
        "w.lora_A": torch.randn(8, 4096, generator=g),  # 128 KiB: as stored
        "w.lora_B": torch.randn(4096 * 64, 8, generator=g)}, base_name="tiny")  # 8 MiB: raw
    with HubServer(str(tmp_path / "hub.db")) as server:
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("write:team"))
        server.hub.registry.push(package, "team/big", progress=False)
        with Registry(existing(tmp_path / "local.db")) as local:
            assert local.pull("team/big", server.url, progress=False).digest == package.digest
            assert local._service is not None  # the 8 MiB blob came as a stream: the service kept it
            assert local.get("team/big").digest == package.digest
            assert [e.action for e in local.events()] == ["pull", "push"]


def test_only_a_current_sqlite_file_on_the_db_backend_gets_a_writer(tmp_path):
    assert open_sqlite(tmp_path / "absent.db") is None  # (the service creates it)
    db = existing(tmp_path / "registry.db")
    for backend, writes in ((None, True), ("db", True), ("s3://bucket/prefix", False)):
        if backend:
            with sqlite3.connect(db) as conn:
                conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES "
                             "('blob_backend', ?)", (backend,))
        reader = open_sqlite(db)
        writer = open_sqlite_writer(reader)
        reader.close()
        assert (writer is not None) == writes, backend  # s3: the service writes
        if writer is not None:
            writer.close()
    with Registry(db) as local:
        assert not isinstance(local._write_target(), SqliteFileRemote)


def test_pull_from_a_hub_into_a_registry_imports_no_sqlalchemy(tmp_path, monkeypatch):
    with HubServer(str(tmp_path / "hub.db")) as server:
        server.hub.registry.push(lora(), "team/bot", progress=False)
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("read:team"))
        db = existing(tmp_path / "local.db")
        modules = command("pull", "team/bot", "--from", server.url, "-q", db=db)
    assert "sqlalchemy" not in modules and "torch" not in modules
    assert [v[1] for v in rows(db)["versions"]] == [1]


def test_a_push_writes_the_same_rows_as_the_service(tmp_path):
    parent = lora()
    child = merged(parent)
    written = {}
    for how, db in (("service", tmp_path / "service.db"), ("writer", existing(tmp_path / "w.db"))):
        with Registry(db) as local:
            assert (local._write_target().__class__ is SqliteFileRemote) == (how == "writer")
            local.push(parent, "team/base", progress=False, author="ci")
            result = local.push(child, "team/bot", progress=False, tags=["dev"], author="ci")
            assert result.created and result.version.tags == ("dev",)
            again = local.push(child, "team/bot", progress=False, tags=["prod"], author="ci")
            assert not again.created and set(again.version.tags) == {"dev", "prod"}
            assert local._service is None or how == "service"
            assert local.verify().ok
        written[how] = rows(db)
        assert all(v[8] for v in written[how]["versions"])
        written[how]["versions"] = [v[:8] + v[9:] for v in written[how]["versions"]]  # (now)
    assert written["writer"] == written["service"]
    assert [e[0] for e in written["writer"]["events"]] == ["push", "push", "tag", "tag"]


def test_a_push_refuses_bytes_that_do_not_match_the_manifest(tmp_path):
    package = lora()
    package.save(tmp_path / "adapter")
    tensors = tmp_path / "adapter" / "adapter.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x01  # the last tensor's last byte
    tensors.write_bytes(bytes(data))
    db = existing(tmp_path / "local.db")
    with Registry(db) as local:
        with pytest.raises(IntegrityError, match="hash to"):
            local.push(tmp_path / "adapter", "team/bot", progress=False)
    assert rows(db)["versions"] == [] and rows(db)["events"] == []


def test_a_blob_larger_than_a_transaction_is_streamed_by_the_service(tmp_path, monkeypatch):
    from registry_db import stored

    monkeypatch.setattr(stored, "BATCH_BYTES", 64 * 1024)  # the 128 KiB tensors stream
    package = lora()
    g = torch.Generator().manual_seed(5)
    big = AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8, "target_modules": ["w"]}, {
        "w.lora_A": torch.randn(4, 64, generator=g),
        "w.lora_B": torch.randn(8192, 4, generator=g)}, base_name="tiny")
    with Registry(existing(tmp_path / "local.db")) as local:
        local.push(package, "team/small", progress=False)
        assert local._service is None  # small tensors: the writer alone
        local.push(big, "team/big", progress=False)
        assert local._service is not None  # the 128 KiB tensor went through the service
        assert local.get("team/big").digest == big.digest and local.verify().ok


def test_push_into_a_registry_imports_no_sqlalchemy(tmp_path):
    lora().save(tmp_path / "adapter")
    db = existing(tmp_path / "local.db")
    modules = command("push", str(tmp_path / "adapter"), "team/bot", "-q", db=db)
    assert "sqlalchemy" not in modules and "torch" not in modules
    assert [v[:2] for v in rows(db)["versions"]] == [("team/bot", 1)]
