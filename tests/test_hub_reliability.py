"""Soak: 16 concurrent clients push and pull through ``adapterhub serve`` (its own process)
for 60 s on SQLite and on PostgreSQL; no version may be lost or corrupt.

Clients share four repositories (concurrent commits to one repository) and a pool of blobs
(concurrent uploads of the same blob); one push in eight carries a 5 MiB blob that goes as a
chunked upload. Every pull is compared byte for byte with what was pushed.
"""

import hashlib
import random
import threading
import time

import pytest
from helpers.hub_server import HubProcess
from helpers.registry_helpers import LOCAL, digest_of, manifest_for

from adapterhub.registry.remotes import open_remote, send_version
from registry_db import BlobStream, RegistryService

CLIENTS = 16
SOAK_S = {"sqlite": 60, "postgresql": 60}
SHARED = [random.Random(i).randbytes(4096) for i in range(8)]


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request, tmp_path, monkeypatch):
    """``adapterhub serve`` in a subprocess over a fresh registry; yields (url, service)."""
    if request.param == "sqlite":
        db = str(tmp_path / "hub.db")
    else:
        import uuid

        server = request.getfixturevalue("postgres")
        name = f"soak{uuid.uuid4().hex[:12]}"
        db = server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
    service = RegistryService(db)
    token, _ = service.tokens.create(["write:soak"])
    monkeypatch.setenv("ADAPTERHUB_TOKEN", token)
    try:
        with HubProcess(db, log_path=tmp_path / "serve.log") as hub:
            yield hub.url, service, request.param
    finally:
        service.close()


def test_concurrent_clients_lose_and_corrupt_nothing(served):
    url, service, backend = served
    pushed: list[tuple[str, str, dict[str, bytes]]] = []
    lock = threading.Lock()
    errors: list[str] = []
    counts = {"push": 0, "pull": 0}
    deadline = time.monotonic() + SOAK_S[backend]

    def client(index: int) -> None:
        rng = random.Random(index)
        remote = open_remote(url)
        try:
            step = 0
            while time.monotonic() < deadline:
                step += 1
                with lock:
                    known = list(pushed)
                if known and rng.random() < 0.5:
                    name, digest, tensors = rng.choice(known)
                    version = remote.resolve(f"{name}@{digest[:19]}")
                    got = {d: data.read() if isinstance(data, BlobStream) else data
                           for d, data in remote.download_blobs(sorted(
                               {e.digest for e in version.manifest.tensors.values()}))}
                    for tensor, data in tensors.items():
                        if version.digest != digest or got[digest_of(data)] != data:
                            errors.append(f"pull of {name}@{digest[:19]} {tensor} differs")
                    with lock:
                        counts["pull"] += 1
                    continue
                tensors = {f"t{k}": rng.randbytes(rng.choice([512, 4096, 65536]))
                           for k in range(rng.randint(1, 3))}
                tensors["shared"] = rng.choice(SHARED)
                if step % 8 == 0:
                    tensors["big"] = rng.randbytes(5 << 20)
                manifest = manifest_for(tensors, labels={"client": index, "step": step})
                blobs = {digest_of(d): d for d in tensors.values()}
                name = f"soak/repo{index % 4}"
                result = send_version(remote, name, manifest,
                                      lambda ds, blobs=blobs: ((d, blobs[d]) for d in ds),
                                      show_progress=False)
                if not result.created or result.version.digest != manifest.digest:
                    errors.append(f"push to {name} returned {result}")
                with lock:
                    pushed.append((name, manifest.digest, tensors))
                    counts["push"] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            errors.append(f"client {index}: {type(exc).__name__}: {exc}")
        finally:
            remote.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SOAK_S[backend] + 120)
    assert not errors, errors[:5]
    print(f"soak {backend}: {counts['push']} pushes, {counts['pull']} pulls by {CLIENTS} "
          f"clients in {SOAK_S[backend]} s")
    assert counts["push"] >= CLIENTS and counts["pull"] >= CLIENTS

    # nothing lost: every pushed version is there with its bytes; numbers are unique
    for name in {n for n, _, _ in pushed}:
        log = service.log(name, caller=LOCAL)
        assert len({v.number for v in log}) == len(log)
        assert {v.digest for v in log} == {d for n, d, _ in pushed if n == name}
    for _, _, tensors in random.Random(0).sample(pushed, min(40, len(pushed))):
        for data in tensors.values():
            assert hashlib.sha256(service.blobs.read(digest_of(data), caller=LOCAL)).digest() == \
                hashlib.sha256(data).digest()
    report = service.verify(caller=LOCAL)
    assert report.ok, report.problems[:3]
    assert report.versions_checked == len(pushed)
