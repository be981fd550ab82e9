"""A hub on the ``s3`` blob backend (real ``adapterhub serve`` process, real SeaweedFS):
presigned uploads and redirected downloads, and what an attacker gets from them.

The store boundary still decides who gets a URL: no URL for a blob the caller cannot see; a
presigned upload for digest X that receives other bytes never becomes blob X, on a store that
enforces the signed checksum (the store refuses the bytes, or the URL stripped of its
checksum) and on one that does not (the hub reads the staging object back and discards it); a
client killed in the middle of a presigned multipart upload leaves no version, and gc reclaims
the rest.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
from datetime import timedelta

import httpx
import pytest
from helpers.registry_helpers import LOCAL, digest_of, tensor_bytes

from adapterhub.errors import IntegrityError
from adapterhub.io.safetensors import tensor_bytes as safetensor_bytes
from adapterhub.registry import Registry
from registry_db import RegistryService
from registry_db.objectstore import PART_SIZE, Location


def _secret(hub, tmp_path, monkeypatch, *, seed: int):
    """The writer pushes a package to ``team/secret``; the package and its largest tensor."""
    monkeypatch.setenv("ADAPTERHUB_TOKEN", hub.tokens["writer"])
    package = _package(seed, big=1_200_000)
    with Registry(tmp_path / "local.db") as local:
        local.push(package, "team/secret", to=hub.url, progress=False)
    return package, max(package.manifest.tensors.values(), key=lambda e: e.nbytes)


def _package(seed: int, big: int):
    from test_hub_api import lora  # the suite's tiny LoRA package builder

    return lora(seed, big=big)


def test_push_and_pull_through_presigned_urls(s3_hub, s3_env, seaweed, tmp_path,
                                              monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", s3_hub.tokens["writer"])
    package = _package(0, big=5_000_000)  # an 80 MB fp32 blob: a presigned multipart upload
    with Registry(tmp_path / "local.db") as local:
        pushed = local.push(package, "team/bot", to=s3_hub.url, progress=False)
    big = max(package.manifest.tensors.values(), key=lambda e: e.nbytes)
    log = s3_hub.log_path.read_text()
    assert "/api/v1/uploads" in log and "/finish" in log
    assert "/chunks/" not in log  # the bytes went to the store, not through the hub
    location = Location.parse(s3_env)
    head = seaweed.client().head_object(
        Bucket=location.bucket,
        Key=f"reg/blobs/sha256/{big.digest[7:9]}/{big.digest[9:]}")
    assert head["ContentLength"] == big.nbytes

    with s3_hub.client("reader") as reader:  # the download is a redirect to the store
        answer = reader.get(f"/api/v1/repos/team/bot/blobs/{big.digest}")
        assert answer.status_code == 307
        assert answer.headers["x-linked-size"] == str(big.nbytes)
        data = httpx.get(answer.headers["location"], timeout=60).content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == big.digest

    monkeypatch.setenv("ADAPTERHUB_TOKEN", s3_hub.tokens["reader"])
    with Registry(tmp_path / "other.db") as other:
        pulled = other.pull("team/bot@1", s3_hub.url, progress=False)
        assert pulled.digest == pushed.version.digest
        assert other.verify().ok
    assert f"/blobs/{big.digest}" in s3_hub.log_path.read_text()  # redirected, not served

    from adapterhub_remotes_http.remote import HttpRemote

    remote = HttpRemote(s3_hub.url)  # a redirect the URL batch did not announce
    try:
        remote.resolve("team/bot@1")
        connection = remote.client._local.connection
        data = b"".join(remote._stream_large(big.digest, big.nbytes, lambda n: None))
        assert "sha256:" + hashlib.sha256(data).hexdigest() == big.digest
        assert remote.resolve("team/bot@1").digest == pulled.digest
        assert remote.client._local.connection is connection  # kept: the redirect was read
    finally:
        remote.close()


def test_no_url_for_a_blob_the_caller_cannot_see(s3_hub, tmp_path, monkeypatch):
    _, big = _secret(s3_hub, tmp_path, monkeypatch, seed=1)
    with s3_hub.client("outsider") as outsider:
        for path in (f"/api/v1/repos/team/secret/blobs/{big.digest}",
                     f"/api/v1/repos/other/x/blobs/{big.digest}"):
            answer = outsider.get(path)
            assert answer.status_code in (403, 404)
            assert "location" not in answer.headers
            assert "X-Amz" not in answer.text
            urls = outsider.post(path.rsplit("/", 1)[0] + "/urls",
                                 json={"digests": [big.digest]})
            assert urls.status_code in (403, 404) and "X-Amz" not in urls.text
        # nor does asking to upload it hand over the stored blob: it is "missing" to them
        begun = outsider.post("/api/v1/uploads", json={"digest": big.digest,
                                                       "size": big.nbytes,
                                                       "presigned": True}).json()
        assert begun["complete"] is False and begun["urls"]
    with s3_hub.client("reader") as reader:  # all or nothing: with a hidden blob, no URL
        mixed = reader.post("/api/v1/repos/team/secret/blobs/urls",
                            json={"digests": [big.digest, "sha256:" + "ab" * 32]})
        assert mixed.status_code == 404 and "X-Amz" not in mixed.text
        given = reader.post("/api/v1/repos/team/secret/blobs/urls",
                            json={"digests": [big.digest]}).json()["urls"]
        assert list(given) == [big.digest]
        data = httpx.get(given[big.digest], timeout=60).content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == big.digest
    assert httpx.post(f"{s3_hub.url}/api/v1/repos/team/secret/blobs/urls",
                      json={"digests": [big.digest]}).status_code == 401


def test_presigned_upload_of_other_bytes_never_becomes_the_blob(s3_hub, s3_env, seaweed):
    """On a store that enforces the signed checksum and upload header, the upload is one
    PUT to the blob's own key: the store refuses other bytes, the URL without its checksum,
    and a PUT without the header."""
    data, other = tensor_bytes(40, 4 << 20), tensor_bytes(41, 4 << 20)
    digest = digest_of(data)
    location = Location.parse(s3_env)
    with s3_hub.client("writer") as writer:
        begun = writer.post("/api/v1/uploads", json={"digest": digest, "size": len(data),
                                                     "presigned": True, "direct": True}).json()
        assert len(begun["urls"]) == 1 and begun["chunk_size"] == len(data)
        url, headers = begun["urls"][0], begun["headers"]
        assert f"/reg/blobs/sha256/{digest[7:9]}/" in url  # the blob's key, not staging
        refused = httpx.put(url, content=other, headers=headers, timeout=60)
        assert refused.status_code == 400 and "BadDigest" in refused.text
        assert httpx.put(_without_checksum(url), content=other, headers=headers,
                         timeout=60).status_code == 403
        assert httpx.put(url, content=data, timeout=60).status_code == 403  # no header
        assert httpx.put(url.split("?")[0], content=other, timeout=60).status_code == 403
        # the hub's chunk door is shut for a presigned upload: the bytes must go to the store
        assert writer.put(f"/api/v1/uploads/{begun['upload_id']}/chunks/0",
                          content=other).status_code == 409
        finish = writer.post(f"/api/v1/uploads/{begun['upload_id']}/finish")
        assert finish.status_code == 409 and "missing chunks" in finish.json()["error"]
        assert writer.post("/api/v1/blobs/missing",
                           json={"digests": [digest]}).json()["missing"] == [digest]
        listed = seaweed.client().list_objects_v2(Bucket=location.bucket, Prefix="reg/")
        assert listed.get("KeyCount", 0) == 0
        assert httpx.put(url, content=data, headers=headers, timeout=60).status_code == 200
        finished = writer.post(f"/api/v1/uploads/{begun['upload_id']}/finish").json()
        assert finished["digest"] == digest and finished["size"] == len(data)
        assert writer.post("/api/v1/blobs/missing",
                           json={"digests": [digest]}).json()["missing"] == []


def _without_checksum(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts._replace(query=urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
         if k != "x-amz-checksum-sha256"])).geturl()


def test_a_stored_object_proves_nothing_about_who_has_its_bytes(s3_hub, tmp_path,
                                                                monkeypatch):
    """Another namespace's blob object already sits at the key an outsider's direct upload
    names: the upload does not report it received, finishing it is refused, and only the
    outsider sending the bytes itself makes the blob theirs."""
    package, big = _secret(s3_hub, tmp_path, monkeypatch, seed=3)
    with s3_hub.client("outsider") as outsider:
        begun = outsider.post("/api/v1/uploads", json={"digest": big.digest,
                                                       "size": big.nbytes,
                                                       "presigned": True,
                                                       "direct": True}).json()
        assert begun["received"] == []  # the object exists, and the answer does not say so
        status = outsider.get(f"/api/v1/uploads/{begun['upload_id']}").json()
        assert status["received"] == []
        finish = outsider.post(f"/api/v1/uploads/{begun['upload_id']}/finish")
        assert finish.status_code == 409
        for path in (f"/api/v1/repos/team/secret/blobs/{big.digest}",
                     f"/api/v1/repos/other/x/blobs/{big.digest}"):
            assert outsider.get(path).status_code in (403, 404)
        assert outsider.post("/api/v1/blobs/missing", json={"digests": [big.digest]}
                             ).json()["missing"] == [big.digest]
        # sending the bytes (which the outsider would need to have) does make them theirs
        name = next(n for n, e in package.manifest.tensors.items() if e is big)
        data = bytes(safetensor_bytes(package.tensors[name]))
        assert httpx.put(begun["urls"][0], content=data, headers=begun["headers"],
                         timeout=60).status_code == 200
        assert outsider.post(f"/api/v1/uploads/{begun['upload_id']}/finish").status_code == 200
        assert outsider.post("/api/v1/blobs/missing", json={"digests": [big.digest]}
                             ).json()["missing"] == []


def test_staged_upload_of_other_bytes_never_becomes_the_blob(open_s3_hub, open_s3_env,
                                                              open_seaweed):
    """On a store that takes any bytes (no access control), the parts go to a staging
    object that the hub reads back before it becomes the blob."""
    data, other = tensor_bytes(40, 4 << 20), tensor_bytes(41, 4 << 20)
    digest = digest_of(data)
    with open_s3_hub.client("writer") as writer:
        begun = writer.post("/api/v1/uploads", json={"digest": digest, "size": len(data),
                                                     "presigned": True}).json()
        assert len(begun["urls"]) == 1 and "/uploads/" in begun["urls"][0]
        assert httpx.put(begun["urls"][0], content=other, timeout=60).status_code == 200
        finish = writer.post(f"/api/v1/uploads/{begun['upload_id']}/finish")
        assert finish.status_code == 422 and "discarded" in finish.json()["error"]
        assert writer.post("/api/v1/blobs/missing",
                           json={"digests": [digest]}).json()["missing"] == [digest]
    location = Location.parse(open_s3_env)
    listed = open_seaweed.client().list_objects_v2(Bucket=location.bucket, Prefix="reg/")
    assert listed.get("KeyCount", 0) == 0  # neither blob X nor the staging object


_UPLOADER = textwrap.dedent("""
    import sys, httpx
    url, token, digest, size = sys.argv[1:5]
    headers = {"Authorization": "Bearer " + token}
    begun = httpx.post(url + "/api/v1/uploads", headers=headers, timeout=60,
                       json={"digest": digest, "size": int(size), "presigned": True}).json()
    part = begun["chunk_size"]
    httpx.put(begun["urls"][0], content=b"x" * part, timeout=60)  # part 1 arrives
    print(begun["upload_id"], flush=True)
    for i, target in enumerate(begun["urls"][1:], 1):  # the rest trickles: killed meanwhile
        httpx.put(target, content=b"y" * min(part, int(size) - i * part), timeout=60)
    """)


def test_sigkill_during_multipart_upload_leaves_no_version_and_gc_reclaims(
        open_s3_hub, open_s3_env, open_seaweed, registry_url):
    size = 3 * PART_SIZE + 10
    digest = "sha256:" + hashlib.sha256(b"never sent").hexdigest()
    client = subprocess.Popen([sys.executable, "-c", _UPLOADER, open_s3_hub.url,
                               open_s3_hub.tokens["writer"], digest, str(size)],
                              stdout=subprocess.PIPE, text=True)
    upload_id = client.stdout.readline().strip()
    assert upload_id
    os.kill(client.pid, signal.SIGKILL)
    client.wait()
    location = Location.parse(open_s3_env)
    s3 = open_seaweed.client()
    assert s3.list_multipart_uploads(Bucket=location.bucket).get("Uploads")
    with RegistryService(registry_url) as service:
        assert service.list_versions(caller=LOCAL) == []
        assert service.usage().partial_uploads == 1
        time.sleep(1.1)  # S3 dates have one-second resolution
        report = service.gc(caller=LOCAL, grace=timedelta(0))
        assert report.uploads_removed == 1
        assert service.usage().partial_uploads == 0
    assert not s3.list_multipart_uploads(Bucket=location.bucket).get("Uploads")
    assert s3.list_objects_v2(Bucket=location.bucket, Prefix="reg/").get("KeyCount", 0) == 0


def test_pull_refuses_an_object_altered_behind_the_registry(s3_hub, s3_env, seaweed,
                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", s3_hub.tokens["writer"])
    package = _package(2, big=1_200_000)
    with Registry(tmp_path / "local.db") as local:
        local.push(package, "team/bot", to=s3_hub.url, progress=False)
    big = max(package.manifest.tensors.values(), key=lambda e: e.nbytes)
    location = Location.parse(s3_env)
    seaweed.client().put_object(Bucket=location.bucket,
                                Key=f"reg/blobs/sha256/{big.digest[7:9]}/{big.digest[9:]}",
                                Body=b"\0" * big.nbytes)
    with Registry(tmp_path / "other.db") as other:
        with pytest.raises(IntegrityError, match="arrived corrupt"):
            other.pull("team/bot@1", s3_hub.url, progress=False)
        assert other.list() == []
    with s3_hub.client("admin") as admin:
        report = admin.post("/api/v1/verify?deep=true").json()
    assert [p["blob"] for p in report["problems"]] == [big.digest]


def test_hf_resolve_redirects_to_a_rendered_object(s3_hub, s3_env, seaweed, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_TOKEN", s3_hub.tokens["writer"])
    with Registry(tmp_path / "local.db") as local:
        local.push(_package(3, big=300_000), "team/peft", to=s3_hub.url, progress=False)
    path = "/team/peft/resolve/main/adapter_model.safetensors"
    location = Location.parse(s3_env)
    s3 = seaweed.client()
    with s3_hub.client("reader") as reader:
        first = reader.get(path)
        assert first.status_code == 302
        etag = first.headers["x-linked-etag"].strip('"')
        rendered = s3.list_objects_v2(Bucket=location.bucket, Prefix="reg/rendered/")
        assert [item["Key"] for item in rendered["Contents"]] == [
            f"reg/rendered/sha256/{etag[:2]}/{etag[2:]}"]
        written = rendered["Contents"][0]["LastModified"]
        time.sleep(1.1)
        second = reader.get(path)  # no second render upload: the same object, redirected
        assert second.status_code == 302
        again = s3.list_objects_v2(Bucket=location.bucket, Prefix="reg/rendered/")
        assert again["Contents"][0]["LastModified"] == written
        data = httpx.get(second.headers["location"], timeout=60).content
        assert hashlib.sha256(data).hexdigest() == etag
        assert len(data) == int(second.headers["x-linked-size"])
        with s3_hub.client("outsider") as outsider:  # no URL for a repository it can't read
            refused = outsider.get(path)
            assert refused.status_code in (401, 403, 404) and "location" not in refused.headers

    script = textwrap.dedent("""
        import hashlib, json, sys
        from huggingface_hub import hf_hub_download
        path = hf_hub_download("team/peft", "adapter_model.safetensors")
        print(json.dumps(hashlib.sha256(open(path, "rb").read()).hexdigest()))
        """)
    env = {**os.environ, "HF_ENDPOINT": s3_hub.url, "HF_TOKEN": s3_hub.tokens["reader"],
           "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f'"{etag}"'
