"""The adversarial suite: a hostile writer against a real ``adapterhub serve`` process.

Every finding of the trust-model review is replayed with real tokens over real HTTP, on
SQLite and on PostgreSQL, and each test asserts the refusal **and** that nothing was
written, leaked or left resident (the server's RSS is read from /proc before and after the
bombs). The victim owns ``victim/*`` (``write:victim``); the attacker holds ``write:team``
and knows the victim's digests (they leak through logs, model cards, caches).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import time

import httpx
import pytest
from helpers.hub_server import HubProcess
from helpers.registry_helpers import LOCAL, push_raw
from helpers.wire import bearer, bundle, digest, manifest_for, manifest_with

from registry_db import RegistryService

MiB = 1 << 20


@pytest.fixture
def hub(registry_url, tmp_path):
    """A hub process with short header/body timeouts, tokens for each role, and a victim
    that pushed a private adapter (a small blob and a 9 MiB one) and left an upload open."""
    service = RegistryService(registry_url)
    tokens = {role: service.tokens.create([scope], name=role)[0] for role, scope in [
        ("victim", "write:victim"), ("attacker", "write:team"), ("reader", "read:team"),
        ("admin", "admin")]}
    service.close()
    with HubProcess(registry_url, "--header-timeout", "1", "--body-timeout", "2",
                    log_path=tmp_path / "serve.log") as server:
        server.tokens = tokens
        server.http = {role: httpx.Client(base_url=server.url, headers=bearer(token),
                                          timeout=60) for role, token in tokens.items()}
        server.anon = httpx.Client(base_url=server.url, timeout=60)
        server.secret = victim_pushes(server.http["victim"])
        yield server
        for client in [*server.http.values(), server.anon]:
            client.close()


def victim_pushes(http: httpx.Client) -> dict:
    rng = random.Random(7)
    small, large = rng.randbytes(4096), rng.randbytes(9 * MiB)
    assert http.post("/api/v1/blobs", content=bundle([(digest(small), small)])).status_code == 200
    upload = http.post("/api/v1/uploads", json={"digest": digest(large), "size": len(large)})
    upload = upload.json()
    chunk = upload["chunk_size"]
    for i in range(0, len(large), chunk):
        assert http.put(f"/api/v1/uploads/{upload['upload_id']}/chunks/{i // chunk}",
                        content=large[i:i + chunk]).status_code == 204
    assert http.post(f"/api/v1/uploads/{upload['upload_id']}/finish").status_code == 200
    manifest = manifest_with({"small": (digest(small), "U8", [len(small)]),
                              "large": (digest(large), "U8", [len(large)])})
    version = http.post("/api/v1/repos/victim/secret/commit", json={"manifest": manifest})
    assert version.status_code == 200, version.text
    pending = rng.randbytes(12 * MiB)  # an upload the victim has not finished (2 chunks)
    open_upload = http.post("/api/v1/uploads", json={"digest": digest(pending),
                                                     "size": len(pending)}).json()
    assert http.put(f"/api/v1/uploads/{open_upload['upload_id']}/chunks/0",
                    content=pending[:open_upload["chunk_size"]]).status_code == 204
    return {"small": small, "large": large, "pending": pending,
            "upload_id": open_upload["upload_id"], "version": version.json()["version"]}


def usage(server) -> dict:
    with RegistryService(server.db) as service:
        versions = {v.ref for v in service.list_versions(caller=LOCAL, include_deleted=True)}
        return {"versions": versions, "repositories": service.repositories(caller=LOCAL)}


# -- 1. cross-namespace reads -------------------------------------------------------------------


def test_a_digest_reads_nothing_of_another_namespace(hub):
    attacker, secret = hub.http["attacker"], hub.secret
    before = usage(hub)
    small, large = digest(secret["small"]), digest(secret["large"])

    # negotiation and upload start say "missing", as if the hub had never seen the bytes
    assert attacker.post("/api/v1/blobs/missing",
                         json={"digests": [small, large]}).json()["missing"] == sorted(
        [small, large])
    started = attacker.post("/api/v1/uploads", json={"digest": large, "size": 9 * MiB}).json()
    assert started["complete"] is False and started["received"] == []
    # a manifest naming them in the attacker's namespace is refused: the blobs are missing
    theft = manifest_with({"w": (small, "U8", [4096]), "x": (large, "U8", [9 * MiB])})
    r = attacker.post("/api/v1/repos/team/stolen/commit", json={"manifest": theft})
    assert r.status_code == 409 and r.json()["code"] == "MissingBlobs"
    assert sorted(r.json()["missing"]) == sorted([small, large])
    # downloads through any repository, framed reads, lineage lookups: nothing
    for path in [f"/api/v1/repos/team/stolen/blobs/{small}",
                 f"/api/v1/repos/team/anything/blobs/{large}"]:
        assert attacker.get(path).status_code == 404
    assert attacker.get(f"/api/v1/repos/victim/secret/blobs/{small}").status_code == 404
    for route in ("read", "stored"):
        assert attacker.post(f"/api/v1/repos/team/x/blobs/{route}",
                             json={"digests": [small]}).status_code == 404
    assert attacker.get(f"/api/v1/find/{secret['version']['digest']}").status_code == 404
    assert attacker.get("/api/v1/resolve", params={"ref": "victim/secret"}).status_code == 403
    # the Hugging Face side: LFS batch wants the bytes, verify and commit know nothing
    batch = attacker.post("/team/stolen.git/info/lfs/objects/batch", json={
        "operation": "upload", "objects": [{"oid": small[7:], "size": 4096}]})
    assert batch.status_code == 404  # the repository does not exist for the attacker yet
    attacker.post("/api/repos/create", json={"name": "stolen", "organization": "team"})
    batch = attacker.post("/team/stolen.git/info/lfs/objects/batch", json={
        "operation": "upload", "objects": [{"oid": small[7:], "size": 4096}]}).json()
    assert "upload" in batch["objects"][0]["actions"]
    assert attacker.post("/team/stolen.git/info/lfs/verify",
                         json={"oid": small[7:], "size": 4096}).status_code == 404
    ndjson = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "steal"}},
        {"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256",
                                     "oid": large[7:], "size": 9 * MiB}}])
    r = attacker.post("/api/models/team/stolen/commit/main", content=ndjson,
                      headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and "was not uploaded" in r.json()["error"]

    after = usage(hub)
    assert after["versions"] == before["versions"] == {"victim/secret@1"}
    assert after["repositories"] == ["team/stolen", "victim/secret"]  # the empty one it made
    # and the bytes stay the victim's: it still reads them back, intact
    assert hub.http["victim"].get(f"/api/v1/repos/victim/secret/blobs/{large}").content == \
        secret["large"]


def test_proving_possession_is_the_only_way_in(hub):
    """OCI semantics: a caller that sends the bytes themselves may use them (storage keeps
    one copy); wrong bytes under the victim's digest are refused and change nothing."""
    attacker, small = hub.http["attacker"], hub.secret["small"]
    forged = bytes(len(small))
    r = attacker.post("/api/v1/blobs", content=bundle([(digest(small), forged)]))
    assert r.status_code == 422 and r.json()["code"] == "Corrupt"
    assert attacker.post("/api/v1/blobs/missing",
                         json={"digests": [digest(small)]}).json()["missing"] == [digest(small)]
    assert attacker.post("/api/v1/blobs", content=bundle([(digest(small), small)])
                         ).status_code == 200
    r = attacker.post("/api/v1/repos/team/mine/commit", json={"manifest": manifest_for(small)})
    assert r.status_code == 200
    with RegistryService(hub.db) as service:
        assert service.usage().blobs == 2  # still one copy of each of the victim's blobs


