"""DoRA's arithmetic: the weight norm, the magnitude at init, the merge.

Notation: ``W`` is the base weight as stored (``[out, in]`` for a Linear, ``[in, out]`` for a
GPT-2 Conv1D, ``fan_in_fan_out``), ``A`` is ``[r, in]``, ``B`` is ``[out, r]``, ``s`` the LoRA
scaling and ``m`` the magnitude, one value per output feature. ``‖·‖`` is the L2 norm of each
output feature's row of ``W + s·B A`` laid out ``[out, in]`` (PEFT's ``get_weight_norm``).
"""

from __future__ import annotations

import torch


def rows(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """``weight`` laid out ``[out, in]`` (a view)."""
    return weight.T if fan_in_fan_out else weight


def direct_norm(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                fan_in_fan_out: bool) -> torch.Tensor:
    """``‖W + s·B A‖`` per output feature, computed as PEFT computes it (``update_layer``):
    the dense sum, then ``torch.linalg.norm(dim=1)``. The magnitude starts at this value."""
    total = rows(weight, fan_in_fan_out) + scaling * (b @ a)
    return torch.linalg.norm(total, dim=1).to(total.dtype)


class WeightNorm:
    """``‖W + s·B A‖`` for the forward pass, without forming ``W + s·B A``.

    Row ``o`` of ``W + s·B A`` has squared norm ``‖W_o‖² + 2s·B_o·(A W_oᵀ) + s²·B_o (A Aᵀ) B_oᵀ``.
    ``‖W_o‖²`` is computed once per base weight (it is frozen); each call then costs one
    ``[r, in] × [in, out]`` product (``A Wᵀ``) and ``O(r²·out)``, where PEFT forms the dense
    ``B A`` and the dense sum (``d_out × d_in`` temporaries, two of them) on every forward.
    The result is cached until ``A``, ``B`` or ``W`` change (tensor version counters), so
    repeated forwards at inference recompute nothing. It never takes part in autograd: DoRA
    treats the norm as a constant (paper §4.3, as PEFT does).
    """

    def __init__(self) -> None:
        self._base_key: tuple | None = None
        self._base_sq: torch.Tensor | None = None
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    @staticmethod
    def _version(t: torch.Tensor) -> tuple:
        return (t.data_ptr(), t._version, t.dtype, t.device)

    def __call__(self, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                 fan_in_fan_out: bool, dtype: torch.dtype) -> torch.Tensor:
        key = (self._version(weight), self._version(a), self._version(b), scaling,
               fan_in_fan_out, dtype)
        if key == self._key and self._value is not None:
            return self._value
        with torch.no_grad():
            w = rows(weight.to(dtype), fan_in_fan_out)
            base_key = key[0] + (dtype, fan_in_fan_out)
            if base_key != self._base_key or self._base_sq is None:
                self._base_sq = w.pow(2).sum(dim=1)
                self._base_key = base_key
            a, b = a.detach().to(dtype), b.detach().to(dtype)
            cross = ((w @ a.T) * b).sum(dim=1)
            quad = ((b @ (a @ a.T)) * b).sum(dim=1)
            square = self._base_sq + (2 * scaling) * cross + (scaling * scaling) * quad
            value = square.clamp_min(0).sqrt()
        self._key, self._value = key, value
        return value

    def clear(self) -> None:
        self._base_key = self._base_sq = self._key = self._value = None


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  magnitude: torch.Tensor, scaling: float, fan_in_fan_out: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', ‖W + s·B A‖)`` with ``W' = (m / ‖W + s·B A‖) · (W + s·B A)`` in fp32, in the
    weight's stored layout (PEFT's ``merge``: ``ΔW = s·B A``, the norm over ``W + ΔW``)."""
    w = weight.float() if weight.dtype != torch.float64 else weight
    delta = scaling * (b.to(w.dtype) @ a.to(w.dtype))
    if fan_in_fan_out:
        delta = delta.T
    total = w + delta
    norm = torch.linalg.norm(rows(total, fan_in_fan_out), dim=1)
    factor = (magnitude.to(w.dtype) / norm).view(-1, 1)
    return (factor.T if fan_in_fan_out else factor) * total, norm


def unmerged_weight(merged: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    magnitude: torch.Tensor, norm: torch.Tensor, scaling: float,
                    fan_in_fan_out: bool) -> torch.Tensor:
    """``W = W' · ‖W + s·B A‖ / m − s·B A`` (PEFT's ``unmerge``), in fp32."""
    w = merged.float() if merged.dtype != torch.float64 else merged
    delta = scaling * (b.to(w.dtype) @ a.to(w.dtype))
    factor = (magnitude.to(w.dtype) / norm.to(w.dtype)).view(-1, 1)
    if fan_in_fan_out:
        delta, factor = delta.T, factor.T
    return w / factor - delta
