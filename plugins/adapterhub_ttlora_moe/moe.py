"""A MoE on a live model: expert layers, the router, and the routing step before each forward.

The router is a submodule of the model (``ttlora_router``), so ``.to()``, ``.train()`` and
``.eval()`` reach it. A forward pre-hook on the model routes every call: it runs the model once
with all adapters disabled (the frozen base's representation), computes the gates, and hands
them to every :class:`TTLoraMoeLinear` for the adapted forward that follows.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from adapterhub import AdapterHubError, AdapterPackage, ConfigError, FormatError
from adapterhub.plugin_api import find_targets, get_method
from adapterhub_ttlora_moe.experts import ExpertSource, stack_experts
from adapterhub_ttlora_moe.layers import TTLoraMoeLinear
from adapterhub_ttlora_moe.router import Router, base_hidden

if TYPE_CHECKING:
    from adapterhub_ttlora_moe.config import TTLoraMoeConfig

ROUTER_ATTR = "ttlora_router"


def attach_moe(model: nn.Module, config: TTLoraMoeConfig, experts: list[AdapterPackage],
               router_tensors: dict[str, torch.Tensor] | None) -> dict[str, TTLoraMoeLinear]:
    """Put the frozen experts and the stored router on ``model``; returns the MoE layers."""
    if hasattr(model, ROUTER_ATTR):
        raise ConfigError("this model already carries a ttlora_moe",
                          hint="Unload it first with adapterhub.unload(model, merge=False)")
    if [p.digest for p in experts] != list(config.experts):
        raise ConfigError("the expert packages do not match the config's experts, in order")
    stacks, n_in, alphas = stack_experts(experts)
    if not router_tensors or "gate" not in router_tensors:
        raise FormatError("a ttlora_moe version needs its router tensors (router.gate, "
                          "router.noise, router.noise_bias)")
    router = Router.for_config(config, router_tensors["gate"].shape[1])
    router.load_tensors(router_tensors)
    method = get_method("ttlora_moe")
    found = find_targets(model, sorted(stacks), kinds=method.layer_kinds, method=method.name,
                         exact=True)
    layers = {path: TTLoraMoeLinear(module, method, config, path, stacks[path], n_in[path],
                                    alphas) for path, module in found}
    for param in model.parameters():
        param.requires_grad_(False)
    for path, layer in layers.items():
        model.set_submodule(path, layer)
    weight = next(iter(layers.values())).base_layer.weight
    router.to(device=weight.device)
    router.train(model.training)  # a new module trains; the router follows the model's mode
    model.add_module(ROUTER_ATTR, router)
    router.hooks = [model.register_forward_pre_hook(_route_hook, with_kwargs=True),
                    model.register_forward_hook(_clear_hook)]
    return layers


def load_moe(model: nn.Module, package: AdapterPackage | str | os.PathLike[str],
             experts: Iterable[ExpertSource]) -> dict[str, TTLoraMoeLinear]:
    """Attach a stored ``ttlora_moe`` version and its experts to ``model`` for inference.

    Raises :class:`adapterhub.AdapterNotFoundError` naming the digest of any expert the version
    lists that ``experts`` does not supply.
    """
    from adapterhub.plugin_api import read_adapter

    if not isinstance(package, AdapterPackage):
        package = read_adapter(package)
    if package.manifest.method_name != "ttlora_moe":
        raise ConfigError(f"load_moe needs a ttlora_moe version; this one is "
                          f"{package.manifest.method_name!r}", hint="Use adapterhub.load")
    return package.method.load(model, package.tensors, package.config,
                               components=list(experts))


def detach_moe(model: nn.Module) -> None:
    """Take the MoE off ``model``: base layers back in place, the router and its hooks gone."""
    router = router_of(model)
    for layer in moe_layers(model):
        model.set_submodule(layer.path, layer.base_layer)
    for handle in router.hooks:
        handle.remove()
    delattr(model, ROUTER_ATTR)


def router_of(model: nn.Module) -> Router:
    router = getattr(model, ROUTER_ATTR, None)
    if not isinstance(router, Router):
        raise AdapterHubError("the model carries no ttlora_moe router",
                              hint="Attach one with adapterhub_ttlora_moe.load_moe or "
                                   "train_router")
    return router


def moe_layers(model: nn.Module) -> list[TTLoraMoeLinear]:
    return [m for m in model.modules() if isinstance(m, TTLoraMoeLinear)]


def route(model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The expert index (the top gate) each input of a batch is routed to, ``[B]``."""
    return _gates(model, router_of(model), args, kwargs).argmax(dim=-1)


def moe_package(router: Router, config: TTLoraMoeConfig, experts: list[AdapterPackage], *,
                metrics: dict[str, Any] | None = None, labels: dict[str, Any] | None = None
                ) -> AdapterPackage:
    """A ``ttlora_moe`` version: the router's tensors and the config, experts as ``parents``.

    Its ``base_model`` is the experts' (the modules it adapts are theirs), so compatibility
    checks against a base checkpoint work as for any adapter.
    """
    first = experts[0].manifest
    tensors = {f"router.{name}": t for name, t in router.tensors().items()}
    base = first.base_model
    package = AdapterPackage.build(
        "ttlora_moe", config, tensors, base_name=base.get("name"),
        base_revision=base.get("revision"), base_fingerprint=base.get("fingerprint"),
        quantization=first.quantization, parents=tuple(config.experts), metrics=metrics,
        labels=labels)
    modules: dict[str, list[int]] = {}
    for expert in experts:
        modules.update(expert.manifest.base_model.get("modules", {}))
    return package.with_manifest(base_model={**package.manifest.base_model,
                                             "modules": dict(sorted(modules.items()))})


def _gates(model: nn.Module, router: Router, args: tuple, kwargs: dict[str, Any]
           ) -> torch.Tensor:
    router.busy = True
    try:
        hidden, mask = base_hidden(model, args, kwargs)
    finally:
        router.busy = False
    gates = router(hidden, mask)
    router.last_gates = gates.detach()
    return gates


def _route_hook(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    router = getattr(model, ROUTER_ATTR, None)
    if router is None or router.busy:
        return
    layers = moe_layers(model)
    if not layers:  # the MoE layers were unloaded: the router goes with them
        for handle in router.hooks:
            handle.remove()
        delattr(model, ROUTER_ATTR)
        return
    gates = _gates(model, router, args, kwargs)
    for layer in layers:
        layer.gates = gates


def _clear_hook(model: nn.Module, args: tuple, output: Any) -> None:
    router = getattr(model, ROUTER_ATTR, None)
    if router is None or router.busy:
        return
    for layer in moe_layers(model):
        layer.gates = None