# -- 2. memory bombs ----------------------------------------------------------------------------


def test_claimed_shapes_allocate_nothing(hub):
    attacker, admin = hub.http["attacker"], hub.http["admin"]
    empty = b""
    assert attacker.post("/api/v1/blobs", content=bundle([(digest(empty), empty)])
                         ).status_code == 200
    # warm up the paths a read takes (imports, render cache), then measure
    assert admin.get("/victim/secret/resolve/main/adapter.json").status_code == 200
    before = hub.rss()
    bombs = [
        {"w": (digest(empty), "U8", [268435456])},  # 388 bytes claiming 256 MiB
        {"w": (digest(empty), "F32", [2**62, 2**62])},
        {"w": (digest(empty), "Q9", [0])},  # unknown dtype
        {f"t{i}": (digest(hub.secret["small"]), "F32", [4096]) for i in range(16)},
    ]
    for tensors in bombs:
        for _ in range(3):
            r = attacker.post("/api/v1/repos/team/bomb/commit",
                              json={"manifest": manifest_with(tensors)})
            assert 400 <= r.status_code < 500 and r.json()["code"] in (
                "Corrupt", "InvalidManifest", "LimitExceeded", "MissingBlobs"), r.text
    body = json.dumps({"manifest": manifest_for(empty, metrics={"loss": float("nan")})})
    r = attacker.post("/api/v1/repos/team/bomb/commit", content=body)  # a literal NaN
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    assert hub.rss() - before < 32 * MiB
    assert "team/bomb" not in usage(hub)["repositories"]


