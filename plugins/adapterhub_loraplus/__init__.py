"""LoRA+ (Hayou, Ghosh, Yu 2024): LoRA with a larger learning rate for the B factor.

The parameterisation, merge kernel and PEFT export are LoRA's (this plugin subclasses the
public ``adapterhub_lora.LoraMethod``); only the optimizer groups differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub import hookimpl
from adapterhub.plugin_api import lazy_exports

_LAZY = {
    "LoraPlusMethod": "adapterhub_loraplus.method",
    "LoraPlusConfig": "adapterhub_loraplus.config",
}

if TYPE_CHECKING:
    from adapterhub_loraplus.config import LoraPlusConfig
    from adapterhub_loraplus.method import LoraPlusMethod

__all__ = ["LoraPlusConfig", "LoraPlusMethod"]

__getattr__ = lazy_exports(__name__, _LAZY)


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_loraplus.method import LoraPlusMethod

    register(LoraPlusMethod)
