"""Crash safety and concurrency, with real processes on a real SQLite file and PostgreSQL.

Workers are forked (cheap to start) and use registry_db directly: the transactions under
test are the store's, and a worker that needs no torch starts in milliseconds.
"""

import multiprocessing
import os
import random
import signal
import time
from datetime import timedelta

from helpers.registry_helpers import LOCAL, digest_of, push_raw, tensor_bytes

from registry_db import RegistryService
from registry_db import codec as codec_module

FORK = multiprocessing.get_context("fork")
SHARED = tensor_bytes(0, 4096)  # every concurrent pusher stores this blob too


def _concurrent_pusher(url: str, worker: int, pushes: int) -> None:
    service = RegistryService(url)  # the first open of a fresh registry races the others
    for i in range(pushes):
        push_raw(service, "team/bot", {"shared": SHARED,
                                       "own": tensor_bytes(1000 * worker + i, 2048)},
                 labels={"worker": str(worker), "i": str(i)}, message=f"{worker}.{i}")
    service.close()


def _run_workers(target, args_list, timeout=300):
    procs = [FORK.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    return [p.exitcode for p in procs]


def test_concurrent_pushers(registry_url):
    """8 processes x 25 pushes into one registry: 200 versions, numbers 1..200, no errors
    (a worker that hit "database is locked" or any other error exits non-zero)."""
    exitcodes = _run_workers(_concurrent_pusher, [(registry_url, w, 25) for w in range(8)])
    assert exitcodes == [0] * 8
    with RegistryService(registry_url) as service:
        versions = service.log("team/bot", caller=LOCAL)
        assert sorted(v.number for v in versions) == list(range(1, 201))
        assert len({v.digest for v in versions}) == 200
        assert {(v.labels["worker"], v.labels["i"]) for v in versions} == {
            (str(w), str(i)) for w in range(8) for i in range(25)}
        usage = service.usage()
        assert usage.blobs == 201  # the shared blob once, plus one per push
        assert service.verify(caller=LOCAL).ok


def _crashing_pusher(url: str, seed: int) -> None:
    codec_module.CHUNK_SIZE = 16384  # many chunk rows per blob: more places to die
    service = RegistryService(url)
    rng = random.Random(seed)
    for i in range(10_000):
        tensors = {f"t{k}": tensor_bytes(seed * 100_000 + i * 10 + k, 96 * 1024)
                   for k in range(3)}
        if rng.random() < 0.3:  # a resumable upload of one blob, then a normal push
            data = tensors["t0"]
            upload = service.blobs.begin_upload(digest_of(data), len(data), itemsize=2,
                                                chunk_size=16384, caller=LOCAL)
            if upload is not None:
                for index in upload.missing:
                    service.blobs.upload_chunk(upload.upload_id, index,
                                               data[index * 16384:(index + 1) * 16384],
                                               caller=LOCAL)
                service.blobs.finish_upload(upload.upload_id, caller=LOCAL)
        push_raw(service, "team/crash", tensors, labels={"seed": str(seed), "i": str(i)})


def test_sigkill_during_pushes_leaves_no_partial_version(registry_url):
    kills = 20 if "postgresql" in registry_url else 24
    rng = random.Random(1234)
    with RegistryService(registry_url) as service:
        for seed in range(kills):
            proc = FORK.Process(target=_crashing_pusher, args=(registry_url, seed))
            proc.start()
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            assert proc.exitcode == -signal.SIGKILL

        report = service.verify(caller=LOCAL)  # every visible version is whole
        assert report.ok, report.problems
        assert report.unreferenced_blobs + report.partial_uploads > 0, \
            "no kill landed inside a blob write: the test proves nothing"
        versions = service.log("team/crash", caller=LOCAL)
        assert versions, "the workers committed nothing before being killed"
        for version in versions:
            assert version.size == 3 * 96 * 1024
            for entry in service.resolve(version.ref, caller=LOCAL).manifest.tensors.values():
                assert len(service.blobs.read(entry.digest, caller=LOCAL)) == 96 * 1024

        gc = service.gc(grace=timedelta(0), caller=LOCAL)
        assert gc.purged == ()  # live versions are untouched
        after = service.verify(caller=LOCAL)
        assert after.ok and after.unreferenced_blobs == 0 and after.partial_uploads == 0
        usage = service.usage()
        assert usage.versions == len(versions)
        assert usage.blobs == len({
            e.digest for v in versions
            for e in service.resolve(v.ref, caller=LOCAL).manifest.tensors.values()})
