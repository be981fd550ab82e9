"""What the hub refuses, with which status, and that a refusal writes nothing (SQLite and
PostgreSQL): missing, bad, expired and revoked tokens; wrong scopes; path traversal in names
and file paths; oversized and malformed bodies; bytes that do not match their digest."""

import hashlib
import time
from datetime import timedelta

import httpx
import pytest
from helpers.hub_server import HubServer
from helpers.registry_helpers import LOCAL
from helpers.wire import bearer, bundle, digest, manifest_for

from registry_db.clock import utcnow
from registry_db.codec import CHUNK_SIZE


@pytest.fixture
def hub(registry_url):
    with HubServer(registry_url) as server:
        yield server


def nothing_written(server):
    usage = server.hub.registry.usage()
    assert (usage.repositories, usage.versions, usage.blobs, usage.partial_uploads) == (
        0, 0, 0, 0), usage


@pytest.mark.parametrize("ttl", [0.0, 1.0])
def test_revoking_a_token_in_use_takes_effect_within_the_token_cache_time(registry_url, ttl):
    with HubServer(registry_url, token_cache=ttl) as server:
        token = server.token("read:team")
        assert httpx.get(f"{server.url}/api/v1/versions", headers=bearer(token)).status_code \
            == 200  # looked up, and now cached for ttl seconds
        server.hub.registry.service.tokens.revoke(token[:12])
        deadline = time.monotonic() + ttl + 0.5
        while True:
            r = httpx.get(f"{server.url}/api/v1/versions", headers=bearer(token))
            if r.status_code == 401:
                break
            assert time.monotonic() < deadline, "a revoked token kept working past the cache"
            time.sleep(0.05)
        assert "revoked" in r.json()["error"]
        # an unknown token is never cached: one created now works at once
        fresh = server.token("read:team")
        assert httpx.get(f"{server.url}/api/v1/versions", headers=bearer(fresh)).status_code \
            == 200


def test_tokens_and_scopes(hub):
    url = hub.url
    good = hub.token("write:team")
    reader = hub.token("read:team")
    expired = hub.token("admin", expires_at=utcnow() - timedelta(seconds=1))
    revoked = hub.token("admin")
    hub.hub.registry.service.tokens.revoke(revoked[:12])
    body = {"digests": [digest(b"x")]}

    r = httpx.post(f"{url}/api/v1/blobs/missing", json=body)
    assert r.status_code == 401 and r.json()["error"] == "write access needs a token"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for headers, why in [(bearer("ahub_not-a-token"), "not valid"),
                         ({"Authorization": "Basic dXNlcjpwdw=="}, "Bearer <token>"),
                         (bearer(expired), "expired"), (bearer(revoked), "revoked")]:
        r = httpx.get(f"{url}/api/v1/versions", headers=headers)
        assert r.status_code == 401 and why in r.json()["error"], r.json()
    r = httpx.post(f"{url}/api/v1/blobs/missing", json=body, headers=bearer(reader))
    assert r.status_code == 403 and "--scope write" in r.json()["hint"]
    r = httpx.post(f"{url}/api/v1/repos/other/bot/commit", headers=bearer(good),
                   json={"manifest": manifest_for(b"x")})
    assert r.status_code == 403 and "other/bot" in r.json()["error"]
    assert httpx.get(f"{url}/api/v1/resolve", params={"ref": "other/bot"},
                     headers=bearer(good)).status_code == 403
    assert httpx.get(f"{url}/api/models/team/bot", headers=bearer(good)).status_code == 404
    assert httpx.get(f"{url}/", headers=bearer(reader)).status_code == 200
    assert httpx.get(f"{url}/").status_code == 401  # the HTML view too
    nothing_written(hub)


def test_read_public_allows_anonymous_reads_only(tmp_path):
    with HubServer(str(tmp_path / "hub.db"), auth="read-public") as server:
        assert httpx.get(f"{server.url}/api/v1/versions").json() == []
        assert httpx.get(f"{server.url}/").status_code == 200
        r = httpx.post(f"{server.url}/api/v1/blobs", content=bundle([(digest(b"a"), b"a")]))
        assert r.status_code == 401
        r = httpx.post(f"{server.url}/api/repos/create", json={"name": "team/x"})
        assert r.status_code == 401
        nothing_written(server)


