"""The adversarial suite, Xet part: hostile uploads through a real ``adapterhub serve``
process, on SQLite and PostgreSQL. Each test asserts the refusal **and** that nothing was
stored (no Xet row, no blob). The victim owns ``victim/*``; the attacker holds
``write:team`` and knows the victim's hashes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import httpx
import pytest
from helpers.hub_server import HubProcess
from helpers.registry_helpers import LOCAL
from sqlalchemy import func, select

from adapterhub.xet.hashes import chunk_hash, hash_to_hex
from adapterhub.xet.pack import pack_file
from adapterhub.xet.shard import build_shard
from registry_db import RegistryService
from registry_db.models import Blob
from registry_db.models_hub import XetFile, XetGrant, XetShard, XetXorb


@pytest.fixture
def hub(registry_url, tmp_path):
    service = RegistryService(registry_url)
    tokens = {role: service.tokens.create([scope], name=role)[0] for role, scope in [
        ("victim", "write:victim"), ("attacker", "write:team"), ("reader", "read:team")]}
    for repo in ("victim/secret", "team/up"):
        service.create_repository(repo, caller=LOCAL)
    service.close()
    with HubProcess(registry_url, "--body-timeout", "2",
                    log_path=tmp_path / "serve.log") as server:
        server.tokens = tokens
        yield server


def stored(server) -> dict:
    with RegistryService(server.db) as service, service.db.read() as s:
        return {table.__tablename__: s.scalar(select(func.count()).select_from(table))
                for table in (XetXorb, XetFile, XetShard, XetGrant, Blob)}


def cas_token(server, role: str, repo: str) -> tuple[str, dict]:
    r = httpx.get(f"{server.url}/api/models/{repo}/xet-write-token/main",
                  headers={"authorization": f"Bearer {server.tokens[role]}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["casUrl"] == f"{server.url}/xet-cas"
    return body["casUrl"], {"authorization": f"Bearer {body['accessToken']}"}


def upload(cas: str, auth: dict, packed) -> None:
    for x in packed.xorbs:
        r = httpx.post(f"{cas}/v1/xorbs/default/{x.hex}", content=x.data, headers=auth)
        assert r.status_code == 200, r.text
    assert httpx.post(f"{cas}/v1/shards", content=packed.shard, headers=auth).status_code == 200


def frames(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_corrupt_misnamed_and_unauthenticated_xorbs_store_nothing(hub):
    cas, auth = cas_token(hub, "attacker", "team/up")
    x = pack_file(os.urandom(300_000), schemes=(2,)).xorbs[0]
    other = pack_file(os.urandom(40_000)).xorbs[0]
    flipped = bytearray(x.data)
    flipped[len(flipped) // 3] ^= 0x10
    before = stored(hub)
    for name, body in ((x.hex, bytes(flipped)), (other.hex, x.data), (x.hex, x.data[:-500])):
        r = httpx.post(f"{cas}/v1/xorbs/default/{name}", content=body, headers=auth)
        assert r.status_code == 400 and r.json()["error"], name
    hub_token = {"authorization": f"Bearer {hub.tokens['attacker']}"}  # not a CAS token
    forged = {"authorization": auth["authorization"][:-4] + "AAAA"}
    for headers in ({}, hub_token, forged):
        r = httpx.post(f"{cas}/v1/xorbs/default/{x.hex}", content=x.data, headers=headers)
        assert r.status_code == 401
    assert stored(hub) == before


def test_lying_shards_store_nothing(hub):
    cas, auth = cas_token(hub, "attacker", "team/up")
    packed = pack_file(os.urandom(200_000))
    for x in packed.xorbs:
        assert httpx.post(f"{cas}/v1/xorbs/default/{x.hex}", content=x.data,
                          headers=auth).status_code == 200
    missing = pack_file(os.urandom(20_000))  # its xorb is never uploaded
    entry = packed.entry
    bad_verification = dataclasses.replace(
        entry, verification=(chunk_hash(b"v"),) + entry.verification[1:])
    lies = {
        "lists a missing xorb": missing.shard,
        "a term names a missing xorb": build_shard([missing.entry]),
        "file hash lies": build_shard([dataclasses.replace(entry, file_hash=chunk_hash(b"x"))]),
        "sha256 lies": build_shard([dataclasses.replace(entry, sha256="ab" * 32)]),
        "verification lies": build_shard([bad_verification]),
        "truncated": packed.shard[:-30],
    }
    before = stored(hub)
    for name, shard in lies.items():
        r1 = httpx.post(f"{cas}/v1/shards", content=shard, headers=auth)
        assert r1.status_code == 400 and r1.json()["error"], name
        r2 = httpx.post(f"{cas}/v2/shards", content=shard, headers=auth)
        assert r2.status_code == 200 and frames(r2)[-1]["type"] == "error", name
    assert stored(hub) == before
    r = httpx.post(f"{cas}/v2/shards", content=packed.shard, headers=auth)
    assert frames(r)[-1] == {"type": "result"}
    assert stored(hub)["xet_files"] == before["xet_files"] + 1


def test_the_victims_xorbs_and_files_cannot_be_borrowed(hub):
    victim_cas, victim = cas_token(hub, "victim", "victim/secret")
    secret = os.urandom(150_000)
    packed = pack_file(secret)
    upload(victim_cas, victim, packed)
    cas, attacker = cas_token(hub, "attacker", "team/up")
    before = stored(hub)
    first = hash_to_hex(packed.xorbs[0].entry.chunks[0].chunk_hash)
    assert httpx.get(f"{cas}/v1/chunks/default/{first}", headers=attacker).status_code == 404
    assert httpx.get(f"{victim_cas}/v1/chunks/default/{first}", headers=victim).status_code \
        == 200
    # a shard naming the victim's xorbs is refused: knowing hashes is not possession
    assert httpx.post(f"{cas}/v1/shards", content=packed.shard,
                      headers=attacker).status_code == 400
    # nor can a commit name the victim's file by its sha256
    commit = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "borrow"}},
        {"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256",
                                     "oid": packed.sha256, "size": len(secret)}}])
    r = httpx.post(f"{hub.url}/api/models/team/up/commit/main", content=commit,
                   headers={"authorization": f"Bearer {hub.tokens['attacker']}",
                            "content-type": "application/x-ndjson"})
    assert r.status_code == 422 and "was not uploaded" in r.text
    # and CAS tokens for another namespace, or for readers, are not handed out
    for role, repo in (("attacker", "victim/secret"), ("reader", "team/up")):
        r = httpx.get(f"{hub.url}/api/models/{repo}/xet-write-token/main",
                      headers={"authorization": f"Bearer {hub.tokens[role]}"})
        assert r.status_code == 403
    assert stored(hub) == before
    with RegistryService(hub.db) as service:
        assert service.log("team/up", caller=LOCAL) == []


def test_oversized_xorbs_and_shards_are_refused_before_reading(hub):
    cas, auth = cas_token(hub, "attacker", "team/up")
    before = stored(hub)
    for path in (f"/xet-cas/v1/xorbs/default/{'0' * 64}", "/xet-cas/v1/shards",
                 "/xet-cas/v2/shards"):
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{'Authorization'}: "
                         f"{auth['authorization']}\r\nContent-Length: {1 << 40}\r\n\r\n"
                         .encode())
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 413"), (path, head[:80])
    assert stored(hub) == before
