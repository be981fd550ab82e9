"""The registry an API call works on, and the adapters ``apply`` and ``merge`` fold."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeAlias

from adapterhub.registry import Registry
from adapterhub.registry.sources import RegistrySource, fold_component, resolve_source

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage
    from adapterhub.registry.http_registry import HttpRegistry

#: what an API call accepts as its registry: an open one (a :class:`Registry`, or a hub's
#: :class:`~adapterhub.registry.http_registry.HttpRegistry`), a URL or path, or None (the default)
RegistryArg: TypeAlias = "Registry | HttpRegistry | str | os.PathLike[str] | None"


@contextlib.contextmanager
def opened(registry: RegistryArg) -> Iterator[Registry]:
    """``registry`` itself, or the registry at that URL (default: the user's), closed after."""
    if registry is not None and not isinstance(registry, (str, os.PathLike)):
        yield registry
        return
    with Registry(registry) as reg:
        yield reg


def registry_arg(registry: RegistryArg) -> tuple[Registry | None, str | None]:
    """``(registry object, URL)`` for :func:`resolve_source` (which opens a URL only for a
    ref)."""
    if registry is None or isinstance(registry, (str, os.PathLike)):
        return None, None if registry is None else os.fspath(registry)
    return registry, None


def packages_to_fold(sources: Sequence[str | os.PathLike[str] | AdapterPackage],
                     registry: RegistryArg = None, *, expert: str | None = None
                     ) -> list[AdapterPackage]:
    """The adapters ``apply``/``merge`` fold: each source's package, or, for a composite
    version, its component ``expert`` (components come from the source's registry, or from
    ``registry`` for a directory)."""
    reg, db = registry_arg(registry)
    packages = []
    for source in sources:
        resolved = resolve_source(source, registry=reg, db=db)
        from_registry = resolved.registry if isinstance(resolved, RegistrySource) else None
        package = resolved.package()
        if package.method.composite and from_registry is None:
            from_registry = reg or Registry(db)
        packages.append(fold_component(package, expert, registry=from_registry))
    return packages
