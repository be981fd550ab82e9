"""``adapterhub apply``: a deployment build from refs, directories or packages."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from adapterhub.api.sources import RegistryArg, packages_to_fold
from adapterhub.engines.apply import apply_adapters

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage


def apply(base: str | os.PathLike[str],
          adapters: Sequence[str | os.PathLike[str] | AdapterPackage],
          out: str | os.PathLike[str], *, weights: Sequence[float] | None = None,
          dtype: str | None = None, requantize: bool = False, untouched: str = "original",
          expert: str | None = None, registry: RegistryArg = None,
          show_progress: bool = True) -> dict[str, Any]:
    """Fold ``adapters`` (registry refs, adapter directories or packages; for a composite
    version, its component ``expert``) into the checkpoint ``base`` and write the build to
    ``out``; returns the build record. See :func:`adapterhub.engines.apply.apply_adapters`
    for the other arguments."""
    packages = packages_to_fold(adapters, registry, expert=expert)
    return apply_adapters(base, packages, out, weights=weights, dtype=dtype,
                          requantize=requantize, untouched=untouched,
                          show_progress=show_progress)
