"""The combination functions of task-vector merging, on stacked tensors.

``tensors`` is ``[n, ...]``: input ``i``'s task tensor (its ΔW) at index ``i``; ``weights`` is
``[n]``. Each function follows PEFT's ``merge_utils`` (reference formulas in
docs/merging.md) and returns one tensor shaped like an input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SIGN_METHODS = ("total", "frequency")


def magnitude_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density · numel)`` entries of largest magnitude, zero the rest."""
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(tensor.abs().reshape(-1), k=k, largest=True).indices] = True
    return tensor * mask.reshape(tensor.shape)


def random_prune(tensor: torch.Tensor, density: float, generator: torch.Generator,
                 rescale: bool = True) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` (and divide by it if ``rescale``)."""
    if density >= 1:
        return tensor
    keep = torch.rand(tensor.shape, generator=generator) < density
    pruned = tensor * keep
    return pruned / density if rescale else pruned


def majority_sign_mask(tensors: torch.Tensor, method: str = "total") -> torch.Tensor:
    """Which entries agree with the elected sign: ``sign(Σ_i T_i)`` ("total") or the sign
    most inputs have ("frequency"); an elected 0 counts as +; a 0 entry never agrees."""
    signs = tensors.sign()
    if method == "total":
        elected = tensors.sum(dim=0).sign()
    elif method == "frequency":
        elected = signs.sum(dim=0).sign()
    else:
        raise ValueError(f"unknown majority sign method {method!r}")
    elected = torch.where(elected == 0, torch.ones_like(elected), elected)
    return signs == elected


def disjoint_merge(tensors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the agreeing entries: ``Σ_i T_i M_i / max(1, Σ_i M_i)`` (a count, not weights)."""
    return (tensors * mask).sum(dim=0) / mask.sum(dim=0).clamp(min=1)


def _weighted(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return tensors * weights.reshape(-1, *([1] * (tensors.ndim - 1)))


def task_arithmetic(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i T_i``."""
    return _weighted(tensors, weights).sum(dim=0)


def magnitude_prune_merge(tensors: torch.Tensor, weights: torch.Tensor,
                          density: float) -> torch.Tensor:
    """``Σ_i w_i · magprune(T_i, density)``."""
    pruned = torch.stack([magnitude_prune(t, density) for t in tensors])
    return task_arithmetic(pruned, weights)


def ties(tensors: torch.Tensor, weights: torch.Tensor, density: float,
         sign_method: str = "total") -> torch.Tensor:
    """TIES: magnitude-prune each input, elect signs on the *unweighted* pruned inputs, then
    average the weighted entries that agree (divided by their count)."""
    pruned = torch.stack([magnitude_prune(t, density) for t in tensors])
    mask = majority_sign_mask(pruned, sign_method)
    return disjoint_merge(_weighted(pruned, weights), mask)


def dare_linear(tensors: torch.Tensor, weights: torch.Tensor, density: float,
                generators: Sequence[torch.Generator]) -> torch.Tensor:
    """DARE: ``Σ_i w_i · randprune(T_i, density) / density``."""
    pruned = torch.stack([random_prune(t, density, g) for t, g in zip(tensors, generators)])
    return task_arithmetic(pruned, weights)


def dare_ties(tensors: torch.Tensor, weights: torch.Tensor, density: float,
              generators: Sequence[torch.Generator], sign_method: str = "total"
              ) -> torch.Tensor:
    """DARE's random prune and rescale, then TIES' sign election and disjoint mean."""
    pruned = torch.stack([random_prune(t, density, g) for t, g in zip(tensors, generators)])
    mask = majority_sign_mask(pruned, sign_method)
    return disjoint_merge(_weighted(pruned, weights), mask)
