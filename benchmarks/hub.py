"""Hub benchmark, one run, one machine, loopback: pulling a 50 MB adapter from
``adapterhub serve`` with ``adapterhub pull`` (into a registry, every byte re-hashed) vs
``huggingface_hub.hf_hub_download`` of the same version's ``adapter_model.safetensors`` from
the same server vs a local file copy; push throughput; ``show`` (``GET /api/v1/resolve``)
requests per second with 16 concurrent clients; and, for the cost of HTTP itself, the same
pull straight from the hub's database file. Writes ``benchmarks/results/hub.json``.

Run: ``python -m benchmarks hub`` (or ``make bench``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import free_port, repeat, start_hub
from benchmarks.registry import build_adapter

RESULTS = Path(__file__).parent / "results" / "hub.json"
REPEAT = 5
CLIENTS = 16
SHOW_S = 10.0


def show_rps(url: str, token: str, ref: str) -> dict[str, Any]:
    """16 threads, each with its own keep-alive connection, for SHOW_S seconds."""
    import httpx

    counts = [0] * CLIENTS
    failures = [0] * CLIENTS
    deadline = time.perf_counter() + SHOW_S

    def client(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            while time.perf_counter() < deadline:
                ok = c.get("/api/v1/resolve", params={"ref": ref}).status_code == 200
                counts[i] += ok
                failures[i] += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {"clients": CLIENTS, "seconds": round(seconds, 2), "requests": sum(counts),
            "failures": sum(failures), "requests_per_s": round(sum(counts) / seconds, 1)}


def main() -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    from adapterhub.registry import Registry
    from registry_db import RegistryService

    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-hub-") as tmp:
        root = Path(tmp)
        sources = [root / f"adapter{i}" for i in range(REPEAT)]
        for i, src in enumerate(sources):
            build_adapter(src, seed=i)
        tensor_bytes = (sources[0] / "adapter.safetensors").stat().st_size
        hub_db = root / "hub.db"
        with RegistryService(hub_db) as service:
            token, _ = service.tokens.create(["admin"])
        previous = os.environ.get("ADAPTERHUB_TOKEN")
        os.environ["ADAPTERHUB_TOKEN"] = token
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        hub = start_hub(hub_db, port, root / "hub.log")
        try:
            # push: a different 50 MB adapter each time, so every push sends all its bytes
            with Registry(root / "laptop.db") as laptop:
                for i, src in enumerate(sources):
                    laptop.push(src, f"bench/a{i}", progress=False)
                pushes = iter(range(REPEAT))
                push_s = repeat(lambda: laptop.push(f"bench/a{next(pushes)}", "bench/adapter",
                                                   to=url, progress=False), REPEAT)

            # pull: adapterhub into a fresh registry each time
            targets = iter(range(REPEAT))
            pull_s = repeat(lambda: _pull(root / f"pulled{next(targets)}.db", url), REPEAT)

            # the same pull straight from the hub's database file (no HTTP), for the overhead
            direct = iter(range(REPEAT))
            file_s = repeat(lambda: _pull(root / f"direct{next(direct)}.db", str(hub_db)),
                           REPEAT)

            # the same version through the Hugging Face protocol, into a fresh cache each time
            caches = iter(range(REPEAT + 1))

            def hf_download() -> str:
                return hf_hub_download("bench/adapter", "adapter_model.safetensors",
                                       revision="v1", endpoint=url, token=token,
                                       cache_dir=root / f"hf{next(caches)}")

            first = Path(hf_download())  # renders and caches the files on the hub (untimed)
            hf_s = repeat(hf_download, REPEAT)
            hf_bytes = first.stat().st_size

            copies = iter(range(REPEAT))
            copy_s = repeat(lambda: shutil.copyfile(first, root / f"copy{next(copies)}"),
                           REPEAT)
            show = show_rps(url, token, "bench/adapter@1")
        finally:
            hub.terminate()
            hub.wait(timeout=30)
            if previous is None:
                os.environ.pop("ADAPTERHUB_TOKEN", None)
            else:
                os.environ["ADAPTERHUB_TOKEN"] = previous

    med = statistics.median
    result = {
        "adapter": {"tensor_bytes": tensor_bytes, "peft_file_bytes": hf_bytes,
                    "description": "LoRA r=16 on 48 layers x 4 projections, hidden 4096, bf16"},
        "pull": {"adapterhub_pull_s": round(med(pull_s), 3),
                 "hf_hub_download_s": round(med(hf_s), 3),
                 "local_copy_s": round(med(copy_s), 4),
                 "adapterhub_over_hf": round(med(pull_s) / med(hf_s), 2),
                 "adapterhub_over_copy": round(med(pull_s) / med(copy_s), 1),
                 "hf_over_copy": round(med(hf_s) / med(copy_s), 1),
                 "registry_file_pull_s": round(med(file_s), 3),
                 "adapterhub_over_registry_file_pull": round(med(pull_s) / med(file_s), 2),
                 "adapterhub_mb_per_s": round(tensor_bytes / med(pull_s) / 1e6, 1),
                 "hf_mb_per_s": round(hf_bytes / med(hf_s) / 1e6, 1)},
        "push": {"push_s": round(med(push_s), 3),
                 "mb_per_s": round(tensor_bytes / med(push_s) / 1e6, 1)},
        "show": show,
        "runs": {"repeat": REPEAT, "pull_s": pull_s, "hf_s": hf_s, "copy_s": copy_s,
                 "registry_file_pull_s": file_s, "push_s": push_s},
        "notes": "median of 5; loopback; hub and clients share one 2-core machine, which "
                 "other work shared too",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for section in ("pull", "push"):
        for key, value in result[section].items():
            print(f"{section}.{key:28} {value}")
    print(f"show: {show['requests_per_s']} requests/s with {CLIENTS} clients "
          f"({show['failures']} failures)")
    return result


def _pull(db: Path, source: str) -> None:
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        reg.pull("bench/adapter@1", source, progress=False)


if __name__ == "__main__":
    main()
