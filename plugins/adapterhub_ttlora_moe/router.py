"""The router: a linear map from the frozen base model's representation of an input to experts.

TT-LoRA MoE's "llm" router: run the base model with its adapters disabled, take its last hidden
state, pool it per sequence (the last non-pad token, or the mean over non-pad tokens), and map
it to one logit per expert with ``Linear(d_model, E, bias=False)``. While training, Shazeer's
noisy gating adds ``N(0, 1) · softplus(Linear(d_model, E)(mean-pooled state))``; the top-k
logits are kept and softmaxed, so top-1 gates are exactly one-hot. A *dense* router (DS-MoE)
instead weights every expert by the softmax of its clean logits while it trains, and routes
top-k like the other at inference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import ConfigError, FormatError
from adapterhub.plugin_api import adapted_layers

TENSORS = ("gate", "noise", "noise_bias")


class Router(nn.Module):
    """Logits and gates over ``n_experts`` from pooled base-model states of width ``d_model``."""

    def __init__(self, d_model: int, n_experts: int, *, top_k: int = 1, noisy: bool = True,
                 pooling: str = "last", dense: bool = False) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.noise = nn.Linear(d_model, n_experts)
        self.top_k, self.noisy, self.pooling, self.dense = top_k, noisy, pooling, dense
        #: set while the router runs the base model, so the nested forward does not route again
        self.busy = False
        #: the gates of the latest routed batch (for inspection)
        self.last_gates: torch.Tensor | None = None
        #: the routing hooks on the model this router serves (see adapterhub_ttlora_moe.moe)
        self.hooks: list[Any] = []

    @classmethod
    def for_config(cls, config: Any, d_model: int) -> Router:
        return cls(d_model, len(config.experts), top_k=config.top_k, noisy=config.noisy_gating,
                   pooling=config.pooling, dense=config.router_training == "dense")

    def features(self, hidden: torch.Tensor, mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled, mean)`` per sequence: the gate's input and the noise's input."""
        return pool(hidden, mask, self.pooling), pool(hidden, mask, "mean")

    def logits(self, pooled: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Router logits ``[B, E]``; noisy while a noisy top-k router trains."""
        dtype = self.gate.weight.dtype
        logits = self.gate(pooled.to(dtype))
        if self.training and self.noisy and not self.dense:
            scale = F.softplus(self.noise(mean.to(dtype)))
            logits = logits + torch.randn_like(logits) * scale
        return logits

    def gates(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the top-k logits of each row (the others get weight exactly 0); over
        all of them while a dense router trains."""
        if self.training and self.dense:
            return torch.softmax(logits, dim=-1)
        top = torch.topk(logits, self.top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Gates ``[B, E]`` for a batch of base-model hidden states."""
        return self.gates(self.logits(*self.features(hidden, mask)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"gate": self.gate.weight, "noise": self.noise.weight,
                "noise_bias": self.noise.bias}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        own = self.tensors()
        if set(tensors) != set(own):
            raise FormatError(f"a ttlora_moe router holds {', '.join(TENSORS)}; got "
                              f"{', '.join(sorted(tensors))}")
        with torch.no_grad():
            for name, param in own.items():
                if tuple(tensors[name].shape) != tuple(param.shape):
                    raise FormatError(f"router.{name} is {list(tensors[name].shape)}; this "
                                      f"router needs {list(param.shape)}")
                param.copy_(tensors[name])


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """One vector per sequence from ``hidden [B, S, d]`` (``[B, d]`` passes through).

    ``"last"`` takes the last position whose mask is 1 (right or left padding alike);
    ``"mean"`` averages the positions whose mask is 1. No mask means every position counts.
    """
    if hidden.ndim == 2:
        return hidden.float()
    if hidden.ndim != 3:
        raise ConfigError(f"the router needs base-model states [batch, seq, dim] or [batch, "
                          f"dim]; got shape {list(hidden.shape)}")
    hidden = hidden.float()
    batch, seq = hidden.shape[:2]
    if mask is None:
        mask = torch.ones(batch, seq, device=hidden.device)
    mask = mask.to(hidden.device).float()
    if how == "last":
        positions = torch.arange(seq, device=hidden.device).float()
        last = (mask * (positions + 1)).argmax(dim=1)
        return hidden[torch.arange(batch, device=hidden.device), last]
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def base_hidden(model: nn.Module, args: tuple, kwargs: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base model's last hidden state for an input, with every adapter disabled.

    A transformers model runs with ``output_hidden_states=True`` and gives its last entry;
    any other module's output tensor is taken as the representation. Returns ``(hidden,
    attention_mask or None)``.
    """
    layers = list(adapted_layers(model).values())
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        with torch.no_grad():
            if hasattr(getattr(model, "config", None), "output_hidden_states"):
                out = model(*args, **{**kwargs, "output_hidden_states": True})
                states = getattr(out, "hidden_states", None)
                if not states:
                    raise ConfigError(f"{type(model).__name__} returned no hidden states for "
                                      f"the router")
                hidden = states[-1]
            else:
                hidden = model(*args, **kwargs)
                if not isinstance(hidden, torch.Tensor):
                    raise ConfigError(f"the router needs the base model's representation; "
                                      f"{type(model).__name__} returned "
                                      f"{type(hidden).__name__}, not a tensor")
    finally:
        for layer, disabled in zip(layers, before):
            layer.disabled = disabled
    return hidden, kwargs.get("attention_mask")
