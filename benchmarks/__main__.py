"""``make bench``: run every benchmark module (or those named) and report where results went.

Each module in this package defines ``main() -> dict`` and writes
``benchmarks/results/<module>.json`` itself.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)])
                           if not m.name.startswith("_") and m.name != "harness")
    for name in names:
        start = time.perf_counter()
        print(f"== benchmarks.{name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"== benchmarks.{name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
