"""The worker threads that hash, compress and decode blobs (hashlib and zstd release the GIL,
so they run on every core)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

WORKERS = max(1, min(4, os.cpu_count() or 1))
_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """The process's worker threads, started on first use."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(WORKERS, thread_name_prefix="registry-db")
    return _POOL


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)
