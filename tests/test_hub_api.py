"""The hub's native API through the http remote and the CLI, against a real uvicorn server
on 127.0.0.1 (SQLite and PostgreSQL): push, pull, tags, search, lineage, tokens, login,
health, metrics, access logs, resumable uploads and ranged downloads."""

import json
import logging
import os
import re
import socket
import stat
import struct
import threading

import httpx
import pytest
import torch
from helpers.hub_server import HubServer

from adapterhub.errors import AuthenticationError, PermissionDeniedError
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["lin0", "lin1"]}


def lora(seed=0, big=0, **fields):
    g = torch.Generator().manual_seed(seed)
    tensors = {"lin0.lora_A": torch.randn(4, 16, generator=g),
               "lin0.lora_B": torch.randn(32, 4, generator=g),
               "lin1.lora_A": torch.randn(4, 32, generator=g),
               "lin1.lora_B": torch.randn(16, 4, generator=g)}
    if big:  # a blob over the bundle threshold: sent as a chunked upload
        tensors["big.lora_A"] = torch.randn(4, big, generator=g)
        tensors["big.lora_B"] = torch.randn(8, 4, generator=g)
    return AdapterPackage.build("lora", CONFIG, tensors, base_name="tiny", **fields)


@pytest.fixture
def hub(registry_url):
    with HubServer(registry_url) as server:
        yield server


def test_push_pull_over_http_with_lineage_tags_and_search(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.token("write:team", "read:shared"))
    base = lora(0, big=1_200_000)  # 19 MiB of fp32: resumable chunked upload of a big blob
    with Registry(tmp_path / "local.db") as local:
        first = local.push(base, "team/bot", progress=False).version
        child = local.push(lora(1, parents=(first.digest,)), "team/bot-ft", progress=False)
        pushed = local.push("team/bot-ft@1", "team/bot-ft", to=hub.url, tags=["prod"],
                            progress=False)
    assert pushed.created and pushed.version.tags == ("prod",)
    theirs = hub.hub.registry
    assert [v.ref for v in theirs.list()] == ["team/bot@1", "team/bot-ft@1"]  # parent first
    assert theirs.verify().ok

    with Registry(tmp_path / "other.db") as other:
        pulled = other.pull("team/bot-ft:prod", hub.url, progress=False)
        assert pulled.digest == child.version.digest
        got = other.get("team/bot@1")
        assert all(torch.equal(got.tensors[k], base.tensors[k]) for k in base.tensors)
        assert other.verify().ok

    headers = {"Authorization": f"Bearer {os.environ['ADAPTERHUB_TOKEN']}"}
    found = httpx.get(f"{hub.url}/api/v1/versions", params={"prefix": "team/bot-"},
                      headers=headers).json()
    assert [v["ref"] for v in found] == ["team/bot-ft@1"]
    graph = httpx.get(f"{hub.url}/api/v1/lineage", params={"ref": "team/bot"},
                      headers=headers).json()
    assert [c["ref"] for c in graph["children"]] == ["team/bot-ft@1"]
    graph = httpx.get(f"{hub.url}/api/v1/lineage", params={"ref": "team/bot-ft"},
                      headers=headers).json()
    assert [(a["ref"], a["depth"]) for a in graph["ancestors"]] == [("team/bot@1", 1)]
    moved = httpx.put(f"{hub.url}/api/v1/repos/team/bot/tags/stable",
                      json={"ref": "team/bot@1"}, headers=headers)
    assert moved.status_code == 200 and moved.json()["tags"] == ["stable"]
    # deleting a version needs admin
    assert httpx.delete(f"{hub.url}/api/v1/repos/team/bot/versions/1",
                        headers=headers).status_code == 403
    admin = {"Authorization": f"Bearer {hub.token('admin:team')}"}
    assert httpx.delete(f"{hub.url}/api/v1/repos/team/bot/versions/1",
                        headers=admin).json()["deleted"] is True


