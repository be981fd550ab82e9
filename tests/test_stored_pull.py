"""Pulls move blobs as the source stores them (compressed chunks): the receiver decodes and
hashes every chunk before it keeps the stored bytes, refuses corrupt or malformed ones, and a
hub only sends blobs the caller may see."""

import httpx
import pytest
import torch
from helpers.hub_server import HubServer
from helpers.registry_helpers import LOCAL, digest_of, push_raw, tensor_bytes
from sqlalchemy import select, update

from adapterhub.errors import IntegrityError
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry
from registry_db import RegistryService, StoredBlob
from registry_db.models import Blob, Chunk

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["lin0"]}


def lora(seed=0):
    g = torch.Generator().manual_seed(seed)
    return AdapterPackage.build("lora", CONFIG, {
        "lin0.lora_A": torch.randn(4, 64, generator=g).to(torch.bfloat16),
        "lin0.lora_B": torch.randn(64, 4, generator=g).to(torch.bfloat16)}, base_name="tiny")


def stored_chunks(service: RegistryService) -> dict[str, tuple[str, list[bytes]]]:
    with service.db.read() as s:
        blobs = s.execute(select(Blob.id, Blob.digest, Blob.codec).where(Blob.complete)).all()
        return {b.digest: (b.codec, list(s.scalars(select(Chunk.data).where(
            Chunk.blob_id == b.id).order_by(Chunk.index)))) for b in blobs}


def corrupt(service: RegistryService, digest: str) -> None:
    with service.db.write() as s:
        blob_id = s.scalar(select(Blob.id).where(Blob.digest == digest))
        data = bytearray(s.scalar(select(Chunk.data).where(Chunk.blob_id == blob_id)))
        data[len(data) // 2] ^= 0x01
        s.execute(update(Chunk).where(Chunk.blob_id == blob_id).values(data=bytes(data)))


def test_pull_over_http_keeps_the_stored_bytes(tmp_path, monkeypatch):
    package = lora()
    with HubServer(str(tmp_path / "hub.db")) as server:
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("write:team"))
        server.hub.registry.push(package, "team/bot", progress=False)
        with Registry(tmp_path / "local.db") as local:
            pulled = local.pull("team/bot", server.url, progress=False)
            assert pulled.digest == package.digest and local.verify().ok
            theirs = stored_chunks(server.hub.registry.service)
            ours = stored_chunks(local.service)
        assert ours == theirs  # same codec, byte-identical chunks: nothing recompressed
        assert all(codec == "zstd+bp2" for codec, _ in ours.values())


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_pull_over_http_refuses_a_corrupt_stored_chunk(tmp_path, monkeypatch, existing):
    package = lora()
    victim = package.manifest.tensors["lin0.lora_A"].digest
    with HubServer(str(tmp_path / "hub.db")) as server:
        monkeypatch.setenv("ADAPTERHUB_TOKEN", server.token("write:team"))
        server.hub.registry.push(package, "team/bot", progress=False)
        corrupt(server.hub.registry.service, victim)
        if existing:  # written with the standard library (registry_db.writes.SqliteWriter)
            RegistryService(tmp_path / "local.db").close()
        with Registry(tmp_path / "local.db") as local:
            with pytest.raises(IntegrityError, match=victim):
                local.pull("team/bot", server.url, progress=False)
            assert local.list() == []
            assert victim not in stored_chunks(local.service)


def test_stored_route_hides_blobs_the_caller_may_not_see(tmp_path):
    package = lora()
    digest = package.manifest.tensors["lin0.lora_A"].digest
    with HubServer(str(tmp_path / "hub.db")) as server:
        server.hub.registry.push(package, "team/bot", progress=False)
        outsider = {"Authorization": f"Bearer {server.token('read:other')}"}
        insider = {"Authorization": f"Bearer {server.token('read:team')}"}
        body = {"digests": [digest]}
        refused = httpx.post(f"{server.url}/api/v1/repos/other/x/blobs/stored", json=body,
                             headers=outsider)
        assert refused.status_code == 404 and refused.json()["code"] == "NotFound"
        allowed = httpx.post(f"{server.url}/api/v1/repos/team/bot/blobs/stored", json=body,
                             headers=insider)
        assert allowed.status_code == 200 and digest.encode() in allowed.content


