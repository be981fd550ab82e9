"""MELoRA (Ren et al., ACL 2024): n mini LoRAs on contiguous slices, a block-diagonal ΔW."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub import hookimpl

_LAZY = {
    "MeloraMethod": "adapterhub_melora.method",
    "MeloraConfig": "adapterhub_melora.config",
    "MeloraLinear": "adapterhub_melora.layer",
}

if TYPE_CHECKING:
    from adapterhub_melora.config import MeloraConfig
    from adapterhub_melora.layer import MeloraLinear
    from adapterhub_melora.method import MeloraMethod

__all__ = ["MeloraConfig", "MeloraLinear", "MeloraMethod"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapterhub_melora' has no attribute {name!r}")


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_melora.method import MeloraMethod

    register(MeloraMethod)
