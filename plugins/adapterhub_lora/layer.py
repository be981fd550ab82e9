"""LoRA's training kernel: ``y = base(x) + s · B A dropout(x)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.plugin_api import AdaptedLayer, adapter_dtype


class LoraLinear(AdaptedLayer):
    """LoRA on an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is stored ``[in, out]``)."""

    def __init__(self, base_layer, method, config, path):
        super().__init__(base_layer, method, config, path)
        weight = base_layer.weight
        d_out, d_in = weight.shape if self.kind != "conv1d" else weight.shape[::-1]
        self.r = config.rank_for(path)
        self.scaling = config.scaling_for(path, self.r)
        kw = {"dtype": adapter_dtype(weight), "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(self.r, d_in, **kw))
        self.lora_B = nn.Parameter(torch.zeros(d_out, self.r, **kw))
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else \
            nn.Identity()
        reset_lora(self.lora_A, self.lora_B, config.init_lora_weights, self.r)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling


class LoraEmbedding(AdaptedLayer):
    """LoRA on an ``nn.Embedding``: A is zero-initialised and B random, as in PEFT."""

    def __init__(self, base_layer, method, config, path):
        super().__init__(base_layer, method, config, path)
        weight = base_layer.weight
        num, dim = weight.shape
        self.r = config.rank_for(path)
        self.scaling = config.scaling_for(path, self.r)
        kw = {"dtype": adapter_dtype(weight), "device": weight.device}
        self.lora_embedding_A = nn.Parameter(torch.zeros(self.r, num, **kw))
        self.lora_embedding_B = nn.Parameter(torch.empty(dim, self.r, **kw))
        if config.init_lora_weights is False:
            nn.init.normal_(self.lora_embedding_A)
        nn.init.normal_(self.lora_embedding_B)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        after_a = F.embedding(x, self.lora_embedding_A.T, base.padding_idx, base.max_norm,
                              base.norm_type, base.scale_grad_by_freq, base.sparse)
        return (after_a @ self.lora_embedding_B.T) * self.scaling


def reset_lora(a: nn.Parameter, b: nn.Parameter, init: bool | str, r: int) -> None:
    """PEFT's ``reset_lora_parameters`` for Linear layers."""
    with torch.no_grad():
        if init == "gaussian":
            nn.init.normal_(a, std=1 / r)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if init is False:
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        else:
            nn.init.zeros_(b)
