"""The ``nf4`` and ``fp4`` quantizers: bitsandbytes' 4-bit formats, in plain PyTorch.

Checkpoint layout (what ``QuantState.as_dict(packed=True)`` writes, and transformers loads),
for a weight stored under ``W``:

==========================================  =====  ==========================================
``W``                                       U8     packed codes ``[(n + 1) // 2, 1]``
``W.absmax``                                U8/F32 8-bit codes of the absmax (double quant) or
                                                   the fp32 absmax, one per block
``W.quant_map``                             F32    the 16 values of the 4-bit code
``W.nested_absmax``                         F32    absmax of each 256 absmax (double quant)
``W.nested_quant_map``                      F32    the 256 values of the 8-bit dynamic map
``W.quant_state.bitsandbytes__nf4``         U8     UTF-8 JSON: quant_type, blocksize, dtype,
                                                   shape[, nested_blocksize, nested_dtype,
                                                   nested_offset]
==========================================  =====  ==========================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from adapterhub import QuantizationError, QuantizedTensor, Quantizer
from adapterhub_qlora import kernels
from adapterhub_qlora.codes import code4, dynamic_map
from adapterhub_qlora.config import NESTED_BLOCKSIZE, Bnb4bitConfig

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STATE_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


class Bnb4bitQuantizer(Quantizer):
    """Blockwise 4-bit quantisation with an absmax per block, optionally double-quantized."""

    kind: ClassVar[str]
    Config = Bnb4bitConfig
    compute_fields = ("compute_dtype",)

    @property
    def state_key(self) -> str:
        return f"quant_state.bitsandbytes__{self.kind}"

    def bits_per_param(self, config: Bnb4bitConfig) -> float:
        if config.double_quant:
            return 4 + 8 / config.blocksize + 32 / (config.blocksize * NESTED_BLOCKSIZE)
        return 4 + 32 / config.blocksize

    # -- quantize / dequantize --------------------------------------------------------------

    def quantize(self, weight: torch.Tensor, config: Bnb4bitConfig) -> QuantizedTensor:
        if weight.dtype not in FLOAT_DTYPES:
            raise QuantizationError(f"{self.name} quantizes fp32, bf16 or fp16 weights; got "
                                    f"{weight.dtype}")
        if weight.numel() == 0:
            raise QuantizationError(f"cannot quantize an empty weight of shape "
                                    f"{tuple(weight.shape)}")
        packed, absmax = kernels.quantize_4bit(weight, self.kind, config.blocksize)
        state = {"quant_map": code4(self.kind).to(weight.device, copy=True)}
        if config.double_quant:
            offset = absmax.mean()
            nested = dynamic_map().to(weight.device, copy=True)
            codes, nested_absmax = kernels.quantize_8bit(absmax - offset, nested,
                                                         NESTED_BLOCKSIZE)
            state.update(absmax=codes, nested_absmax=nested_absmax, nested_quant_map=nested,
                         nested_offset=offset)
        else:
            state["absmax"] = absmax
        return QuantizedTensor(self.name, config, packed, state, tuple(weight.shape),
                               weight.dtype)

    def absmax(self, quantized: QuantizedTensor) -> torch.Tensor:
        """The fp32 absmax of every block (undoing the double quantisation if any)."""
        state = quantized.state
        if "nested_absmax" not in state:
            return state["absmax"].to(torch.float32)
        absmax = kernels.dequantize_8bit(state["absmax"], state["nested_absmax"],
                                         state["nested_quant_map"], NESTED_BLOCKSIZE)
        return absmax.add_(state["nested_offset"])

    def dequantize(self, quantized: QuantizedTensor,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        return kernels.dequantize_4bit(quantized.data, self.absmax(quantized), self.kind,
                                       quantized.config.blocksize, quantized.shape,
                                       dtype or quantized.dtype)

    def linear_from(self, quantized: QuantizedTensor, bias: torch.Tensor | None):
        from adapterhub_qlora.linear import Linear4bit

        return Linear4bit(self, quantized, bias)

    # -- checkpoint layout ------------------------------------------------------------------

    def state_dict(self, quantized: QuantizedTensor, name: str) -> dict[str, torch.Tensor]:
        state = quantized.state
        meta: dict[str, Any] = {"quant_type": self.kind, "blocksize": quantized.config.blocksize,
                                "dtype": _dtype_name(quantized.dtype),
                                "shape": list(quantized.shape)}
        if "nested_absmax" in state:
            meta.update(nested_blocksize=NESTED_BLOCKSIZE, nested_dtype="float32",
                        nested_offset=state["nested_offset"].item())
        out = {name: quantized.data}
        out.update({f"{name}.{key}": state[key] for key in STATE_KEYS if key in state})
        out[f"{name}.{self.state_key}"] = torch.tensor(list(json.dumps(meta).encode()),
                                                       dtype=torch.uint8)
        return out

    def stored_weights(self, names: Iterable[str]) -> dict[str, list[str]]:
        names = set(names)
        suffix = "." + self.state_key
        found = {}
        for key in sorted(names):
            if key.endswith(suffix):
                weight = key[:-len(suffix)]
                found[weight] = [weight] + [f"{weight}.{k}" for k in STATE_KEYS
                                            if f"{weight}.{k}" in names] + [key]
        return found

    def from_state_dict(self, name: str, tensors: dict[str, torch.Tensor]) -> QuantizedTensor:
        what = f"quantized weight {name!r}"
        shape, dtype, config, meta = self._read_layout(name, tensors.get(
            f"{name}.{self.state_key}"), has_nested=f"{name}.nested_absmax" in tensors)
        data = tensors.get(name)
        if data is None or any(f"{name}.{k}" not in tensors for k in ("absmax", "quant_map")):
            raise QuantizationError(f"{what} lacks its packed data, absmax or quant_map")
        state = {k: tensors[f"{name}.{k}"] for k in STATE_KEYS if f"{name}.{k}" in tensors}
        if config.double_quant:
            state["nested_offset"] = torch.tensor(float(meta["nested_offset"]),
                                                  dtype=torch.float32)
        # a quant_storage other than uint8 (bf16 for FSDP) holds the same bytes
        packed = data.contiguous().view(torch.uint8).reshape(-1, 1)
        quantized = QuantizedTensor(self.name, config, packed, state, shape, dtype)
        _check_sizes({k: v.numel() for k, v in state.items()}, packed.numel(), shape, config,
                     what)
        _check_values(quantized, self.kind, what)
        return quantized

    def describe_stored(self, name: str, shapes: dict[str, tuple[int, ...]],
                        read: Callable[[str], torch.Tensor]
                        ) -> tuple[tuple[int, ...], torch.dtype, Bnb4bitConfig]:
        """Reads the quant_state JSON only; checks every stored size against it."""
        key = f"{name}.{self.state_key}"
        shape, dtype, config, _ = self._read_layout(
            name, read(key) if key in shapes else None,
            has_nested=f"{name}.nested_absmax" in shapes)
        what = f"quantized weight {name!r}"
        if name not in shapes or any(f"{name}.{k}" not in shapes
                                     for k in ("absmax", "quant_map")):
            raise QuantizationError(f"{what} lacks its packed data, absmax or quant_map")
        numel = {k: math.prod(shapes[f"{name}.{k}"]) for k in STATE_KEYS
                 if f"{name}.{k}" in shapes}
        # the packed data may be stored as another dtype (quant_storage): count its bytes
        _check_sizes(numel, None, shape, config, what)
        return shape, dtype, config

    def _read_layout(self, name: str, meta_tensor: torch.Tensor | None, has_nested: bool
                     ) -> tuple[tuple[int, ...], torch.dtype, Bnb4bitConfig, dict[str, Any]]:
        """Shape, dtype, config and the raw metadata of a stored weight, from its quant_state."""
        what = f"quantized weight {name!r}"
        meta = _read_meta(meta_tensor, what)
        if meta.get("quant_type") != self.kind:
            raise QuantizationError(f"{what} is {meta.get('quant_type')!r}, not {self.kind!r}")
        try:
            shape = tuple(int(d) for d in meta["shape"])
            config = self.make_config(blocksize=int(meta["blocksize"]), double_quant=has_nested)
            dtype = getattr(torch, meta["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{meta['dtype']!r} is not a dtype")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QuantizationError(f"{what} has an invalid quant_state ({exc})") from None
        if config.double_quant and (meta.get("nested_blocksize") != NESTED_BLOCKSIZE
                                    or "nested_offset" not in meta):
            raise QuantizationError(f"{what}: double quantisation needs nested_offset and "
                                    f"nested_blocksize {NESTED_BLOCKSIZE}")
        return shape, dtype, config, meta

    def checkpoint_config(self, config: Bnb4bitConfig, skipped: list[str]) -> dict[str, Any]:
        # The keys transformers' BitsAndBytesConfig.to_dict() writes, so that transformers
        # loads the checkpoint; the blocksize lives in each weight's quant_state.
        return {"quant_method": "bitsandbytes", "_load_in_4bit": True, "_load_in_8bit": False,
                "llm_int8_threshold": 6.0, "llm_int8_skip_modules": skipped,
                "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
                "bnb_4bit_quant_type": self.kind,
                "bnb_4bit_use_double_quant": config.double_quant,
                "bnb_4bit_compute_dtype": config.compute_dtype,
                "bnb_4bit_quant_storage": "uint8", "load_in_4bit": True, "load_in_8bit": False}


class NF4Quantizer(Bnb4bitQuantizer):
    name = "nf4"
    kind = "nf4"
    description = "4-bit NormalFloat (QLoRA), bit-exact with bitsandbytes"


class FP4Quantizer(Bnb4bitQuantizer):
    name = "fp4"
    kind = "fp4"
    description = "4-bit float (1 sign, 2 exponent, 1 mantissa bit), bit-exact with bitsandbytes"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_meta(tensor: torch.Tensor | None, what: str) -> dict[str, Any]:
    if tensor is None:
        raise QuantizationError(f"{what} has no quant_state entry")
    try:
        meta = json.loads(bytes(tensor.to("cpu", torch.uint8).tolist()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise QuantizationError(f"{what} has a quant_state that is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise QuantizationError(f"{what} has a quant_state that is not a JSON object")
    return meta


def _check_sizes(state: dict[str, int], packed: int | None, shape: tuple[int, ...],
                 config: Bnb4bitConfig, what: str) -> None:
    """Refuse state tensors whose sizes do not fit the shape (a truncated or foreign file).

    ``state`` holds the element count of each state tensor, ``packed`` that of the packed
    data as bytes (``None``: not checked).
    """
    numel = math.prod(shape)
    blocks = -(-numel // config.blocksize)
    sizes = {"absmax": (state.get("absmax"), blocks)}
    if packed is not None:
        sizes["packed data"] = (packed, (numel + 1) // 2)
    if config.double_quant:
        sizes["nested_absmax"] = (state.get("nested_absmax"), -(-blocks // NESTED_BLOCKSIZE))
        sizes["nested_quant_map"] = (state.get("nested_quant_map"), 256)
    for part, (actual, expected) in sizes.items():
        if actual is None:
            raise QuantizationError(f"{what}: {part} is missing")
        if actual != expected:
            raise QuantizationError(f"{what}: {part} holds {actual} values; shape "
                                    f"{list(shape)} with blocksize {config.blocksize} "
                                    f"needs {expected}")


def _check_values(q: QuantizedTensor, kind: str, what: str) -> None:
    """Refuse an absmax of the wrong dtype or a code book that is not ``kind``'s."""
    absmax_dtype = torch.uint8 if q.config.double_quant else torch.float32
    if q.state["absmax"].dtype != absmax_dtype:
        raise QuantizationError(f"{what}: absmax is {q.state['absmax'].dtype}, expected "
                                f"{absmax_dtype}")
    if not torch.equal(q.state["quant_map"].to("cpu", torch.float32), code4(kind)):
        raise QuantizationError(f"{what}: quant_map is not the {kind} code book")
