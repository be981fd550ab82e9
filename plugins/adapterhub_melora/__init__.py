"""MELoRA (Ren et al., ACL 2024): n mini LoRAs on contiguous slices, a block-diagonal ΔW."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub import hookimpl
from adapterhub.plugin_api import lazy_exports

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

__getattr__ = lazy_exports(__name__, _LAZY)


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_melora.method import MeloraMethod

    register(MeloraMethod)
