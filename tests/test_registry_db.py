"""registry_db on a real SQLite file and a real PostgreSQL server (every test runs on both)."""

from datetime import timedelta

import pytest
from helpers.registry_helpers import LOCAL, digest_of, manifest_for, push_raw, tensor_bytes
from sqlalchemy import select, update

from registry_db import (AdapterNotFoundError, ConflictError, IntegrityError, MissingBlobsError,
                         MissingParentsError, RegistryService)
from registry_db import codec as codec_module
from registry_db.errors import InvalidRequestError, LimitExceededError, RefError
from registry_db.models import Blob, Chunk

NOW = timedelta(0)


@pytest.fixture
def svc(registry_url):
    service = RegistryService(registry_url)
    yield service
    service.close()


def three(seed=0):
    return {f"layer{i}.lora_A": tensor_bytes(seed * 10 + i, 8192) for i in range(3)}


def test_push_resolve_and_identical_manifest(svc):
    first = push_raw(svc, "team/bot", three(0), message="one", author="ann", tags=["dev"])
    assert first.created and first.version.ref == "team/bot@1"
    again = push_raw(svc, "team/bot", three(0), message="ignored")
    assert not again.created and again.version.number == 1 and again.version.message == "one"
    second = push_raw(svc, "team/bot", three(1))
    assert second.version.number == 2

    assert svc.resolve("team/bot", caller=LOCAL).number == 2  # latest
    assert svc.resolve("team/bot:latest", caller=LOCAL).number == 2
    assert svc.resolve("team/bot@1", caller=LOCAL).digest == first.version.digest
    assert svc.resolve("team/bot:dev", caller=LOCAL).number == 1
    assert svc.resolve(f"team/bot@{second.version.digest[:19]}", caller=LOCAL).number == 2
    info = svc.resolve("team/bot@1", caller=LOCAL)
    assert info.manifest.digest == info.digest and info.author == "ann"
    assert info.tags == ("dev",) and info.size == 3 * 8192
    with pytest.raises(AdapterNotFoundError, match="team/bot@3 does not exist"):
        svc.resolve("team/bot@3", caller=LOCAL)
    with pytest.raises(AdapterNotFoundError, match="no tag 'prod'"):
        svc.resolve("team/bot:prod", caller=LOCAL)
    with pytest.raises(AdapterNotFoundError, match="no repository"):
        svc.resolve("team/nothing", caller=LOCAL)


def test_dedup_is_measured_on_stored_bytes(svc):
    tensors = three(0)
    push_raw(svc, "team/bot", tensors)
    before = svc.usage()
    assert before.blobs == 3 and before.raw_bytes == 3 * 8192

    push_raw(svc, "team/bot", tensors, labels={"run": "2"})  # new version, same tensors
    push_raw(svc, "other/bot", tensors)  # another repository, same tensors
    same = svc.usage()
    assert same.versions == 3
    assert (same.blobs, same.raw_bytes, same.stored_bytes) == (
        before.blobs, before.raw_bytes, before.stored_bytes)

    changed = dict(tensors, **{"layer1.lora_A": tensor_bytes(999, 8192)})
    push_raw(svc, "team/bot", changed)
    after = svc.usage()
    new_blob = svc.blobs.info(digest_of(changed["layer1.lora_A"]), caller=LOCAL)
    assert after.blobs == before.blobs + 1
    assert after.raw_bytes == before.raw_bytes + 8192
    assert after.stored_bytes == before.stored_bytes + new_blob.stored_size


def test_manifest_naming_a_missing_blob_writes_nothing(svc):
    tensors = three(0)
    manifest = manifest_for(tensors)
    svc.blobs.write(digest_of(tensors["layer0.lora_A"]), tensors["layer0.lora_A"], caller=LOCAL)
    with pytest.raises(MissingBlobsError) as err:
        svc.commit("team/bot", manifest, tags=["prod"], caller=LOCAL)
    assert len(err.value.digests) == 2
    assert err.value.digests[0] in str(err.value) and "tensor 'layer" in str(err.value)
    assert svc.list_versions(caller=LOCAL) == []
    with pytest.raises(AdapterNotFoundError):
        svc.log("team/bot", caller=LOCAL)  # not even the repository row was kept
    assert svc.usage().versions == 0