def test_cli_push_pull_json_tokens_and_login(tmp_path, run, monkeypatch):
    db = str(tmp_path / "hub.db")
    created = json.loads(run("token", "create", "--scope", "write:team", "--expires", "30d",
                             "--name", "ci", "--json", "--db", db).stdout)
    token = created["token"]
    assert token.startswith("ahub_") and created["scopes"] == ["write:team"]
    err = run("token", "create", "--scope", "owner:team", "--db", db, code=1).stderr
    assert "invalid scope 'owner:team'" in err and "--scope write:team-*" in err
    listed = json.loads(run("token", "list", "--json", "--db", db).stdout)
    assert [t["state"] for t in listed] == ["active"] and "token" not in listed[0]
    assert token not in run("token", "list", "--db", db).stdout
    with Registry(db) as reg:  # only the hash is stored
        assert token not in json.dumps([t.to_dict() for t in reg.service.tokens.list()])
    lora().save(tmp_path / "a")
    with HubServer(db, token_cache=0) as server:  # it revokes a token in use, below
        # no token: one line that says what to do
        err = run("push", "a", "team/bot", "--to", server.url, "--db", "local.db",
                  code=1).stderr
        assert len(err.strip().splitlines()) == 1 and "needs a token" in err
        assert "adapterhub login" in err
        saved = run("login", server.url, "--token", token).stdout
        assert "logged in" in saved
        path = tmp_path / "home-tokens.json"
        from adapterhub.registry.credentials import _path

        path = _path()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        out = json.loads(run("push", "a", "team/bot", "--to", server.url, "--tag", "prod",
                             "--db", "local.db", "--json").stdout)
        assert out["ref"] == "team/bot@1" and out["created"] is True
        pulled = json.loads(run("pull", "team/bot:prod", "--from", server.url, "--db",
                                "copy.db", "--out", "peft", "--format", "peft",
                                "--json").stdout)
        assert pulled["digest"] == out["digest"]
        assert (tmp_path / "peft" / "adapter_model.safetensors").exists()
        run("remote", "add", "hub", server.url, "--db", "copy.db")
        again = json.loads(run("push", "a", "team/bot", "--to", "hub", "--db", "copy.db",
                               "--json").stdout)
        assert again["created"] is False
        err = run("push", "a", "other/bot", "--to", server.url, "--db", "local.db",
                  code=1).stderr
        assert "does not grant write access to other/bot" in err and "write:other" in err
        run("token", "revoke", str(created["id"]), "--db", db)
        err = run("pull", "team/bot", "--from", server.url, "--db", "x.db", code=1).stderr
        assert "revoked" in err and len(err.strip().splitlines()) == 1
        run("logout", server.url)


def test_health_metrics_and_json_access_log(tmp_path, caplog):
    with HubServer(str(tmp_path / "hub.db")) as server:
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        token = server.token("read")
        admin = {"Authorization": f"Bearer {server.token('admin')}"}
        with caplog.at_level(logging.INFO, logger="adapterhub.hub.access"):
            httpx.get(f"{server.url}/api/v1/versions")  # 401
            httpx.get(f"{server.url}/api/v1/versions", headers={"Authorization":
                                                                f"Bearer {token}"})
            assert httpx.get(f"{server.url}/metrics", headers={
                "Authorization": f"Bearer {token}"}).status_code == 403  # admins only
            text = httpx.get(f"{server.url}/metrics", headers=admin).text
    # refused before any route ran: the token is checked before the request is handled
    assert re.search(r'adapterhub_requests_total\{method="GET",handler="guard",'
                     r'status="401"\} 1\n', text)
    assert re.search(r'adapterhub_requests_total\{method="GET",handler="versions",'
                     r'status="200"\} 1\n', text)
    assert "adapterhub_registry_versions 0" in text
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "adapterhub.hub.access"]
    assert {"method": "GET", "path": "/api/v1/versions", "status": 401}.items() <= \
        lines[0].items()
    assert lines[0]["client"].startswith("127.0.0.1:") and "ms" in lines[0]
    assert lines[0]["token"] is None and lines[1]["token"] == 1  # the id, never the secret
    assert token not in caplog.text


