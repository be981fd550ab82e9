"""A version's files as Hugging Face clients see them, rendered once and cached by digest.

Rendering (:func:`adapterhub.formats.repo.repo_files`) is deterministic, so the cache is
only a speed-up: another replica, or this one after eviction, produces the same bytes and
therefore the same ETags.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterhub.registry import Registry
    from registry_db import VersionInfo

#: files stored as LFS objects by the Hub (tensors); the rest are plain git files
LFS_SUFFIXES = (".safetensors",)
LFS_POINTER_SIZE = 134  # bytes of a git-lfs pointer file for a sha256 oid and a size


@dataclass(frozen=True)
class RenderedFile:
    path: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def git_oid(self) -> str:
        """The git blob id: sha1 of ``blob <size>\\0`` + bytes."""
        return hashlib.sha1(b"blob %d\0" % self.size + self.data, usedforsecurity=False
                            ).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def etag(self) -> str:
        """sha256 for every file, so a client cache of these files is content-addressed."""
        return self.sha256


class RenderCache:
    """Rendered files of recently requested versions, at most ``max_bytes`` in memory."""

    def __init__(self, registry: Registry, max_bytes: int = 1 << 30) -> None:
        self.registry = registry
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, dict[str, RenderedFile]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._rendering: dict[str, threading.Lock] = {}

    def files(self, version: VersionInfo) -> dict[str, RenderedFile]:
        """``{path: file}`` of ``version`` (its manifest must be loaded)."""
        key = version.digest
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
            lock = self._rendering.setdefault(key, threading.Lock())
        with lock:  # one render per version at a time; the others wait for it
            with self._lock:
                if key in self._files:
                    return self._files[key]
            rendered = self._render(version)
            size = sum(f.size for f in rendered.values())
            with self._lock:
                self._rendering.pop(key, None)
                if size <= self.max_bytes:
                    self._files[key] = rendered
                    self._bytes += size
                    while self._bytes > self.max_bytes:
                        _, evicted = self._files.popitem(last=False)
                        self._bytes -= sum(f.size for f in evicted.values())
        return rendered

    def _render(self, version: VersionInfo) -> dict[str, RenderedFile]:
        from adapterhub.formats.repo import repo_files

        files = repo_files(self.registry.get(version))
        out = {path: RenderedFile(path, data) for path, data in sorted(files.items())}
        for f in out.values():  # hash now, outside any request's critical path
            f.sha256, f.git_oid  # noqa: B018
        return out
