"""Folding a delta into a weight: in fp32, one cast back, no NaN or Inf let through."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub.errors import MergeError

if TYPE_CHECKING:
    import torch


def fold_delta(weight: torch.Tensor, delta: torch.Tensor, *, scale: float = 1.0,
               what: str = "delta") -> torch.Tensor:
    """``weight + scale·delta`` computed in fp32 with one cast back; refuses non-finite results.

    The check runs on the cast result, so a sum that overflows the weight's dtype (fp16) is
    refused too.
    """
    import torch

    if tuple(delta.shape) != tuple(weight.shape):
        raise MergeError(f"{what}: delta shape {tuple(delta.shape)} does not match the base "
                         f"weight {tuple(weight.shape)}")
    merged = torch.add(weight.to(torch.float32),
                       delta.to(device=weight.device, dtype=torch.float32), alpha=scale)
    merged = merged.to(weight.dtype)
    check_finite(merged, what)
    return merged


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`MergeError` if a merged weight holds NaN or Inf values."""
    import torch

    if not torch.isfinite(tensor).all():
        raise MergeError(f"{what}: merging produced NaN or Inf values",
                         hint="The adapter's tensors are corrupt or diverged (or the sum "
                              "overflows the output dtype); retrain or pick another version")
