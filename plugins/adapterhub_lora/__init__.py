"""LoRA (Hu et al. 2021) with PEFT's semantics: the baseline method plugin.

The public classes (``LoraMethod``, ``LoraConfig``, ``LoraLinear``, ``LoraEmbedding``) are
importable from the package itself, lazily, so that importing the plugin (and any plugin that
subclasses it) does not import torch::

    from adapterhub_lora import LoraMethod
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub import hookimpl
from adapterhub.plugin_api import lazy_exports

_LAZY = {
    "LoraMethod": "adapterhub_lora.method",
    "LoraConfig": "adapterhub_lora.config",
    "LoraLinear": "adapterhub_lora.layer",
    "LoraEmbedding": "adapterhub_lora.layer",
}

if TYPE_CHECKING:
    from adapterhub_lora.config import LoraConfig
    from adapterhub_lora.layer import LoraEmbedding, LoraLinear
    from adapterhub_lora.method import LoraMethod

__all__ = ["LoraConfig", "LoraEmbedding", "LoraLinear", "LoraMethod"]

__getattr__ = lazy_exports(__name__, _LAZY)


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_lora.method import LoraMethod

    register(LoraMethod)
