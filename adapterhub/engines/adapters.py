"""Adapters on models: attach a method's layers, train them in any loop, extract the
adapter as a package, fold it in or take it out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.config import MethodConfig, QuantizerConfig
from adapterhub.contracts.layers import adapted_layers
from adapterhub.contracts.method import AdapterMethod
from adapterhub.contracts.plugins import get_method, get_quantizer
from adapterhub.contracts.quantizer import Quantizer
from adapterhub.errors import AdapterHubError, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from adapterhub.contracts.layers import AdaptedLayer
    from adapterhub.io.package import AdapterPackage


def attach(model: nn.Module, method: str | AdapterMethod = "lora",
           config: MethodConfig | dict[str, Any] | None = None, *,
           quantize: str | Quantizer | None = None,
           quantize_config: QuantizerConfig | dict[str, Any] | None = None,
           **config_fields: Any) -> dict[str, AdaptedLayer]:
    """Put ``method``'s adapted layers in place of the targeted layers of ``model``.

    Every base parameter is frozen; only the adapter's tensors train. Config fields may be
    passed as a config object, a dict, or keyword arguments::

        layers = adapterhub.attach(model, "lora", r=16, target_modules=["q_proj", "v_proj"])

    ``quantize`` names a quantizer (QLoRA: ``quantize="nf4"``): first every ``nn.Linear`` of
    the model except the output head is replaced by the quantizer's frozen quantized Linear
    (see :func:`adapterhub.engines.quantization.quantize_model`; ``quantize_config`` sets blocksize,
    double quantisation, compute dtype), then the adapter attaches on top. The targets are
    checked before anything changes.

    Returns the adapted layers by module path.
    """
    from adapterhub.contracts.layers import find_targets
    from adapterhub.engines.quantization import quantize_model

    method_obj = get_method(method) if isinstance(method, str) else method
    config_obj = method_obj.make_config(config, **config_fields)
    if quantize is not None:
        quantizer = get_quantizer(quantize)
        quantizer_config = quantizer.make_config(quantize_config)
        find_targets(model, config_obj.target_modules, kinds=method_obj.layer_kinds,
                     method=method_obj.name)
        quantize_model(model, quantizer, quantizer_config)
    elif quantize_config is not None:
        raise ConfigError("quantize_config was given without quantize",
                          hint="Pass quantize='nf4' (or another quantizer) as well")
    return method_obj.attach(model, config_obj)


def attached(model: nn.Module) -> tuple[AdapterMethod, MethodConfig]:
    """The method and config of the adapter attached to ``model``."""
    layers = adapted_layers(model)
    if not layers:
        raise AdapterHubError("the model has no adapter attached",
                              hint="Call adapterhub.attach(model, ...) or adapterhub.load(...)")
    first = next(iter(layers.values()))
    for path, layer in layers.items():
        if layer.method is not first.method or layer.adapter_config is not first.adapter_config:
            raise AdapterHubError(f"the model carries more than one adapter ({path!r} differs "
                                  f"from {first.path!r}); extract one at a time")
    return first.method, first.adapter_config


def param_groups(model: nn.Module, lr: float, **kwargs: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the attached adapter (LoRA+ boosts B, for instance)::

        optimizer = torch.optim.AdamW(adapterhub.param_groups(model, lr=2e-4))
    """
    method, _ = attached(model)
    return method.param_groups(model, lr, **kwargs)


def extract(model: nn.Module, *, base: str | os.PathLike[str] | None = None,
            base_name: str | None = None, base_revision: str | None = None,
            metrics: dict[str, Any] | None = None, labels: dict[str, Any] | None = None,
            parents: tuple[str, ...] = ()) -> AdapterPackage:
    """The attached adapter as an :class:`AdapterPackage` (tensors copied to CPU).

    ``base`` is the base checkpoint directory; its safetensors headers give the base
    fingerprint. Without it, a local ``model.name_or_path`` is used, and failing that the
    fingerprint is computed from the model's own state dict.
    """
    from adapterhub.io.checkpoint import Checkpoint, fingerprint_of
    from adapterhub.io.package import AdapterPackage
    from adapterhub.io.safetensors import dtype_name

    method, config = attached(model)
    layers = adapted_layers(model)
    local = base or getattr(model, "name_or_path", None)
    if local and Path(local).is_dir():
        checkpoint = Checkpoint(local)
        fingerprint, name = checkpoint.fingerprint, checkpoint.name
    else:
        own = {}
        for key, tensor in model.state_dict().items():
            own[key.replace(".base_layer.", ".")] = tensor
        adapter_keys = set(method.state_dict(model))
        fingerprint = fingerprint_of((k, dtype_name(t.dtype), tuple(t.shape))
                                     for k, t in own.items() if k not in adapter_keys)
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    quantizations = {repr(q): q for layer in layers.values()
                     if (q := getattr(layer.base_layer, "adapterhub_quantization", None))}
    quantization = next(iter(quantizations.values())) if len(quantizations) == 1 else None
    return AdapterPackage.build(method, config, method.state_dict(model),
                                base_name=base_name or name, base_revision=base_revision,
                                base_fingerprint=fingerprint, quantization=quantization,
                                parents=parents, metrics=metrics, labels=labels)


def unload(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Remove the adapter's layers, folding ΔW into the base weights first if ``merge``."""
    for path, layer in adapted_layers(model).items():
        if merge:
            layer.merge()
        elif layer.merged:
            layer.unmerge()
        model.set_submodule(path, layer.base_layer)
    return model
