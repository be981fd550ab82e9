"""The base class of every adapted layer (the module a method puts in place of a base layer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapterhub.errors import FormatError
from adapterhub.contracts.methods import fold_delta
from adapterhub.contracts.targets import layer_kind

if TYPE_CHECKING:
    from adapterhub.contracts.methods import AdapterMethod, MethodConfig


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapter tensors train in fp32 on a 16-bit base (PEFT's ``autocast_adapter_dtype``)."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


class AdaptedLayer(nn.Module):
    """A frozen ``base_layer`` plus a method's trainable adapter tensors.

    Subclasses create their parameters in ``__init__`` and implement ``adapter_forward`` (the
    adapter's contribution to the output). Merging goes through the method's merge kernel
    (:meth:`AdapterMethod.delta_weight`), so training and deployment share one definition of ΔW.
    """

    def __init__(self, base_layer: nn.Module, method: AdapterMethod, config: MethodConfig,
                 path: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        for param in base_layer.parameters():
            param.requires_grad_(False)
        # Plain attributes (not submodules): the method object and config are shared.
        self.method = method
        self.adapter_config = config
        self.path = path
        self.kind = layer_kind(base_layer)
        self.merged = False
        self.disabled = False

    # -- what subclasses provide ------------------------------------------------------------

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's additive contribution to ``base_layer(x)``."""
        raise NotImplementedError

    # -- tensors ----------------------------------------------------------------------------

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The adapter's own parameters (nothing of ``base_layer``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("base_layer.")]

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors by leaf name (what the state dict stores for this module)."""
        return {name: p for name, p in self.named_parameters(recurse=False)}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy stored tensors into the adapter's parameters, checking names and shapes."""
        own = self.adapter_tensors()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise FormatError(f"{self.path}: adapter tensors do not match the "
                              f"{self.method.name} layer (missing {missing}, unexpected "
                              f"{unexpected})")
        with torch.no_grad():
            for name, param in own.items():
                value = tensors[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise FormatError(f"{self.path}.{name}: stored shape {tuple(value.shape)} "
                                      f"does not fit the layer's {tuple(param.shape)}")
                param.copy_(value.to(dtype=param.dtype, device=param.device))

    # -- merge kernel, applied to the live weight -------------------------------------------

    @property
    def base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def delta_weight(self) -> torch.Tensor:
        """This layer's dense ΔW in fp32, computed by the method's merge kernel."""
        return self.method.delta_weight(self.path, self.adapter_tensors(), self.adapter_config,
                                        tuple(self.base_weight.shape))

    def merge(self) -> None:
        """Fold ΔW into the base weight (fp32 add, one cast back); idempotent.

        A base layer that stores its weight in another form (a quantized Linear) folds ΔW
        itself through its ``merge_delta(delta, what=...)`` method.
        """
        if self.merged:
            return
        what = f"{self.method.name} adapter on {self.path}"
        with torch.no_grad():
            delta = self.delta_weight()
            if hasattr(self.base_layer, "merge_delta"):
                self.base_layer.merge_delta(delta, what=what)
            else:
                weight = self.base_weight
                weight.data = fold_delta(weight.data, delta, what=what)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract ΔW again (exact in fp32, approximate in bf16/fp16).

        A base layer with ``merge_delta`` undoes it with ``unmerge_delta(delta, what=...)``.
        """
        if not self.merged:
            return
        what = f"{self.method.name} adapter on {self.path}"
        with torch.no_grad():
            delta = self.delta_weight()
            if hasattr(self.base_layer, "unmerge_delta"):
                self.base_layer.unmerge_delta(delta, what=what)
            else:
                weight = self.base_weight
                weight.data = fold_delta(weight.data, delta, scale=-1.0, what=what)
        self.merged = False

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged or self.disabled:
            return result
        return (result + self.adapter_forward(x)).to(result.dtype)

    def __getattr__(self, name: str) -> Any:
        # Code around a model (transformers' tied weights, dtype checks) reads attributes such
        # as ``weight`` or ``in_features`` of the layer it expects; forward them to the base.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def extra_repr(self) -> str:
        return f"method={self.method.name}, path={self.path!r}, merged={self.merged}"

