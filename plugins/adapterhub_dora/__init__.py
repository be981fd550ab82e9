"""DoRA (Liu et al. 2024, arXiv 2402.09353) with PEFT's semantics (``use_dora=True``).

LoRA's factors give the direction of the change; a trainable magnitude per output feature
rescales ``W + s·B A`` row by row. The public classes import lazily, so importing the plugin
does not import torch::

    from adapterhub_dora import DoraMethod
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub import hookimpl
from adapterhub.plugin_api import lazy_exports

_LAZY = {
    "DoraMethod": "adapterhub_dora.method",
    "DoraLinear": "adapterhub_dora.layer",
}

if TYPE_CHECKING:
    from adapterhub_dora.layer import DoraLinear
    from adapterhub_dora.method import DoraMethod

__all__ = ["DoraLinear", "DoraMethod"]

__getattr__ = lazy_exports(__name__, _LAZY)


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_dora.method import DoraMethod

    register(DoraMethod)
