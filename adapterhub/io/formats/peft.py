"""The PEFT adapter layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys in PEFT files are ``base_model.model.<module path>.<tensor>``; this module adds and strips
that prefix and leaves the per-method mapping of configs and tensor names to the method
(:meth:`AdapterMethod.to_peft` / :meth:`AdapterMethod.from_peft`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.errors import FormatError, UnknownMethodError, UnsafeFormatError
from adapterhub.io.safetensors import (load_tensors, raw_parts, safetensors_bytes,
                                       write_bytes_atomic)
from registry_db.digests import parse_json

if TYPE_CHECKING:
    import torch

    from adapterhub.contracts.method import AdapterMethod
    from adapterhub.io.package import AdapterPackage

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
KEY_PREFIX = "base_model.model."


def is_peft_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def peft_method(peft_type: str, adapter_config: dict[str, Any] | None = None
                ) -> AdapterMethod:
    """The installed method that reads PEFT adapters of ``peft_type`` (``"LORA"`` → lora).

    Among the methods of that ``peft_type``, those whose ``peft_flags`` all match
    ``adapter_config`` qualify and the one with the most flags wins (``use_dora: true`` picks
    the method that claims it); then the method named like the type, then the first by name.
    """
    from adapterhub.contracts.plugins import get_method, plugin_manager

    adapter_config = adapter_config or {}
    claims = [reg.obj for reg in plugin_manager().registered("method").values()
              if reg.obj.peft_type == peft_type]
    if not claims:
        raise UnknownMethodError(f"no installed method reads PEFT adapters of type "
                                 f"{peft_type!r}")
    fitting = [cls for cls in claims
               if all(adapter_config.get(k) == v for k, v in cls.peft_flags.items())]
    if not fitting:
        raise UnknownMethodError(f"no installed method reads these PEFT {peft_type} adapters "
                                 f"(flags of the installed ones: " + "; ".join(
                                     f"{c.name}: {c.peft_flags}" for c in claims) + ")")
    preferred = peft_type.lower()
    best = min(fitting, key=lambda c: (-len(c.peft_flags), c.name != preferred, c.name))
    return get_method(best.name)


def read_peft(path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None
              ) -> AdapterPackage:
    """Convert a PEFT adapter directory into a package (``base`` adds the base fingerprint)."""
    from adapterhub.io.checkpoint import Checkpoint
    from adapterhub.io.package import AdapterPackage

    path = Path(path)
    try:
        config = parse_json((path / CONFIG_FILE).read_bytes(), what=str(path / CONFIG_FILE))
    except FileNotFoundError:
        raise FormatError(f"{path} is not a PEFT adapter (no {CONFIG_FILE})") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise FormatError(f"{path / CONFIG_FILE} has no peft_type")
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        if (path / PICKLE_WEIGHTS).exists():
            raise UnsafeFormatError(f"{path} holds only {PICKLE_WEIGHTS}, a pickle file; "
                                    f"adapterhub never unpickles untrusted data",
                                    hint="Re-save the adapter with save_pretrained(..., "
                                         "safe_serialization=True)")
        raise FormatError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    tensors = {}
    for key, value in load_tensors(weights).items():
        if not key.startswith(KEY_PREFIX):
            raise FormatError(f"{weights.name}: key {key!r} does not start with {KEY_PREFIX!r}")
        tensors[key[len(KEY_PREFIX):]] = value
    method = peft_method(config["peft_type"], config)
    method_config, native = method.from_peft(config, tensors)
    fingerprint = Checkpoint(base).fingerprint if base is not None else None
    return AdapterPackage.build(method, method_config, native,
                                base_name=config.get("base_model_name_or_path"),
                                base_revision=config.get("revision"),
                                base_fingerprint=fingerprint)


def peft_layout(package: AdapterPackage) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config, tensors with PEFT keys)``; methods PEFT cannot express raise
    ExportError."""
    config, tensors = package.method.to_peft(package)
    return with_base(package, config), {KEY_PREFIX + key: value for key, value in tensors.items()}


def with_base(package: AdapterPackage, config: dict[str, Any]) -> dict[str, Any]:
    """A PEFT config with the base model's name and revision and inference defaults."""
    base = package.manifest.base_model
    return {"base_model_name_or_path": base.get("name"), "revision": base.get("revision"),
            "inference_mode": True, "task_type": None, **config}


def layout_files(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """The two files of a PEFT adapter directory, as bytes (deterministic: the same adapter
    gives the same bytes everywhere, which the hub's ETags rely on)."""
    weights = {key: raw_parts(t) for key, t in tensors.items()}
    return {CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
            WEIGHTS_FILE: safetensors_bytes(weights, {"format": "pt"})}


def write_files(files: dict[str, bytes], out: str | os.PathLike[str]) -> Path:
    """Write ``{name: bytes}`` into a directory, each file atomically, the weights first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n.endswith(".json")):
        write_bytes_atomic(out / name, files[name])
    return out


def write_peft(package: AdapterPackage, out: str | os.PathLike[str]) -> Path:
    """Write ``package`` in the PEFT layout; methods PEFT cannot express raise ExportError."""
    return write_files(layout_files(*peft_layout(package)), out)
