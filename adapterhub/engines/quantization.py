"""Quantized bases: quantize a model for QLoRA, and merge adapters into quantized weights.

Everything here goes through a registered
:class:`~adapterhub.contracts.quantizer.Quantizer`, so it works
the same for every quantizer plugin (NF4, FP4, ...).

Merging an adapter trained on a quantized base ``Q(W)`` (the adapter learned to correct
``deq(Q(W))``, not ``W``) has two paths, both one weight at a time:

* :func:`merge_dequantized` (the default): ``deq(Q(W)) + ΔW``, added in fp32 and written in
  bf16. This is what training computed, up to one bf16 rounding.
* :func:`merge_requantized`: ``Q(deq(Q(W)) + ΔW)``, a 4-bit weight again. ΔW is usually far
  smaller than a quantization step, so re-rounding erases much of it; the returned
  :class:`RequantizationReport` measures how much.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.config import QuantizerConfig
from adapterhub.contracts.numerics import check_finite, fold_delta
from adapterhub.contracts.plugins import get_quantizer
from adapterhub.contracts.quantizer import QuantizedTensor, Quantizer
from adapterhub.errors import ConfigError, MergeError

if TYPE_CHECKING:
    import torch
    from torch import nn


def quantize_model(model: nn.Module, quantizer: str | Quantizer = "nf4",
                   config: QuantizerConfig | dict[str, Any] | None = None, *,
                   skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Replace the model's ``nn.Linear`` layers by the quantizer's frozen quantized Linear.

    Which layers: every ``nn.Linear`` except the output head (``get_output_embeddings()``,
    kept in full precision as QLoRA and transformers' ``load_in_4bit`` do) and those named in
    ``skip`` (a name matches a path equal to it or ending in ``"." + name``). Embeddings,
    norms and other layers stay as they are. Call it before attaching an adapter::

        adapterhub.quantize_model(model, "nf4")
        adapterhub.attach(model, "lora", r=16, target_modules="all-linear")

    Returns the new layers by module path.
    """
    from torch import nn

    from adapterhub.contracts.layers import adapted_layers, output_head

    if adapted_layers(model):
        raise ConfigError("the model already has an adapter attached",
                          hint="Quantize the base model first, then attach the adapter")
    quantizer_obj = get_quantizer(quantizer)
    config_obj = quantizer_obj.make_config(config)
    skip = list(skip)
    head = output_head(model)
    chosen = [(path, module) for path, module in model.named_modules()
              if type(module) is nn.Linear and module is not head
              and not any(path == name or path.endswith("." + name) for name in skip)]
    layers = {}
    for path, module in chosen:
        layers[path] = quantizer_obj.make_linear(module, config_obj)
        model.set_submodule(path, layers[path])
    return layers


def roundtrip_quantized(weight: torch.Tensor, quantization: dict[str, Any]) -> torch.Tensor:
    """``deq(Q(W))``: the base weight an adapter trained with ``quantization`` saw.

    ``quantization`` is a manifest's ``quantization`` entry (``{"name": "nf4", "config":
    {...}}``). Quantization is deterministic, so this re-creates the trained-against weight
    from the full-precision checkpoint, in ``weight``'s dtype.
    """
    quantizer = get_quantizer(quantization["name"])
    config = quantizer.make_config(quantization.get("config") or {})
    return quantizer.dequantize(quantizer.quantize(weight, config))


