"""Loading stored adapters into models by ref, path or package (the resolving half of
:func:`adapterhub.load`; attaching is :mod:`adapterhub.engines.adapters`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from adapterhub.errors import IncompatibleBaseModelError

if TYPE_CHECKING:
    from torch import nn

    from adapterhub.contracts.layers import AdaptedLayer
    from adapterhub.io.package import AdapterPackage
    from adapterhub.registry import Registry


def load(model: nn.Module, package: AdapterPackage | str | os.PathLike[str], *,
         registry: Registry | None = None) -> dict[str, AdaptedLayer]:
    """Attach a stored adapter to ``model``: a package, a native or PEFT directory, or a
    registry ref (``ns/name@3``) in ``registry`` (default: the local registry).

    Checks that every adapted module exists with the base shape the adapter expects before
    changing anything. A composite version (a mixture of experts) brings its components from the
    registry.
    """
    from adapterhub.registry.sources import component_versions, resolve_source

    if not hasattr(package, "manifest"):
        package = resolve_source(package, registry=registry).package()
    modules = dict(model.named_modules())
    for path, shape in package.manifest.base_model.get("modules", {}).items():
        module = modules.get(path)
        weight = getattr(module, "weight", None)
        if module is None or weight is None:
            raise IncompatibleBaseModelError(f"the model has no module {path!r} that the "
                                             f"adapter adapts")
        if list(weight.shape) != list(shape):
            raise IncompatibleBaseModelError(f"module {path!r} has weight shape "
                                             f"{list(weight.shape)}; the adapter expects {shape}")
    return package.method.load(model, package.tensors, package.config,
                               components=component_versions(package, registry))


