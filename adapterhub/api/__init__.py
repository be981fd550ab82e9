"""The Python API above the registry: one function per CLI command, taking refs as well as
paths and packages (``adapterhub show`` is :func:`describe`, ``adapterhub export`` is
:func:`export`, ...). Commands on one registry are :class:`adapterhub.Registry` methods; the
model-level functions (``attach``, ``extract``, …) are :mod:`adapterhub.engines.adapters`.
``import adapterhub`` exposes all of them. Importing this package does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub.contracts.lazy import lazy_exports

_LAZY = {
    "load": "adapterhub.api.adapters",
    "apply": "adapterhub.api.build",
    "merge": "adapterhub.api.merge",
    "rebuild": "adapterhub.api.merge",
    "describe": "adapterhub.api.files",
    "import_adapter": "adapterhub.api.files",
    "export": "adapterhub.api.files",
    "check": "adapterhub.api.files",
    "train": "adapterhub.api.train",
}

if TYPE_CHECKING:
    from adapterhub.api.adapters import load
    from adapterhub.api.build import apply
    from adapterhub.api.files import check, describe, export, import_adapter
    from adapterhub.api.merge import merge, rebuild
    from adapterhub.api.train import train

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["apply", "check", "describe", "export", "import_adapter", "load", "merge",
           "rebuild", "train"]