def test_one_blob_named_by_many_tensors_is_not_copied_per_reference(hub):
    """Sixteen tensors naming one 8 MiB blob is a legal 128 MiB adapter; rendering and
    serving it many times must not leave its copies resident."""
    attacker = hub.http["attacker"]
    # warm up what any read needs (imports, a first render) on another adapter
    assert hub.http["admin"].get("/victim/secret/resolve/main/adapter.json").status_code == 200
    before = hub.rss()
    blob = random.Random(3).randbytes(8 * MiB)
    assert attacker.post("/api/v1/blobs", content=bundle([(digest(blob), blob)])
                         ).status_code == 200
    tensors = {f"base_model.layer{i}.lora_A": (digest(blob), "F32", [2 * MiB])
               for i in range(16)}
    assert attacker.post("/api/v1/repos/team/wide/commit",
                         json={"manifest": manifest_with(tensors)}).status_code == 200
    for _ in range(5):
        r = attacker.get("/team/wide/resolve/main/adapter_model.safetensors")
        assert r.status_code == 200 and len(r.content) > 128 * MiB
        version = attacker.get("/api/v1/resolve", params={"ref": "team/wide"}).json()
        assert len(version["manifest"]["tensors"]) == 16
    assert hub.rss() - before < 64 * MiB


# -- 3. upload sabotage -------------------------------------------------------------------------


