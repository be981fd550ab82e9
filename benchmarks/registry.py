"""Registry benchmark: push/pull of a 50 MB bf16 adapter against ``cp`` of its files, stored
bytes against raw safetensors bytes, byte-plane splitting, and show/list latency at 10,000
versions. Writes ``benchmarks/results/registry.json``.

Run: ``python -m benchmarks registry`` (or ``make bench``).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.harness import repeat, write_result

LAYERS, MODULES, HIDDEN, RANK = 48, ("q_proj", "k_proj", "v_proj", "o_proj"), 4096, 16
VERSIONS = 10_000
REPOS = 100


def build_adapter(out: Path, seed: int = 0) -> int:
    """A LoRA adapter of trained-looking bf16 values (normal, not uniform bytes): 48 layers x 4
    attention projections, r=16, hidden 4096 — 25.2 M parameters, 50 MB."""
    import torch

    from adapterhub.io.package import AdapterPackage

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for module in MODULES:
            path = f"model.layers.{layer}.self_attn.{module}"
            tensors[f"{path}.lora_A"] = (torch.randn(RANK, HIDDEN, generator=g) * 0.02
                                         ).to(torch.bfloat16)
            tensors[f"{path}.lora_B"] = (torch.randn(HIDDEN, RANK, generator=g) * 0.002
                                         ).to(torch.bfloat16)
    package = AdapterPackage.build("lora", {"r": RANK, "lora_alpha": 32,
                                            "target_modules": list(MODULES)},
                                   tensors, base_name="bench/llama-like")
    package.save(out)
    return sum(f.stat().st_size for f in out.iterdir())


def bench_transfer(tmp: Path) -> dict[str, Any]:
    from adapterhub.registry import Registry

    src = tmp / "adapter"
    raw = build_adapter(src)
    safetensors_bytes = (src / "adapter.safetensors").stat().st_size

    def clear(path: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(path, ignore_errors=True)

    cp = repeat(lambda: subprocess.run(["cp", "-r", str(src), str(tmp / "copy")], check=True),
                7, setup=clear(tmp / "copy"))

    class Fresh:
        """An empty, already migrated registry file before each timed call (setup, untimed)."""

        def __init__(self, path: Path) -> None:
            self.path, self.registry = path, None

        def __call__(self) -> None:
            if self.registry is not None:
                self.registry.close()
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.registry = Registry(self.path)

    pushed = Fresh(tmp / "push.db")
    push = repeat(lambda: pushed.registry.push(src, "bench/adapter", progress=False), 5,
                  setup=pushed)
    reg = pushed.registry
    repush = repeat(lambda: reg.push(src, "bench/adapter", progress=False), 7)
    usage = reg.usage()
    pull_files = repeat(lambda: reg.pull("bench/adapter", out=tmp / "pulled", progress=False),
                        5, setup=clear(tmp / "pulled"))
    target = Fresh(tmp / "pull.db")
    pull_registry = repeat(lambda: target.registry.pull("bench/adapter", source=reg.url,
                                                        progress=False), 5, setup=target)
    target.registry.close()
    reg.close()
    cp_s, push_s = statistics.median(cp), statistics.median(push)
    return {
        "adapter": {"tensors": 2 * LAYERS * len(MODULES), "dtype": "BF16",
                    "files_bytes": raw, "safetensors_bytes": safetensors_bytes},
        "cp_s": cp_s,
        "push_s": push_s,
        "push_over_cp": push_s / cp_s,
        "repush_unchanged_s": statistics.median(repush),
        "repush_over_push": statistics.median(repush) / push_s,
        "pull_to_files_s": statistics.median(pull_files),
        "pull_to_files_over_cp": statistics.median(pull_files) / cp_s,
        "pull_registry_to_registry_s": statistics.median(pull_registry),
        "pull_registry_to_registry_over_cp": statistics.median(pull_registry) / cp_s,
        "stored_bytes": usage.stored_bytes,
        "blob_raw_bytes": usage.raw_bytes,
        "stored_over_raw_safetensors": usage.stored_bytes / safetensors_bytes,
        "samples_s": {"cp": cp, "push": push, "repush": repush, "pull_to_files": pull_files,
                      "pull_registry_to_registry": pull_registry},
    }


def bench_codecs() -> dict[str, Any]:
    """Stored/raw ratio and encode speed of plain zstd vs zstd after byte-plane splitting."""
    import torch

    from registry_db import codec
    from registry_db.codec import encode

    out = {}
    g = torch.Generator().manual_seed(1)
    values = torch.randn(4 * 1024 * 1024, generator=g) * 0.02
    for name, dtype in (("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)):
        raw = values.to(dtype).view(torch.uint8).numpy().tobytes()[:codec.CHUNK_SIZE]
        itemsize = values.to(dtype).element_size()
        row = {}
        for label, chosen in (("zstd", "zstd"), ("zstd+planes", codec.codec_for(itemsize))):
            times = repeat(lambda raw=raw, chosen=chosen: encode(raw, chosen), 5)
            row[label] = {"stored_over_raw": len(encode(raw, chosen)) / len(raw),
                          "encode_mb_per_s": len(raw) / statistics.median(times) / 1e6}
        out[name] = row
    return out


def populate(url: Path, versions: int = VERSIONS, repos: int = REPOS) -> float:
    """A registry of ``versions`` small versions over ``repos`` repositories (labels, a tag
    every 50); seconds it took."""
    from registry_db import Caller, Manifest, RegistryService, TensorEntry

    service = RegistryService(url)
    local = Caller.local_user("bench")
    blob = bytes(range(256)) * 8
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    service.blobs.write(digest, blob, itemsize=2, caller=local)
    start = time.perf_counter()
    for i in range(versions):
        manifest = Manifest(
            method={"name": "lora", "version": 1, "config": {"r": 16}},
            base_model={"name": "bench/base", "revision": None, "fingerprint": None,
                        "modules": {}},
            tensors={f"layer{k}.lora_A": TensorEntry(digest, "BF16", (1024,)) for k in range(8)},
            labels={"run": str(i), "branch": "main" if i % 3 else "dev"})
        service.commit(f"team{i % repos:03d}/adapter", manifest, message=f"run {i}",
                       tags=["latest-run"] if i % 50 == 0 else (), caller=local)
    service.close()
    return time.perf_counter() - start


def bench_latency(tmp: Path) -> dict[str, Any]:
    """``show`` (resolve a ref and read its manifest) and ``list`` with 10,000 versions."""
    from adapterhub.registry import Registry

    url = tmp / "many.db"
    populate_s = populate(url)

    rng = random.Random(0)
    refs = [f"team{rng.randrange(REPOS):03d}/adapter@{rng.randrange(1, VERSIONS // REPOS)}"
            for _ in range(200)]
    with Registry(url) as reg:
        reg.resolve(refs[0])  # warm the connection pool
        show = repeat(lambda: [reg.resolve(r) for r in refs], 1)[0] / len(refs)
        show_tag = repeat(lambda: reg.resolve("team000/adapter:latest-run"), 50)
        list_all = repeat(lambda: reg.list(), 3)
        list_repo = repeat(lambda: reg.list("team042/"), 20)
        list_label = repeat(lambda: reg.list(labels={"branch": "dev"}), 5)
        log_repo = repeat(lambda: reg.log("team042/adapter"), 20)
        count = len(reg.list())
    cli = repeat(lambda: subprocess.run(
        [str(Path(sys.executable).parent / "adapterhub"), "show", refs[1], "--json", "--db",
         str(url)],
        check=True, capture_output=True), 3)
    return {
        "versions": count, "repositories": REPOS, "populate_s": populate_s,
        "show_ms": show * 1e3,
        "show_tag_ms": statistics.median(show_tag) * 1e3,
        "list_all_ms": statistics.median(list_all) * 1e3,
        "list_one_repository_ms": statistics.median(list_repo) * 1e3,
        "list_by_label_ms": statistics.median(list_label) * 1e3,
        "log_one_repository_ms": statistics.median(log_repo) * 1e3,
        "cli_show_process_s": statistics.median(cli),
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-") as tmp:
        transfer = bench_transfer(Path(tmp))
        codecs = bench_codecs()
        latency = bench_latency(Path(tmp))
    targets = {
        "push_over_cp<=2": transfer["push_over_cp"] <= 2,
        "repush_over_push<=0.2": transfer["repush_over_push"] <= 0.2,
        "stored_over_raw<=0.9": transfer["stored_over_raw_safetensors"] <= 0.9,
        "show_ms<=50": latency["show_ms"] <= 50,
    }
    result = {"transfer": transfer, "codecs": codecs, "latency": latency, "targets_met": targets}
    write_result("registry", result)
    for key in ("cp_s", "push_s", "push_over_cp", "repush_unchanged_s", "repush_over_push",
                "pull_to_files_s", "pull_to_files_over_cp", "pull_registry_to_registry_s",
                "pull_registry_to_registry_over_cp", "stored_over_raw_safetensors"):
        print(f"{key:36} {transfer[key]:.4g}")
    for key, value in latency.items():
        print(f"{key:36} {value:.4g}")
    print("targets met:", targets)
    return result


if __name__ == "__main__":
    main()
