"""A version's files as Hugging Face clients see them, rendered once and cached by digest.

Rendering (:func:`adapterhub.io.formats.repo.repo_files`, or the files a Hugging Face commit
kept byte for byte: :mod:`adapterhub.hub.hf_files`) is deterministic, so the cache is only a
speed-up: another replica, or this one after eviction, produces the same bytes and
therefore the same ETags. Small files stay in memory; larger ones are spooled to a private
temporary directory, so what the hub keeps between requests does not grow with the size of
the adapters it serves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterhub.registry import Registry
    from registry_db import VersionInfo

#: files stored as LFS objects by the Hub (tensors); the rest are plain git files
LFS_SUFFIXES = (".safetensors",)
LFS_POINTER_SIZE = 134  # bytes of a git-lfs pointer file for a sha256 oid and a size
IN_MEMORY = 1 << 20  # files up to this size are kept in memory
READ_SIZE = 1 << 20


@dataclass(frozen=True)
class RenderedFile:
    """One file: its bytes in memory (``data``) or in a spool file (``spool``)."""

    path: str
    size: int
    sha256: str
    git_oid: str
    data: bytes | None = None
    spool: Path | None = None

    @classmethod
    def of(cls, path: str, data: bytes, spool_dir: Path | None = None) -> RenderedFile:
        git = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
        git.update(data)
        sha256 = hashlib.sha256(data).hexdigest()
        if spool_dir is None or len(data) <= IN_MEMORY:
            return cls(path, len(data), sha256, git.hexdigest(), data=bytes(data))
        fd, name = tempfile.mkstemp(dir=spool_dir, prefix=sha256[:16])
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return cls(path, len(data), sha256, git.hexdigest(), spool=Path(name))

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def etag(self) -> str:
        """sha256 for every file, so a client cache of these files is content-addressed."""
        return self.sha256

    def content(self) -> bytes:
        """The whole file (for the small files a commit rewrites)."""
        if self.data is not None:
            return self.data
        return self.spool.read_bytes()

    def iter(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``[start, end]`` (inclusive; default: to the end) in pieces."""
        end = self.size - 1 if end is None else end
        if self.data is not None:
            yield self.data[start:end + 1]
            return
        with open(self.spool, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                piece = fh.read(min(READ_SIZE, left))
                if not piece:
                    return
                left -= len(piece)
                yield piece


class RenderCache:
    """Rendered files of recently requested versions: at most ``max_bytes`` in all, or the
    one newest version if it alone is larger (small files in memory, the rest spooled to
    disk), least recently used first out."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, dict[str, RenderedFile]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._rendering: dict[str, threading.Lock] = {}
        self._spool: Path | None = None  # made when a file is first spooled

    def _spool_dir(self) -> Path:
        with self._lock:
            if self._spool is None:
                self._spool = Path(tempfile.mkdtemp(prefix="adapterhub-render-"))
            return self._spool

    def cached(self, version: VersionInfo) -> dict[str, RenderedFile] | None:
        """The files of ``version`` if they are rendered already, else None."""
        with self._lock:
            return self._files.get(version.digest)

    def files(self, version: VersionInfo, registry: Registry) -> dict[str, RenderedFile]:
        """``{path: file}`` of ``version`` (its manifest must be loaded), read through
        ``registry`` (the caller's view: it may read the version)."""
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
            rendered = self._render(version, registry)
            size = sum(f.size for f in rendered.values())
            with self._lock:
                self._rendering.pop(key, None)
                self._files[key] = rendered
                self._bytes += size
                while self._bytes > self.max_bytes and len(self._files) > 1:
                    _, evicted = self._files.popitem(last=False)
                    self._bytes -= sum(f.size for f in evicted.values())
                    _discard(evicted)
        return rendered

    def _render(self, version: VersionInfo, registry: Registry) -> dict[str, RenderedFile]:
        from adapterhub.hub.hf_files import read_kept
        from adapterhub.io.formats.repo import repo_files
        from adapterhub.io.package import AdapterPackage

        digests = [entry.digest for entry in version.manifest.tensors.values()]
        package = AdapterPackage.from_blobs(version.manifest,
                                            dict(registry.read_blobs(digests)), raw=True)
        files = repo_files(package)
        kept = registry.service.kept_files(version.ref, caller=registry.caller)
        if kept:  # committed through the Hugging Face API: its files as they were committed
            files = read_kept(kept, files, registry.read_blob)
        spool = (self._spool_dir() if any(len(data) > IN_MEMORY for data in files.values())
                 else None)
        rendered = {path: RenderedFile.of(path, data, spool)
                    for path, data in sorted(files.items())}
        del files
        _release_heap()
        return rendered

    def close(self) -> None:
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)


def _release_heap() -> None:
    """Hand the rendering's freed heap back to the system (glibc keeps it otherwise), so a
    large render does not stay resident once it is spooled."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _discard(files: dict[str, RenderedFile]) -> None:
    """Remove the spool files of evicted renders (a request still streaming one keeps its
    open handle; the space is freed when it finishes)."""
    for f in files.values():
        if f.spool is not None:
            f.spool.unlink(missing_ok=True)
