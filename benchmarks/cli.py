"""CLI start-up: ``adapterhub list``, ``show`` and ``log`` as fresh processes on a
10,000-version SQLite registry (target ≤ 0.3 s wall each), beside the floor every command
pays (``python -c pass``) and the import of the CLI alone, in the same run. Writes
``benchmarks/results/cli.json``.

Bytecode caching is on, as in an installed package (some CI images set
``PYTHONDONTWRITEBYTECODE``, which makes every start recompile every module); the first
run of each command writes the cache and is not counted.

Run: ``python -m benchmarks cli``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import machine, write_result
from benchmarks.registry import populate

RUNS = 15
TARGET_S = 0.3


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> dict[str, Any]:
    python = sys.executable
    cli = [python, "-m", "adapterhub.cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-") as tmp:
        db = Path(tmp) / "many.db"
        populate_s = populate(db)
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "import adapterhub.cli": [python, "-c", "import adapterhub.cli"],
            "list": [*cli, "list", "--db", str(db)],
            "list --json": [*cli, "list", "--json", "--db", str(db)],
            "show team042/adapter@5": [*cli, "show", "team042/adapter@5", "--db", str(db)],
            "log team042/adapter": [*cli, "log", "team042/adapter", "--db", str(db)],
        }
        for cmd in commands.values():
            wall(cmd, env)  # writes the bytecode cache
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for run in range(RUNS):  # round-robin, so load on the machine falls on all alike
            names = list(commands)
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(wall(commands[name], env))
    figures = {name: {"median_s": round(statistics.median(times), 4),
                      "best_s": round(min(times), 4)} for name, times in samples.items()}
    targets = {f"{name} <= {TARGET_S} s": figures[name]["median_s"] <= TARGET_S
               for name in ("list", "show team042/adapter@5", "log team042/adapter")}
    result = {"versions": 10_000, "populate_s": round(populate_s, 1), "runs": RUNS,
              "wall": figures, "targets_met": targets, "machine": machine()}
    write_result("cli", result)
    for name, row in figures.items():
        print(f"{name:28} median {row['median_s']:.3f} s  best {row['best_s']:.3f} s")
    print("targets met:", targets)
    return result


if __name__ == "__main__":
    main()
