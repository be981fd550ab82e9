"""Pull over HTTP into a registry vs ``hf_hub_download`` of the same version's files from the
same ``adapterhub serve``, alternating, in one run (issue 13, target 1):

- as fresh processes (imports included): ``adapterhub pull`` into an existing, empty
  registry (created untimed, as ``adapterhub init`` leaves one) vs a Python process calling
  ``hf_hub_download`` for each file into a fresh cache; wall time, CPU time and peak RssAnon
  from :func:`benchmarks.harness.measure`;
- the floor of the pull's work, as a fresh process too (``benchmarks/_pull_floor.py``: one
  request for the stored chunks, decode + sha256 on all cores, the chunk rows inserted and
  checkpointed into the same kind of registry file; standard library and the codec only);
- in one process (the transfer alone): ``Registry.pull`` vs ``hf_hub_download``, and the
  start-up floor of each side (``python -c "import …"`` of what each command imports).

Writes ``benchmarks/results/pull.json``.

Run: ``python -m benchmarks pull``.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import (alternate, free_port, machine, measure, median_ms, start_hub,
                                write_result)
from benchmarks.registry import build_adapter

REPEAT = 7
HF_FILES = ("adapter_config.json", "adapter_model.safetensors")


def hf_command(url: str, token: str, cache: Path) -> list[str]:
    code = ("import sys\nfrom huggingface_hub import hf_hub_download\n"
            f"for f in {HF_FILES!r}:\n"
            f"    hf_hub_download('bench/adapter', f, revision='v1', endpoint={url!r}, "
            f"token={token!r}, cache_dir={str(cache)!r})\n")
    return [sys.executable, "-c", code]


def pull_command(url: str, db: Path) -> list[str]:
    return [sys.executable, "-m", "adapterhub.cli", "pull", "bench/adapter@1", "--from", url,
            "--db", str(db), "--quiet"]


def floor_command(url: str, token: str, db: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks._pull_floor", url, token, "bench/adapter@1",
            str(db)]


#: what ``adapterhub pull`` imports before it does any work
IMPORTS_ADAPTERHUB = ("import adapterhub.cli, adapterhub.registry, registry_db.writes, "
                      "adapterhub_remotes_http.remote")


#: what the hf_hub_download process imports before it downloads
IMPORTS_HF = "from huggingface_hub import hf_hub_download"


def empty(db: Path) -> Path:
    """An initialised registry that holds nothing (untimed), as ``adapterhub init`` leaves
    one. (``Registry(db)`` alone would not do: it opens the database on first use.)"""
    from registry_db import RegistryService

    RegistryService(db).close()
    return db


def _in_process(root: Path, url: str, token: str) -> dict[str, Any]:
    """Median seconds of ``Registry.pull`` into an empty registry and of ``hf_hub_download``
    of the same files, alternating in this process (imports paid once, before)."""
    from huggingface_hub import hf_hub_download

    from adapterhub.registry import Registry

    targets = iter([empty(root / f"inproc{i}.db") for i in range(REPEAT + 1)])  # untimed

    def pull() -> None:
        with Registry(next(targets)) as reg:
            reg.pull("bench/adapter@1", url, progress=False)

    caches = iter(range(100))

    def hf() -> None:
        cache = root / f"hf-inproc{next(caches)}"
        for name in HF_FILES:
            hf_hub_download("bench/adapter", name, revision="v1", endpoint=url, token=token,
                            cache_dir=cache)

    samples = alternate({"adapterhub_pull": pull, "hf_hub_download": hf}, REPEAT)
    median = median_ms(samples)
    return {"median_ms": median,
            "adapterhub_throughput_over_hf": round(median["hf_hub_download"]
                                                   / median["adapterhub_pull"], 2),
            "runs_s": samples}


def main() -> dict[str, Any]:
    from adapterhub.registry import Registry
    from registry_db import RegistryService

    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-pull-") as tmp:
        root = Path(tmp)
        build_adapter(root / "adapter")
        tensor_bytes = (root / "adapter" / "adapter.safetensors").stat().st_size
        hub_db = root / "hub.db"
        with RegistryService(hub_db) as service:
            token, _ = service.tokens.create(["admin"])
        with Registry(hub_db) as hub_registry:
            hub_registry.push(root / "adapter", "bench/adapter", progress=False)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {"ADAPTERHUB_TOKEN": token, "ADAPTERHUB_HOME": str(root / "home"),
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        hub = start_hub(hub_db, port, root / "hub.log")
        try:
            measure(hf_command(url, token, root / "hf-warm"), env)  # renders the files once
            measure(pull_command(url, root / "warm.db"), env)
            commands = {
                "adapterhub_pull": lambda rep: pull_command(url, empty(root / f"p{rep}.db")),
                "hf_hub_download": lambda rep: hf_command(url, token, root / f"hf{rep}"),
                "pull_floor": lambda rep: floor_command(url, token, empty(root / f"f{rep}.db")),
                "import_adapterhub": lambda rep: [sys.executable, "-c", IMPORTS_ADAPTERHUB],
                "import_hf": lambda rep: [sys.executable, "-c", IMPORTS_HF]}
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
            for rep in range(REPEAT):
                order = list(commands)
                for name in order[rep % len(order):] + order[:rep % len(order)]:
                    runs[name].append(measure(commands[name](rep), env))
            with sqlite3.connect(root / "f0.db") as floor_db:  # the floor did all the work
                stored = floor_db.execute("SELECT count(*), sum(length(data)) FROM chunks"
                                          ).fetchone()
            assert stored[0] == 384 and stored[1] > 0.5 * tensor_bytes, stored
            hf_bytes = sum(f.stat().st_size for f in (root / "hf0").rglob("*")
                           if f.is_file() and not f.is_symlink())
            os.environ["ADAPTERHUB_TOKEN"] = token
            try:
                in_process = _in_process(root, url, token)
            finally:
                del os.environ["ADAPTERHUB_TOKEN"]
        finally:
            hub.terminate()
            hub.wait(timeout=30)

    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    result = {
        "what": "pull bench/adapter@1 over HTTP into a fresh registry (adapterhub pull) vs "
                "hf_hub_download of the same version's files (adapter_config.json, "
                "adapter_model.safetensors) from the same hub; each a fresh process",
        "adapter": {"tensor_bytes": tensor_bytes, "hf_bytes": hf_bytes,
                    "description": "LoRA r=16 on 48 layers x 4 projections, hidden 4096, bf16"},
        "median_wall_s": {name: round(value, 3) for name, value in wall.items()},
        "median_cpu_s": {name: statistics.median(r["cpu_s"] for r in rs)
                         for name, rs in runs.items()},
        "adapterhub_throughput_over_hf": round(wall["hf_hub_download"]
                                               / wall["adapterhub_pull"], 2),
        "target": ">= 1.5",
        "floor": {
            "pull_floor_s": round(wall["pull_floor"], 3),
            "adapterhub_pull_over_floor": round(wall["adapterhub_pull"] / wall["pull_floor"], 2),
            "floor_throughput_over_hf": round(wall["hf_hub_download"] / wall["pull_floor"], 2),
            "what": "benchmarks/_pull_floor.py as a fresh process: the least a pull into a "
                    "registry must do; floor_throughput_over_hf is what a pull that did "
                    "nothing more would reach here"},
        "start_up_floor_s": {"adapterhub": round(wall["import_adapterhub"], 3),
                             "hf": round(wall["import_hf"], 3)},
        "without_start_up": {
            "adapterhub_pull_s": round(wall["adapterhub_pull"] - wall["import_adapterhub"], 3),
            "hf_hub_download_s": round(wall["hf_hub_download"] - wall["import_hf"], 3),
            "adapterhub_throughput_over_hf": round(
                (wall["hf_hub_download"] - wall["import_hf"])
                / (wall["adapterhub_pull"] - wall["import_adapterhub"]), 2)},
        "in_process": in_process,
        "runs": runs,
        "machine": machine(),
        "notes": f"median of {REPEAT}, alternating order; loopback; hub and client share the "
                 f"machine",
    }
    write_result("pull", result)
    print(f"pull: adapterhub {wall['adapterhub_pull']:.3f} s, hf_hub_download "
          f"{wall['hf_hub_download']:.3f} s: throughput ratio "
          f"{result['adapterhub_throughput_over_hf']} (target >= 1.5); floor of the work "
          f"{wall['pull_floor']:.3f} s (pull takes {result['floor']['adapterhub_pull_over_floor']}"
          f"x as long; the floor's throughput is {result['floor']['floor_throughput_over_hf']}"
          f"x hf_hub_download's); start-up floors "
          f"{result['start_up_floor_s']}; without start-up "
          f"{result['without_start_up']['adapterhub_throughput_over_hf']}; in one process "
          f"{in_process['median_ms']} -> {in_process['adapterhub_throughput_over_hf']}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("ADAPTERHUB_QUIET", "1")
    main()
