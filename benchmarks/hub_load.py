"""The hub's request path under load (issue 13, target 3): ``wrk`` with 16 keep-alive
connections against ``adapterhub serve`` and, in the same run, a bare FastAPI endpoint served
by the same uvicorn, one after the other on the same machine:

- ``GET /health`` (target ≥ 0.8× bare), ``GET /api/v1/resolve?ref=…`` and the Hugging Face
  ``GET /api/models/{repo}/revision/{rev}`` route (targets ≥ 0.5× bare), with a bearer token;
- each with one worker process, and with ``--workers`` = the machine's cores (the bare app
  then gets as many workers).

Set-up: ``apt-get install -y wrk`` when wrk is missing and this runs as root; otherwise the
benchmark says so and is skipped. Writes ``benchmarks/results/hub_load.json``.

Run: ``python -m benchmarks hub_load``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import machine, write_result
from benchmarks.hub import free_port
from benchmarks.registry import build_adapter

CONNECTIONS = 16
SECONDS = 5
BARE_APP = '''
from fastapi import FastAPI
app = FastAPI()

@app.get("/bare")
def bare():
    return {"status": "ok"}
'''


def ensure_wrk() -> str | None:
    """The wrk executable, installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shutil.which("wrk")


def wait_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


def wrk(exe: str, url: str, token: str | None) -> dict[str, float]:
    cmd = [exe, "-t", "2", "-c", str(CONNECTIONS), "-d", f"{SECONDS}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    return {"requests_per_s": rps, "non_2xx": int(errors.group(1)) if errors else 0,
            "p50": f"{p50.group(1)}{p50.group(2)}" if p50 else None}


def serve(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_up(url, proc, log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> dict[str, Any]:
    from adapterhub.registry import Registry
    from registry_db import RegistryService

    exe = ensure_wrk()
    if exe is None:
        print("hub_load: skipped: wrk is missing and cannot be installed here (run as root "
              "with apt-get, or install wrk)")
        return {"skipped": "wrk missing"}
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-load-") as tmp:
        root = Path(tmp)
        build_adapter(root / "adapter")
        db = root / "hub.db"
        with RegistryService(db) as service:
            token, _ = service.tokens.create(["admin"])
        with Registry(db) as reg:
            reg.push(root / "adapter", "bench/adapter", progress=False)
        (root / "bare_app.py").write_text(BARE_APP)
        results: dict[str, Any] = {}
        for workers in sorted({1, cores}):
            port = free_port()
            bare = serve([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port),
                          "--log-level", "warning", "--no-access-log",
                          "--workers", str(workers), "--app-dir", str(root)],
                         f"http://127.0.0.1:{port}/bare", root / "bare.log")
            try:
                bare_rps = wrk(exe, f"http://127.0.0.1:{port}/bare", None)
            finally:
                stop(bare)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            hub = serve([sys.executable, "-m", "adapterhub.cli", "serve", "--db", str(db),
                         "--port", str(port), "--workers", str(workers)], f"{base}/health",
                        root / "hub.log")
            try:
                routes = {"health": f"{base}/health",
                          "resolve": f"{base}/api/v1/resolve?ref=bench/adapter@1",
                          "hf_model_info": f"{base}/api/models/bench/adapter/revision/v1"}
                measured = {name: wrk(exe, url, token) for name, url in routes.items()}
            finally:
                stop(hub)
            results[f"workers_{workers}"] = {
                "bare_fastapi": bare_rps,
                **{name: {**m, "over_bare": round(m["requests_per_s"]
                                                  / bare_rps["requests_per_s"], 2)}
                   for name, m in measured.items()}}
    result = {"what": f"wrk -t2 -c{CONNECTIONS} -d{SECONDS}s, keep-alive, bearer token; the "
                      f"bare FastAPI endpoint under the same uvicorn in the same run",
              "targets": {"health": ">= 0.8", "resolve": ">= 0.5", "hf_model_info": ">= 0.5"},
              **results, "machine": machine(),
              "notes": "wrk, server and other work share the machine's cores"}
    write_result("hub_load", result)
    for key, section in results.items():
        print(f"{key}: bare {section['bare_fastapi']['requests_per_s']} req/s; " + ", ".join(
            f"{name} {section[name]['requests_per_s']} ({section[name]['over_bare']}x)"
            for name in ("health", "resolve", "hf_model_info")))
    return result


if __name__ == "__main__":
    main()
