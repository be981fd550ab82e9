"""Big adapters stream (issue 13, target 5): a blob many times the store's chunk and batch
size goes through a local push, a push to a real ``adapterhub serve`` and a pull from it
with the client's memory bounded by a few chunks, not by the blob; bytes that do not match
their digest still leave nothing stored."""

import hashlib
import struct
import tracemalloc

import pytest
import torch
from helpers.hub_server import HubProcess

from adapterhub.errors import IntegrityError
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry
from registry_db import BlobStream, RegistryService
from registry_db.workers import WORKERS
from registry_db.models import Blob, Chunk

MiB = 1 << 20
ROWS = 24576  # x 4096 bf16 = 192 MiB: 24 store chunks, 12 write batches
# what a client may allocate at its peak, whatever the blob's size: a few chunks (8 MiB) per
# worker thread encoding them (the store's pool), and a few more on the way
BOUND = 16 * MiB * (WORKERS + 3)


def traced_peak(call) -> int:
    """Peak bytes the Python allocators (bytes, bytearrays, numpy arrays) held during
    ``call``, above what was held before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.fixture
def big_adapter(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"mlp.lora_A": (torch.randn(4096, ROWS, generator=g) * 0.01).to(torch.bfloat16),
               "mlp.lora_B": (torch.randn(16, 4096, generator=g) * 0.01).to(torch.bfloat16)}
    AdapterPackage.build("lora", {"r": 4096, "lora_alpha": 16, "target_modules": ["mlp"]},
                         tensors, base_name="big").save(tmp_path / "big")
    return tmp_path / "big"


def test_push_and_pull_of_a_big_blob_hold_a_few_chunks(tmp_path, monkeypatch, big_adapter):
    hub_db = str(tmp_path / "hub.db")
    with RegistryService(hub_db) as service:
        token, _ = service.tokens.create(["write:big"])
    monkeypatch.setenv("ADAPTERHUB_TOKEN", token)
    with Registry(tmp_path / "local.db") as local, Registry(tmp_path / "other.db") as other, \
            HubProcess(hub_db, log_path=tmp_path / "hub.log") as hub:
        peaks = {
            "push": traced_peak(lambda: local.push(big_adapter, "big/a", progress=False)),
            "push --to": traced_peak(lambda: local.push("big/a@1", "big/a", to=hub.url,
                                                        progress=False)),
            "pull --from": traced_peak(lambda: other.pull("big/a@1", hub.url,
                                                          progress=False)),
        }
        assert all(peak < BOUND for peak in peaks.values()), peaks
        other.pull("big/a@1", out=tmp_path / "out", progress=False)
        assert _tensor_data(tmp_path / "out") == _tensor_data(big_adapter)
        assert other.verify(deep=True).ok


def _tensor_data(directory) -> str:
    """The sha256 of the tensor bytes of an adapter directory (after the header)."""
    h = hashlib.sha256()
    with open(directory / "adapter.safetensors", "rb") as fh:
        fh.seek(8 + struct.unpack("<Q", fh.read(8))[0])
        while piece := fh.read(8 * MiB):
            h.update(piece)
    return h.hexdigest()


def _pieces(seed: int, size: int):
    """Pseudo-random bytes in odd-sized pieces (none lines up with a chunk), made on the fly
    each time (never all in memory)."""
    rng = torch.Generator().manual_seed(seed)
    left = size
    while left:
        n = min(left, 3 * MiB + 17)
        yield torch.randint(0, 256, (n,), dtype=torch.uint8, generator=rng).numpy().tobytes()
        left -= n


def _stream(seed: int, size: int) -> tuple[str, BlobStream]:
    h = hashlib.sha256()
    for piece in _pieces(seed, size):
        h.update(piece)
    return "sha256:" + h.hexdigest(), BlobStream(size, lambda: _pieces(seed, size))


def _rows(service: RegistryService) -> tuple[int, int]:
    from sqlalchemy import func, select

    with service.db.read() as s:
        return s.scalar(select(func.count(Blob.id))), s.scalar(select(func.count(Chunk.blob_id)))


def test_a_streamed_blob_is_stored_in_bounded_memory_and_read_back(registry_url):
    digest, blob = _stream(1, 40 * MiB + 5)
    with RegistryService(registry_url) as service:
        store = service.blobs.store
        assert traced_peak(lambda: store.write_many([(digest, blob, 2)])) < BOUND
        assert store.info(digest).size == blob.size
        h = hashlib.sha256()
        for piece in store.iter(digest):
            h.update(piece)
        assert "sha256:" + h.hexdigest() == digest
        store.write_many([(digest, blob, 2)])  # stored already: hashed, not stored twice
        assert _rows(service)[0] == 1


def test_a_streamed_blob_that_does_not_match_its_digest_leaves_nothing(registry_url):
    digest, _ = _stream(1, 20 * MiB)
    _, other = _stream(2, 20 * MiB)

    def failing():
        yield from _pieces(1, 12 * MiB)
        raise IntegrityError("the source went bad")

    with RegistryService(registry_url) as service:
        for wrong in (other, BlobStream(20 * MiB, failing),
                      BlobStream(20 * MiB, lambda: _pieces(1, 19 * MiB))):
            with pytest.raises(IntegrityError):
                service.blobs.store.write_many([(digest, wrong, 1)])
            assert _rows(service) == (0, 0)


def test_blob_stream_chunks_line_pieces_up_and_check_the_size():
    data = bytes(range(256)) * 1000
    blob = BlobStream(len(data), lambda: (data[i:i + 999] for i in range(0, len(data), 999)))
    chunks = [bytes(c) for c in blob.chunks(4096)]
    assert b"".join(chunks) == data and {len(c) for c in chunks[:-1]} == {4096}
    assert [bytes(c) for c in BlobStream.of(b"").chunks(8)] == [b""]
    with pytest.raises(IntegrityError):
        list(BlobStream(len(data) + 1, blob.pieces).chunks(4096))
    with pytest.raises(IntegrityError):
        list(BlobStream(len(data) - 1, blob.pieces).chunks(4096))


def test_a_big_blob_altered_on_the_hub_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    from sqlalchemy import select, update

    from registry_db import codec

    hub_db = str(tmp_path / "hub.db")
    digest, blob = _stream(3, 24 * MiB)
    tensors = {"mlp.lora_A": torch.frombuffer(blob.read(), dtype=torch.bfloat16)
               .reshape(3072, 4096),
               "mlp.lora_B": torch.zeros(16, 3072, dtype=torch.bfloat16)}
    package = AdapterPackage.build("lora", {"r": 3072, "lora_alpha": 16,
                                            "target_modules": ["mlp"]}, tensors, base_name="big")
    with RegistryService(hub_db) as service:
        token, _ = service.tokens.create(["write:big"])
    with Registry(hub_db) as hub_registry:
        hub_registry.push(package, "big/a", progress=False)
        with hub_registry.service.db.write() as s:  # a chunk that decodes, to other bytes
            blob_id = s.scalar(select(Blob.id).where(Blob.digest == digest))
            blob_codec = s.scalar(select(Blob.codec).where(Blob.id == blob_id))
            s.execute(update(Chunk).where(Chunk.blob_id == blob_id, Chunk.index == 1)
                      .values(data=codec.encode(bytes(8 * MiB), blob_codec)))
    monkeypatch.setenv("ADAPTERHUB_TOKEN", token)
    with HubProcess(hub_db, log_path=tmp_path / "hub.log") as hub, \
            Registry(tmp_path / "other.db") as other:
        with pytest.raises(IntegrityError, match=f"{digest}.*corrupt"):
            other.pull("big/a@1", hub.url, progress=False)
        assert other.list() == []
        with other.service.db.read() as s:  # (the small blob, checked, may stay until gc)
            assert s.scalar(select(Blob.id).where((Blob.digest == digest)
                                                  | Blob.complete.is_(False))) is None
