"""Quantized base checkpoints: write one from a full-precision checkpoint, read one back.

The layout is the quantizer's (for NF4 and FP4: bitsandbytes' ``QuantState.as_dict(packed=
True)`` keys, the layout transformers saves and loads), so checkpoints written here and by
transformers/bitsandbytes read the same way. Reading asks every registered quantizer which
tensors it stored; nothing here knows a particular format.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.io.checkpoint import INDEX_FILE, Checkpoint
from adapterhub.errors import FormatError, QuantizationError
from adapterhub.contracts.methods import QuantizedTensor, Quantizer, QuantizerConfig
from adapterhub.contracts.plugins import plugin_manager
from adapterhub.contracts.progress import progress
from adapterhub.engines.quantization import resolve_quantizer
from adapterhub.io.safetensors import SafetensorsWriter, write_bytes_atomic

if TYPE_CHECKING:
    from torch import nn

#: module names ``quantize_checkpoint`` leaves in full precision by default: output heads and
#: embeddings (2-D ``.weight`` tensors that are not Linear layers)
DEFAULT_SKIP = ("lm_head", "embed_out", "embed_tokens", "wte", "wpe", "word_embeddings",
                "position_embeddings", "token_type_embeddings", "embed_positions", "shared")
FLOAT_DTYPES = ("F32", "BF16", "F16")


@dataclass(frozen=True)
class StoredQuantized:
    """A quantized weight inside a checkpoint."""

    weight: str              # the weight's name, e.g. "model.layers.0.mlp.up_proj.weight"
    quantizer: str           # the registered quantizer that reads it, e.g. "nf4"
    tensors: tuple[str, ...]  # every checkpoint tensor that belongs to it (weight included)


def stored_quantized(checkpoint: Checkpoint) -> dict[str, StoredQuantized]:
    """Every quantized weight of ``checkpoint``, by weight name (headers only).

    A tensor that belongs to a quantized weight (``W.absmax``, ``W.quant_state...``) is part
    of that entry's ``tensors`` and is not a weight of its own; every other tensor of the
    checkpoint is an ordinary full-precision tensor.
    """
    names = list(checkpoint.tensors)
    found: dict[str, StoredQuantized] = {}
    for registration in plugin_manager().registered("quantizer").values():
        quantizer = registration.obj()
        for weight, tensors in quantizer.stored_weights(names).items():
            if weight in found:
                raise FormatError(f"{checkpoint.path}: weight {weight!r} is claimed by both the "
                                  f"{found[weight].quantizer} and {quantizer.name} quantizers")
            found[weight] = StoredQuantized(weight, quantizer.name, tuple(tensors))
    return found


@dataclass(frozen=True)
class QuantizedWeightInfo:
    """What a quantized weight of a checkpoint stands for, from its metadata (no dequantizing)."""

    stored: StoredQuantized
    shape: tuple[int, ...]   # the weight's own shape (not the packed data's)
    dtype: str               # safetensors name of the dtype it dequantizes to
    config: QuantizerConfig

    @property
    def quantization(self) -> dict[str, Any]:
        """As a manifest's ``quantization`` entry: ``{"name": ..., "config": {...}}``."""
        return {"name": self.stored.quantizer, "config": self.config.to_dict()}


def describe_quantized(checkpoint: Checkpoint) -> dict[str, QuantizedWeightInfo]:
    """Every quantized weight of ``checkpoint`` with its shape, dtype and config, by weight name.

    Reads only what each quantizer needs for that (for NF4: the small quant_state tensor) and
    checks the stored sizes against it; raises :class:`~adapterhub.QuantizationError` for an
    invalid entry. ``Checkpoint.quantized`` caches the answer.
    """
    from adapterhub.io.safetensors import dtype_name

    out = {}
    for weight, stored in stored_quantized(checkpoint).items():
        quantizer = resolve_quantizer(stored.quantizer)
        shapes = {name: checkpoint.tensors[name].info.shape for name in stored.tensors}
        shape, dtype, config = quantizer.describe_stored(weight, shapes, checkpoint.read_tensor)
        out[weight] = QuantizedWeightInfo(stored, tuple(shape), dtype_name(dtype), config)
    return out