def same_quantization(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two ``quantization`` records (manifest entries) store weights alike: the same
    quantizer and the same :meth:`~adapterhub.Quantizer.storage_config` (the compute dtype
    may differ)."""
    if a is None or b is None:
        return a is b
    if a.get("name") != b.get("name"):
        return False
    quantizer = get_quantizer(a["name"])
    return quantizer.storage_config(a.get("config")) == \
        quantizer.storage_config(b.get("config"))


def quantization_label(record: dict[str, Any]) -> str:
    """``nf4 (blocksize=64, double_quant=true)``: a record's stored-value settings, for messages."""
    quantizer = get_quantizer(record["name"])
    fields = ", ".join(f"{key}={json.dumps(value)}"
                       for key, value in quantizer.storage_config(record.get("config")).items())
    return f"{record['name']} ({fields})" if fields else record["name"]


def merge_dequantized(quantized: QuantizedTensor, delta: torch.Tensor, *, scale: float = 1.0,
                      dtype: torch.dtype | None = None, what: str = "delta") -> torch.Tensor:
    """``deq(Q(W)) + scale·ΔW``: added in fp32, one cast to ``dtype`` (default bf16).

    ``deq(Q(W))`` is taken in the weight's own dtype first (what the quantized model computes
    with). Raises :class:`~adapterhub.MergeError` on shape mismatch or non-finite results.
    """
    import torch

    base = get_quantizer(quantized.quantizer).dequantize(quantized)
    merged = fold_delta(base.to(torch.float32), delta, scale=scale, what=what)
    return merged.to(torch.bfloat16 if dtype is None else dtype)


@dataclass(frozen=True)
class RequantizationReport:
    """How much of ΔW survived re-quantization, measured on the weights themselves.

    With ``ideal = deq(Q(W)) + ΔW`` (what training computed) and ``served = deq(Q(ideal))``
    (what the re-quantized model computes): ``error = served − ideal``. Reports add up over
    weights with ``+`` (norms combine as root sums of squares).
    """

    numel: int
    delta_sq: float          # Σ ΔW²
    error_sq: float          # Σ error²
    max_abs_delta: float
    max_abs_error: float
    changed: int             # elements whose dequantized value moved at all

    @property
    def delta_norm(self) -> float:
        return math.sqrt(self.delta_sq)

    @property
    def error_norm(self) -> float:
        return math.sqrt(self.error_sq)

    @property
    def lost_fraction(self) -> float:
        """‖error‖ / ‖ΔW‖: 0 keeps the adapter exactly, ≥ 1 means nothing useful is left."""
        return self.error_norm / self.delta_norm if self.delta_sq else 0.0

    @property
    def changed_fraction(self) -> float:
        return self.changed / self.numel if self.numel else 0.0

    def __add__(self, other: RequantizationReport) -> RequantizationReport:
        return RequantizationReport(self.numel + other.numel, self.delta_sq + other.delta_sq,
                                    self.error_sq + other.error_sq,
                                    max(self.max_abs_delta, other.max_abs_delta),
                                    max(self.max_abs_error, other.max_abs_error),
                                    self.changed + other.changed)

    def to_dict(self) -> dict[str, Any]:
        """JSON for a build record."""
        return {"numel": self.numel, "delta_norm": self.delta_norm,
                "error_norm": self.error_norm, "lost_fraction": self.lost_fraction,
                "max_abs_delta": self.max_abs_delta, "max_abs_error": self.max_abs_error,
                "changed_fraction": self.changed_fraction}


def merge_requantized(quantized: QuantizedTensor, delta: torch.Tensor, *, scale: float = 1.0,
                      what: str = "delta") -> tuple[QuantizedTensor, RequantizationReport]:
    """``Q(deq(Q(W)) + scale·ΔW)`` with the same quantizer and config, and the rounding error.

    The sum is formed in fp32 and cast to the weight's dtype before re-quantizing (what
    PEFT's ``Linear4bit.merge`` does). Quantization constants are recomputed, so elements
    the adapter did not touch can move too; the report counts them.
    """
    from adapterhub.io.tensor_stream import rows_cols

    if tuple(delta.shape) != tuple(quantized.shape):
        raise MergeError(f"{what}: delta shape {tuple(delta.shape)} does not match the base "
                         f"weight {tuple(quantized.shape)}")
    rows = delta.reshape(rows_cols(quantized.shape))

    def add_delta(block: torch.Tensor, r0: int, r1: int) -> None:
        block.add_(rows[r0:r1].to(device=block.device, dtype=block.dtype), alpha=scale)

    return requantize_merged(quantized, add_delta, what=what)


def requantize_merged(quantized: QuantizedTensor,
                      add_delta: Callable[[torch.Tensor, int, int], None], *,
                      what: str = "delta") -> tuple[QuantizedTensor, RequantizationReport]:
    """:func:`merge_requantized` with ΔW given by rows: ``add_delta(block, r0, r1)`` adds rows
    ``r0:r1`` of ``scale·ΔW`` (the weight seen as ``[shape[0], -1]``) into the fp32 ``block``.

    Works a block of rows at a time, so besides the new quantized weight it holds three
    weight-sized tensors in the weight's own dtype (``deq(Q(W))``, the merged weight to
    re-quantize, then its dequantized value), never one in fp32.
    """
    import torch

    from adapterhub.io.tensor_stream import row_blocks, rows_cols

    quantizer = get_quantizer(quantized.quantizer)
    base = quantizer.dequantize(quantized).reshape(rows_cols(quantized.shape))

    def ideal_rows(r0: int, r1: int) -> torch.Tensor:  # deq(Q(W)) + ΔW in fp32
        block = base[r0:r1].to(torch.float32)
        add_delta(block, r0, r1)
        return block

    merged = torch.empty_like(base)
    for r0, r1 in row_blocks(base.shape):
        merged[r0:r1] = ideal_rows(r0, r1)
        check_finite(merged[r0:r1], what)  # after the cast: an fp16 overflow is refused too
    requantized = quantizer.quantize(merged.reshape(quantized.shape), quantized.config)
    del merged
    served = quantizer.dequantize(requantized).reshape(base.shape)
    delta_sq = error_sq = max_delta = max_error = 0.0
    changed = 0
    for r0, r1 in row_blocks(base.shape):
        ideal = ideal_rows(r0, r1)
        step = ideal - base[r0:r1].to(torch.float32)
        error = served[r0:r1].to(torch.float32).sub_(ideal)
        delta_sq += float(step.square().sum(dtype=torch.float64))
        error_sq += float(error.square().sum(dtype=torch.float64))
        max_delta = max(max_delta, float(step.abs().max()))
        max_error = max(max_error, float(error.abs().max()))
        changed += int((served[r0:r1] != base[r0:r1]).sum())
    report = RequantizationReport(base.numel(), delta_sq, error_sq, max_delta, max_error,
                                  changed)
    return requantized, report