def test_path_traversal_in_names_and_file_paths(hub):
    token = bearer(hub.token("admin"))
    url = hub.url
    with httpx.Client(headers=token) as client:
        for path in ["/api/v1/repos/..%2F..%2Fetc/passwd/log", "/api/v1/repos/team/..bot/log",
                     "/api/models/team/..%2F..%2Fetc", "/api/models/%2e%2e/passwd"]:
            r = client.get(url + path)
            assert r.status_code in (400, 404) and r.json()["error"], path
        r = client.post(f"{url}/api/v1/repos/team/..bot/commit",
                        json={"manifest": manifest_for(b"x")})
        assert r.status_code == 400 and "without '..'" in r.json()["error"]
        r = client.get(f"{url}/api/v1/resolve", params={"ref": "../../etc/passwd"})
        assert r.status_code == 400
        r = client.post(f"{url}/api/repos/create", json={"name": "../../etc", "organization":
                                                        "team"})
        assert r.status_code == 400
        # a real repository, then file paths that try to leave it
        data = b"\x01" * 64
        client.post(f"{url}/api/v1/blobs", content=bundle([(digest(data), data)]))
        assert client.post(f"{url}/api/v1/repos/team/bot/commit",
                           json={"manifest": manifest_for(data)}).status_code == 200
        for path in ["..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                     "/etc/passwd", "adapter.json%00.txt", "..%5C..%5Cwindows"]:
            r = client.get(f"{url}/team/bot/resolve/main/{path}")
            assert r.status_code == 404, path
            assert r.headers["X-Error-Code"] in ("EntryNotFound", "RepoNotFound")
        assert client.get(f"{url}/team/bot/resolve/main/adapter.json").status_code == 200
    assert hub.hub.registry.service.repositories(caller=LOCAL) == ["team/bot"]


def test_oversized_and_malformed_bodies(hub):
    token = bearer(hub.token("admin"))
    url = hub.url
    with httpx.Client(headers=token, timeout=60) as client:
        r = client.post(f"{url}/api/v1/repos/team/bot/commit", content=b"{" * (17 << 20),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def stream():  # no Content-Length: the limit applies as the body arrives
            for _ in range(20):
                yield b" " * (1 << 20)

        r = client.post(f"{url}/api/v1/repos/team/bot/commit", content=stream(),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        data = b"\x02" * (CHUNK_SIZE + 10)
        upload = client.post(f"{url}/api/v1/uploads", json={
            "digest": digest(data), "size": len(data)}).json()
        r = client.put(f"{url}/api/v1/uploads/{upload['upload_id']}/chunks/0", content=data)
        assert r.status_code == 413
        r = client.put(f"{url}/api/v1/uploads/{upload['upload_id']}/chunks/0",
                       content=data[:100])
        assert r.status_code == 400 and "must be" in r.json()["error"]

        r = client.post(f"{url}/api/v1/repos/team/bot/commit", content=b"{not json",
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "BadRequest"
        r = client.post(f"{url}/api/v1/repos/team/bot/commit", json={"manifest": {"x": 1}})
        assert r.status_code == 422 and "manifest" in r.json()["error"]
        r = client.post(f"{url}/api/v1/blobs", content=b"\xff" * 20)
        assert r.status_code == 400 and "bundle" in r.json()["error"]
        r = client.post(f"{url}/api/v1/blobs/missing", json={"digests": ["sha256:zz"]})
        assert r.status_code == 400
        r = client.post(f"{url}/api/v1/uploads", json={"digest": "md5:1", "size": -1})
        assert r.status_code == 400
        r = client.post(f"{url}/api/models/team/bot/commit/main", content=b"not ndjson\n",
                        headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 404  # no such repository yet
        assert client.post(f"{url}/api/repos/create", json={"name": "bot",
                                                            "organization": "team"}).is_success
        r = client.post(f"{url}/api/models/team/bot/commit/main", content=b"not ndjson\n",
                        headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 400 and "line 1" in r.json()["error"]
        client.delete(f"{url}/api/v1/repos/team/bot/versions/1")
    usage = hub.hub.registry.usage()
    assert (usage.versions, usage.blobs) == (0, 0)


def test_bytes_that_do_not_match_their_digest_are_refused(hub):
    token = bearer(hub.token("admin"))
    url = hub.url
    good, bad = b"\x03" * 100, b"\x04" * 100
    with httpx.Client(headers=token, timeout=60) as client:
        r = client.post(f"{url}/api/v1/blobs",
                        content=bundle([(digest(good), good), (digest(good + b"!"), bad)]))
        assert r.status_code == 422 and r.json()["code"] == "Corrupt"
        assert "nothing was stored" in r.json()["error"]
        data = bytes(range(256)) * 40_000  # 10 MB: two chunks
        upload = client.post(f"{url}/api/v1/uploads", json={"digest": digest(data),
                                                            "size": len(data)}).json()
        chunk = upload["chunk_size"]
        tampered = bytearray(data)
        tampered[-1] ^= 1
        for i in range(2):
            client.put(f"{url}/api/v1/uploads/{upload['upload_id']}/chunks/{i}",
                       content=bytes(tampered[i * chunk:(i + 1) * chunk]))
        r = client.post(f"{url}/api/v1/uploads/{upload['upload_id']}/finish")
        assert r.status_code == 422 and "discarded" in r.json()["error"]
        r = client.post(f"{url}/api/v1/repos/team/bot/commit",
                        json={"manifest": manifest_for(good)})
        assert r.status_code == 409 and r.json()["missing"] == [digest(good)]
        # the LFS upload URL of the Hugging Face protocol re-hashes too
        client.post(f"{url}/api/repos/create", json={"name": "team/bot"})
        oid = hashlib.sha256(good).hexdigest()
        batch = client.post(f"{url}/team/bot.git/info/lfs/objects/batch", json={
            "operation": "upload", "objects": [{"oid": oid, "size": len(good)}]}).json()
        href = batch["objects"][0]["actions"]["upload"]["href"]
        r = httpx.put(href, content=bad)  # no Authorization: the URL is signed
        assert r.status_code == 422
        assert httpx.put(href.replace("sig=", "sig=0"), content=good).status_code == 401
        assert httpx.put(href.replace(f"/{oid}?", f"/{oid[::-1]}?"),
                         content=good).status_code == 401
    usage = hub.hub.registry.usage()
    assert (usage.versions, usage.blobs, usage.partial_uploads) == (0, 0, 0)


def test_scope_patterns():
    from registry_db import RefError
    from registry_db.tokens import parse_scope

    team_star = parse_scope("write:team-*")
    assert team_star.allows("write", "team-a/bot") and team_star.allows("read", "team-b/x")
    assert not team_star.allows("write", "team/bot") and not team_star.allows("admin", "team-a/x")
    one = parse_scope("read:team/bot")
    assert one.allows("read", "team/bot") and not one.allows("read", "team/bot2")
    assert parse_scope("admin").allows("write", "anyone/anything")
    for bad in ["owner", "write:", "write:Team", "write:a/b/c", "read:../x", ""]:
        with pytest.raises(RefError, match="invalid scope"):
            parse_scope(bad)