def test_write_stored_checks_every_chunk(tmp_path):
    with RegistryService(tmp_path / "a.db") as a, RegistryService(tmp_path / "b.db") as b:
        data = tensor_bytes(1, 4096)
        push_raw(a, "team/bot", {"w": data})
        (blob,) = a.blobs.read_stored([digest_of(data)], caller=LOCAL)
        flipped = bytearray(blob.chunks[0][1])
        flipped[-1] ^= 0x01
        bad = [StoredBlob(blob.digest, blob.size, blob.codec, blob.chunk_size,
                          ((blob.chunks[0][0], bytes(flipped)),)),
               StoredBlob(blob.digest, blob.size, blob.codec, blob.chunk_size, ()),
               StoredBlob(blob.digest, blob.size, blob.codec, blob.chunk_size,
                          ((blob.chunks[0][0] - 1, blob.chunks[0][1]),))]
        for stored in bad:
            with pytest.raises(IntegrityError, match=blob.digest):
                b.blobs.write_stored([stored], caller=LOCAL)
        assert b.blobs.visible([blob.digest], caller=LOCAL) == set()
        b.blobs.write_stored([blob], caller=LOCAL)
        assert b.blobs.read(blob.digest, caller=LOCAL) == data


def test_pull_out_streams_the_same_bytes_without_torch(tmp_path):
    import subprocess
    import sys

    package = lora(3)
    package.save(tmp_path / "saved")
    with Registry(tmp_path / "reg.db") as reg:
        reg.push(package, "team/bot", progress=False)
    script = ("import sys\nfrom adapterhub.registry import Registry\n"
              f"with Registry({str(tmp_path / 'reg.db')!r}) as reg:\n"
              f"    reg.pull('team/bot@1', out={str(tmp_path / 'out')!r}, progress=False)\n"
              "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
    out, saved = tmp_path / "out", tmp_path / "saved"
    assert (out / "adapter.json").read_bytes() == (saved / "adapter.json").read_bytes()
    # the same header (safetensors orders __metadata__'s keys as it likes) and the same data
    streamed, written = (split_safetensors(d / "adapter.safetensors") for d in (out, saved))
    assert streamed == written
    assert AdapterPackage.load(out).digest == package.digest


def split_safetensors(path):
    import json
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    return json.loads(data[8:8 + length]), data[8 + length:]


def test_pull_out_streams_large_blobs_chunk_by_chunk(tmp_path, monkeypatch):
    import adapterhub.registry.registry as registry_module
    from registry_db import codec

    monkeypatch.setattr(registry_module, "STREAM_BLOB_BYTES", 1024)
    monkeypatch.setattr(codec, "CHUNK_SIZE", 4096)  # 32 KiB tensors: 8 chunks each
    g = torch.Generator().manual_seed(4)
    package = AdapterPackage.build("lora", CONFIG, {
        "lin0.lora_A": torch.randn(4, 2048, generator=g),
        "lin0.lora_B": torch.randn(2048, 4, generator=g)}, base_name="tiny")
    package.save(tmp_path / "saved")
    with Registry(tmp_path / "reg.db") as reg:
        reg.push(package, "team/bot", progress=False)
        reg.pull("team/bot@1", out=tmp_path / "out", progress=False)
        victim = package.manifest.tensors["lin0.lora_B"].digest
        corrupt(reg.service, victim)
        with pytest.raises(IntegrityError, match=victim):
            reg.pull("team/bot@1", out=tmp_path / "bad", progress=False)
    assert split_safetensors(tmp_path / "out" / "adapter.safetensors") == split_safetensors(
        tmp_path / "saved" / "adapter.safetensors")
    assert not (tmp_path / "bad").exists()
