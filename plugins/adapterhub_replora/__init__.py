"""RepLoRA (Truong et al., ICML 2025, arXiv 2502.03044): LoRA factors produced by small
learnable generators while training, stored and served as the plain LoRA factors they produced.

The public classes import lazily, so importing the plugin does not import torch::

    from adapterhub_replora import ReploraMethod
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub import hookimpl
from adapterhub.plugin_api import lazy_exports

_LAZY = {
    "ReploraMethod": "adapterhub_replora.method",
    "ReploraConfig": "adapterhub_replora.config",
    "ReploraLinear": "adapterhub_replora.layer",
    "Generator": "adapterhub_replora.layer",
}

if TYPE_CHECKING:
    from adapterhub_replora.config import ReploraConfig
    from adapterhub_replora.layer import Generator, ReploraLinear
    from adapterhub_replora.method import ReploraMethod

__all__ = ["Generator", "ReploraConfig", "ReploraLinear", "ReploraMethod"]

__getattr__ = lazy_exports(__name__, _LAZY)


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_replora.method import ReploraMethod

    register(ReploraMethod)
