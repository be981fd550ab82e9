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
    """Read a native package directory or a PEFT adapter directory (detected)."""
    from adapterhub.io.formats import peft
    from adapterhub.io.package import AdapterPackage, is_native_dir

    path = Path(path)
    if not path.exists():
        raise AdapterNotFoundError(f"{path} does not exist")
    if path.is_file():
        refuse_pickle(path)
        raise FormatError(f"{path} is a file; an adapter is a directory",
                          hint="Point at the directory holding adapter.json or "
                               "adapter_config.json")
    if is_native_dir(path):
        return AdapterPackage.load(path)
    if peft.is_peft_dir(path):
        return peft.read_peft(path)
    raise FormatError(f"{path} holds neither an adapterhub package (adapter.json) nor a PEFT "
                      f"adapter (adapter_config.json)")
