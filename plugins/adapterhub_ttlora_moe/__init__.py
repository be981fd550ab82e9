"""TT-LoRA (tensor-train adapters) and TT-LoRA MoE (a router over frozen TT-LoRA experts).

Registers two methods, ``ttlora`` and ``ttlora_moe``. The Python entry points below import
torch only when first used::

    from adapterhub_ttlora_moe import train_expert, train_router, load_moe, select_expert
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub import hookimpl
from adapterhub.plugin_api import lazy_exports

_LAZY = {
    "train_expert": "adapterhub_ttlora_moe.training",
    "train_router": "adapterhub_ttlora_moe.training",
    "load_experts": "adapterhub_ttlora_moe.experts",
    "select_expert": "adapterhub_ttlora_moe.experts",
    "load_moe": "adapterhub_ttlora_moe.moe",
    "moe_package": "adapterhub_ttlora_moe.moe",
    "route": "adapterhub_ttlora_moe.moe",
    "TTLoraConfig": "adapterhub_ttlora_moe.config",
    "TTLoraMoeConfig": "adapterhub_ttlora_moe.config",
}

if TYPE_CHECKING:
    from adapterhub_ttlora_moe.config import TTLoraConfig, TTLoraMoeConfig
    from adapterhub_ttlora_moe.experts import load_experts, select_expert
    from adapterhub_ttlora_moe.moe import load_moe, moe_package, route
    from adapterhub_ttlora_moe.training import train_expert, train_router

__all__ = sorted(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)


@hookimpl
def adapterhub_register_methods(register):
    from adapterhub_ttlora_moe.method import TTLoraMethod, TTLoraMoeMethod

    register(TTLoraMethod)
    register(TTLoraMoeMethod)
