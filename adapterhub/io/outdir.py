"""Output directories that are never half-written and never mixed with what was there.

:func:`output_dir` hands out a staging directory beside the target; only when the work
succeeds does the staging directory become the target, replacing an existing one (``force``)
in one ``rename`` exchange where the kernel offers it (Linux ``renameat2``), so a reader sees
the old files or the new files, never a mix (such as an old ``adapter.json`` beside new PEFT
files).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adapterhub.errors import OutputExistsError, WriteError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def refuse_non_empty(out: Path) -> None:
    """Raise :class:`OutputExistsError` unless ``out`` is missing or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} already exists and is not empty")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if the kernel
    or C library cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


@contextlib.contextmanager
def output_dir(out: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """A staging directory that becomes ``out`` when the block succeeds.

    ``out`` must be missing or an empty directory unless ``force``, which replaces an existing
    directory (a file is never replaced). On failure the staging directory is removed and
    ``out`` is untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory")
    if not force:
        refuse_non_empty(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.",
                                        suffix=".partial"))
    except OSError as exc:
        raise WriteError(f"cannot write beside {out}: {exc.strerror or exc}") from exc
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)
        elif _exchange(staging, out):
            shutil.rmtree(staging)  # now holds the old files
        else:
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "dir")
            os.replace(staging, out)
            shutil.rmtree(old)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputExistsError | WriteError):
            raise WriteError(f"writing {out} failed: {exc.strerror or exc}") from exc
        raise