def test_another_tokens_upload_is_invisible(hub):
    attacker, victim, secret = hub.http["attacker"], hub.http["victim"], hub.secret
    upload_id = secret["upload_id"]
    assert len(upload_id) >= 16 and not upload_id.isdigit()  # random, not a row id
    assert attacker.get(f"/api/v1/uploads/{upload_id}").status_code == 404
    assert attacker.put(f"/api/v1/uploads/{upload_id}/chunks/0",
                        content=b"\0" * 64).status_code == 404
    assert attacker.post(f"/api/v1/uploads/{upload_id}/finish").status_code == 404
    # the attacker's own upload of the same digest is a different one, and poisoning it
    # cannot touch the victim's
    own = attacker.post("/api/v1/uploads", json={"digest": digest(secret["pending"]),
                                                 "size": len(secret["pending"])}).json()
    assert own["upload_id"] != upload_id and own["received"] == []
    chunk = own["chunk_size"]
    assert attacker.put(f"/api/v1/uploads/{own['upload_id']}/chunks/0",
                        content=bytes(chunk)).status_code == 204
    # the victim resumes its own upload, finishes it, and commits
    status = victim.post("/api/v1/uploads", json={"digest": digest(secret["pending"]),
                                                  "size": len(secret["pending"])}).json()
    assert status["upload_id"] == upload_id and status["received"] == [0]
    pending = secret["pending"]
    assert victim.put(f"/api/v1/uploads/{upload_id}/chunks/0",
                      content=pending[:chunk]).status_code == 204
    for i in range(1, -(-len(pending) // chunk)):
        assert victim.put(f"/api/v1/uploads/{upload_id}/chunks/{i}",
                          content=pending[i * chunk:(i + 1) * chunk]).status_code == 204
    assert victim.post(f"/api/v1/uploads/{upload_id}/finish").status_code == 200
    r = victim.post("/api/v1/repos/victim/later/commit", json={"manifest": manifest_for(pending)})
    assert r.status_code == 200, r.text
    # the attacker's poisoned upload fails on its own
    for i in range(1, -(-len(pending) // chunk)):
        attacker.put(f"/api/v1/uploads/{own['upload_id']}/chunks/{i}",
                     content=bytes(len(pending[i * chunk:(i + 1) * chunk])))
    r = attacker.post(f"/api/v1/uploads/{own['upload_id']}/finish")
    assert r.status_code == 422 and "discarded" in r.json()["error"]
    assert victim.get(f"/api/v1/repos/victim/later/blobs/{digest(pending)}").content == pending


# -- 4. work before auth ------------------------------------------------------------------------


def test_unauthenticated_bodies_cost_nothing(hub):
    before = hub.rss()
    body = b"[" * (16 * MiB)
    for path in ["/api/v1/repos/team/x/commit", "/api/v1/blobs", "/api/v1/blobs/missing",
                 "/api/models/team/x/commit/main"]:
        r = hub.anon.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and r.json()["code"] == "Unauthorized"
    r = hub.http["reader"].post("/api/v1/repos/team/x/commit", content=body)
    assert r.status_code == 403  # a token that cannot write is refused before its body
    assert hub.rss() - before < 16 * MiB
    assert hub.anon.get("/health").status_code == 200


def _raw(server, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends before it closes the connection (b'' if nothing)."""
    sock.settimeout(seconds)
    received = b""
    try:
        while piece := sock.recv(65536):
            received += piece
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {seconds} s") from None
    finally:
        sock.close()
    return received


def test_slow_clients_are_cut_off(hub):
    # headers that never finish (the hub runs with --header-timeout 1)
    slow_head = _raw(hub, b"GET /health HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
    idle = _raw(hub, b"")
    # a body that stalls (--body-timeout 2), from a real writer
    token = hub.tokens["attacker"]
    slow_body = _raw(hub, (f"POST /api/v1/repos/team/slow/commit HTTP/1.1\r\nHost: hub\r\n"
                           f"Authorization: Bearer {token}\r\nContent-Type: application/json"
                           f"\r\nContent-Length: 1000\r\n\r\n{{\"manifest\"").encode())
    assert hub.anon.get("/health").status_code == 200  # others are served meanwhile
    assert _closed_within(slow_head, 10) == b""
    assert _closed_within(idle, 10) == b""
    answer = _closed_within(slow_body, 15)
    assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in answer
    # a slowloris that trickles a byte at a time is cut off too
    trickle = _raw(hub, b"G")
    for byte in b"ET /health HTTP/1.1\r\n":
        time.sleep(0.3)
        try:
            trickle.send(bytes([byte]))
        except OSError:
            break
    assert _closed_within(trickle, 10) == b""
    assert "team/slow" not in usage(hub)["repositories"]


# -- 5. existence oracles -----------------------------------------------------------------------


def test_stored_elsewhere_and_never_stored_look_the_same(hub):
    attacker = hub.http["attacker"]
    stored = digest(hub.secret["small"])
    never = digest(b"never stored anywhere")
    attacker.post("/api/repos/create", json={"name": "probe", "organization": "team"})

    def answers(target: str) -> list:
        def scrub(text: str) -> str:
            return text.replace(target, "D").replace(target[7:], "D")
        out = []
        r = attacker.post("/api/v1/blobs/missing", json={"digests": [target]})
        out.append((r.status_code, scrub(r.text)))
        r = attacker.post("/api/v1/uploads", json={"digest": target, "size": 4096})
        out.append((r.status_code, sorted(k for k in r.json() if k != "upload_id"),
                    r.json()["complete"]))
        r = attacker.post("/team/probe.git/info/lfs/objects/batch", json={
            "operation": "upload", "objects": [{"oid": target[7:], "size": 4096}]})
        out.append((r.status_code, sorted(r.json()["objects"][0])))
        r = attacker.post("/team/probe.git/info/lfs/verify", json={"oid": target[7:],
                                                                   "size": 4096})
        out.append((r.status_code, scrub(r.text)))
        r = attacker.post("/api/v1/repos/team/probe/commit",
                          json={"manifest": manifest_with({"w": (target, "U8", [4096])})})
        out.append((r.status_code, scrub(r.text)))
        own = random.Random(1).randbytes(64)
        attacker.post("/api/v1/blobs", content=bundle([(digest(own), own)]))
        r = attacker.post("/api/v1/repos/team/probe/commit",
                          json={"manifest": manifest_for(own, parents=[target])})
        out.append((r.status_code, scrub(r.text)))
        return out

    assert answers(stored) == answers(never)
    # a victim's *version* digest as a parent is as unknown as a made-up one
    version = hub.secret["version"]["digest"]
    own = random.Random(1).randbytes(64)
    r = attacker.post("/api/v1/repos/team/probe/commit",
                      json={"manifest": manifest_for(own, parents=[version])})
    assert r.status_code == 409 and r.json()["code"] == "MissingParents"


# -- 6. audit log forgery and undelete ----------------------------------------------------------


def test_the_audit_log_names_credentials_and_undelete_needs_admin(hub):
    attacker, admin = hub.http["attacker"], hub.http["admin"]
    data = random.Random(5).randbytes(256)
    attacker.post("/api/v1/blobs", content=bundle([(digest(data), data)]))
    commit = {"manifest": manifest_for(data), "author": "admin (definitely)"}
    version = attacker.post("/api/v1/repos/team/bot/commit", json=commit).json()["version"]
    assert version["author"] == "admin (definitely)"  # metadata, kept as sent
    assert admin.delete("/api/v1/repos/team/bot/versions/1").status_code == 200
    r = attacker.post("/api/v1/repos/team/bot/commit", json=commit)
    assert r.status_code == 403 and "restoring it needs admin" in r.json()["error"]
    assert attacker.get("/api/v1/resolve", params={"ref": "team/bot@1"}).status_code == 404
    assert admin.post("/api/v1/repos/team/bot/commit", json=commit).status_code == 200
    with RegistryService(hub.db) as service:
        events = service.events(caller=LOCAL, repository="team/bot")
    actions = [(e.action, e.actor, e.token_id is not None) for e in reversed(events)]
    assert actions == [("push", "attacker", True), ("rm", "admin", True),
                       ("restore", "admin", True)]
    assert events[-1].detail["author"] == "admin (definitely)"


# -- 8. hostile names, headers and numbers ------------------------------------------------------


def test_hostile_names_headers_and_numbers(hub):
    admin = hub.http["admin"]
    for path in ["/api/models/te%0D%0Aam/x", "/api/models/team/x%0AX-Injected:%201",
                 "/api/v1/repos/team/%00bot/log", "/team/b%0Aot/resolve/main/adapter.json"]:
        r = admin.get(path)
        assert 400 <= r.status_code < 500, path
        assert "x-injected" not in r.headers and "\n" not in r.headers.get("x-error-message", "")
    for method, path, body in [
            ("GET", "/api/v1/uploads/" + "9" * 40, None),
            ("GET", "/api/v1/uploads/999999999999999999999999", None),
            ("DELETE", "/api/v1/repos/team/bot/versions/" + "9" * 30, None),
            ("POST", "/api/v1/uploads", {"digest": digest(b"x"), "size": 2**63}),
            ("POST", "/api/v1/uploads", {"digest": digest(b"x"), "size": -1}),
            ("GET", "/api/v1/resolve?ref=" + "a" * 5000, None)]:
        r = admin.request(method, path, json=body)
        assert 400 <= r.status_code < 500 and r.json()["error"], (path, r.status_code)
    deep = "[" * 100_000 + "]" * 100_000
    ndjson = json.dumps({"key": "header", "value": {}}) + "\n" + '{"key":' + deep + "}"
    admin.post("/api/repos/create", json={"name": "bot", "organization": "team"})
    r = admin.post("/api/models/team/bot/commit/main", content=ndjson)
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    r = admin.post("/api/v1/blobs/missing", content=deep,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = admin.get(f"/api/v1/repos/victim/secret/blobs/{digest(hub.secret['small'])}",
                  headers={"Range": "bytes=99999999-"})
    assert r.status_code == 416
    # every access-log line is one JSON object, whatever the paths held
    time.sleep(0.2)
    lines = [line for line in hub.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["method"] for line in lines)
    assert not any(line.startswith("X-Injected") for line in
                   hub.log_path.read_text().splitlines())


# -- maintenance routes ---------------------------------------------------------------------------


def test_gc_and_verify_need_admin_on_the_whole_hub(hub):
    service = RegistryService(hub.db)
    team_admin = service.tokens.create(["admin:team"], name="team-admin")[0]
    service.close()
    before = usage(hub)
    for client, status in [(hub.anon, 401), (hub.http["reader"], 403),
                           (hub.http["attacker"], 403),
                           (httpx.Client(base_url=hub.url, headers=bearer(team_admin)), 403)]:
        for path in ("/api/v1/gc", "/api/v1/verify"):
            r = client.post(path, json={"grace_s": 0})
            assert r.status_code == status, (path, r.text)
    admin = hub.http["admin"]
    for bad in ({"keep_last": -1}, {"grace_s": "soon"}, {"dry_run": "yes"},
                {"grace_s": 1e12}, {"per_label": "x" * 500}):
        assert admin.post("/api/v1/gc", json=bad).status_code == 400, bad
    assert usage(hub) == before  # nothing was collected by any refused call
    assert admin.post("/api/v1/verify").json()["ok"] is True


# -- 9. the web pages ---------------------------------------------------------------------------

HTML = {"Accept": "text/html,application/xhtml+xml"}
PAGES = ["/victim/secret", "/victim/secret/v1", "/victim/secret@1", "/victim/secret:latest",
         "/victim/secret/main", "/ui/victim/secret", "/victim/secret/native/v1/adapter.safetensors",
         "/diff?a=victim/secret@1&b=victim/secret@1", "/diff?a=victim/secret@1&b=team/x@1"]


def test_pages_refuse_exactly_as_the_api_does(hub):
    attacker, anon = hub.http["attacker"], hub.anon
    version = hub.secret["version"]["digest"]
    assert anon.get("/api/v1/resolve", params={"ref": "victim/secret"}).status_code == 401
    assert attacker.get("/api/v1/resolve", params={"ref": "victim/secret"}).status_code == 403
    for path in ["/", "/search?q=secret", *PAGES]:
        for headers in (HTML, {}):  # a browser, and an API client on the same path
            r = anon.get(path, headers=headers)
            assert r.status_code == 401 and r.headers["x-error-code"] == "Unauthorized", path
    for path in PAGES:
        for headers in (HTML, {}):
            r = attacker.get(path, headers=headers)
            assert r.status_code == 403 and r.headers["x-error-code"] == "Forbidden", path
            assert version[7:19] not in r.text and "9 MiB" not in r.text
        # a repository that does not exist answers the same: no existence oracle
        missing = attacker.get(path.replace("secret", "nothing"), headers=HTML)
        assert missing.status_code == 403, path
        assert "text/html" in attacker.get(path, headers=HTML).headers["content-type"]
    # search and the index show nothing of another namespace, by any word
    for q in ["secret", "victim", "lora", "tiny", version[7:19]]:
        r = attacker.get("/search", params={"q": q}, headers=HTML)
        assert r.status_code == 200 and "Nothing found." in r.text
        assert "victim/" not in r.text and "9 MiB" not in r.text
        assert attacker.get("/search", params={"q": q}).json()["versions"] == []
    assert "victim" not in attacker.get("/", headers=HTML).text
    # a reader of the victim's namespace sees the page (the refusals are about scope)
    r = hub.http["victim"].get("/victim/secret", headers=HTML)
    assert r.status_code == 200 and "victim/secret" in r.text


def test_pages_show_a_private_relative_as_an_opaque_digest(hub):
    private = hub.secret["version"]["digest"]
    with RegistryService(hub.db) as service:  # the operator links team's work to it
        child = push_raw(service, "team/child", {"w": random.Random(11).randbytes(64)},
                         parents=(private,)).version
        push_raw(service, "victim/derived", {"w": random.Random(12).randbytes(64)},
                 parents=(child.digest,))
    attacker = hub.http["attacker"]
    for path in ["/team/child", "/ui/team/child"]:
        page = attacker.get(path, headers=HTML)
        assert page.status_code == 200, path
        assert "victim" not in page.text and "/victim" not in page.text
        assert private[:19] in page.text  # the digest, and nothing else
    page = attacker.get("/team/child", headers=HTML).text
    opaque = page[page.index(f'data-digest="{private}"'):]
    opaque = opaque[:opaque.index("</g>")]
    assert "not readable" in opaque and "href" not in opaque
    assert "node opaque" in page and page.count("class=\"node") == 2  # no private child
    lineage = attacker.get("/api/v1/lineage", params={"ref": "team/child"}).json()
    assert lineage["ancestors"] == [{"digest": private, "depth": 1, "visible": False}]
    # the victim's own admin-level view names both (so the test above is not vacuous)
    page = hub.http["admin"].get("/team/child", headers=HTML).text
    assert "victim/secret@1" in page and "victim/derived@1" in page


def _hostile_version(http: httpx.Client) -> None:
    """Versions whose every free-text field is markup: tensor names, metric and config keys,
    labels (a card with raw HTML and javascript: links, a javascript: run URL), base model,
    merge strategy, message and author."""
    data = random.Random(21).randbytes(64)
    assert http.post("/api/v1/blobs", content=bundle([(digest(data), data)])).status_code == 200
    first = http.post("/api/v1/repos/team/xss/commit",
                      json={"manifest": manifest_for(data, metrics={"acc": 0.25})})
    assert first.status_code == 200, first.text
    card = ("---\ntitle: \"<script>alert('t')</script>\"\n---\n"
            "# Hello <script>alert('h')</script>\n\n"
            "[a](javascript:alert('a')) [b](JaVaScRiPt:alert('b')) [c](java\tscript:alert(1))"
            " ![d](javascript:alert('d')) ![e](data:text/html,<script>alert(1)</script>)\n\n"
            "<img src=x onerror=alert('i')> <a href=\"javascript:alert('r')\">raw</a>\n")
    manifest = manifest_with({"<script>alert('tensor')</script>": (digest(data), "U8", [64])},
                             parents=[first.json()["version"]["digest"]],
                             metrics={"<img src=x onerror=alert('m')>": 0.5, "acc": 0.5},
                             labels={"card": card, "ci.run_url": "javascript:alert('u')",
                                     "note": "<script>alert('l')</script>"})
    manifest["base_model"]["name"] = "<svg onload=alert('base')>"
    manifest["method"]["config"] = {"<b>k</b>": "</code><script>alert('c')</script>"}
    manifest["recipe"] = {"strategy": "<script>alert('s')</script>", "weights": [1.0],
                          "params": {}, "seed": None}
    r = http.post("/api/v1/repos/team/xss/commit", json={
        "manifest": manifest, "message": "<script>alert('msg')</script>",
        "author": "<img src=x onerror=alert('who')>"})
    assert r.status_code == 200, r.text


def test_pages_escape_everything_they_show(hub, tmp_path):
    from playwright.sync_api import sync_playwright

    _hostile_version(hub.http["attacker"])
    paths = ["/", "/team/xss", "/team/xss/v1", "/ui/team/xss", "/search?q=xss",
             "/diff?a=team/xss@1&b=team/xss@2"]
    for path in paths:
        r = hub.http["attacker"].get(path, headers=HTML)
        assert r.status_code == 200, (path, r.text[-500:])
        assert "<script" not in r.text.lower() and "<img src=x" not in r.text, path
        assert not re.search(r"(?i)(href|src)\s*=\s*[\"']?\s*(java\s*script|data):", r.text)
    page = hub.http["attacker"].get("/team/xss", headers=HTML).text
    assert "&lt;script&gt;alert(&#x27;msg&#x27;)&lt;/script&gt;" in page  # shown, as text
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, chromium_sandbox=False, args=[
            "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        context = browser.new_context(extra_http_headers={
            "Authorization": f"Bearer {hub.tokens['attacker']}"})
        dialogs: list[str] = []
        context.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        tab = context.new_page()
        tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        for path in paths:
            assert tab.goto(hub.url + path).status == 200
            found = tab.evaluate("""() => ({
                scripts: document.querySelectorAll('script').length,
                handlers: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])
                    .filter(a => a.name.startsWith('on')).map(a => a.name),
                links: [...document.querySelectorAll('[href],[src]')]
                    .map(e => e.getAttribute('href') || e.getAttribute('src'))
                    .filter(u => !/^(https?:|mailto:|\\/|#|\\?|[a-z0-9._-]+(\\/|$))/i.test(u)),
                text: document.body.innerText})""")
            assert found["scripts"] == 0 and found["handlers"] == [], (path, found)
            assert found["links"] == [], (path, found["links"])
            if path == "/team/xss":
                for shown in ["<script>alert('tensor')</script>", "<svg onload=alert('base')>",
                              "<img src=x onerror=alert('who')>", "javascript:alert('u')",
                              "<img src=x onerror=alert('m')>", "Hello <script>alert('h')"
                              "</script>", "[a](javascript:alert('a'))"]:
                    assert shown in found["text"], shown
        tab.screenshot(path=str(tmp_path / "xss.png"), full_page=True)
        browser.close()
    assert dialogs == []