def test_parents_must_exist(svc):
    ghost = "sha256:" + "ab" * 32
    with pytest.raises(MissingParentsError):
        push_raw(svc, "team/child", three(0), parents=(ghost,))
    parent = push_raw(svc, "team/base", three(0)).version
    child = push_raw(svc, "team/child", three(1), parents=(parent.digest,)).version
    assert child.parents == (parent.digest,)
    assert svc.find(parent.digest, caller=LOCAL).ref == "team/base@1"
    assert svc.find(ghost, caller=LOCAL) is None


def test_tags_move_and_delete(svc):
    push_raw(svc, "team/bot", three(0), tags=["prod"])
    push_raw(svc, "team/bot", three(1))
    assert svc.tag("team/bot@2", "prod", caller=LOCAL).tags == ("prod",)
    assert svc.resolve("team/bot:prod", caller=LOCAL).number == 2
    assert svc.resolve("team/bot@1", caller=LOCAL).tags == ()
    assert svc.untag("team/bot", "prod", caller=LOCAL).number == 2
    with pytest.raises(AdapterNotFoundError):
        svc.untag("team/bot", "prod", caller=LOCAL)
    with pytest.raises(RefError):
        svc.tag("team/bot@1", "v2", caller=LOCAL)
    actions = [e.action for e in svc.events(repository="team/bot", caller=LOCAL)]
    assert actions[:2] == ["untag", "tag"] and actions.count("push") == 2


def test_soft_delete_restore_and_numbers_never_reused(svc):
    push_raw(svc, "team/bot", three(0), tags=["prod"])
    push_raw(svc, "team/bot", three(1))
    removed = svc.remove("team/bot:prod", caller=LOCAL)
    assert removed.deleted and removed.number == 1
    with pytest.raises(AdapterNotFoundError, match="was deleted"):
        svc.resolve("team/bot@1", caller=LOCAL)
    with pytest.raises(AdapterNotFoundError):
        svc.resolve("team/bot:prod", caller=LOCAL)  # the tag went with it
    assert [v.ref for v in svc.list_versions(caller=LOCAL)] == ["team/bot@2"]
    assert [v.deleted for v in svc.log("team/bot", caller=LOCAL)] == [False, True]
    with pytest.raises(RefError, match="names no particular version"):
        svc.remove("team/bot", caller=LOCAL)

    restored = push_raw(svc, "team/bot", three(0))  # identical content comes back as @1
    assert not restored.created and restored.version.number == 1
    svc.remove("team/bot@2", caller=LOCAL)
    svc.gc(grace=NOW, caller=LOCAL)  # purges @2 for good
    assert push_raw(svc, "team/bot", three(1)).version.number == 3


def test_gc_sweeps_only_what_nothing_references_after_grace(svc):
    push_raw(svc, "team/bot", three(0))
    orphan = tensor_bytes(42, 4096)
    svc.blobs.write(digest_of(orphan), orphan, caller=LOCAL)  # uploaded, never committed
    # younger than the 1 h grace: a push may be in flight
    assert svc.gc(caller=LOCAL).blobs_removed == 0
    report = svc.gc(grace=NOW, caller=LOCAL)
    assert report.blobs_removed == 1 and report.bytes_freed > 0
    assert svc.usage().blobs == 3 and svc.verify(caller=LOCAL).ok


def test_gc_keeps_deleted_parents_of_live_versions(svc):
    parent = push_raw(svc, "team/base", three(0)).version
    child = push_raw(svc, "team/child", three(1), parents=(parent.digest,)).version
    svc.remove("team/base@1", caller=LOCAL)
    report = svc.gc(grace=NOW, caller=LOCAL)
    assert report.kept_for_lineage == ("team/base@1 (deleted)",) or \
        report.kept_for_lineage == ("team/base@1",)
    assert report.purged == () and svc.verify(caller=LOCAL).ok
    svc.remove(child.ref, caller=LOCAL)
    report = svc.gc(grace=NOW, caller=LOCAL)
    assert set(report.purged) == {"team/base@1", "team/child@1"}
    assert svc.usage().blobs == 0


