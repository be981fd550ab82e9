"""``Linear4bit``: a frozen Linear stored in 4 bits that computes with its dequantized weight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.errors import QuantizationError
from adapterhub.plugin_api import QuantizedTensor, fold_delta

if TYPE_CHECKING:
    from adapterhub_qlora.quantizer import Bnb4bitQuantizer


class Linear4bit(nn.Module):
    """``y = x · deq(Q(W))ᵀ + b`` in the compute dtype (bf16 by default), output in x's dtype.

    The weight lives as packed codes plus state buffers; it is dequantized for each forward
    and again in backward (nothing weight-sized is kept for autograd), and receives no
    gradient. Adapters attach to it like to an ``nn.Linear`` (``adapterhub_layer_kind``).
    ``weight`` is the dense weight it computes with.

    Merging an adapter keeps the quantized state untouched and computes with
    ``deq(Q(W)) + ΔW`` in the compute dtype from then on: the merged forward equals the
    unmerged one up to that one rounding, and unmerging restores the quantized layer exactly.
    Its ``state_dict`` uses bitsandbytes' keys (``weight``, ``weight.absmax``, ...).
    """

    adapterhub_layer_kind = "linear"

    def __init__(self, quantizer: Bnb4bitQuantizer, quantized: QuantizedTensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        if len(quantized.shape) != 2:
            raise QuantizationError(f"a Linear weight is 2-D; got shape "
                                    f"{list(quantized.shape)}")
        self.quantizer = quantizer
        self.out_features, self.in_features = quantized.shape
        self._set_quantized(quantized)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.register_buffer("merged_weight", None, persistent=False)
        self._merges = 0

    def _set_quantized(self, quantized: QuantizedTensor) -> None:
        for key in getattr(self, "_state_names", ()):
            delattr(self, f"state_{key}")
        self.config = quantized.config
        self.weight_dtype = quantized.dtype
        self.compute_dtype: torch.dtype = getattr(torch, quantized.config.compute_dtype)
        self.adapterhub_quantization = {"name": self.quantizer.name,
                                        "config": quantized.config.to_dict()}
        self._state_names = tuple(quantized.state)
        self.register_buffer("packed", quantized.data)
        for key, value in quantized.state.items():
            self.register_buffer(f"state_{key}", value)

    @property
    def quantized(self) -> QuantizedTensor:
        """The quantized weight (sharing this layer's buffers)."""
        return QuantizedTensor(self.quantizer.name, self.config, self.packed,
                               {k: getattr(self, f"state_{k}") for k in self._state_names},
                               (self.out_features, self.in_features), self.weight_dtype)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``deq(Q(W))`` in ``dtype`` (default: the compute dtype)."""
        return self.quantizer.dequantize(self.quantized, dtype or self.compute_dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight the layer computes with (dequantized, plus any merged ΔW)."""
        return self.merged_weight if self.merged_weight is not None else self.dequantized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        inputs = x.to(self.compute_dtype)
        if self.merged_weight is not None:
            out = F.linear(inputs, self.merged_weight, bias)
        else:
            out = _DequantizedLinear.apply(inputs, self, bias)
        return out.to(x.dtype)

    # -- merging (called by AdaptedLayer.merge/unmerge) -----------------------------------

    def merge_delta(self, delta: torch.Tensor, *, what: str) -> None:
        """Compute with ``weight + ΔW`` from now on (fp32 add, one cast to the compute dtype)."""
        self.merged_weight = fold_delta(self.weight, delta, what=what)
        self._merges += 1

    def unmerge_delta(self, delta: torch.Tensor, *, what: str) -> None:
        """Undo :meth:`merge_delta`; the last unmerge returns to the quantized weight exactly."""
        self._merges -= 1
        self.merged_weight = (None if self._merges == 0 else
                              fold_delta(self.merged_weight, delta, scale=-1.0, what=what))

    # -- state dict in bitsandbytes' layout ---------------------------------------------------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        tensors = self.quantizer.state_dict(self.quantized, prefix + "weight")
        if self.bias is not None:
            tensors[prefix + "bias"] = self.bias
        for key, value in tensors.items():
            destination[key] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        mine = {k: v for k, v in state_dict.items() if k.startswith(prefix)
                and k[len(prefix):] in ("weight", "bias") or k.startswith(prefix + "weight.")}
        stored = self.quantizer.stored_weights(mine).get(prefix + "weight")
        if stored is None:
            missing_keys.append(prefix + "weight")
        else:
            quantized = self.quantizer.from_state_dict(prefix + "weight",
                                                       {k: mine[k] for k in stored})
            if quantized.shape != (self.out_features, self.in_features):
                error_msgs.append(f"{prefix}weight: stored shape {list(quantized.shape)} does "
                                  f"not fit {[self.out_features, self.in_features]}")
            else:
                self._set_quantized(quantized)
                self.merged_weight, self._merges = None, 0
        if self.bias is not None:
            if prefix + "bias" not in mine:
                missing_keys.append(prefix + "bias")
            elif local_metadata.get("assign_to_params_buffers", False):
                self.bias = nn.Parameter(mine[prefix + "bias"], requires_grad=False)
            else:
                with torch.no_grad():
                    self.bias.copy_(mine[prefix + "bias"])
        if strict:
            expected = set(stored or ()) | {prefix + "bias"}
            unexpected_keys.extend(k for k in mine if k not in expected)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quantizer={self.quantizer.name}, "
                f"blocksize={self.config.blocksize}, double_quant={self.config.double_quant}, "
                f"compute_dtype={self.config.compute_dtype}, "
                f"merged={self.merged_weight is not None}")


class _DequantizedLinear(torch.autograd.Function):
    """``F.linear`` with a weight dequantized on the fly in forward and again in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Linear4bit,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.layer = layer
        ctx.has_bias = bias is not None
        return F.linear(x, layer.dequantized(), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None,
                                                          torch.Tensor | None]:
        grad_x = grad @ ctx.layer.dequantized() if ctx.needs_input_grad[0] else None
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, None, grad_bias
