"""adapterhub: a registry and hub for parameter-efficient fine-tuning deltas.

The names below import lazily so that ``import adapterhub`` (and ``adapterhub --help``) stay
fast: torch is loaded only when a function that needs it is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub.contracts.config import ConfigBase, MethodConfig, QuantizerConfig
from adapterhub.contracts.lazy import lazy_exports
from adapterhub.contracts.method import AdapterMethod
from adapterhub.contracts.quantizer import QuantizedTensor, Quantizer
from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, ConfigError, ExportError,
                               FormatError, IncompatibleBaseModelError, IntegrityError, MergeError,
                               MissingBlobsError, PluginLoadError, PromotionError,
                               QuantizationError, RefError, RegistrationError, RegistryError,
                               TargetError, UnknownMethodError, UnknownPluginError,
                               UnknownQuantizerError, UnknownRemoteError, UnknownStrategyError,
                               UnsafeFormatError)
from adapterhub.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "attach": "adapterhub.engines.adapters",
    "attached": "adapterhub.engines.adapters",
    "param_groups": "adapterhub.engines.adapters",
    "extract": "adapterhub.engines.adapters",
    "load": "adapterhub.api.adapters",
    "unload": "adapterhub.engines.adapters",
    "AdapterPackage": "adapterhub.io.package",
    "AdaptedLayer": "adapterhub.contracts.layers",
    "get_method": "adapterhub.contracts.plugins",
    "get_quantizer": "adapterhub.contracts.plugins",
    "get_plugin_manager": "adapterhub.contracts.plugins",
    "Registry": "adapterhub.registry",
    "quantize_model": "adapterhub.engines.quantization",
}

if TYPE_CHECKING:
    from adapterhub.api.adapters import load
    from adapterhub.contracts.layers import AdaptedLayer
    from adapterhub.contracts.plugins import get_method, get_plugin_manager, get_quantizer
    from adapterhub.engines.adapters import attach, attached, extract, param_groups, unload
    from adapterhub.engines.quantization import quantize_model
    from adapterhub.io.package import AdapterPackage
    from adapterhub.registry import Registry

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AdaptedLayer", "AdapterHubError", "AdapterMethod", "AdapterNotFoundError", "AdapterPackage",
    "ConfigBase", "ConfigError", "ExportError", "FormatError", "IncompatibleBaseModelError",
    "IntegrityError", "MergeError", "MethodConfig", "MissingBlobsError", "PluginLoadError",
    "PromotionError", "QuantizationError", "QuantizedTensor", "Quantizer", "QuantizerConfig",
    "RefError", "RegistrationError", "Registry", "RegistryError", "TargetError",
    "UnknownMethodError", "UnknownPluginError", "UnknownQuantizerError", "UnknownRemoteError",
    "UnknownStrategyError", "UnsafeFormatError", "attach", "attached", "extract", "get_method",
    "get_plugin_manager", "get_quantizer", "hookimpl", "load", "param_groups", "quantize_model",
    "unload",
]
