"""Progress bars for long work (training, pushes, pulls, builds), on stderr.

Off when ``ADAPTERHUB_QUIET`` is set, when a command runs with ``--quiet`` or ``--json``, or
when ``disable=True`` is passed.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


def quiet() -> bool:
    return bool(os.environ.get("ADAPTERHUB_QUIET"))


def progress(iterable: Iterable[T] | None = None, *, total: int | float | None = None,
             desc: str = "", unit: str = "it", disable: bool = False, **kwargs: Any):
    """A tqdm bar on stderr (``unit="B"`` scales bytes); use as an iterator or context manager."""
    from tqdm.auto import tqdm

    byte_units = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable or quiet(),
                leave=False, dynamic_ncols=True, **byte_units, **kwargs)


def write(message: str) -> None:
    """Print a line on stderr without breaking a progress bar that is showing."""
    import sys

    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def human_size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
