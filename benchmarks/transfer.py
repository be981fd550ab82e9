"""Push and ``pull --out`` against the floor of their work, and peak memory of big transfers
(issue 13, targets 2 and 5), in one run:

- ``push`` of the 50 MB adapter into an empty local registry vs its floor: sha256 + byte
  planes + zstd of the same tensor bytes with the same calls
  (:func:`registry_db.codec.encode`, :mod:`hashlib`) on all cores. The registry is created
  untimed (``setup``), as ``adapterhub init`` leaves one: a user pushes into an existing
  registry, and creating its schema (~0.13 s) is no part of a push. Closing it (the WAL
  checkpoint that writes the pushed chunks into the database file) is timed. Beside it,
  the floor of keeping the bytes: the same stored chunks inserted into an empty registry
  file with plain ``sqlite3`` in one transaction, and the file closed;
- ``adapterhub push`` of the same directory as a fresh process (start-up included);
- ``pull --out`` of that version from the registry into a directory vs its floor: decode the
  stored chunks + sha256 + write the same bytes to a file, on all cores;
- a 2 GB adapter (8 LoRA modules, r=4096: 16 tensors of 128 MiB): ``adapterhub push`` into a local registry, ``push
  --to`` a hub and ``pull --from`` it into another registry, and ``pull --out``, each a
  fresh process, with the peak RssAnon of the client and of the hub's process.

Writes ``benchmarks/results/transfer.json``.

Run: ``python -m benchmarks transfer``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import (free_port, machine, measure, repeat, start_hub, tree_anon_kib,
                                write_result)
from benchmarks.pull import empty
from benchmarks.registry import build_adapter

REPEAT = 5
BIG_TENSORS = 16
BIG_ROWS = 16384  # x 4096 bf16 = 128 MiB per tensor


def tensors_of(path: Path) -> list[memoryview]:
    """The raw bytes of each tensor in a safetensors file (one read of the file)."""
    import json
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + length])
    base = 8 + length
    view = memoryview(data)
    return [view[base + e["data_offsets"][0]:base + e["data_offsets"][1]]
            for name, e in sorted(header.items()) if name != "__metadata__"]


def push_floor(tensors: list[memoryview]) -> None:
    """sha256 and zstd of byte planes of every 8 MiB chunk, on all cores."""
    from registry_db import codec

    def one(view: memoryview) -> None:
        hashlib.sha256(view).digest()
        for piece in codec.chunk_views(view, codec.CHUNK_SIZE):
            codec.encode(piece, codec.codec_for(2, len(piece)))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, tensors))


def pull_floor(stored: list[tuple[str, list[tuple[int, bytes]]]], out: Path) -> None:
    """Decode every stored chunk, hash and write the bytes, on all cores."""
    from registry_db import codec

    def one(item: tuple[str, list[tuple[int, bytes]]]) -> bytes:
        blob_codec, chunks = item
        raw = b"".join(codec.decode(data, blob_codec, size) for size, data in chunks)
        hashlib.sha256(raw).digest()
        return raw

    with ThreadPoolExecutor(os.cpu_count()) as pool, open(out, "wb") as fh:
        for raw in pool.map(one, stored):
            fh.write(raw)


def store_floor(stored: list[tuple[str, list[tuple[int, bytes]]]], db: Path) -> None:
    """Insert the stored chunks into an empty registry file in one transaction with plain
    ``sqlite3`` and close it (the WAL checkpoint): what keeping the bytes costs, apart from
    hashing and compressing them."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")  # as the registry opens it
    conn.execute("BEGIN IMMEDIATE")
    for n, (blob_codec, chunks) in enumerate(stored):
        blob_id = conn.execute(
            "INSERT INTO blobs (digest, size, stored_size, codec, chunk_size, complete, "
            "created_at, touched_at) VALUES (?, ?, ?, ?, ?, 1, '', '')",
            (f"floor-{n}", sum(size for size, _ in chunks), sum(len(d) for _, d in chunks),
             blob_codec, 8 << 20)).lastrowid
        conn.executemany('INSERT INTO chunks (blob_id, "index", raw_size, data) '
                         'VALUES (?, ?, ?, ?)',
                         [(blob_id, i, size, data) for i, (size, data) in enumerate(chunks)])
    conn.execute("COMMIT")
    conn.close()


