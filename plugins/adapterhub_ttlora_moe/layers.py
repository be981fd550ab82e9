"""The adapted layers: one tensor-train adapter, and frozen experts picked per sample."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from adapterhub import AdapterHubError, IncompatibleBaseModelError, MergeError
from adapterhub.plugin_api import AdaptedLayer
from adapterhub_ttlora_moe.tensor_train import contract, core_shapes, init_cores_


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Cores train in fp32 on a 16-bit base (as PEFT keeps adapters in fp32)."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def core_name(k: int, n_in: int) -> str:
    """Stored name of core ``k`` (train order) of a train with ``n_in`` input cores."""
    return f"tt_in_{k}" if k < n_in else f"tt_out_{k - n_in}"


class TTLoraLinear(AdaptedLayer):
    """``y = W x + b + α · ΔW x`` with ΔW a tensor train, applied without building ΔW."""

    def __init__(self, base_layer, method, config, path):
        super().__init__(base_layer, method, config, path)
        weight = base_layer.weight
        d_out, d_in = weight.shape
        self.m_factors, self.n_factors = config.factors_for(path, d_in, d_out)
        self.alpha = float(config.alpha)
        kw = {"dtype": adapter_dtype(weight), "device": weight.device}
        self.names = [core_name(k, len(self.m_factors))
                      for k in range(len(self.m_factors) + len(self.n_factors))]
        for name, shape in zip(self.names, core_shapes(self.m_factors, self.n_factors,
                                                       config.r)):
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))
        init_cores_(self.cores(), config.init)

    def cores(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self.names]

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        cores, p = self.cores(), len(self.m_factors)
        return contract(x.to(cores[0].dtype), cores[:p], cores[p:]) * self.alpha

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, m_factors={self.m_factors}, "
                f"n_factors={self.n_factors}, alpha={self.alpha}")


class TTLoraMoeLinear(AdaptedLayer):
    """A frozen base layer plus E frozen ttlora experts; each sample uses the cores it is routed to.

    The router sets :attr:`gates` (``[B, E]``) before the adapted forward; sample ``b`` then
    uses the cores ``G_k^(b) = Σ_e gates[b, e] · G_k^(e)`` (TT-LoRA MoE's expert application).
    With top-1 routing the gates are exactly one-hot, so that is expert ``e``'s own train.
    Expert cores are buffers: nothing here trains.
    """

    def __init__(self, base_layer, method, config, path, experts: Sequence[Sequence[torch.Tensor]],
                 n_in: int, alphas: Sequence[float]):
        super().__init__(base_layer, method, config, path)
        weight = base_layer.weight
        kw = {"dtype": adapter_dtype(weight), "device": weight.device}
        self.n_in = n_in
        self.names = [core_name(k, n_in) for k in range(len(experts[0]))]
        d_in = math.prod(core.shape[1] for core in experts[0][:n_in])
        d_out = math.prod(core.shape[1] for core in experts[0][n_in:])
        if tuple(weight.shape) != (d_out, d_in):
            raise IncompatibleBaseModelError(f"{path}: the experts adapt a [{d_out}, {d_in}] "
                                             f"weight; the model's is {list(weight.shape)}")
        for k, name in enumerate(self.names):
            self.register_buffer(name, torch.stack([cores[k] for cores in experts]).to(**kw))
        self.register_buffer("alphas", torch.tensor(list(alphas), **kw))
        self.gates: torch.Tensor | None = None

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates
        if gates is None:
            raise AdapterHubError(f"{self.path}: a ttlora_moe layer ran without routing",
                                  hint="Call the model itself (its forward routes each input "
                                       "first), not one of its submodules")
        if x.shape[0] != gates.shape[0]:
            raise AdapterHubError(f"{self.path}: input batch {x.shape[0]} does not match the "
                                  f"{gates.shape[0]} routed samples")
        gates = gates.to(self.alphas.dtype)
        cores = [torch.einsum("be,e...->b...", gates, getattr(self, name))
                 for name in self.names]
        out = contract(x.to(self.alphas.dtype), cores[:self.n_in], cores[self.n_in:])
        scale = gates @ self.alphas
        return out * scale.view(-1, *[1] * (out.ndim - 1))

    def delta_weight(self) -> torch.Tensor:
        raise MergeError(f"{self.path}: a ttlora_moe layer has no single ΔW (each input uses "
                         f"the expert it is routed to)",
                         hint="Pick one expert with adapterhub_ttlora_moe.select_expert (CLI: "
                              "--expert NAME) and merge that ttlora version")

    def merge(self) -> None:
        self.delta_weight()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, experts={self.alphas.numel()}"
