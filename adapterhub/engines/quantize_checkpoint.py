"""Writing a quantized base checkpoint from a full-precision one (``adapterhub quantize``).

The layout is the quantizer's (for NF4 and FP4: bitsandbytes' ``QuantState.as_dict(packed=
True)`` keys, the layout transformers saves and loads), so checkpoints written here and by
transformers/bitsandbytes read the same way (:mod:`adapterhub.io.checkpoint` reads both).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adapterhub.contracts.config import QuantizerConfig
from adapterhub.contracts.plugins import get_quantizer
from adapterhub.contracts.progress import progress
from adapterhub.contracts.quantizer import Quantizer
from adapterhub.errors import FormatError, QuantizationError
from adapterhub.io.checkpoint import INDEX_FILE, Checkpoint, stored_quantized
from adapterhub.io.safetensors import SafetensorsWriter, write_bytes_atomic

#: module names ``quantize_checkpoint`` leaves in full precision by default: output heads and
#: embeddings (2-D ``.weight`` tensors that are not Linear layers)
DEFAULT_SKIP = ("lm_head", "embed_out", "embed_tokens", "wte", "wpe", "word_embeddings",
                "position_embeddings", "token_type_embeddings", "embed_positions", "shared")
FLOAT_DTYPES = ("F32", "BF16", "F16")


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
    quantizer_obj = get_quantizer(quantizer)
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
