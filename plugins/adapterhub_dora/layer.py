"""DoRA's training kernel: PEFT's ``DoraLinearLayer.forward`` on a Linear or a GPT-2 Conv1D."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from adapterhub_lora import LoraLinear
from torch import nn

from adapterhub.plugin_api import check_finite
from adapterhub_dora.kernels import WeightNorm, direct_norm, merged_weight, unmerged_weight


class DoraLinear(LoraLinear):
    """LoRA's ``A`` and ``B`` plus ``lora_magnitude_vector`` (one value per output feature).

    Forward, with ``x`` cast to the adapter dtype and ``scale = m / ‖W + s·B A‖`` (the norm
    detached)::

        y = base(x) + (scale − 1) · (x Wᵀ) + scale · s · B A dropout(x)

    ``x Wᵀ`` (without bias) is ``base(x) − b`` when dropout is off or in eval mode, else it is
    recomputed from ``dropout(x)``, exactly as PEFT does. The magnitude starts at
    ``‖W + s·B A‖`` computed as PEFT computes it, so with ``B = 0`` the layer equals the base.
    """

    def __init__(self, base_layer, method, config, path):
        super().__init__(base_layer, method, config, path)
        self.fan_in_fan_out = self.kind == "conv1d"
        with torch.no_grad():
            magnitude = direct_norm(self.base_weight.to(self.lora_A.device), self.lora_A,
                                    self.lora_B, self.scaling, self.fan_in_fan_out)
        self.lora_magnitude_vector = nn.Parameter(magnitude.to(self.lora_A.dtype))
        self.weight_norm = WeightNorm()
        self._merge_state: tuple[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged or self.disabled:
            return result
        base_result = None
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = getattr(self.base_layer, "bias", None)
            base_result = result if bias is None else result - bias
        return (result + self._dora_term(x, base_result)).to(result.dtype)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """DoRA's additive contribution, with ``x Wᵀ`` computed here."""
        return self._dora_term(x, None)

    def _dora_term(self, x: torch.Tensor, base_result: torch.Tensor | None) -> torch.Tensor:
        """``(scale − 1)·x Wᵀ + scale·s·B A x`` (PEFT's ``DoraLinearLayer.forward``)."""
        x = x.to(self.lora_A.dtype)
        weight = self.base_weight
        if base_result is None:
            x = self.lora_dropout(x)
            w = weight.to(x.dtype)
            base_result = F.linear(x, w.T if self.fan_in_fan_out else w)
        norm = self.weight_norm(weight, self.lora_A, self.lora_B, self.scaling,
                                self.fan_in_fan_out, x.dtype)
        scale = (self.lora_magnitude_vector / norm).view(1, -1)
        lora_result = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return (scale - 1) * base_result + scale * lora_result * self.scaling

    # -- merging into the live weight (PEFT's merge / unmerge) -----------------------------

    def merge(self) -> None:
        """``W ← (m / ‖W + s·B A‖)·(W + s·B A)``; the norm is kept so unmerge can undo it."""
        if self.merged:
            return
        what = f"{self.method.name} adapter on {self.path}"
        self.weight_norm.clear()  # the base weight is about to be replaced
        with torch.no_grad():
            weight = self.base_weight
            new, norm = merged_weight(weight.detach(), self.lora_A, self.lora_B,
                                      self.lora_magnitude_vector, self.scaling,
                                      self.fan_in_fan_out)
            if hasattr(self.base_layer, "merge_delta"):  # a quantized base folds it itself
                delta = new - weight.float()
                self.base_layer.merge_delta(delta, what=what)
                self._merge_state = ("delta", delta)
            else:
                new = new.to(weight.dtype)
                check_finite(new, what)
                weight.data = new
                self._merge_state = ("norm", norm)
        self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact in fp32 up to rounding, approximate in 16 bits)."""
        if not self.merged or self._merge_state is None:
            return
        what = f"{self.method.name} adapter on {self.path}"
        kind, saved = self._merge_state
        self.weight_norm.clear()
        with torch.no_grad():
            if kind == "delta":
                self.base_layer.unmerge_delta(saved, what=what)
            else:
                weight = self.base_weight
                weight.data = unmerged_weight(weight.data, self.lora_A, self.lora_B,
                                              self.lora_magnitude_vector, saved, self.scaling,
                                              self.fan_in_fan_out).to(weight.dtype)
        self._merge_state = None
        self.merged = False
