"""Soak: 16 clients for ``ADAPTERHUB_SOAK_SECONDS`` (default 60) pushing and pulling across
two hub replicas (one of them ``--workers 2``) on one PostgreSQL and one SeaweedFS bucket;
the other replica is SIGKILLed and restarted mid-run. Nothing acknowledged may be lost or
corrupt: every version a client was told it committed is there with its digest, every pull
returns exactly the pushed bytes, and a deep verify finds no problem."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
from helpers.registry_helpers import LOCAL, digest_of, manifest_for

from adapterhub.errors import AdapterHubError
from registry_db import BlobStream, RegistryService

CLIENTS = 16


def _replica(db: str, port: int, *options: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "adapterhub.cli", "serve", "--db", db,
                             "--port", str(port), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"replica on port {port} did not start")


def test_soak_two_replicas_one_killed_and_restarted(postgres, s3_env, monkeypatch):
    from adapterhub_remotes_http.remote import HttpRemote
    from helpers.hub_server import free_port

    seconds = float(os.environ.get("ADAPTERHUB_SOAK_SECONDS", "60"))
    db = postgres.create_database(f"soak{uuid.uuid4().hex[:8]}")
    with RegistryService(db) as service:
        service.choose_blob_backend(s3_env, caller=LOCAL)
        monkeypatch.setenv("ADAPTERHUB_TOKEN", service.tokens.create(["admin"])[0])
    ports = [free_port(), free_port()]
    steady = _replica(db, ports[0], "--workers", "2")
    victim = _replica(db, ports[1])
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    committed: dict[str, tuple[str, dict[str, bytes]]] = {}  # ref → (digest, tensors)
    lock = threading.Lock()
    failures: list[str] = []
    counts = {"push": 0, "pull": 0, "refused": 0}
    stop = time.monotonic() + seconds

    def client(number: int) -> None:
        rng = random.Random(number)
        remotes = [HttpRemote(url) for url in urls]
        try:
            while time.monotonic() < stop:
                remote = rng.choice(remotes)
                try:
                    if rng.random() < 0.5 or not committed:
                        big = rng.random() < 0.15  # a presigned multipart upload now and then
                        tensors = {f"t{i}": rng.randbytes(2 * rng.randint(1, 4096))
                                   for i in range(3)}
                        if big:
                            tensors["big"] = rng.randbytes(6 << 20)
                        manifest = manifest_for(tensors)
                        missing = remote.missing_blobs(e.digest for e in
                                                       manifest.tensors.values())
                        remote.upload_blobs((digest_of(d), d, 2) for d in tensors.values()
                                            if digest_of(d) in missing)
                        result = remote.commit(f"soak/c{number}", manifest)
                        with lock:
                            committed[result.version.ref] = (result.version.digest, tensors)
                            counts["push"] += 1
                    else:
                        with lock:
                            ref, (digest, tensors) = rng.choice(sorted(committed.items()))
                        version = remote.resolve(ref)
                        wanted = {e.digest: name for name, e in version.manifest.tensors.items()}
                        got = {d: data.read() if isinstance(data, BlobStream) else data
                               for d, data in remote.download_blobs(list(wanted))}
                        if version.digest != digest or any(
                                got[d] != tensors[name] for d, name in wanted.items()):
                            failures.append(f"{ref} came back different")
                        with lock:
                            counts["pull"] += 1
                except AdapterHubError as exc:  # the victim down longer than the retries
                    with lock:
                        counts["refused"] += 1
                    if "cannot reach" not in exc.message:
                        failures.append(f"{type(exc).__name__}: {exc.message}")
        finally:
            for remote in remotes:
                remote.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds / 3)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        time.sleep(min(5.0, seconds / 6))
        victim = _replica(db, ports[1])
        for thread in threads:
            thread.join(seconds + 300)
    finally:
        for proc in (steady, victim):
            proc.terminate()
            proc.wait(30)

    assert not failures, failures[:5]
    assert counts["push"] > CLIENTS and counts["pull"] > CLIENTS, counts
    with RegistryService(db) as service:
        stored = {v.ref: v.digest for v in service.list_versions(caller=LOCAL)}
        assert {ref: digest for ref, (digest, _) in committed.items()} == {
            ref: stored[ref] for ref in committed}
        report = service.verify(caller=LOCAL, deep=True)
        assert report.ok, report.problems[:3]
    postgres.drop_database(db.rsplit("/", 1)[1])
