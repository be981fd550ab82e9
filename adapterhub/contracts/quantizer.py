"""The quantizer contract: a base-weight quantizer (NF4, FP4, ...) and what it produces."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from adapterhub.contracts.config import QuantizerConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclasses.dataclass
class QuantizedTensor:
    """One quantized weight: packed data, named state tensors, and what it stands for.

    ``state`` holds the quantizer's tensors by name (for NF4: ``absmax``, ``quant_map``, ...);
    ``shape`` and ``dtype`` are those of the weight it was made from; ``quantizer`` is the
    registered name and ``config`` the config it was quantized with, so that
    ``get_quantizer(q.quantizer).dequantize(q)`` needs nothing else.
    """

    quantizer: str
    config: QuantizerConfig
    data: torch.Tensor
    state: dict[str, torch.Tensor]
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed data and every state tensor."""
        return sum(t.numel() * t.element_size() for t in (self.data, *self.state.values()))


class Quantizer:
    """A base-weight quantizer (NF4, FP4, ...), composable with any LoRA-family method.

    Subclasses set ``name`` and ``Config`` and implement:

    * ``quantize``/``dequantize`` — a weight to a :class:`QuantizedTensor` and back;
    * ``bits_per_param`` — storage cost, constants included;
    * ``linear_from`` — a frozen Linear computing with the dequantized weight, whose class
      declares ``adapterhub_layer_kind = "linear"`` so adapters attach to it, and which carries
      ``adapterhub_quantization = {"name": ..., "config": {...}}`` for the manifest (it may
      define ``merge_delta``/``unmerge_delta``, see :class:`~adapterhub.AdaptedLayer`);
      ``make_linear`` quantizes an ``nn.Linear`` into one;
    * ``state_dict``/``stored_weights``/``from_state_dict`` — the checkpoint layout, so that
      quantized checkpoints are written and read without the reader knowing the format;
    * ``checkpoint_config`` — what to record in a quantized checkpoint's ``config.json``;
    * optionally ``describe_stored`` (a stored weight's shape, dtype and config from its
      metadata alone, for compatibility checks) and ``compute_fields`` (config fields that do
      not change the stored values, see ``storage_config``).
    """

    name: ClassVar[str]
    Config: ClassVar[type[QuantizerConfig]] = QuantizerConfig
    description: ClassVar[str] = ""
    #: config fields that say how a quantized weight is computed with, not what is stored
    #: (NF4: ``compute_dtype``); two configs that differ only there quantize a weight alike
    compute_fields: ClassVar[tuple[str, ...]] = ()

    def make_config(self, config: QuantizerConfig | dict[str, Any] | None = None,
                    **kwargs: Any) -> QuantizerConfig:
        """Coerce a config object, a dict, or keyword arguments into ``self.Config``."""
        if isinstance(config, self.Config):
            return self.Config.from_dict({**config.to_dict(), **kwargs}) if kwargs else config
        return self.Config.from_dict({**(config or {}), **kwargs})

    def storage_config(self, config: QuantizerConfig | dict[str, Any] | None) -> dict[str, Any]:
        """The fields of ``config`` that decide the stored values (``compute_fields`` left
        out): equal for two configs exactly when they quantize every weight to the same bytes."""
        return {key: value for key, value in self.make_config(config).to_dict().items()
                if key not in self.compute_fields}

    def bits_per_param(self, config: QuantizerConfig) -> float:
        """Average storage bits per quantized parameter, constants included."""
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor, config: QuantizerConfig) -> QuantizedTensor:
        """Quantize one weight (any shape, a floating dtype)."""
        raise NotImplementedError

    def dequantize(self, quantized: QuantizedTensor,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the quantized tensor stands for, in ``dtype`` (default: its own dtype)."""
        raise NotImplementedError

    def make_linear(self, linear: nn.Module, config: QuantizerConfig) -> nn.Module:
        """A frozen quantized replacement for ``linear`` with the same forward signature."""
        return self.linear_from(self.quantize(linear.weight.detach(), config), linear.bias)

    def linear_from(self, quantized: QuantizedTensor, bias: torch.Tensor | None) -> nn.Module:
        """The quantized Linear computing with ``quantized`` (and ``bias``, kept as it is)."""
        raise NotImplementedError

    # -- checkpoint layout ------------------------------------------------------------------

    def state_dict(self, quantized: QuantizedTensor, name: str) -> dict[str, torch.Tensor]:
        """The checkpoint tensors storing ``quantized`` as the weight called ``name``."""
        raise NotImplementedError

    def stored_weights(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Among checkpoint tensor ``names``, the weights this quantizer stored.

        Returns ``{weight name: [every tensor name that belongs to it]}``.
        """
        raise NotImplementedError

    def from_state_dict(self, name: str, tensors: dict[str, torch.Tensor]) -> QuantizedTensor:
        """Rebuild the weight ``name`` from its checkpoint tensors (as ``stored_weights`` lists)."""
        raise NotImplementedError

    def describe_stored(self, name: str, shapes: dict[str, tuple[int, ...]],
                        read: Callable[[str], torch.Tensor]
                        ) -> tuple[tuple[int, ...], torch.dtype, QuantizerConfig]:
        """The shape, dtype and config of the weight ``name`` stored in a checkpoint, without
        dequantizing it: what a compatibility check needs before anything is built.

        ``shapes`` are the header shapes of its tensors (as ``stored_weights`` lists them);
        ``read(tensor name)`` reads one of them. This default reads them all; a quantizer
        whose metadata sits in a small tensor reads just that one.
        """
        quantized = self.from_state_dict(name, {key: read(key) for key in shapes})
        return quantized.shape, quantized.dtype, quantized.config

    def checkpoint_config(self, config: QuantizerConfig, skipped: list[str]) -> dict[str, Any]:
        """The ``quantization_config`` entry for ``config.json`` (``skipped``: modules left as
        they were)."""
        raise NotImplementedError