def test_retention_keep_last_tagged_per_label_and_dry_run(svc):
    for i in range(6):
        branch = "main" if i % 2 == 0 else "dev"
        push_raw(svc, "team/bot", three(i), labels={"git.branch": branch},
                 tags=["prod"] if i == 0 else ())
    push_raw(svc, "other/bot", three(50))

    dry = svc.gc(keep_last=1, keep_tagged=True, dry_run=True, grace=NOW, caller=LOCAL)
    assert dry.dry_run and dry.retired == ("team/bot@2", "team/bot@3", "team/bot@4",
                                           "team/bot@5")
    assert len(svc.list_versions(caller=LOCAL)) == 7  # nothing changed

    report = svc.gc(keep_last=1, keep_tagged=True, per_label="git.branch", prefix="team/",
                    grace=NOW, caller=LOCAL)
    # newest per branch (@5 main, @6 dev) plus the tagged @1; other/bot is out of scope
    assert report.retired == ("team/bot@2", "team/bot@3", "team/bot@4")
    assert report.blobs_removed == 9
    assert [v.ref for v in svc.list_versions(caller=LOCAL)] == [
        "other/bot@1", "team/bot@6", "team/bot@5", "team/bot@1"]
    assert svc.gc(keep_last=0, prefix="team/", grace=NOW, caller=LOCAL).retired == (
        "team/bot@1", "team/bot@5", "team/bot@6")
    with pytest.raises(InvalidRequestError, match="--keep-last"):
        svc.gc(keep_tagged=True, caller=LOCAL)


def test_list_filters(svc):
    push_raw(svc, "team/bot", three(0), labels={"dataset": "v1"})
    push_raw(svc, "team/bot", three(1), labels={"dataset": "v2"})
    push_raw(svc, "team_x/bot", three(2))
    assert [v.ref for v in svc.list_versions("team/", caller=LOCAL)] == ["team/bot@2", "team/bot@1"]
    # '_' is literal
    assert [v.ref for v in svc.list_versions("team_", caller=LOCAL)] == ["team_x/bot@1"]
    assert [v.ref for v in svc.list_versions(labels={"dataset": "v1"},
                                             caller=LOCAL)] == ["team/bot@1"]
    assert len(svc.list_versions(method="lora", base="tiny", caller=LOCAL)) == 3
    assert svc.list_versions(method="loha", caller=LOCAL) == []
    assert svc.list_versions(base="sha256:" + "0" * 64, caller=LOCAL) == []
    listed = svc.list_versions(caller=LOCAL)[0]
    assert listed.manifest is None and listed.labels == {"dataset": "v2"}


def test_blob_write_checks_the_digest(svc):
    data = tensor_bytes(1, 1000)
    with pytest.raises(IntegrityError, match="hash to"):
        svc.blobs.write(digest_of(b"something else"), data, caller=LOCAL)
    assert svc.usage().blobs == 0 and svc.usage().partial_uploads == 0
    with pytest.raises(InvalidRequestError):
        svc.blobs.write("sha256:xyz", data, caller=LOCAL)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_multi_chunk_blobs_round_trip(svc, monkeypatch, itemsize):
    monkeypatch.setattr(codec_module, "CHUNK_SIZE", 4096)
    data = tensor_bytes(7, 4096 * 3 + 1000)  # 4 chunks, the last short
    svc.blobs.write(digest_of(data), data, itemsize=itemsize, caller=LOCAL)
    assert svc.blobs.read(digest_of(data), caller=LOCAL) == data
    assert b"".join(svc.blobs.iter(digest_of(data), offset=5000, caller=LOCAL)) == data[5000:]
    assert svc.blobs.info(digest_of(data), caller=LOCAL).codec == codec_module.codec_for(itemsize)