def read_quantized(checkpoint: Checkpoint, stored: StoredQuantized) -> QuantizedTensor:
    """Read one quantized weight (its packed data and state tensors only)."""
    tensors = {name: checkpoint.read_tensor(name) for name in stored.tensors}
    return resolve_quantizer(stored.quantizer).from_state_dict(stored.weight, tensors)


def quantization_config(checkpoint: Checkpoint) -> dict[str, Any] | None:
    """The ``quantization_config`` entry of the checkpoint's ``config.json``, if any."""
    return checkpoint.config.get("quantization_config")


def is_linear_weight(name: str, dtype: str, shape: tuple[int, ...], skip: Iterable[str]) -> bool:
    """Whether ``quantize_checkpoint`` quantizes this tensor: a 2-D float ``<module>.weight``
    whose module is not named in ``skip`` (a module matches a name equal to its path or to
    the end of its path after a dot)."""
    if not name.endswith(".weight") or len(shape) != 2 or dtype not in FLOAT_DTYPES:
        return False
    module = name[:-len(".weight")]
    return not any(module == s or module.endswith("." + s) for s in skip)


def quantize_checkpoint(base: str | os.PathLike[str], out: str | os.PathLike[str],
                        quantizer: str | Quantizer = "nf4",
                        config: QuantizerConfig | dict[str, Any] | None = None, *,
                        skip: Iterable[str] = DEFAULT_SKIP, quiet: bool = False
                        ) -> dict[str, Any]:
    """Write a quantized copy of the safetensors checkpoint ``base`` to the directory ``out``.

    Every Linear weight (see :func:`is_linear_weight`) is quantized; every other tensor is
    copied byte for byte. The sharding is kept (one output shard per input shard, index
    rewritten); config, tokenizer and other small files are copied, and ``config.json`` gets a
    ``quantization_config`` entry. One tensor is in memory at a time. Everything is written
    to a temporary directory beside ``out`` and renamed at the end, so a failure leaves
    nothing behind. Returns a summary (tensor counts, bytes, measured bits per parameter).
    """
    checkpoint = Checkpoint(base)
    if not checkpoint.path.is_dir():
        raise FormatError(f"{checkpoint.path} is a file; quantize expects a checkpoint directory")
    out = Path(out)
    if out.exists():
        raise FormatError(f"{out} already exists", hint="Choose a new --out directory")
    if stored_quantized(checkpoint):
        raise QuantizationError(f"{checkpoint.path} is already quantized")
    quantizer_obj = resolve_quantizer(quantizer)
    config_obj = quantizer_obj.make_config(config)
    skip = list(skip)
    summary = {"quantizer": quantizer_obj.name, "config": config_obj.to_dict(),
               "quantized": 0, "copied": 0, "quantized_params": 0, "quantized_bytes": 0,
               "bytes_in": 0, "bytes_out": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        total = sum(t.info.nbytes for t in checkpoint.tensors.values())
        weight_map: dict[str, str] = {}
        with progress(total=total, desc="quantize", unit="B", disable=quiet) as bar:
            for header in checkpoint.headers:
                with SafetensorsWriter(staging / header.path.name, header.metadata) as writer:
                    for name, info in header.tensors.items():
                        if is_linear_weight(name, info.dtype, info.shape, skip):
                            weight = checkpoint.read_tensor(name)
                            stored = quantizer_obj.state_dict(
                                quantizer_obj.quantize(weight, config_obj), name)
                            for key, tensor in stored.items():
                                writer.add(key, tensor)
                                weight_map[key] = header.path.name
                                summary["quantized_bytes"] += tensor.numel() * tensor.element_size()
                            summary["quantized"] += 1
                            summary["quantized_params"] += weight.numel()
                            del weight, stored
                        else:
                            with open(header.path, "rb") as fh:
                                fh.seek(info.start)
                                writer.add_bytes(name, info.dtype, info.shape,
                                                 fh.read(info.nbytes))
                            weight_map[name] = header.path.name
                            summary["copied"] += 1
                        bar.update(info.nbytes)
                summary["bytes_out"] += writer.nbytes
        summary["bytes_in"] = total
        _copy_side_files(checkpoint.path, staging)
        if (checkpoint.path / INDEX_FILE).exists():
            index = {"metadata": {"total_size": summary["bytes_out"]}, "weight_map": weight_map}
            write_bytes_atomic(staging / INDEX_FILE, json.dumps(index, indent=2).encode())
        model_config = dict(checkpoint.config)
        model_config["quantization_config"] = quantizer_obj.checkpoint_config(config_obj, skip)
        write_bytes_atomic(staging / "config.json", json.dumps(model_config, indent=2).encode())
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    params = summary["quantized_params"]
    summary["bits_per_param"] = 8 * summary["quantized_bytes"] / params if params else None
    summary["out"] = str(out)
    return summary


def _copy_side_files(source: Path, target: Path) -> None:
    """Copy everything that is not weights (config, tokenizer, generation config, README)."""
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != INDEX_FILE \
                and not path.name.startswith("."):
            shutil.copy2(path, target / path.name)


def load_quantized(model: nn.Module, path: str | os.PathLike[str], *,
                   compute_dtype: str | None = None) -> nn.Module:
    """Load a quantized checkpoint into ``model`` (built from the same config, any weights).

    Each ``nn.Linear`` whose weight is stored quantized becomes the quantizer's quantized
    Linear (so adapters attach to it and it computes like it did after ``quantize_model``);
    a quantized weight of any other kind of module is dequantized into it; every other tensor
    is copied in. ``compute_dtype`` defaults to the checkpoint's ``bnb_4bit_compute_dtype``
    (else the quantizer's default). Raises :class:`~adapterhub.FormatError` if a stored
    tensor has no place in the model, or the model has a tensor the checkpoint lacks.
    """
    from torch import nn

    checkpoint = Checkpoint(path)
    stored = stored_quantized(checkpoint)
    compute_dtype = compute_dtype or (quantization_config(checkpoint) or {}).get(
        "bnb_4bit_compute_dtype")
    belongs = {name for entry in stored.values() for name in entry.tensors}
    plain = {name: checkpoint.read_tensor(name) for name in checkpoint.tensors
             if name not in belongs}
    modules = dict(model.named_modules())
    for weight, entry in stored.items():
        path_ = weight.removesuffix(".weight")
        module = modules.get(path_)
        if module is None or weight == path_:
            raise FormatError(f"the checkpoint's quantized weight {weight!r} has no module in "
                              f"the model")
        quantized = read_quantized(checkpoint, entry)
        quantizer = resolve_quantizer(entry.quantizer)
        if compute_dtype:
            quantized = dataclasses.replace(
                quantized, config=quantizer.make_config(quantized.config,
                                                        compute_dtype=compute_dtype))
        if type(module) is nn.Linear:
            # the bias stays in ``plain``: load_state_dict puts the stored value in below
            model.set_submodule(path_, quantizer.linear_from(quantized, module.bias))
        else:
            plain[weight] = quantizer.dequantize(quantized)
    # assign: the tensors just read become the parameters (no second copy in memory)
    missing, unexpected = model.load_state_dict(plain, strict=False, assign=True)
    missing = [k for k in missing if k not in stored]
    if unexpected or missing:
        problem = (f"tensor {unexpected[0]!r} has no place in the model" if unexpected else
                   f"the model's tensor {missing[0]!r} is not in the checkpoint")
        raise FormatError(f"{checkpoint.path} does not fit the model: {problem}")
    return model
