"""The ``s3`` blob backend against a real S3 server (SeaweedFS): push, pull, gc, verify.

Objects are inspected and tampered with through a separate boto3 client, behind the
registry's back, to check what the registry reports and refuses.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers.registry_helpers import LOCAL, digest_of, push_raw, tensor_bytes

from registry_db import RegistryService
from registry_db.errors import ConflictError, IntegrityError, InvalidRequestError
from registry_db.models import Chunk
from registry_db.objectstore import CODEC, PART_SIZE, Location


@pytest.fixture
def s3_service(registry_url, s3_env):
    service = RegistryService(registry_url)
    assert service.choose_blob_backend(s3_env, caller=LOCAL) == s3_env
    yield service
    service.close()


def _objects(seaweed, where: str) -> dict[str, int]:
    location = Location.parse(where)
    listed = seaweed.client().list_objects_v2(Bucket=location.bucket, Prefix=location.prefix)
    return {item["Key"]: item["Size"] for item in listed.get("Contents", ())}


def _key(where: str, digest: str) -> str:
    hexdigest = digest.removeprefix("sha256:")
    return f"{Location.parse(where).prefix}/blobs/sha256/{hexdigest[:2]}/{hexdigest[2:]}"


def test_push_writes_objects_keyed_by_digest_and_pull_reads_them(s3_service, s3_env, seaweed):
    tensors = {"a": tensor_bytes(1), "b": tensor_bytes(2, 3 * PART_SIZE + 18)}  # multipart
    push_raw(s3_service, "team/x", tensors)
    objects = _objects(seaweed, s3_env)
    assert objects == {_key(s3_env, digest_of(d)): len(d) for d in tensors.values()}
    with s3_service.db.read() as s:  # no chunk rows: the bytes are only in the bucket
        assert s.query(Chunk).count() == 0
    assert s3_service.blobs.store.info(digest_of(tensors["a"])).codec == CODEC
    pulled = dict(s3_service.blobs.read_many([digest_of(d) for d in tensors.values()],
                                             caller=LOCAL))
    assert pulled == {digest_of(d): d for d in tensors.values()}
    big = digest_of(tensors["b"])
    tail = b"".join(s3_service.blobs.iter(big, offset=PART_SIZE, caller=LOCAL))
    assert tail == tensors["b"][PART_SIZE:]
    # a second registry process on the same database finds the backend recorded there
    with RegistryService(s3_service.url) as again:
        assert again.blob_backend == s3_env
        assert again.blobs.read(big, caller=LOCAL) == tensors["b"]


def test_resumable_upload_becomes_one_object(s3_service, s3_env, seaweed):
    data = tensor_bytes(7, 5000)
    digest = digest_of(data)
    upload = s3_service.blobs.begin_upload(digest, len(data), caller=LOCAL, chunk_size=2048)
    for index in range(3):
        s3_service.blobs.upload_chunk(upload.upload_id, index,
                                      data[index * 2048:(index + 1) * 2048], caller=LOCAL)
    info = s3_service.blobs.finish_upload(upload.upload_id, caller=LOCAL)
    assert (info.codec, info.size) == (CODEC, len(data))
    assert _objects(seaweed, s3_env) == {_key(s3_env, digest): len(data)}
    with s3_service.db.read() as s:
        assert s.query(Chunk).count() == 0  # staging chunks dropped
    assert s3_service.blobs.read(digest, caller=LOCAL) == data


def test_upload_of_other_bytes_never_becomes_the_blob(s3_service, s3_env, seaweed):
    data, other = tensor_bytes(8, 4096), tensor_bytes(9, 4096)
    digest = digest_of(data)
    upload = s3_service.blobs.begin_upload(digest, len(data), caller=LOCAL)
    s3_service.blobs.upload_chunk(upload.upload_id, 0, other, caller=LOCAL)
    with pytest.raises(IntegrityError, match="discarded"):
        s3_service.blobs.finish_upload(upload.upload_id, caller=LOCAL)
    assert _objects(seaweed, s3_env) == {}
    assert s3_service.blobs.missing([digest], caller=LOCAL) == {digest}
    with pytest.raises(IntegrityError):
        s3_service.blobs.write(digest, other, caller=LOCAL)
    assert _objects(seaweed, s3_env) == {}


def test_object_deleted_or_altered_behind_the_registry_is_reported_and_refused(
        s3_service, s3_env, seaweed):
    gone, altered, fine = tensor_bytes(10), tensor_bytes(11), tensor_bytes(12)
    push_raw(s3_service, "team/gone", {"w": gone})
    push_raw(s3_service, "team/altered", {"w": altered})
    push_raw(s3_service, "team/fine", {"w": fine})
    client, bucket = seaweed.client(), Location.parse(s3_env).bucket
    client.delete_object(Bucket=bucket, Key=_key(s3_env, digest_of(gone)))
    flipped = bytes([altered[0] ^ 1]) + altered[1:]  # same size: only --deep sees it
    client.put_object(Bucket=bucket, Key=_key(s3_env, digest_of(altered)), Body=flipped)

    shallow = s3_service.verify(caller=LOCAL)
    assert [(p.kind, p.blob) for p in shallow.problems] == [
        ("corrupt-blob", digest_of(gone))]
    assert shallow.problems[0].versions == ("team/gone@1 tensor 'w'",)
    assert "missing from the object store" in shallow.problems[0].message

    deep = s3_service.verify(caller=LOCAL, deep=True)
    assert sorted((p.blob, p.versions) for p in deep.problems) == sorted([
        (digest_of(gone), ("team/gone@1 tensor 'w'",)),
        (digest_of(altered), ("team/altered@1 tensor 'w'",))])

    with pytest.raises(IntegrityError, match="missing from the object store"):
        s3_service.blobs.read(digest_of(gone), caller=LOCAL)
    with pytest.raises(IntegrityError, match="corrupt in the object store"):
        s3_service.blobs.read(digest_of(altered), caller=LOCAL)
    with pytest.raises(IntegrityError, match="corrupt in the object store"):
        b"".join(s3_service.blobs.iter(digest_of(altered), caller=LOCAL))
    assert s3_service.blobs.read(digest_of(fine), caller=LOCAL) == fine


def test_gc_deletes_unreferenced_and_orphan_objects_after_the_grace_window(
        s3_service, s3_env, seaweed):
    kept, dropped, orphan = tensor_bytes(20), tensor_bytes(21), tensor_bytes(22)
    push_raw(s3_service, "team/kept", {"w": kept})
    push_raw(s3_service, "team/dropped", {"w": dropped})
    s3_service.remove("team/dropped@1", caller=LOCAL)
    # an object a crashed push left: written, never recorded
    s3_service.blobs.store.objects.put(digest_of(orphan), orphan)
    assert len(_objects(seaweed, s3_env)) == 3

    within = s3_service.gc(caller=LOCAL)  # default grace: an hour; everything is younger
    assert (within.blobs_removed, within.objects_removed) == (0, 0)
    assert len(_objects(seaweed, s3_env)) == 3

    dry = s3_service.gc(caller=LOCAL, grace=timedelta(0), dry_run=True)
    assert (dry.blobs_removed, dry.objects_removed) == (1, 2)
    assert len(_objects(seaweed, s3_env)) == 3

    report = s3_service.gc(caller=LOCAL, grace=timedelta(0))
    assert (report.blobs_removed, report.objects_removed) == (1, 2)
    assert _objects(seaweed, s3_env) == {_key(s3_env, digest_of(kept)): len(kept)}
    assert s3_service.verify(caller=LOCAL, deep=True).ok


def test_backend_is_chosen_once(registry_url, s3_env):
    with RegistryService(registry_url) as service:
        push_raw(service, "team/x", {"w": tensor_bytes(30)})  # db backend: chunk rows
        assert service.blob_backend == "db"
        with pytest.raises(ConflictError, match="chosen once"):
            service.choose_blob_backend(s3_env, caller=LOCAL)
        assert service.choose_blob_backend("db", caller=LOCAL) == "db"


@pytest.mark.parametrize("bad", ["s3://", "s3://B/x", "file:///tmp", "s3://ok-bucket/a/../b"])
def test_invalid_locations_are_refused(bad):
    with pytest.raises(InvalidRequestError):
        Location.parse(bad)


def test_blobs_migrate_moves_every_blob_resumably_while_readers_are_served(
        registry_url, s3_env, seaweed, run, monkeypatch):
    import json
    import threading

    from registry_db.blobmove import migrate

    tensors = {f"t{i}": tensor_bytes(50 + i, 2048 * (i + 1)) for i in range(6)}
    with RegistryService(registry_url) as service:
        push_raw(service, "team/old", tensors)
        reader = RegistryService(registry_url)  # a process opened before the move
        assert reader.blob_backend == "db"
        # an earlier, interrupted run: one blob moved, the rest still chunk rows
        first = digest_of(tensors["t0"])
        store = service.blobs.store
        original_iter, calls = store.iter, []

        def interrupted(digest, **kw):  # the connection drops at the second blob
            calls.append(digest)
            if len(calls) == 2:
                raise ConnectionError("interrupted")
            return original_iter(digest, **kw)

        with monkeypatch.context() as patch:
            patch.setattr(store, "iter", interrupted)
            with pytest.raises(ConnectionError):
                migrate(service, s3_env, caller=LOCAL)
        assert store.info(first).codec == CODEC

    stop, errors, reads = threading.Event(), [], [0]

    def read_all() -> None:
        while not stop.is_set():
            try:
                for digest, data in reader.blobs.read_many(
                        [digest_of(d) for d in tensors.values()], caller=LOCAL):
                    assert digest_of(data) == digest
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                errors.append(repr(exc))

    thread = threading.Thread(target=read_all)
    thread.start()
    try:
        report = json.loads(run("blobs", "migrate", "--to", s3_env, "--db", registry_url,
                                "--json").stdout)
    finally:
        stop.set()
        thread.join()
    assert (report["blobs_moved"], report["blobs_already_there"]) == (5, 1)
    assert report["bytes_moved"] == sum(len(d) for d in tensors.values()) - len(tensors["t0"])
    assert not errors and reads[0] > 0
    assert _objects(seaweed, s3_env) == {_key(s3_env, digest_of(d)): len(d)
                                         for d in tensors.values()}
    # the reader that opened before the move now reads from the objects
    assert reader.blobs.read(digest_of(tensors["t3"]), caller=LOCAL) == tensors["t3"]
    reader.close()
    with RegistryService(registry_url) as service:
        assert service.blob_backend == s3_env
        again = service.migrate_blobs(s3_env, caller=LOCAL)  # nothing left to move
        assert (again.blobs_moved, again.blobs_already_there) == (0, 6)
        report = service.gc(caller=LOCAL, grace=timedelta(0))  # drops the leftover chunks
        assert report.blobs_removed == 0 and report.bytes_freed > 0
        with service.db.read() as s:
            assert s.query(Chunk).count() == 0
        assert service.verify(caller=LOCAL, deep=True).ok
