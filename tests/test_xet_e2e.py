"""The real ``huggingface_hub`` + ``hf_xet`` client uploading through the Xet routes of a real
uvicorn server, and attacks on those routes with real tokens.

Each upload runs in its own process with its own ``HF_HOME`` (so its Xet cache): a second
upload from a fresh cache can only skip data through the server's global-dedup answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.xet_hub import XetTestHub

from adapterhub.xet.hashes import chunk_hash, hash_to_hex
from adapterhub.xet.pack import pack_file
from adapterhub.xet.service import XetLimits
from adapterhub.xet.shard import build_shard, parse_shard
from adapterhub.xet.tokens import Grant

UPLOAD = ("import sys; from huggingface_hub import HfApi; "
          "HfApi(endpoint=sys.argv[1], token=sys.argv[2]).upload_file("
          "path_or_fileobj=sys.argv[3], path_in_repo='adapter_model.safetensors', "
          "repo_id=sys.argv[4])")


def hf_upload(url: str, path: Path, home: Path, token: str = "hf_alice",
              repo: str = "team/up") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1")
    done = subprocess.run([sys.executable, "-c", UPLOAD, url, token, str(path), repo], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def write_safetensors(path: Path, n_floats: int, seed: int) -> bytes:
    weights = np.random.default_rng(seed).standard_normal(n_floats, dtype=np.float32)
    header = json.dumps({"lora_A.weight": {"dtype": "F32", "shape": [n_floats],
                                           "data_offsets": [0, weights.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + weights.tobytes()
    path.write_bytes(data)
    return data


def sent(hub: XetTestHub) -> int:
    return hub.stats.xorb_bytes + hub.stats.shard_bytes


@pytest.fixture(scope="module")
def hub():
    with XetTestHub() as server:
        yield server


def test_real_client_uploads_reconstructs_and_dedups(hub: XetTestHub, tmp_path: Path) -> None:
    path = tmp_path / "adapter_model.safetensors"
    data = write_safetensors(path, 5 * 1024 * 1024, seed=0)  # 20 MiB of float32
    sha256 = hashlib.sha256(data).hexdigest()

    hf_upload(hub.url, path, tmp_path / "cache-1")
    first = sent(hub)
    first_xorbs = hub.stats.xorb_bytes
    assert hub.stats.xorb_bytes > len(data) // 2 and hub.stats.xorbs_inserted >= 1
    assert hub.commits[-1].files == {"adapter_model.safetensors": sha256}
    entry = hub.service.file_by_sha256(sha256, "team")
    assert entry is not None and entry.size == len(data)
    rebuilt = b"".join(hub.service.reconstruct(entry))
    assert hashlib.sha256(rebuilt).hexdigest() == sha256 and rebuilt == data
    (shard,) = hub.storage.shards.values()  # the client's own shard, as it sent it
    parsed = parse_shard(shard)
    assert build_shard(parsed.files, parsed.xorbs) == shard
    assert parsed.files[0].verification is not None and parsed.files[0].sha256 == sha256

    hits = hub.stats.dedup_hits
    hf_upload(hub.url, path, tmp_path / "cache-2")  # a fresh cache: only the server knows
    second = sent(hub) - first
    assert hub.stats.dedup_hits > hits
    assert second < len(data) // 1000, f"re-sent {second} bytes"
    assert hub.commits[-1].files == {"adapter_model.safetensors": sha256}
    print(f"\nXET DEDUP file={len(data)} first={first} (xorbs {first_xorbs}, shard "
          f"{first - first_xorbs}) second={second} (xorbs {hub.stats.xorb_bytes - first_xorbs})")

    edited = bytearray(data)
    edited[10_000_000:10_004_096] = np.random.default_rng(1).bytes(4096)  # a small edit
    path.write_bytes(edited)
    before = sent(hub)
    hf_upload(hub.url, path, tmp_path / "cache-3")
    third = sent(hub) - before
    assert third < 600_000, f"an edit of 4 KiB re-sent {third} bytes"
    edited_entry = hub.service.file_by_sha256(hashlib.sha256(edited).hexdigest(), "team")
    assert b"".join(hub.service.reconstruct(edited_entry)) == bytes(edited)
    print(f"XET DEDUP edit-4KiB third={third}")


def test_token_route_answers_only_writers(hub: XetTestHub) -> None:
    url = f"{hub.url}/api/models/team/up/xet-write-token/main"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer hf_bob"}).status_code == 403
    r = httpx.get(url, headers={"authorization": "Bearer hf_alice"})
    body = r.json()
    assert set(body) == {"accessToken", "exp", "casUrl"} and r.headers["x-xet-cas-url"]
    assert hub.signer.verify(body["accessToken"]) == Grant("alice", "team/up", "team", True,
                                                           body["exp"])
    assert httpx.get(f"{hub.url}/api/widgets/team/up/xet-write-token/main",
                     headers={"authorization": "Bearer hf_alice"}).status_code == 404


@pytest.fixture(scope="module")
def small_hub():
    limits = XetLimits(max_xorb_bytes=1024 * 1024, max_shard_bytes=64 * 1024)
    with XetTestHub(limits) as server:
        yield server


def snapshot(hub: XetTestHub) -> tuple:
    s = hub.storage
    return len(s.xorbs), len(s.shards), len(s.files), s.stored_bytes()


def post(hub: XetTestHub, path: str, body: bytes, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{hub.cas}{path}", content=body, headers=headers, timeout=30)


def test_cas_refuses_bad_tokens(small_hub: XetTestHub) -> None:
    packed = pack_file(os.urandom(50_000))
    x = packed.xorbs[0]
    before = snapshot(small_hub)
    read_only = small_hub.signer.issue(Grant("alice", "team/up", "team", False, 2**40))
    forged = small_hub.cas_token()[:-4] + "AAAA"
    assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, None).status_code == 401
    assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, forged).status_code == 401
    assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, read_only).status_code == 403
    assert post(small_hub, "/v1/shards", packed.shard, forged).status_code == 401
    assert httpx.get(f"{small_hub.cas}/v1/chunks/default/{'0' * 64}").status_code == 401
    assert snapshot(small_hub) == before


def test_corrupt_and_misnamed_xorbs_are_refused(small_hub: XetTestHub) -> None:
    token = small_hub.cas_token()
    x = pack_file(os.urandom(300_000), schemes=(2,)).xorbs[0]
    other = pack_file(os.urandom(40_000)).xorbs[0]
    flipped = bytearray(x.data)
    flipped[len(flipped) // 3] ^= 0x10
    before = snapshot(small_hub)
    for name, body in ((x.hex, bytes(flipped)), (other.hex, x.data), (x.hex, x.data[:-500]),
                       ("default", x.data)):
        r = post(small_hub, f"/v1/xorbs/default/{name}", body, token)
        assert r.status_code in (400, 404) and r.json()["error"], name
    assert post(small_hub, f"/v1/xorbs/elsewhere/{x.hex}", x.data, token).status_code == 400
    assert snapshot(small_hub) == before
    r = post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, token)
    assert r.status_code == 200 and r.json() == {"was_inserted": True}
    assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, token).json() == \
        {"was_inserted": False}
    grant = post(small_hub, f"/v1/xorb-grants/default/{x.hex}", b"{}", token)
    assert grant.status_code == 404  # hf_xet then uploads through /v1/xorbs


def frames(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_lying_shards_are_refused_on_both_shard_routes(small_hub: XetTestHub) -> None:
    token = small_hub.cas_token()
    packed = pack_file(os.urandom(200_000))
    for x in packed.xorbs:
        assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, token).status_code == 200
    missing = pack_file(os.urandom(20_000))  # its xorb is never uploaded
    entry = packed.entry
    lies = {
        "lists a missing xorb": missing.shard,
        "a term names a missing xorb": build_shard([missing.entry]),
        "file hash lies": build_shard([dataclasses.replace(entry, file_hash=chunk_hash(b"x"))]),
        "sha256 lies": build_shard([dataclasses.replace(entry, sha256="ab" * 32)]),
        "truncated": packed.shard[:-30],
    }
    before = snapshot(small_hub)
    for name, shard in lies.items():
        r1 = post(small_hub, "/v1/shards", shard, token)
        assert r1.status_code == 400 and r1.json()["error"], name
        r2 = post(small_hub, "/v2/shards", shard, token)
        assert r2.status_code == 200 and frames(r2)[-1]["type"] == "error", name
        assert frames(r2)[-1]["retryable"] is False
    assert snapshot(small_hub) == before
    r = post(small_hub, "/v2/shards", packed.shard, token)
    assert frames(r)[-1] == {"type": "result"}
    assert post(small_hub, "/v1/shards", packed.shard, token).json() == {"result": 0}


def test_other_namespaces_cannot_see_or_borrow_xorbs(small_hub: XetTestHub) -> None:
    alice, bob = small_hub.cas_token(), small_hub.cas_token("hf_bob", "other/x")
    packed = pack_file(os.urandom(120_000))
    for x in packed.xorbs:
        post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, alice)
    post(small_hub, "/v1/shards", packed.shard, alice)
    stored = snapshot(small_hub)
    first = hash_to_hex(small_hub.storage.xorb_info(packed.xorbs[0].hash).chunk_hashes[0])
    query = f"{small_hub.cas}/v1/chunks/default/{first}"
    assert httpx.get(query, headers={"authorization": f"Bearer {alice}"}).status_code == 200
    assert httpx.get(query, headers={"authorization": f"Bearer {bob}"}).status_code == 404
    assert post(small_hub, "/v1/shards", packed.shard, bob).status_code == 400
    assert small_hub.service.file_by_sha256(packed.sha256, "other") is None
    assert snapshot(small_hub) == stored
    # bob holding the same bytes learns nothing of alice's copy: new to him, stored once
    x = packed.xorbs[0]
    assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, bob).json() == \
        {"was_inserted": True}
    assert snapshot(small_hub)[0] == stored[0]


def raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("ascii") + body)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while piece := s.recv(65536):
                out += piece
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_oversized_and_cut_off_bodies_store_nothing(small_hub: XetTestHub) -> None:
    token = small_hub.cas_token()
    x = pack_file(os.urandom(100_000)).xorbs[0]
    before = snapshot(small_hub)
    path = f"/xet-cas/v1/xorbs/default/{x.hex}"
    auth = f"Authorization: Bearer {token}\r\n"
    declared_huge = raw_request(small_hub.port, f"POST {path} HTTP/1.1\r\nHost: a\r\n{auth}"
                                f"Content-Length: 1000000000\r\n\r\n")
    assert declared_huge.startswith(b"HTTP/1.1 413")
    streamed = httpx.post(f"{small_hub.url}{path}", headers={"authorization": f"Bearer {token}"},
                          content=iter([os.urandom(256 * 1024)] * 6))  # chunked, 1.5 MiB
    assert streamed.status_code == 413
    raw_request(small_hub.port, f"POST {path} HTTP/1.1\r\nHost: a\r\n{auth}"
                f"Content-Length: {len(x.data)}\r\n\r\n", x.data[:1000])  # then hangs up
    big_shard = post(small_hub, "/v1/shards", os.urandom(65 * 1024), token)
    assert big_shard.status_code == 413
    assert snapshot(small_hub) == before
    assert post(small_hub, f"/v1/xorbs/default/{x.hex}", x.data, token).status_code == 200