def small_adapter(root: Path) -> dict[str, Any]:
    from adapterhub.registry import Registry

    src = root / "adapter"
    build_adapter(src)
    tensors = tensors_of(src / "adapter.safetensors")
    dbs = iter(range(100))
    opened: list[Registry] = []

    def open_empty() -> None:  # untimed: a registry as ``adapterhub init`` leaves it
        opened.append(Registry(empty(root / f"push{next(dbs)}.db")))

    def push() -> None:
        with opened.pop() as reg:
            reg.push(src, "bench/adapter", progress=False)

    push_s = repeat(push, REPEAT, setup=open_empty)
    push_floor_s = repeat(lambda: push_floor(tensors), REPEAT)
    push_cli = [measure([sys.executable, "-m", "adapterhub.cli", "push", str(src),
                         "bench/adapter", "--db", str(empty(root / f"cli{rep}.db")), "-q"])
                for rep in range(REPEAT)]

    with Registry(root / "push0.db") as reg:
        version = reg.resolve("bench/adapter@1")
        digests = [version.manifest.tensors[n].digest for n in sorted(version.manifest.tensors)]
        stored = [(b.codec, list(b.chunks)) for b in
                  reg.service.blobs.read_stored(digests, caller=reg.caller)]
        outs = iter(range(100))

        def pull_out() -> None:
            out = root / f"out{next(outs)}"
            reg.pull("bench/adapter@1", out=out, progress=False)
            shutil.rmtree(out)

        floor_dbs: list[Path] = []
        store_floor_s = repeat(lambda: store_floor(stored, floor_dbs[-1]), REPEAT,
                               setup=lambda: floor_dbs.append(
                                   empty(root / f"floor{len(floor_dbs)}.db")))
        pull_s = repeat(pull_out, REPEAT)
        pull_floor_s = repeat(lambda: pull_floor(stored, root / "floor.bin"), REPEAT)
    med = statistics.median
    return {"push_s": round(med(push_s), 3), "push_floor_s": round(med(push_floor_s), 3),
            "push_over_floor": round(med(push_s) / med(push_floor_s), 2),
            "push_cli": {"what": "adapterhub push as a fresh process (start-up included)",
                         "wall_s": med(r["wall_s"] for r in push_cli),
                         "cpu_s": med(r["cpu_s"] for r in push_cli)},
            "store_floor_s": round(med(store_floor_s), 3),
            "push_over_encode_and_store_floors": round(
                med(push_s) / (med(push_floor_s) + med(store_floor_s)), 2),
            "pull_out_s": round(med(pull_s), 3), "pull_out_floor_s": round(med(pull_floor_s), 3),
            "pull_out_over_floor": round(med(pull_s) / med(pull_floor_s), 2),
            "targets": {"push_over_floor": "<= 1.5", "pull_out_over_floor": "<= 1.5"},
            "runs_s": {"push": push_s, "push_floor": push_floor_s, "store_floor": store_floor_s,
                       "pull_out": pull_s,
                       "pull_out_floor": pull_floor_s}}


def big_adapter(root: Path) -> dict[str, Any]:
    import torch

    from adapterhub.io.package import AdapterPackage
    from registry_db import RegistryService

    src = root / "big"
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(BIG_TENSORS // 2):  # lora_A [r, in] and lora_B [out, r], r = 4096
        tensors[f"model.layers.{i}.mlp.lora_A"] = (torch.randn(4096, BIG_ROWS, generator=g)
                                                   * 0.01).to(torch.bfloat16)
        tensors[f"model.layers.{i}.mlp.lora_B"] = (torch.randn(BIG_ROWS, 4096, generator=g)
                                                   * 0.01).to(torch.bfloat16)
    AdapterPackage.build("lora", {"r": 4096, "lora_alpha": 16, "target_modules": ["mlp"]},
                         tensors, base_name="bench/big").save(src)
    del tensors
    size = (src / "adapter.safetensors").stat().st_size
    cli = [sys.executable, "-m", "adapterhub.cli"]
    hub_db = root / "big-hub.db"
    with RegistryService(hub_db) as service:
        token, _ = service.tokens.create(["admin"])
    env = {"ADAPTERHUB_TOKEN": token, "ADAPTERHUB_HOME": str(root / "home")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = start_hub(hub_db, port, root / "big-hub.log")
    peak = {"kib": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["kib"] = max(peak["kib"], tree_anon_kib(hub.pid))
            time.sleep(0.05)

    results: dict[str, Any] = {"adapter_bytes": size}
    try:
        results["push_local"] = measure(cli + ["push", str(src), "big/a", "--db",
                                               str(root / "big-local.db"), "--quiet"], env)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            hub_idle = tree_anon_kib(hub.pid)
            results["push_http"] = measure(cli + ["push", "big/a@1", "big/a", "--to", url,
                                                  "--db", str(root / "big-local.db"),
                                                  "--quiet"], env)
            results["hub_during_push_peak_anon_mb"] = round(peak["kib"] / 1024, 1)
            peak["kib"] = 0
            results["pull_http"] = measure(cli + ["pull", "big/a@1", "--from", url, "--db",
                                                  str(root / "big-pulled.db"), "--quiet"], env)
            results["hub_during_pull_peak_anon_mb"] = round(peak["kib"] / 1024, 1)
            results["hub_idle_anon_mb"] = round(hub_idle / 1024, 1)
        finally:
            done.set()
            sampler.join()
        results["pull_out"] = measure(cli + ["pull", "big/a@1", "--db",
                                             str(root / "big-pulled.db"), "--out",
                                             str(root / "big-out"), "--quiet"], env)
    finally:
        hub.terminate()
        hub.wait(timeout=60)
    results["target"] = "peak RssAnon < 300 MB on both ends"
    return results


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-transfer-") as tmp:
        root = Path(tmp)
        small = small_adapter(root)
        print(f"push {small['push_s']} s vs floor {small['push_floor_s']} s: "
              f"{small['push_over_floor']}x; storing the chunks alone {small['store_floor_s']}"
              f" s (push / (encode + store floors) {small['push_over_encode_and_store_floors']}"
              f"x); pull --out {small['pull_out_s']} s vs floor "
              f"{small['pull_out_floor_s']} s: {small['pull_out_over_floor']}x", flush=True)
        big = big_adapter(root)
    result = {"small_50mb": small, "big_2gb": big, "machine": machine(),
              "notes": f"median of {REPEAT} for the 50 MB adapter; one run of each big "
                       f"transfer; floors use every core ({os.cpu_count()})"}
    write_result("transfer", result)
    for key in ("push_local", "push_http", "pull_http", "pull_out"):
        print(f"2 GB {key}: {big[key]}")
    print(f"hub peak RssAnon during push {big['hub_during_push_peak_anon_mb']} MB, during pull "
          f"{big['hub_during_pull_peak_anon_mb']} MB")
    return result


if __name__ == "__main__":
    main()
