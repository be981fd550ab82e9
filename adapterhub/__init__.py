"""adapterhub: a registry and hub for parameter-efficient fine-tuning deltas.

The names below import lazily so that ``import adapterhub`` (and ``adapterhub --help``) stay
fast: torch is loaded only when a function that needs it is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, ConfigError,
                               ExportError, FormatError, IncompatibleBaseModelError,
                               IntegrityError, MergeError, MissingBlobsError, PluginLoadError,
                               PromotionError, QuantizationError, RefError, RegistrationError,
                               RegistryError, TargetError, UnknownMethodError,
                               UnsafeFormatError)
from adapterhub.hookspecs import hookimpl
from adapterhub.lazy import lazy_exports
from adapterhub.methods import (AdapterMethod, ConfigBase, MethodConfig, QuantizedTensor,
                                Quantizer, QuantizerConfig)

__version__ = "0.1.0"

_LAZY = {
    "attach": "adapterhub.api",
    "attached": "adapterhub.api",
    "param_groups": "adapterhub.api",
    "extract": "adapterhub.api",
    "load": "adapterhub.api",
    "unload": "adapterhub.api",
    "AdapterPackage": "adapterhub.package",
    "AdaptedLayer": "adapterhub.layers",
    "get_method": "adapterhub.plugins",
    "get_quantizer": "adapterhub.plugins",
    "get_plugin_manager": "adapterhub.plugins",
    "Registry": "adapterhub.registry",
    "quantize_model": "adapterhub.quantization",
}

if TYPE_CHECKING:
    from adapterhub.api import attach, attached, extract, load, param_groups, unload
    from adapterhub.layers import AdaptedLayer
    from adapterhub.package import AdapterPackage
    from adapterhub.plugins import get_method, get_plugin_manager, get_quantizer
    from adapterhub.registry import Registry
    from adapterhub.quantization import quantize_model

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AdaptedLayer", "AdapterHubError", "AdapterMethod", "AdapterNotFoundError", "AdapterPackage",
    "ConfigBase", "ConfigError", "ExportError", "FormatError", "IncompatibleBaseModelError",
    "IntegrityError", "MergeError", "MethodConfig", "MissingBlobsError", "PluginLoadError",
    "PromotionError", "QuantizationError", "QuantizedTensor", "Quantizer", "QuantizerConfig",
    "RefError", "RegistrationError", "Registry", "RegistryError", "TargetError",
    "UnknownMethodError", "UnsafeFormatError", "attach", "attached", "extract", "get_method",
    "get_plugin_manager", "get_quantizer", "hookimpl", "load", "param_groups", "quantize_model",
    "unload",
]
