"""The hub's request path under load: ``wrk`` with 16 keep-alive connections against
``adapterhub serve`` (``/health``, ``GET /api/v1/resolve``, the Hugging Face
``GET /api/models/{repo}``) and against a bare FastAPI endpoint on the same machine, with the
same number of uvicorn workers (1, then one per core), rounds alternating so load on a shared
machine falls on both. Targets: ≥ 0.5× the bare endpoint's requests per second on resolve
and api/models, ≥ 0.8× on /health. Writes ``benchmarks/results/hub_requests.json``.

wrk comes from Debian (``apt-get install wrk``); the set-up installs it when it is missing
and this runs as root.

Run: ``python -m benchmarks hub_requests``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import free_port, machine, wait_healthy, write_result

CONNECTIONS, SECONDS, ROUNDS = 16, 5, 3
ROUTES = {"health": "/health", "resolve": "/api/v1/resolve?ref=team/bot",
          "api_models": "/api/models/team/bot"}
TARGETS = {"health": 0.8, "resolve": 0.5, "api_models": 0.5}


def ensure_wrk() -> str:
    if shutil.which("wrk") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed (apt-get install wrk) and cannot be installed "
                         "here; this benchmark needs it")
    return path


def rps(wrk: str, url: str, token: str) -> float:
    out = subprocess.run([wrk, "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "-H",
                          f"Authorization: Bearer {token}", url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors under load on {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> dict[str, Any]:
    from benchmarks.registry import build_adapter

    wrk = ensure_wrk()
    py, cli = sys.executable, [sys.executable, "-m", "adapterhub.cli"]
    here = Path(__file__).parent
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-") as tmp:
        db = Path(tmp) / "hub.db"
        build_adapter(Path(tmp) / "adapter")
        subprocess.run([*cli, "push", str(Path(tmp) / "adapter"), "team/bot", "-q", "--db",
                        str(db)], check=True)
        token = json.loads(subprocess.run(
            [*cli, "token", "create", "--scope", "read:team/*", "--db", str(db), "--json"],
            check=True, capture_output=True, text=True).stdout)["token"]
        for workers in sorted({1, os.cpu_count() or 1}):
            hub_port, bare_port = free_port(), free_port()
            hub = subprocess.Popen([*cli, "serve", "--db", str(db), "--port", str(hub_port),
                                    "--workers", str(workers)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            bare = subprocess.Popen([py, "-m", "uvicorn", "_bare_app:app", "--port",
                                     str(bare_port), "--workers", str(workers),
                                     "--log-level", "warning"], cwd=here,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                hub_url, bare_url = f"http://127.0.0.1:{hub_port}", f"http://127.0.0.1:{bare_port}"
                wait_healthy(hub_url, hub)
                wait_healthy(bare_url, bare)
                for path in ROUTES.values():  # warm: the first api/models renders the files
                    httpx.get(hub_url + path, headers={"Authorization": f"Bearer {token}"})
                samples: dict[str, list[float]] = {"bare": [], **{k: [] for k in ROUTES}}
                for rnd in range(ROUNDS):
                    order = ["bare", *ROUTES]
                    order = order[rnd % len(order):] + order[:rnd % len(order)]
                    for name in order:
                        url = bare_url + "/health" if name == "bare" else hub_url + ROUTES[name]
                        samples[name].append(rps(wrk, url, token))
            finally:
                for proc in (hub, bare):
                    proc.terminate()
                    proc.wait(timeout=30)
            medians = {k: round(statistics.median(v), 1) for k, v in samples.items()}
            results[f"workers_{workers}"] = {
                "requests_per_s": medians, "samples": samples,
                "hub_over_bare": {k: round(medians[k] / medians["bare"], 3) for k in ROUTES},
            }
    one = results["workers_1"]["hub_over_bare"]
    result = {"connections": CONNECTIONS, "seconds_per_run": SECONDS, "rounds": ROUNDS,
              "results": results,
              "targets_met": {f"{k} >= {t}x bare (1 worker)": one[k] >= t
                              for k, t in TARGETS.items()},
              "machine": machine()}
    write_result("hub_requests", result)
    for label, row in results.items():
        print(label, row["requests_per_s"], "hub/bare:", row["hub_over_bare"])
    print("targets met:", result["targets_met"])
    return result


if __name__ == "__main__":
    main()
