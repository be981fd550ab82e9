"""RepLoRA's training kernel: LoRA factors generated from shared latent matrices.

For a group of projections that share a :class:`Generator` (by default the adapted
projections of one block, e.g. its query and value), and a projection ``p`` of the group::

    H_A = σ(Â W_Aᵀ + b_A)          H_B = σ(B̂ W_Bᵀ + b_B)          (shared, [r, h])
    A_p = H_A V_{A,p}ᵀ   [r, d_in]     B_p = V_{B,p} H_Bᵀ   [d_out, r]  (per projection)
    y = W x + b + s · B_p A_p dropout(x)

``Â, B̂ ∈ R^{r×k}`` are the latent matrices, ``W_A, W_B ∈ R^{h×k}`` (with biases) the shared
first layers of the two generators, ``V_{A,p} ∈ R^{d_in×h}`` and ``V_{B,p} ∈ R^{d_out×h}``
their per-projection output layers. ``V_{B,p}`` starts at zero, so ΔW = 0 at step 0 as in LoRA.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import FormatError
from adapterhub.plugin_api import AdaptedLayer, adapter_dtype

if TYPE_CHECKING:
    from adapterhub_replora.config import ReploraConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity}


class Generator(nn.Module):
    """What a group of projections shares: ``Â``, ``B̂`` and the first generator layers.

    ``forward()`` gives the hidden codes ``(H_A, H_B)``, each ``[r, h]``.
    """

    def __init__(self, config: ReploraConfig, *, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        r, k, h = config.r, config.latent_width, config.hidden_width
        kw = {"dtype": dtype, "device": device}
        self.latent_A = nn.Parameter(torch.randn(r, k, **kw))
        self.latent_B = nn.Parameter(torch.randn(r, k, **kw))
        self.hidden_A = nn.Linear(k, h, **kw)
        self.hidden_B = nn.Linear(k, h, **kw)
        self.activation = ACTIVATIONS[config.activation]()

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.activation(self.hidden_A(self.latent_A)),
                self.activation(self.hidden_B(self.latent_B)))


class ReploraLinear(AdaptedLayer):
    """A Linear or Conv1D whose LoRA factors come from a (shared) :class:`Generator`.

    Its tensors, as stored, are the factors it produces (``lora_A``, ``lora_B``): a trained
    RepLoRA is a LoRA. The generator and the output layers exist only while training.
    """

    def __init__(self, base_layer, method, config, path, generator: Generator) -> None:
        super().__init__(base_layer, method, config, path)
        weight = base_layer.weight
        d_out, d_in = weight.shape if self.kind != "conv1d" else weight.shape[::-1]
        self.r = config.r
        self.scaling = config.scaling_for(path, self.r)
        self.generator = generator
        kw = {"dtype": adapter_dtype(weight), "device": weight.device}
        h = config.hidden_width
        self.out_A = nn.Parameter(torch.empty(d_in, h, **kw))
        self.out_B = nn.Parameter(torch.zeros(d_out, h, **kw))
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else \
            nn.Identity()
        self._init_outputs(config.init_lora_weights, d_in)

    def _init_outputs(self, init: bool | str, d_in: int) -> None:
        """Draw the output layers so that the factors start at LoRA's scale: ``A`` entries with
        the spread of PEFT's init (kaiming-uniform: std 1/√(3·d_in); 'gaussian': 1/r), ``B``
        zero (or, with ``init_lora_weights=False``, kaiming-uniform like PEFT's B)."""
        with torch.no_grad():
            h_a, h_b = self.generator()
            target_a = 1 / self.r if init == "gaussian" else 1 / math.sqrt(3 * d_in)
            nn.init.normal_(self.out_A, std=target_a / _row_rms(h_a))
            if init is False:
                nn.init.normal_(self.out_B, std=1 / math.sqrt(3 * self.r) / _row_rms(h_b))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` as the generator produces them now (in the autograd graph)."""
        h_a, h_b = self.generator()
        return h_a @ self.out_A.T, self.out_B @ h_b.T

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors()
        x = x.to(a.dtype)
        return F.linear(F.linear(self.lora_dropout(x), a), b) * self.scaling

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        a, b = self.factors()
        return {"lora_A": a, "lora_B": b}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise FormatError(f"{self.path}: a replora training layer makes its factors from its "
                          f"generator and cannot take stored ones",
                          hint="Load a stored replora adapter with adapterhub.load, which "
                               "attaches plain LoRA layers holding its factors")


def _row_rms(h: torch.Tensor) -> float:
    """Root mean square of the rows' norms (guarded against an all-zero code)."""
    return max(h.pow(2).sum(dim=1).mean().sqrt().item(), 1e-6)