@pytest.mark.parametrize("itemsize", [2, 4, 8])
def test_byte_planes_join_back_with_and_without_numpy(monkeypatch, itemsize):
    data = tensor_bytes(8, 4096 * itemsize + 8 * itemsize)
    chosen = codec_module.codec_for(itemsize)
    stored = codec_module.encode(data, chosen)
    for numpy_from in (0, len(data) + 1):  # every chunk by numpy; none
        monkeypatch.setattr(codec_module, "_NUMPY_JOIN", numpy_from)
        decoded = codec_module.decode(stored, chosen, len(data))
        assert decoded == data and type(decoded) is bytes


def test_resumable_upload(svc):
    data = tensor_bytes(3, 10_000)
    digest = digest_of(data)
    upload = svc.blobs.begin_upload(digest, len(data), itemsize=2, chunk_size=4096, caller=LOCAL)
    assert upload.chunk_count == 3 and upload.missing == (0, 1, 2)
    svc.blobs.upload_chunk(upload.upload_id, 2, data[8192:], caller=LOCAL)
    svc.blobs.upload_chunk(upload.upload_id, 0, data[:4096], caller=LOCAL)
    # ... the connection drops; a new client asks where to resume
    status = svc.blobs.upload_status(upload.upload_id, caller=LOCAL)
    assert status.received == (0, 2) and status.missing == (1,)
    with pytest.raises(ConflictError, match="missing chunks"):
        svc.blobs.finish_upload(upload.upload_id, caller=LOCAL)
    assert svc.blobs.missing([digest], caller=LOCAL) == {digest}  # not visible until finished
    svc.blobs.upload_chunk(upload.upload_id, 1, data[4096:8192], caller=LOCAL)
    svc.blobs.upload_chunk(upload.upload_id, 1, data[4096:8192], caller=LOCAL)  # resent: idempotent
    assert svc.blobs.finish_upload(upload.upload_id, caller=LOCAL).size == len(data)
    assert svc.blobs.read(digest, caller=LOCAL) == data
    assert svc.blobs.begin_upload(digest, len(data), caller=LOCAL) is None  # already stored


def test_upload_with_wrong_bytes_is_discarded(svc):
    data = tensor_bytes(4, 5000)
    upload = svc.blobs.begin_upload(digest_of(data), len(data), chunk_size=4096, caller=LOCAL)
    with pytest.raises(InvalidRequestError, match="must be 4096 bytes"):
        svc.blobs.upload_chunk(upload.upload_id, 0, data[:100], caller=LOCAL)
    svc.blobs.upload_chunk(upload.upload_id, 0, data[:4096], caller=LOCAL)
    svc.blobs.upload_chunk(upload.upload_id, 1, b"\0" * 904, caller=LOCAL)
    with pytest.raises(IntegrityError, match="discarded"):
        svc.blobs.finish_upload(upload.upload_id, caller=LOCAL)
    with pytest.raises(AdapterNotFoundError):
        svc.blobs.upload_status(upload.upload_id, caller=LOCAL)
    assert svc.usage().partial_uploads == 0


def test_abandoned_uploads_are_reclaimed_by_gc(svc):
    data = tensor_bytes(5, 5000)
    upload = svc.blobs.begin_upload(digest_of(data), len(data), chunk_size=4096, caller=LOCAL)
    svc.blobs.upload_chunk(upload.upload_id, 0, data[:4096], caller=LOCAL)
    assert svc.verify(caller=LOCAL).ok and svc.verify(caller=LOCAL).partial_uploads == 1
    assert svc.gc(caller=LOCAL).uploads_removed == 0  # recent: maybe still in flight
    assert svc.gc(grace=NOW, caller=LOCAL).uploads_removed == 1
    assert svc.usage().partial_uploads == 0


