"""Adapter file formats: the native package and conversions to and from other layouts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub.errors import AdapterNotFoundError, FormatError
from adapterhub.io.safetensors import refuse_pickle

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage


def read_adapter(path: str | os.PathLike[str]) -> AdapterPackage:
    """The adapter in a directory, whatever its layout (detected): the native package
    (``adapter.json`` + ``adapter.safetensors``), a PEFT adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``), or both side by side as a hub repository holds them (the
    manifest is kept and every PEFT tensor checked against it). Pickle files are refused.
    The one directory reader; :func:`adapterhub.registry.sources.resolve_source` adds refs."""
    from adapterhub.io.formats import peft
    from adapterhub.io.package import MANIFEST_FILE, TENSORS_FILE, AdapterPackage, read_manifest

    path = Path(path)
    if not path.exists():
        raise AdapterNotFoundError(f"{path} does not exist")
    if path.is_file():
        refuse_pickle(path)
        raise FormatError(f"{path} is a file; an adapter is a directory",
                          hint="Point at the directory holding adapter.json or "
                               "adapter_config.json")
    has_manifest = (path / MANIFEST_FILE).is_file()
    if has_manifest and (path / TENSORS_FILE).is_file():
        return AdapterPackage.load(path)
    if has_manifest and peft.is_peft_dir(path):
        package = AdapterPackage(read_manifest(path), peft.read_peft(path).tensors)
        package.verify()
        return package
    if peft.is_peft_dir(path):
        return peft.read_peft(path)
    raise FormatError(f"{path} holds neither an adapterhub package ({MANIFEST_FILE} with "
                      f"{TENSORS_FILE}) nor a PEFT adapter (adapter_config.json with "
                      f"adapter_model.safetensors)")
