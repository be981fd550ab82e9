"""Base-model checkpoints: read from safetensors headers (single file or sharded), with the
quantized weights of a QLoRA base found and described by the registered quantizers (nothing
here knows a particular format), and loaded into a model."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.config import QuantizerConfig
from adapterhub.contracts.plugins import get_quantizer, plugin_manager
from adapterhub.contracts.quantizer import QuantizedTensor
from adapterhub.errors import AdapterNotFoundError, FormatError, UnsafeFormatError
from adapterhub.io.safetensors import PICKLE_SUFFIXES, Header, TensorInfo, dtype_name, read_header
from registry_db.digests import canonical_json, parse_json, sha256_digest

if TYPE_CHECKING:
    import torch
    from torch import nn

INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ShardedTensor:
    """Where one tensor of a checkpoint lives."""

    info: TensorInfo
    file: Path


class Checkpoint:
    """A base model checkpoint directory (or one ``.safetensors`` file), headers only.

    Understands ``model.safetensors``, sharded ``model-0000X-of-0000N.safetensors`` with
    ``model.safetensors.index.json``, and a lone ``*.safetensors``. Refuses pickle-only
    checkpoints. Nothing here reads tensor data (except :attr:`quantized`, which
    reads the small metadata tensor of each quantized weight).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise AdapterNotFoundError(f"base model path {self.path} does not exist")
        self.files = self._find_files()
        self.headers: list[Header] = [read_header(f) for f in self.files]

    def _find_files(self) -> list[Path]:
        if self.path.is_file():
            if self.path.suffix.lower() in PICKLE_SUFFIXES:
                raise UnsafeFormatError(f"{self.path.name} is a pickle checkpoint; adapterhub "
                                        f"reads only safetensors",
                                        hint="Save the model with save_pretrained("
                                             "safe_serialization=True)")
            return [self.path]
        index = self.path / INDEX_FILE
        if index.exists():
            try:
                weight_map = parse_json(index.read_bytes(), what=str(index))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise FormatError(f"{index} is not a valid safetensors index (no weight_map)"
                                  ) from None
            for shard in shards:
                if Path(shard).name != shard:
                    raise FormatError(f"{index} names a shard outside the directory: {shard!r}")
            return [self.path / shard for shard in shards]
        single = self.path / "model.safetensors"
        if single.exists():
            return [single]
        found = sorted(self.path.glob("*.safetensors"))
        if found:
            return found
        if any(p.suffix in PICKLE_SUFFIXES for p in self.path.iterdir()):
            raise UnsafeFormatError(f"{self.path} holds only pickle weights; adapterhub reads "
                                    f"only safetensors",
                                    hint="Save the model with save_pretrained("
                                         "safe_serialization=True)")
        raise FormatError(f"{self.path} holds no .safetensors weights")

    @cached_property
    def tensors(self) -> dict[str, ShardedTensor]:
        out: dict[str, ShardedTensor] = {}
        for header in self.headers:
            for name, info in header.tensors.items():
                if name in out:
                    raise FormatError(f"tensor {name!r} appears in two shards of {self.path}")
                out[name] = ShardedTensor(info, header.path)
        return out

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the sorted ``(name, dtype, shape)`` of every tensor."""
        return fingerprint_of((n, t.info.dtype, t.info.shape) for n, t in self.tensors.items())

    @cached_property
    def config(self) -> dict:
        cfg = self.path / "config.json" if self.path.is_dir() else None
        if cfg is None or not cfg.exists():
            return {}
        return parse_json(cfg.read_bytes(), what=str(cfg))

    @cached_property
    def quantized(self) -> dict[str, QuantizedWeightInfo]:
        """The quantized weights (a QLoRA base), by weight name, with the shape each stands for.

        Empty for a full-precision checkpoint. Unlike everything else here this reads tensor
        data: only what each quantizer needs (for NF4: the small quant_state tensor), checking
        the stored sizes against it; raises :class:`~adapterhub.QuantizationError` for an
        invalid entry.
        """
        out = {}
        for weight, stored in stored_quantized(self).items():
            quantizer = get_quantizer(stored.quantizer)
            shapes = {name: self.tensors[name].info.shape for name in stored.tensors}
            shape, dtype, config = quantizer.describe_stored(weight, shapes, self.read_tensor)
            out[weight] = QuantizedWeightInfo(stored, tuple(shape), dtype_name(dtype), config)
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of the tensor ``name`` stands for: a quantized weight's own shape, not
        that of its packed data."""
        quantized = self.quantized.get(name)
        return quantized.shape if quantized else self.tensors[name].info.shape

    @property
    def name(self) -> str:
        """The model's name: ``_name_or_path`` from config.json, else the directory name."""
        return self.config.get("_name_or_path") or self.path.resolve().name

    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor's data, read from its shard without loading anything else."""
        from adapterhub.io.safetensors import read_tensor

        entry = self.tensors.get(name)
        if entry is None:
            raise FormatError(f"{self.path} has no tensor {name!r}")
        return read_tensor(entry.file, entry.info)

    def module_weight(self, module: str) -> str | None:
        """The checkpoint tensor holding ``<module>.weight``.

        A model class with a head (``BertForSequenceClassification``) prefixes paths
        (``bert.encoder…``) that a bare checkpoint lacks, and the reverse; both are resolved,
        as long as the answer is unique.
        """
        parts = module.split(".")
        for drop in range(len(parts)):
            name = ".".join(parts[drop:] + ["weight"])
            if name in self.tensors:
                return name
        suffix = "." + module + ".weight"
        matches = [n for n in self.tensors if n.endswith(suffix)]
        return matches[0] if len(matches) == 1 else None


def fingerprint_of(entries) -> str:
    """The base fingerprint of ``(name, dtype, shape)`` triples (any order)."""
    rows = sorted([name, dtype, list(shape)] for name, dtype, shape in entries)
    return sha256_digest(canonical_json(rows))


# -- quantized weights -----------------------------------------------------------------------


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


def read_quantized(checkpoint: Checkpoint, stored: StoredQuantized) -> QuantizedTensor:
    """Read one quantized weight (its packed data and state tensors only)."""
    tensors = {name: checkpoint.read_tensor(name) for name in stored.tensors}
    return get_quantizer(stored.quantizer).from_state_dict(stored.weight, tensors)


def quantization_config(checkpoint: Checkpoint) -> dict[str, Any] | None:
    """The ``quantization_config`` entry of the checkpoint's ``config.json``, if any."""
    return checkpoint.config.get("quantization_config")


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
        quantizer = get_quantizer(entry.quantizer)
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
