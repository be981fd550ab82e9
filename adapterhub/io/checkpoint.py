"""Base-model checkpoints read from safetensors headers only (single file or sharded)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub.errors import AdapterNotFoundError, FormatError, UnsafeFormatError
from adapterhub.io.safetensors import PICKLE_SUFFIXES, Header, TensorInfo, read_header
from registry_db.digests import canonical_json, sha256_digest
from registry_db.digests import parse_json

if TYPE_CHECKING:
    import torch

    from adapterhub.io.quantized_checkpoint import QuantizedWeightInfo

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
        data: each quantized weight's small metadata tensor (see
        :func:`adapterhub.io.quantized_checkpoint.describe_quantized`).
        """
        from adapterhub.io.quantized_checkpoint import describe_quantized

        return describe_quantized(self)

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