@pytest.mark.parametrize("where", ["start", "middle"])
def test_flipped_byte_is_caught_by_verify_and_read(svc, where):
    tensors = three(0)
    push_raw(svc, "team/bot", tensors)
    push_raw(svc, "team/bot", dict(tensors, extra=tensor_bytes(9, 8192)))
    victim = digest_of(tensors["layer1.lora_A"])
    with svc.db.write() as s:
        blob_id = s.scalar(select(Blob.id).where(Blob.digest == victim))
        data = bytearray(s.scalar(select(Chunk.data).where(Chunk.blob_id == blob_id)))
        data[8 if where == "start" else len(data) // 2] ^= 0x01
        s.execute(update(Chunk).where(Chunk.blob_id == blob_id).values(data=bytes(data)))

    report = svc.verify(caller=LOCAL)
    assert not report.ok and len(report.problems) == 1
    problem = report.problems[0]
    assert problem.kind == "corrupt-blob" and problem.blob == victim
    assert set(problem.versions) == {"team/bot@1 tensor 'layer1.lora_A'",
                                     "team/bot@2 tensor 'layer1.lora_A'"}
    assert victim in problem.message and "team/bot@1" in problem.message
    with pytest.raises(IntegrityError, match=victim):
        svc.blobs.read(victim, caller=LOCAL)


def test_remotes_table(svc):
    svc.remotes.add("origin", "/srv/registry.db")
    with pytest.raises(ConflictError):
        svc.remotes.add("origin", "/elsewhere.db")
    with pytest.raises(RefError):
        svc.remotes.add("Bad Name", "/x.db")
    assert [r.name for r in svc.remotes.list()] == ["origin"]
    assert svc.remotes.remove("origin").url == "/srv/registry.db"
    with pytest.raises(AdapterNotFoundError):
        svc.remotes.remove("origin")


def test_labels_are_validated(svc):
    with pytest.raises(RefError):
        push_raw(svc, "team/bot", three(0), labels={"Bad Key": "x"})
    with pytest.raises(LimitExceededError, match="limit"):
        push_raw(svc, "team/bot", three(0), labels={"k": "x" * 2000})
    version = push_raw(svc, "team/bot", three(0), labels={"epochs": 3}).version
    assert version.labels == {"epochs": "3"}


def test_read_many_in_groups_and_streaming_large_blobs(svc, monkeypatch):
    from registry_db import blobstore

    monkeypatch.setattr(codec_module, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(blobstore, "_READ_BYTES", 10_000)  # groups of ~2 small blobs
    blobs = [tensor_bytes(i, 3000) for i in range(5)] + [tensor_bytes(99, 25_000)]  # large
    svc.blobs.write_many([(digest_of(b), b, 2) for b in blobs], caller=LOCAL)
    order = [digest_of(b) for b in reversed(blobs)]
    assert list(svc.blobs.read_many(order, caller=LOCAL)) == [(digest_of(b), b)
                                                            for b in reversed(blobs)]
    with pytest.raises(AdapterNotFoundError):
        list(svc.blobs.read_many([digest_of(b"absent")], caller=LOCAL))


def test_write_many_refuses_a_corrupt_small_blob_and_stores_nothing_of_its_batch(svc,
                                                                                  monkeypatch):
    from registry_db import encode, stored

    # tasks of ~3 small blobs, transactions of ~9: the third batch holds the corrupt blob
    monkeypatch.setattr(encode, "TASK_BYTES", 3 * 4000)
    monkeypatch.setattr(stored, "BATCH_BYTES", 9 * 4000)
    blobs = [tensor_bytes(i, 4000) for i in range(30)]
    sent = [(digest_of(b), b, 2) for b in blobs]
    sent[22] = (sent[22][0], tensor_bytes(999, 4000), 2)  # in the middle of a task
    with pytest.raises(IntegrityError, match=sent[22][0]):
        svc.blobs.write_many(sent, caller=LOCAL)
    with svc.db.read() as s:
        stored = set(s.scalars(select(Blob.digest)))
    assert stored == {digest_of(b) for b in blobs[:18]}  # the first two batches only
    svc.blobs.write_many([(digest_of(b), b, 2) for b in blobs], caller=LOCAL)
    assert dict(svc.blobs.read_many([digest_of(b) for b in blobs], caller=LOCAL)) == {
        digest_of(b): b for b in blobs}
