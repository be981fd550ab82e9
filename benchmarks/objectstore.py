"""Object-store benchmark, one run, one machine, loopback: pushing and pulling a 50 MB and a
1 GB adapter through ``adapterhub serve`` on the ``s3`` blob backend (presigned uploads,
redirected downloads; the client hashes every blob, and the store checks each upload against
its signed SHA-256, as this SeaweedFS checks signatures) vs plain boto3 ``upload_file`` /
``download_file`` of the same bytes to the same SeaweedFS, each hub run beside a plain run.
Ratios are hub throughput over plain S3 throughput (1.0: as fast as plain S3); the 50 MB case
is the median of :data:`REPEAT` runs and the 1 GB one of :data:`REPEAT_LARGE` (new bytes each
time), after one warm-up push. Also the
hub's CPU seconds per GB pulled (with redirects it only authorizes and signs).
Writes ``benchmarks/results/objectstore.json``.

Run: ``python -m benchmarks objectstore`` (``ADAPTERHUB_BENCH_OBJECTSTORE_SIZES=50`` for the
50 MB case only).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import free_port, machine, start_hub, write_result

ROOT = Path(__file__).resolve().parent.parent
TENSOR_MB = 64  # each adapter is tensors of at most this size (the 50 MB one: 5 x 10 MB)
REPEAT = 5  # runs of each case of at most 100 MB (median reported)
REPEAT_LARGE = 3  # runs of a larger case


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tensors(total_mb: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    size = min(TENSOR_MB, max(1, total_mb // 5)) << 20
    return {f"t{i}": rng.randbytes(size) for i in range(max(1, (total_mb << 20) // size))}


def _case(total_mb: int, url: str, hub_pid: int, client, bucket: str,
          tmp: Path, seed: int) -> dict[str, Any]:
    from adapterhub_remotes_http.remote import HttpRemote
    from registry_db import Manifest, TensorEntry
    from registry_db.digests import sha256_digest

    tensors = _tensors(total_mb, seed)
    nbytes = sum(map(len, tensors.values()))
    manifest = Manifest(method={"name": "lora", "version": 1, "config": {"r": 16}},
                        base_model={"name": "bench", "revision": None, "fingerprint": None,
                                    "modules": {}},
                        tensors={name: TensorEntry(sha256_digest(data), "U8", (len(data),))
                                 for name, data in tensors.items()},
                        labels={}, parents=(), metrics={})
    with HttpRemote(url) as remote:
        start = time.perf_counter()
        missing = remote.missing_blobs(e.digest for e in manifest.tensors.values())
        remote.upload_blobs((e.digest, tensors[n], 1) for n, e in manifest.tensors.items()
                            if e.digest in missing)
        version = remote.commit(f"bench/o{total_mb}-{seed}", manifest).version
        push_s = time.perf_counter() - start

        cpu = _cpu_seconds(hub_pid)
        start = time.perf_counter()
        resolved = remote.resolve(version.ref)
        got = dict(remote.download_blobs([e.digest for e in resolved.manifest.tensors.values()]))
        pull_s = time.perf_counter() - start
        hub_cpu = _cpu_seconds(hub_pid) - cpu
    assert sum(map(len, got.values())) == nbytes

    source = tmp / f"plain-{total_mb}.bin"
    with source.open("wb") as fh:
        for data in tensors.values():
            fh.write(data)
    del tensors, got
    key = f"plain/{uuid.uuid4().hex}"
    start = time.perf_counter()
    client.upload_file(str(source), bucket, key)
    plain_up_s = time.perf_counter() - start
    start = time.perf_counter()
    client.download_file(bucket, key, str(tmp / "plain-back.bin"))
    plain_down_s = time.perf_counter() - start
    for path in (source, tmp / "plain-back.bin"):
        path.unlink()
    mb = nbytes / 1e6
    return {"bytes": nbytes, "blobs": len(manifest.tensors),
            "hub_push_MBps": round(mb / push_s, 1), "hub_pull_MBps": round(mb / pull_s, 1),
            "plain_upload_MBps": round(mb / plain_up_s, 1),
            "plain_download_MBps": round(mb / plain_down_s, 1),
            "push_ratio": round(plain_up_s / push_s, 3),
            "pull_ratio": round(plain_down_s / pull_s, 3),
            "hub_cpu_s_per_GB_pulled": round(hub_cpu / (nbytes / 1e9), 4)}


def _median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (every run pairs the hub with plain S3)."""
    import statistics

    case = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {**case, "bytes": runs[0]["bytes"], "blobs": runs[0]["blobs"],
            "runs": len(runs),
            "push_ratios": [run["push_ratio"] for run in runs],
            "pull_ratios": [run["pull_ratio"] for run in runs]}


def main() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))  # the suite's SeaweedFS fixture, reused
    from helpers.s3_server import SeaweedServer

    from registry_db import Caller, RegistryService
    from registry_db.objectstore import PART_SIZE

    sizes = [int(s) for s in os.environ.get("ADAPTERHUB_BENCH_OBJECTSTORE_SIZES",
                                            "50,1000").split(",")]
    server = SeaweedServer()
    server.start()
    os.environ.update(server.env())
    hub = None
    try:
        client = server.client()
        bucket = "bench-objectstore"
        client.create_bucket(Bucket=bucket)
        with tempfile.TemporaryDirectory(prefix="adapterhub-bench-s3-") as tmp:
            db = str(Path(tmp) / "hub.db")
            with RegistryService(db) as service:
                service.choose_blob_backend(f"s3://{bucket}/hub",
                                            caller=Caller.local_user("bench"))
                os.environ["ADAPTERHUB_TOKEN"] = service.tokens.create(["admin"])[0]

            port = free_port()
            hub = start_hub(db, port, Path(tmp) / "hub.log")
            url = f"http://127.0.0.1:{port}"
            # a hub runs for days: its first presigned request (boto3's client, the store's
            # checksum probe) is paid once, here, not by the first case
            _case(5, url, hub.pid, client, bucket, Path(tmp), seed=0)
            cases = {}
            for mb in sizes:
                runs = [_case(mb, url, hub.pid, client, bucket, Path(tmp), seed=mb + rep)
                        for rep in range(REPEAT if mb <= 100 else REPEAT_LARGE)]
                cases[f"{mb}MB"] = _median_case(runs)
    finally:
        if hub is not None:
            hub.terminate()
            hub.wait(30)
        server.stop()
    import boto3

    result = {"what": "push/pull through adapterhub serve (s3 backend, presigned) vs plain "
                      "boto3 upload_file/download_file, same SeaweedFS, loopback",
              "cases": cases, "part_size": PART_SIZE, "boto3": boto3.__version__,
              "machine": machine()}
    print(write_result("objectstore", result))
    for name, case in cases.items():
        print(f"{name}: push {case['push_ratio']}x, pull {case['pull_ratio']}x of plain S3; "
              f"hub CPU {case['hub_cpu_s_per_GB_pulled']} s/GB pulled")
    return result
