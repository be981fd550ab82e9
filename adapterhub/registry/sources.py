"""Where an adapter comes from: a native package directory, a PEFT directory, or a registry ref.

Commands that take an adapter (``push``, ``show``, ``export``, ``apply``, ``merge``) resolve
their argument with :func:`resolve_source`, the one resolver: an existing path is read as a
directory (native or PEFT, detected), anything else as a ref in the registry. A
:class:`Source` gives the
manifest at once and the tensors on demand, either as raw blob bytes (what ``push`` sends,
without loading torch for native directories) or as an :class:`AdapterPackage`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub.errors import AdapterNotFoundError, FormatError, MergeError

if TYPE_CHECKING:
    from adapterhub.contracts.remote import BlobStream, Buffer
    from adapterhub.io.package import AdapterPackage
    from adapterhub.io.safetensors import Header
    from adapterhub.registry import Registry
    from registry_db import Manifest, VersionInfo


class Source:
    """An adapter to read or push. ``origin`` names it in messages; ``version`` is set when it
    came from a registry."""

    manifest: Manifest
    origin: str
    version: VersionInfo | None = None

    def read_blobs(self, digests: Iterable[str]) -> Iterator[tuple[str, Buffer | BlobStream]]:
        """``(digest, raw tensor bytes)`` for each digest, in order (read as they are asked
        for, so a push holds about one batch in memory; a large blob may come as a
        :class:`BlobStream`)."""
        raise NotImplementedError

    def package(self) -> AdapterPackage:
        """The adapter with its tensors (imports torch), verified against the manifest."""
        raise NotImplementedError

    def _tensor_for(self, digest: str) -> str:
        if not hasattr(self, "_by_digest"):
            self._by_digest = {}
            for name, entry in sorted(self.manifest.tensors.items(), reverse=True):
                self._by_digest[entry.digest] = name  # the first name wins
        if digest not in self._by_digest:
            raise AdapterNotFoundError(f"{self.origin} has no tensor with digest {digest}")
        return self._by_digest[digest]


class PackageSource(Source):
    """An adapter already in memory (also what a PEFT directory is converted into)."""

    def __init__(self, package: AdapterPackage, origin: str = "adapter") -> None:
        self._package = package
        self.manifest = package.manifest
        self.origin = origin

    def read_blobs(self, digests: Iterable[str]) -> Iterator[tuple[str, Buffer]]:
        from adapterhub.io.safetensors import tensor_bytes

        for digest in digests:
            yield digest, tensor_bytes(self._package.tensors[self._tensor_for(digest)])

    def package(self) -> AdapterPackage:
        return self._package


class NativeDirSource(Source):
    """A native package directory, read lazily: blobs are byte ranges of the safetensors file.

    The safetensors header must list exactly the manifest's tensors with the same dtypes and
    shapes (checked on open, from the header only); the bytes are checked against their
    digests by whoever receives them.
    """

    def __init__(self, directory: Path) -> None:
        from adapterhub.io.package import TENSORS_FILE, read_manifest
        from adapterhub.io.safetensors import read_header

        self.directory = directory
        self.manifest = read_manifest(directory)
        self.origin = str(directory)
        path = directory / TENSORS_FILE
        if not path.is_file():
            raise FormatError(f"{directory} has adapter.json but no {TENSORS_FILE}")
        self._header = read_header(path)
        _check_header(self._header, self.manifest)

    def read_blobs(self, digests: Iterable[str]) -> Iterator[tuple[str, Buffer]]:
        """Views of the file mapped into memory: the bytes stay in the page cache, not in
        the process's own memory, however large the adapter (the map closes when the last
        view is dropped)."""
        import mmap

        with open(self._header.path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                mapped = memoryview(b"")
            else:
                mapped = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
        for digest in digests:
            info = self._header.tensors[self._tensor_for(digest)]
            yield digest, mapped[info.start:info.start + info.nbytes]

    def package(self) -> AdapterPackage:
        from adapterhub.io.package import AdapterPackage

        return AdapterPackage.load(self.directory)


def _check_header(header: Header, manifest: Manifest) -> None:
    if set(header.tensors) != set(manifest.tensors):
        odd = sorted(set(header.tensors) ^ set(manifest.tensors))
        raise FormatError(f"{header.path} and adapter.json name different tensors ({odd[:3]})")
    for name, entry in manifest.tensors.items():
        info = header.tensors[name]
        if (info.dtype, info.shape) != (entry.dtype, entry.shape):
            raise FormatError(f"{header.path}: tensor {name!r} is {info.dtype} "
                              f"{list(info.shape)}; adapter.json says {entry.dtype} "
                              f"{list(entry.shape)}")


class RegistrySource(Source):
    """A version in a registry."""

    def __init__(self, registry: Registry, version: VersionInfo) -> None:
        self.registry = registry
        self.version = version
        self.manifest = version.manifest
        self.origin = version.ref

    def read_blobs(self, digests: Iterable[str]) -> Iterator[tuple[str, Buffer | BlobStream]]:
        return self.registry.read_blobs(digests, streamed=True)

    def package(self) -> AdapterPackage:
        return self.registry.get(self.version)


def resolve_source(source: str | os.PathLike[str] | AdapterPackage, *,
                   registry: Registry | None = None, db: str | None = None) -> Source:
    """The one adapter resolver: a package object, a directory, or a registry ref, as a
    :class:`Source` (the manifest at once, the tensors on demand).

    An existing path is a directory, read by :func:`adapterhub.io.formats.read_adapter`
    (native packages lazily, straight from their safetensors file). Anything else is a ref
    (``ns/name``, ``@N``, ``:tag``, ``@sha256:…``) in ``registry``, else in the registry at
    ``db`` (opened only for a ref), else in the default one.
    """
    from adapterhub.io.package import MANIFEST_FILE, TENSORS_FILE, AdapterPackage

    if isinstance(source, AdapterPackage):
        return PackageSource(source)
    text = os.fspath(source)
    path = Path(text)
    if path.exists():
        from adapterhub.io.formats import read_adapter

        if (path / MANIFEST_FILE).is_file() and (path / TENSORS_FILE).is_file():
            return NativeDirSource(path)
        return PackageSource(read_adapter(path), origin=text)
    from adapterhub.registry import Registry
    from registry_db.refs import looks_like_ref

    if not looks_like_ref(text):
        raise AdapterNotFoundError(f"{text!r} is neither an adapter directory nor a registry "
                                   f"ref", hint="Give a directory, or a ref such as ns/name, "
                                                "ns/name@3, ns/name:prod")
    registry = registry or Registry(db)
    try:
        return RegistrySource(registry, registry.resolve(text))
    except AdapterNotFoundError as exc:
        raise AdapterNotFoundError(f"{text}: no such directory, and {exc.message} "
                                   f"({registry.url})", hint=exc.hint) from None


def fetch_version(digest: str, registry: Registry | None, *, what: str) -> AdapterPackage:
    """The version with manifest digest ``digest`` from ``registry`` (default: the local one)."""
    from adapterhub.registry import Registry

    registry = registry or Registry()
    found = registry.find(digest)
    if found is None:
        raise AdapterNotFoundError(f"{what} ({digest}) is not in the registry {registry.url}",
                                   hint="Push or pull that version into this registry first "
                                        "(pulling a version brings its parents)")
    return registry.get(found)


def component_versions(package: AdapterPackage, registry: Registry | None
                       ) -> list[AdapterPackage] | None:
    """The versions a composite version is made of (None for other adapters)."""
    components = package.method.components(package.config)
    if not components:
        return None
    return [fetch_version(digest, registry, what=f"component {name!r}")
            for name, digest in components.items()]


def fold_component(package: AdapterPackage, name: str | None, *,
                   registry: Registry | None = None) -> AdapterPackage:
    """What ``apply`` and ``merge`` fold for ``package``: the package itself, or, for a
    composite version, its component called ``name`` (which has a single ΔW)."""
    components = package.method.components(package.config)
    label = f"{package.manifest.method_name} version {package.digest[:19]}"
    if not package.method.composite:
        if name is not None:
            raise MergeError(f"--expert {name!r} was given, but the {label} has no experts (it "
                             f"is not made of other versions)",
                             hint="Use --expert only with a composite version (a mixture of "
                                  "experts)")
        return package
    if name is None:
        raise package.method.no_single_delta(package.config)
    if name not in components:
        raise MergeError(f"the {label} has no expert {name!r}; its experts (components) are "
                         f"{', '.join(components)}")
    return fetch_version(components[name], registry, what=f"component {name!r}")
