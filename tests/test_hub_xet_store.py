"""The hub's persistent Xet store (registry_db.xet behind adapterhub.hub.xet_store), on
SQLite and PostgreSQL: what one token uploads survives a restart, is visible to it alone,
reconstructs byte for byte; gc forgets unused uploads after the grace period and keeps what
a version uses."""

import os
from datetime import timedelta

import pytest
from helpers.registry_helpers import LOCAL, digest_of, push_raw
from sqlalchemy import func, select

from adapterhub.errors import IntegrityError
from adapterhub.hub.hf_xet import xet_service
from adapterhub.xet.pack import pack_file
from registry_db import RegistryService
from registry_db.files import KeptFile
from registry_db.models import Blob
from registry_db.models_hub import XetFile, XetXorb

ALICE, BOB = "token:1", "token:2"


def upload(service: RegistryService, data: bytes, owner: str = ALICE):
    xet = xet_service(service)
    packed = pack_file(data, schemes=(0, 2))
    for x in packed.xorbs:
        xet.upload_xorb(x.hex, x.data, owner)
    assert xet.upload_shard(packed.shard, owner)
    return packed


def count(service: RegistryService, table) -> int:
    with service.db.read() as s:
        return s.scalar(select(func.count()).select_from(table))


def test_uploads_persist_and_stay_private(registry_url):
    data = os.urandom(300_000)
    with RegistryService(registry_url) as service:
        packed = upload(service, data)
    with RegistryService(registry_url) as service:  # a restart, or another replica
        xet = xet_service(service)
        assert b"".join(xet.read_by_sha256(packed.sha256, ALICE)) == data
        assert xet.file_by_sha256(packed.sha256, BOB) is None
        first = packed.xorbs[0].entry.chunks[0].chunk_hash.hex()
        assert xet.storage.xorbs_with_chunk(bytes.fromhex(first), BOB) == []
        assert xet.storage.xorbs_with_chunk(bytes.fromhex(first), ALICE) == [
            packed.xorbs[0].hash]
        with pytest.raises(IntegrityError):  # Bob cannot describe Alice's xorbs in a shard
            xet.upload_shard(packed.shard, BOB)
        assert xet.upload_xorb(packed.xorbs[0].hex, packed.xorbs[0].data, BOB)  # possession
        assert xet.storage.xorb_visible(packed.xorbs[0].hash, BOB)


def test_a_corrupt_stored_xorb_is_caught_on_reading(registry_url):
    data = os.urandom(100_000)
    with RegistryService(registry_url) as service:
        packed = upload(service, data)
        with service.db.write() as s:
            digest = s.scalar(select(XetXorb.blob_digest))
            blob = s.scalar(select(Blob).where(Blob.digest == digest))
            blob.digest = digest_of(b"elsewhere")  # the bytes no longer match the name
            s.execute(XetXorb.__table__.update().values(blob_digest=blob.digest))
        xet = xet_service(service)
        with pytest.raises(IntegrityError):
            b"".join(xet.read_by_sha256(packed.sha256, ALICE))


def test_gc_forgets_unused_uploads_and_keeps_what_a_version_uses(registry_url):
    used, unused = os.urandom(200_000), os.urandom(200_000)
    with RegistryService(registry_url) as service:
        kept = upload(service, used)
        upload(service, unused)
        blobs = count(service, Blob)
        service.gc(caller=LOCAL, grace=timedelta(hours=1))  # all recent: nothing goes
        assert count(service, XetFile) == 2 and count(service, Blob) == blobs
        whole = digest_of(used)
        service.blobs.write(whole, used, caller=LOCAL)
        push_raw(service, "team/x", {"w": b"\0" * 64},
                 files=[KeptFile("data.bin", kept.sha256, len(used), (whole,))])
        service.gc(caller=LOCAL, grace=timedelta(0))
        assert count(service, XetFile) == 1
        assert count(service, XetXorb) == len(kept.xorbs)
        xet = xet_service(service)
        assert b"".join(xet.read_by_sha256(kept.sha256, ALICE)) == used
        assert service.verify(caller=LOCAL).ok