def test_upload_resumes_from_what_the_hub_already_holds(tmp_path, monkeypatch):
    """A push started by another process stopped after one chunk: the next push asks the hub
    what it holds and sends only the remaining chunks."""
    package = lora(3, big=3_000_000)  # 48 MiB of fp32: six 8 MiB chunks
    big = package.manifest.tensors["big.lora_A"]
    data = package.tensors["big.lora_A"].numpy().tobytes()
    with HubServer(str(tmp_path / "hub.db")) as server:
        token = server.token("write:team")
        monkeypatch.setenv("ADAPTERHUB_TOKEN", token)
        headers = {"Authorization": f"Bearer {token}"}
        upload = httpx.post(f"{server.url}/api/v1/uploads", headers=headers, json={
            "digest": big.digest, "size": len(data), "itemsize": 4}).json()
        chunk = upload["chunk_size"]
        assert httpx.put(f"{server.url}/api/v1/uploads/{upload['upload_id']}/chunks/0",
                         content=data[:chunk], headers=headers).status_code == 204
        with Registry(tmp_path / "local.db") as local:
            local.push(package, "team/big", to=server.url, progress=False)
        chunks = -(-len(data) // chunk)
        puts = server.hub.metrics.requests[("PUT", "upload_chunk", 204)]
        assert puts == chunks  # chunk 0 once (by hand), the others once: none sent twice
        assert server.hub.registry.get("team/big@1").digest == package.digest


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 that cuts the first ``drops`` connections after ``cut_after``
    bytes from the client (``up``: dropped mid-upload) or to it (``down``: mid-download)."""

    def __init__(self, target_port, *, drops, cut_after, direction="up"):
        self.target = target_port
        self.direction = direction
        self.drops = drops
        self.cut_after = cut_after
        self.dropped = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            cut = self.dropped < self.drops
            self.dropped += cut
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client, cut):
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def pump(src, dst, limit):
            sent = 0
            try:
                while data := src.recv(65536):
                    if limit is not None and sent + len(data) > limit:
                        dst.sendall(data[:limit - sent])
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            for sock in (client, upstream):  # wakes the other direction's recv
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        up, down = (self.cut_after, None) if self.direction == "up" else (None, self.cut_after)
        other = threading.Thread(target=pump, args=(upstream, client, down if cut else None),
                                 daemon=True)
        other.start()
        pump(client, upstream, up if cut else None)
        other.join()
        # dropped as a failing network drops it: a reset, whatever is still in flight
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        upstream.close()

    def close(self):
        self.sock.close()


def test_dropped_connections_mid_upload_and_mid_download_resume(tmp_path, monkeypatch):
    package = lora(4, big=1_500_000)  # 24 MiB blob: chunks of 8 MiB
    with HubServer(str(tmp_path / "hub.db")) as server:
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("write:team"))
        up = DroppingProxy(server.port, drops=3, cut_after=3 << 20)
        down = DroppingProxy(server.port, drops=2, cut_after=5 << 20, direction="down")
        try:
            with Registry(tmp_path / "local.db") as local:
                local.push(package, "team/big", to=f"http://127.0.0.1:{up.port}",
                           progress=False)
            assert up.dropped == 3
            assert server.hub.registry.get("team/big@1").digest == package.digest
            with Registry(tmp_path / "other.db") as other:
                pulled = other.pull("team/big", f"http://127.0.0.1:{down.port}",
                                    progress=False)
                assert pulled.digest == package.digest and other.verify().ok
            assert down.dropped == 2
            # the download went on where it stopped (206), not from the start
            assert server.hub.metrics.requests[("GET", "read_blob", 206)] >= 1
        finally:
            up.close()
            down.close()


def test_http_remote_errors_are_adapterhub_errors(tmp_path, monkeypatch):
    from adapterhub.registry.remotes import open_remote

    with HubServer(str(tmp_path / "hub.db")) as server:
        server.hub.registry.push(lora(), "team/bot", progress=False)
        with open_remote(server.url) as remote:
            with pytest.raises(AuthenticationError, match="needs a token"):
                remote.resolve("team/bot")
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("read:other"))
        with open_remote(server.url) as remote:
            with pytest.raises(PermissionDeniedError, match="does not grant read") as info:
                remote.resolve("team/bot")
            assert "--scope read:team" in info.value.one_line()
