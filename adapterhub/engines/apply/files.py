"""The files of a build besides the weights: config.json and the index rewritten for the new
dtypes and tensors, the rest (tokenizer, generation config) copied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub.engines.apply.plan import BUILD_RECORD, CONFIG_DTYPES, WEIGHT_SUFFIXES, BuildPlan
from adapterhub.io.checkpoint import INDEX_FILE
from registry_db.digests import parse_json

if TYPE_CHECKING:

    pass

def copy_other_files(plan: BuildPlan, tmp: Path, dtypes: dict[str, str],
                      total_size: int) -> list[str]:
    """Copy config, tokenizer and other small files; return the weight files left out.

    ``dtypes`` maps every output tensor to its dtype, ``total_size`` is their bytes: the index
    is rewritten when they differ from the base's.
    """
    base = plan.checkpoint.path
    shards = {f.name for f in plan.checkpoint.files}
    dequantized = bool(plan.quantized) and not plan.requantize
    skipped: list[str] = []

    def leave_out(directory: str, names: list[str]) -> set[str]:
        out = set()
        for name in names:
            rel = (Path(directory) / name).relative_to(base).as_posix()
            if name.startswith(".") or rel in shards or rel in (INDEX_FILE, BUILD_RECORD):
                out.add(name)
            elif name.lower().endswith(WEIGHT_SUFFIXES) and not Path(directory, name).is_dir():
                out.add(name)
                skipped.append(rel)
        return out

    for entry in sorted(base.iterdir()):
        if entry.name in leave_out(str(base), [entry.name]):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, ignore=leave_out)
        elif entry.name == "config.json" and (plan.dtype or dequantized):
            _write_config(entry, tmp / entry.name, plan.dtype, dequantized)
        else:
            shutil.copyfile(entry, tmp / entry.name)
    index = base / INDEX_FILE
    if index.exists():
        same = dtypes == {name: t.info.dtype for name, t in plan.checkpoint.tensors.items()} \
            and total_size == sum(t.info.nbytes for t in plan.checkpoint.tensors.values())
        if same:
            shutil.copyfile(index, tmp / INDEX_FILE)
        else:
            _write_index(index, tmp / INDEX_FILE, set(dtypes), total_size)
    return sorted(skipped)


def _write_config(src: Path, dst: Path, dtype: str | None, dequantized: bool) -> None:
    """config.json with its dtype entry (``torch_dtype`` or ``dtype``) set to the new dtype,
    and without ``quantization_config`` when the weights were dequantized."""
    config = parse_json(src.read_bytes(), what=str(src))
    if isinstance(config, dict):
        for key in ("torch_dtype", "dtype"):
            if key in config and dtype in CONFIG_DTYPES:
                config[key] = CONFIG_DTYPES[dtype]
        if dequantized:
            config.pop("quantization_config", None)
    dst.write_text(json.dumps(config, indent=2) + "\n")


def _write_index(src: Path, dst: Path, names: set[str], total_size: int) -> None:
    """The index for the output: the weight map of the tensors it holds, their total size."""
    index = parse_json(src.read_bytes(), what=str(src))
    weight_map = index.get("weight_map")
    if isinstance(weight_map, dict):
        index["weight_map"] = {k: v for k, v in weight_map.items() if k in names}
    metadata = index.get("metadata")
    if isinstance(metadata, dict) and "total_size" in metadata:
        metadata["total_size"] = total_size
    dst.write_text(json.dumps(index, indent=2) + "\n")
