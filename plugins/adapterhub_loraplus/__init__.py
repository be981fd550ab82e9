"""LoRA+ (Hayou, Ghosh, Yu 2024): LoRA with a larger learning rate for the B factor.

The parameterisation, merge kernel and PEFT export are LoRA's (this plugin subclasses the
public ``adapterhub_lora.LoraMethod``); only the optimizer groups differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub import hookimpl

_LAZY = {
    "LoraPlusMethod": "adapterhub_loraplus.method",
    "LoraPlusConfig": "adapterhub_loraplus.config",
}

if TYPE_CHECKING:
    from adapterhub_loraplus.config import LoraPlusConfig
    from adapterhub_loraplus.method import LoraPlusMethod

__all__ = ["LoraPlusConfig", "LoraPlusMethod"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapterhub_loraplus' has no attribute {name!r}")


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_loraplus.method import LoraPlusMethod

    register(LoraPlusMethod)
