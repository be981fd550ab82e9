"""Merging adapters into one new version: the engine that runs a merge strategy.

A :class:`~adapterhub.contracts.strategy.MergeStrategy` combines, for one module at a time,
what each input adapter does to that module, and returns low-rank factors.
:func:`merge_adapters` runs a strategy over every module the inputs adapt and stores the result
with the method that stores low-rank factors (:func:`~adapterhub.contracts.plugins.
low_rank_method`: LoRA, with scaling 1), whose manifest names its
``parents`` (the inputs' version digests, in order) and its ``recipe`` (strategy, weights,
parameters, seed) — enough for :func:`replay` to rebuild the same digest.

Inputs are seen through each method's merge kernel, so any mix of methods can be merged:
``delta_weight`` gives the dense ΔW, and ``low_rank`` the exact factors of methods that have
them (LoRA), which keeps ``cat`` exact and ``linear``/``svd`` cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.strategy import MergeStrategy, ModuleInput, ModuleMerge
from adapterhub.errors import MergeError

if TYPE_CHECKING:
    import torch

    from adapterhub.contracts.config import MethodConfig
    from adapterhub.contracts.method import AdapterMethod
    from adapterhub.io.package import AdapterPackage

# -- the engine ----------------------------------------------------------------------------


@dataclass
class _Inputs:
    packages: list[AdapterPackage]
    weights: list[float]
    methods: list[tuple[AdapterMethod, MethodConfig]] = field(default_factory=list)
    groups: list[dict[str, dict[str, torch.Tensor]]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def merge_adapters(packages: Sequence[AdapterPackage], strategy: str, *,
                   weights: Sequence[float] | None = None, density: float | None = None,
                   rank: int | None = None, seed: int | None = None,
                   **params: Any) -> AdapterPackage:
    """Merge ``packages`` with a registered strategy into a new LoRA package.

    ``weights`` (default 1.0 each) scale each input's ΔW; ``density`` (pruning strategies)
    is the fraction of entries kept; ``rank`` the output rank (default: the strategy's rule,
    from the inputs' ranks); ``seed`` drives random strategies (default 0); ``params`` are
    strategy-specific (``majority_sign_method`` for TIES). Modules are merged one at a time.
    The result's manifest has ``parents`` (the inputs' digests) and ``recipe``.
    """
    from adapterhub.contracts.plugins import get_strategy, low_rank_method
    from adapterhub.io.package import AdapterPackage

    strat = get_strategy(strategy)
    recipe_params = _check_common(strat, density, rank, seed)
    recipe_params.update(strat.check_params(params))
    seed = (0 if seed is None else int(seed)) if strat.uses_seed else None
    inputs = _read_inputs(packages, weights)
    target = low_rank_method()
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    kinds: dict[str, str] = {}
    for module, shape in sorted(inputs.shapes.items()):
        items = []
        for index, (method, config) in enumerate(inputs.methods):
            group = inputs.groups[index].get(module)
            if group is None:
                continue
            kind = method.module_kind(module, group, config)
            if kinds.setdefault(module, kind) != kind:
                raise MergeError(f"the inputs disagree on what {module} is ({kinds[module]} "
                                 f"and {kind})")
            items.append(ModuleInput(index, inputs.weights[index], method, config, group,
                                     module, shape))
        job = ModuleMerge(module, shape, items, rank, density,
                          {k: v for k, v in recipe_params.items()
                           if k not in ("rank", "density")}, seed, strat.name)
        left, right = strat.merge_module(job)
        if left.shape[0] != shape[0] or right.shape[1] != shape[1] \
                or left.shape[1] != right.shape[0]:
            raise MergeError(f"strategy {strat.name!r} returned factors {tuple(left.shape)} "
                             f"and {tuple(right.shape)} for {module}, a {list(shape)} weight")
        factors[module] = (left, right)
    config, tensors = target.from_low_rank(factors, kinds)
    first = inputs.packages[0].manifest
    merged = AdapterPackage.build(
        target, config, tensors, base_name=first.base_model.get("name"),
        base_revision=first.base_model.get("revision"),
        base_fingerprint=_common(inputs.packages, "fingerprint"),
        quantization=first.quantization, parents=tuple(p.digest for p in inputs.packages),
        recipe={"strategy": strat.name, "weights": inputs.weights, "params": recipe_params,
                "seed": seed})
    if merged.manifest.base_model["modules"] != {m: list(s) for m, s in inputs.shapes.items()}:
        raise MergeError("the merged adapter's module shapes differ from its inputs'")
    return merged


def replay(packages: Sequence[AdapterPackage], recipe: dict[str, Any]) -> AdapterPackage:
    """Merge ``packages`` (the parents, in order) again by a recorded ``recipe``."""
    if not isinstance(recipe, dict) or "strategy" not in recipe:
        raise MergeError("this version has no merge recipe to replay")
    return merge_adapters(packages, recipe["strategy"], weights=recipe.get("weights"),
                          seed=recipe.get("seed"), **recipe.get("params", {}))


def _check_common(strat: MergeStrategy, density: float | None, rank: int | None,
                  seed: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if strat.uses_density:
        if density is None:
            raise MergeError(f"strategy {strat.name!r} needs a density (the fraction of "
                             f"entries each input keeps)", hint="Pass --density, e.g. 0.2")
        if not (isinstance(density, (int, float)) and 0 < density <= 1):
            raise MergeError(f"density must be in (0, 1]; got {density!r}")
        out["density"] = float(density)
    elif density is not None:
        raise MergeError(f"strategy {strat.name!r} does not prune; it takes no density")
    if rank is not None:
        if not strat.uses_rank:
            raise MergeError(f"strategy {strat.name!r} does not take a rank (its rank is the "
                             f"sum of its inputs')")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise MergeError(f"rank must be a positive integer; got {rank!r}")
        out["rank"] = rank
    if seed is not None and not strat.uses_seed:
        raise MergeError(f"strategy {strat.name!r} is deterministic; it takes no seed")
    return out


def adapter_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """One finite weight per adapter (default 1.0 each), as floats."""
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count:
        raise MergeError(f"{len(weights)} weights given for {count} adapters",
                         hint="Pass one weight per adapter, in the same order")
    if not all(math.isfinite(w) for w in weights):
        raise MergeError(f"weights must be finite numbers; got {weights}")
    return weights


def _read_inputs(packages: Sequence[AdapterPackage], weights: Sequence[float] | None
                 ) -> _Inputs:

    if not packages:
        raise MergeError("merge needs at least one adapter")
    inputs = _Inputs(list(packages), adapter_weights(weights, len(packages)))
    _common(inputs.packages, "fingerprint")
    quantizations = {repr(p.manifest.quantization) for p in inputs.packages}
    if len(quantizations) > 1:
        raise MergeError("the adapters were trained on differently quantized bases")
    for package in inputs.packages:
        if package.method.composite:  # no single ΔW: a component must be picked first
            raise package.method.no_single_delta(package.config)
        method = package.method
        if method.base_dependence:
            raise MergeError(f"cannot merge the {method.name!r} adapter "
                             f"{package.digest[:19]} with others: {method.base_dependence}, "
                             f"and a merge of adapters has no base weights",
                             hint="Fold it into the base model with 'adapterhub apply' (it "
                                  "takes several adapters) and merge what remains")
        inputs.methods.append((method, package.config))
        inputs.groups.append(method.group_tensors(package.tensors))
        for module, shape in package.manifest.base_model.get("modules", {}).items():
            if inputs.shapes.setdefault(module, tuple(shape)) != tuple(shape):
                raise MergeError(f"the adapters disagree on the shape of {module} "
                                 f"({list(inputs.shapes[module])} and {list(shape)}): they "
                                 f"were trained on different base models")
    return inputs


def _common(packages: Sequence[AdapterPackage], key: str) -> str | None:
    """The base ``key`` every input records (None if none does); differing values refuse."""
    values = {p.manifest.base_model.get(key) for p in packages} - {None}
    if len(values) > 1:
        raise MergeError(f"the adapters were trained on different base models (base {key}s "
                         f"{', '.join(sorted(v[:19] for v in values))})")
    return next(iter(values), None)
