"""MELoRA's training kernel: n mini LoRAs applied to n contiguous slices in one batched product.

``x = [x_1; …; x_n]`` (slices of ``d_in / n``), ``y = base(x) + concat_i(s · B_i A_i x_i)``.
The factors are stored stacked, ``melora_A: [n, r, d_in/n]`` and ``melora_B: [n, d_out/n, r]``,
so the forward is two einsums batched over the n blocks (no Python loop) and autograd gives the
backward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapterhub.plugin_api import AdaptedLayer, adapter_dtype


def linear_dims(base: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of a Linear (or a module declaring itself one, e.g. a quantized one)."""
    d_in = getattr(base, "in_features", None)
    d_out = getattr(base, "out_features", None)
    if d_in is None or d_out is None:
        d_out, d_in = base.weight.shape
    return int(d_out), int(d_in)


class MeloraLinear(AdaptedLayer):
    """MELoRA on an ``nn.Linear``: ΔW = blockdiag(s·B_1A_1, …, s·B_nA_n)."""

    def __init__(self, base_layer, method, config, path):
        super().__init__(base_layer, method, config, path)
        d_out, d_in = linear_dims(base_layer)
        self.n, self.r, self.scaling = config.n, config.r, config.scaling
        self.d_in, self.d_out = d_in, d_out
        weight = base_layer.weight
        kw = {"dtype": adapter_dtype(weight), "device": weight.device}
        self.melora_A = nn.Parameter(torch.empty(self.n, self.r, d_in // self.n, **kw))
        self.melora_B = nn.Parameter(torch.zeros(self.n, d_out // self.n, self.r, **kw))
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else \
            nn.Identity()
        with torch.no_grad():
            # kaiming_uniform(a=√5) of each A_i, whose fan-in is d_in / n: U(±1/√fan_in)
            bound = 1 / math.sqrt(d_in // self.n)
            self.melora_A.uniform_(-bound, bound)
            if config.init_lora_weights is False:
                self.melora_B.uniform_(-1 / math.sqrt(self.r), 1 / math.sqrt(self.r))

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xs = self.lora_dropout(x.to(self.melora_A.dtype)).reshape(*lead, self.n, -1)
        hidden = torch.einsum("...ni,nri->...nr", xs, self.melora_A)
        out = torch.einsum("...nr,nor->...no", hidden, self.melora_B)
        return out.reshape(*lead, self.d_out) * self.scaling
